import Testing
@testable import Policy

struct CredentialRuleTests {
    func bearer(_ v: String) -> String? {
        let b = Array(v.utf8)
        return b.withUnsafeBytes { CredentialRule.bearerToken(in: $0) }.map { String(decoding: b[$0], as: UTF8.self) }
    }

    @Test func bearerTokens() {
        #expect(bearer("Bearer abc") == "abc")
        #expect(bearer("bearer   tg_xyz  ") == "tg_xyz")
        #expect(bearer("BEARER k") == "k")
        #expect(bearer("Basic abc") == nil)
        #expect(bearer("Bearer ") == nil)
        #expect(bearer("Bearerabc") == nil)
        #expect(bearer("Bearer a b") == nil)
    }

    func query(_ q: String, _ name: String = "api_key") -> String? {
        let b = Array(q.utf8)
        return b.withUnsafeBytes { CredentialRule.queryValue(named: Array(name.utf8), in: $0) }
            .map { String(decoding: b[$0], as: UTF8.self) }
    }

    @Test func queryParameters() {
        #expect(query("api_key=K") == "K")
        #expect(query("a=1&api_key=K&b=2") == "K")
        #expect(query("a=1&api_key=&b") == "")
        #expect(query("xapi_key=K") == nil)
        #expect(query("api_key") == nil)
        #expect(query("api_key=1&api_key=2") == "1")
        #expect(query("") == nil)
    }
}
