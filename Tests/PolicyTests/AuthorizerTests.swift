import Testing
@testable import Policy

/// `authorize` alone; the whole decision path (route → … → admit) is tested over the real
/// pipeline in ProxyTests/Unit/PipelineTests.
struct AuthorizerTests {
    @Test func expiryIsInclusiveOfTheInstant() throws {
        let snap = try Fixture.snapshot()
        let exp: Int64 = 1_798_761_600  // 2027-01-01T00:00:00Z
        let rec = try #require(snap.declaredKey(.sha256(Fixture.expiredKey)))
        #expect(rec.expiresAt == exp)
        let route = try #require(snap.route(method: .get, path: "/api/finance/x"))
        let ip = IPAddress("192.0.2.1")!
        #expect(Authorizer.authorize(record: rec, route: route, clientIP: ip, isHTTPS: false, now: exp - 1) == .allow)
        #expect(Authorizer.authorize(record: rec, route: route, clientIP: ip, isHTTPS: false, now: exp) == .deny(.expired))
    }

    @Test func statusIsCheckedBeforeExpiryScopeAndIP() throws {
        let snap = try Fixture.snapshot()
        let route = try #require(snap.route(method: .post, path: "/api/finance/x"))
        let rec = KeyRecord(id: "k", hash: .sha256("k"), consumer: "c", planIndex: nil, scopes: .empty,
                            scopeNames: [], allowIPs: CIDRSet([CIDR("10.0.0.0/8")!]), expiresAt: 0, status: .revoked)
        let ip = IPAddress("192.0.2.1")!
        #expect(Authorizer.authorize(record: rec, route: route, clientIP: ip, isHTTPS: false, now: 10).denialCode == .revoked)
        #expect(Authorizer.authorize(record: rec.with(status: .disabled), route: route, clientIP: ip, isHTTPS: false,
                                     now: 10).denialCode == .disabled)
        #expect(Authorizer.authorize(record: rec.with(status: .active), route: route, clientIP: ip, isHTTPS: false,
                                     now: 10).denialCode == .expired)
    }
}
