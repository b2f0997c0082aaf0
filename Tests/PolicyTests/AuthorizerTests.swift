import Testing
@testable import Policy

struct AuthorizerTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var label: String
        var facts: RequestFacts
        var expected: DenialCode?
        var route: String?
        var testDescription: String { label }
    }

    static let cases: [Case] = [
        Case(label: "allow: key with the route's scope", facts: .get("/api/finance/accounts", key: Fixture.aliceKey),
             expected: nil, route: "finance-read"),
        Case(label: "allow: bearer-less public route", facts: .get("/health"), expected: nil, route: "public-health"),
        Case(label: "allow: route without scopes needs only a valid key", facts: .get("/api/misc/x", key: Fixture.bobKey),
             expected: nil, route: "any-key"),
        Case(label: "NO_ROUTE: unknown path", facts: .get("/nowhere", key: Fixture.aliceKey), expected: .noRoute),
        Case(label: "NO_ROUTE: method not in any route for the path",
             facts: .get("/health", method: .post), expected: .noRoute),
        Case(label: "NO_ROUTE before credential work", facts: .get("/nowhere"), expected: .noRoute),
        Case(label: "IP_DENIED: global deny list", facts: .get("/api/finance/a", key: Fixture.aliceKey, peer: "203.0.113.7"),
             expected: .ipDenied, route: "finance-read"),
        Case(label: "IP_DENIED: global deny applies to public routes too", facts: .get("/health", peer: "203.0.113.7"),
             expected: .ipDenied),
        Case(label: "IP_DENIED: denied client behind a trusted proxy",
             facts: .get("/api/finance/a", key: Fixture.aliceKey, peer: "10.1.2.3", xff: "203.0.113.9"),
             expected: .ipDenied),
        Case(label: "IP_DENIED: key allow_ips excludes the client",
             facts: .get("/api/finance/a", key: Fixture.lockedKey, peer: "198.51.100.1"), expected: .ipDenied),
        Case(label: "allow: key allow_ips includes the client (IPv6)",
             facts: .get("/api/finance/a", key: Fixture.lockedKey, peer: "2001:db8::1"), expected: nil),
        Case(label: "IP_DENIED: spoofed XFF from an untrusted peer is ignored",
             facts: .get("/api/finance/a", key: Fixture.lockedKey, peer: "198.51.100.1", xff: "192.0.2.5"),
             expected: .ipDenied),
        Case(label: "allow: XFF from a trusted proxy chooses the client",
             facts: .get("/api/finance/a", key: Fixture.lockedKey, peer: "10.0.0.1", xff: "192.0.2.5, 10.0.0.2"),
             expected: nil),
        Case(label: "MISSING_CREDENTIAL", facts: .get("/api/finance/a"), expected: .missingCredential),
        Case(label: "MISSING_CREDENTIAL: empty key", facts: .get("/api/finance/a", key: ""), expected: .missingCredential),
        Case(label: "INVALID_KEY: unknown hash", facts: .get("/api/finance/a", key: "no-such-key"), expected: .invalidKey),
        Case(label: "REVOKED", facts: .get("/api/finance/a", key: Fixture.revokedKey), expected: .revoked),
        Case(label: "DISABLED", facts: .get("/api/finance/a", key: Fixture.disabledKey), expected: .disabled),
        Case(label: "EXPIRED", facts: .get("/api/finance/a", key: Fixture.expiredKey), expected: .expired),
        Case(label: "INSUFFICIENT_SCOPE", facts: .get("/api/finance/a", key: Fixture.aliceKey, method: .post),
             expected: .insufficientScope, route: "finance-write"),
        Case(label: "INSUFFICIENT_SCOPE: chat route without the chat scope",
             facts: .get("/api/v1/prediction/x", key: Fixture.bobKey, method: .post), expected: .insufficientScope),
        Case(label: "HTTPS_REQUIRED", facts: .get("/api/finance/a", key: Fixture.bobKey, method: .post),
             expected: .httpsRequired, route: "finance-write"),
        Case(label: "allow: HTTPS satisfies require_https",
             facts: .get("/api/finance/a", key: Fixture.bobKey, https: true, method: .delete), expected: nil),
    ]

    @Test(arguments: cases)
    func decides(_ c: Case) throws {
        let snap = try Fixture.snapshot()
        let (decision, route) = Authorizer.decide(snapshot: snap, facts: c.facts, lookup: snap.declaredKey(_:),
                                                  now: Fixture.now)
        #expect(decision.denialCode == c.expected)
        if let name = c.route { #expect(route?.name == name) }
    }

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

    @Test func mintedKeyWithBadChecksumIsRefusedWithoutLookup() throws {
        let snap = try Fixture.snapshot()
        var key = Array(KeyFormat.mint().utf8)
        key[10] = key[10] == UInt8(ascii: "a") ? UInt8(ascii: "b") : UInt8(ascii: "a")
        var facts = RequestFacts.get("/api/finance/a")
        facts.credential = key
        var looked = false
        let (d, _) = Authorizer.decide(snapshot: snap, facts: facts, lookup: { _ in looked = true; return nil },
                                       now: Fixture.now)
        #expect(d == .deny(.invalidKey))
        #expect(!looked)
    }

    @Test func wellFormedMintedKeyIsLookedUp() throws {
        let snap = try Fixture.snapshot()
        let key = KeyFormat.mint()
        let rec = KeyRecord(id: "key_minted", hash: .sha256(key), prefix: KeyFormat.displayPrefix(of: key),
                            consumer: "zed", planIndex: nil, scopes: snap.scopeSet(of: ["finance:read"]),
                            scopeNames: ["finance:read"], allowIPs: nil, expiresAt: nil, status: .active)
        let (d, _) = Authorizer.decide(snapshot: snap, facts: .get("/api/finance/a", key: key),
                                       lookup: { $0 == rec.hash ? rec : nil }, now: Fixture.now)
        #expect(d == .allow)
    }

    @Test func rateLimitedAfterTheBudgetWithRetryAfter() throws {
        let snap = try Fixture.snapshot()
        let limiter = RateLimiter()
        let t0: UInt64 = 5_000_000_000
        func ask(_ t: UInt64) -> Decision {
            Authorizer.decide(snapshot: snap, facts: .get("/api/finance/a", key: Fixture.tinyKey),
                              lookup: snap.declaredKey(_:), now: Fixture.now, limiter: limiter, monotonicNanos: t).0
        }
        #expect(ask(t0) == .allow)
        #expect(ask(t0) == .allow)
        let third = ask(t0)
        guard case .deny(let denial) = third else { Issue.record("expected a denial"); return }
        #expect(denial.code == .rateLimited)
        #expect(denial.retryAfterSeconds == 1)
        #expect(denial.limit?.remaining == 0)
        // Half a second later one request fits again (2 per second).
        #expect(ask(t0 + 500_000_000) == .allow)
    }

    @Test func keysWithoutPlanAreNotLimited() throws {
        let snap = try Fixture.snapshot()
        let limiter = RateLimiter()
        for _ in 0..<100 {
            let (d, _) = Authorizer.decide(snapshot: snap, facts: .get("/api/finance/a", key: Fixture.bobKey),
                                           lookup: snap.declaredKey(_:), now: Fixture.now, limiter: limiter,
                                           monotonicNanos: 1)
            #expect(d == .allow)
        }
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
