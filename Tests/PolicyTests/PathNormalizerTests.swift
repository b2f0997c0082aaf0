import Testing
@testable import Policy

struct PathNormalizerTests {
    static let normalized: [(String, String)] = [
        ("/", "/"),
        ("/admin", "/admin"),
        ("/x/../admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("//admin", "/admin"),
        ("///a//b///", "/a/b/"),
        ("/a/./b/", "/a/b/"),
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/../", "/a/"),
        ("/a/.", "/a/"),
        ("/x/%2e%2e/admin", "/admin"),
        ("/x/.%2E/admin", "/admin"),
        ("/%2e/admin", "/admin"),
        ("/a%3fb", "/a%3Fb"),
        ("/a%20b", "/a%20b"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/%7Euser/%41%5a", "/~user/AZ"),
        ("/api/finance/accounts", "/api/finance/accounts"),
        ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
        ("/..a/b..", "/..a/b.."),
    ]

    @Test(arguments: normalized)
    func normalizes(_ input: String, _ expected: String) {
        #expect(PathNormalizer.normalizedString(input) == expected)
    }

    static let rejected: [(String, PathNormalizer.Rejection)] = [
        ("", .notAbsolute),
        ("admin", .notAbsolute),
        ("*", .notAbsolute),
        ("/admin;x", .pathParameter),
        ("/admin;x/y", .pathParameter),
        ("/a/b;jsessionid=1", .pathParameter),
        ("/../admin", .aboveRoot),
        ("/..", .aboveRoot),
        ("/a/../../admin", .aboveRoot),
        ("/%2e%2e/admin", .aboveRoot),
        ("/a%2fb", .encodedSlash),
        ("/a%2Fb", .encodedSlash),
        ("/a%5cb", .encodedBackslash),
        ("/a%00b", .nul),
        ("/a\u{0}b", .nul),
        ("/a\\b", .backslash),
        ("/a%zzb", .badEscape),
        ("/a%2", .badEscape),
        ("/a%", .badEscape),
        ("/a b", .invalidByte),
        ("/a\"b", .invalidByte),
        ("/caf\u{e9}", .invalidByte),
        ("/a#b", .invalidByte),
        ("/a?b", .invalidByte),
    ]

    @Test(arguments: rejected)
    func rejects(_ input: String, _ reason: PathNormalizer.Rejection) {
        #expect(PathNormalizer.normalize(input) == .rejected(reason))
    }

    @Test func writesIntoACallerBufferOfInputSize() {
        let input = Array("/a/./b/../c//d".utf8)
        var out = [UInt8](repeating: 0xEE, count: input.count)
        let r = input.withUnsafeBytes { i in out.withUnsafeMutableBytes { PathNormalizer.normalize(i, into: $0) } }
        #expect(r == .normalized(count: 6))
        #expect(String(decoding: out[0..<6], as: UTF8.self) == "/a/c/d")
    }
}
