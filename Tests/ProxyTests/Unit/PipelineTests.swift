import Backends
import Foundation
import Policy
import Runtime
import Testing
@testable import Proxy

/// The phases and settle over an in-memory exchange: a head parsed from bytes, a loop context
/// with no socket, the real `Pipeline` (there is no second copy of the decision path).
@Suite(.serialized) struct PipelineTests {
    static let alice = "alice-plain-key-0001"
    static let bob = "bob-plain-key-0002"
    static let revoked = "revoked-plain-key"
    static let disabled = "disabled-plain-key"
    static let expired = "expired-plain-key"
    static let locked = "ip-locked-plain-key"
    static let tiny = "tiny-plan-key"

    static func h(_ k: String) -> String { "sha256:" + KeyHash.sha256(k).hex }

    static let yaml = """
    version: 1
    listen:
      - address: 127.0.0.1:8080
    clients:
      trusted_proxies: [10.0.0.0/8]
      deny: [203.0.113.0/24]
    credentials:
      api_key:
        headers: [X-API-Key]
        query: api_key
    backends:
      finance: {url: http://127.0.0.1:7001}
      flowise: {url: http://127.0.0.1:7003}
    plans:
      tiny:
        rate_limits:
          - {requests: 2, per: 1s}
    routes:
      - name: finance-read
        match: {methods: [GET, HEAD], path_prefix: /api/finance/}
        backend: finance
        scopes: [finance:read]
      - name: finance-write
        match: {methods: [POST, PUT, PATCH, DELETE], path_prefix: /api/finance/}
        backend: finance
        scopes: [finance:write]
        require_https: true
        max_body: 1KiB
      - name: chat
        match: {methods: [POST], path_prefix: /api/v1/prediction/}
        backend: flowise
        scopes: [chat]
      - name: any-key
        match: {path_prefix: /api/misc/}
        backend: finance
      - name: public-health
        match: {methods: [GET], path: /health}
        backend: finance
        auth: none
      - name: public-secure
        match: {methods: [GET], path: /secure-health}
        backend: finance
        auth: none
        require_https: true
    keys:
      - {id: key_alice, hash: "\(h(alice))", consumer: alice, scopes: [finance:read, chat]}
      - {id: key_bob, hash: "\(h(bob))", consumer: bob, scopes: [finance:read, finance:write]}
      - {id: key_revoked, hash: "\(h(revoked))", consumer: carol, scopes: [finance:read], status: revoked}
      - {id: key_disabled, hash: "\(h(disabled))", consumer: dave, scopes: [finance:read], status: disabled}
      - {id: key_expired, hash: "\(h(expired))", consumer: erin, scopes: [finance:read], expires: 2020-01-01T00:00:00Z}
      - {id: key_locked, hash: "\(h(locked))", consumer: frank, scopes: [finance:read], allow_ips: [192.0.2.0/24, "2001:db8::/32"]}
      - {id: key_tiny, hash: "\(h(tiny))", consumer: gina, plan: tiny, scopes: [finance:read]}
    """

    /// One loop context (an epoll instance, no socket) serving the fixture.
    final class Bench {
        let context: LoopContext
        let exchange: Exchange
        let head = IOBuffer(capacity: 32 * 1024)
        var parser = HTTP1RequestParser(limits: HTTP1Limits())
        var parsed = HTTP1RequestHead()

        init() throws {
            let dir = NSTemporaryDirectory() + "tg-pipeline-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try PipelineTests.yaml.write(toFile: dir + "/p.yaml", atomically: true, encoding: .utf8)
            let snapshot = try PolicyLoader.load(path: dir + "/p.yaml")
            context = LoopContext(loop: try EventLoop(index: 0), snapshot: snapshot, settings: ServerSettings(),
                                  limiter: RateLimiter())
            context.keys = KeyDirectory(snapshot: snapshot, state: KeyLogState())
            exchange = Exchange(context: context)
            // The storage a session would lend it.
            let w = context.takeWorkspace()
            let l = context.workspaceLayout
            exchange.attachStorage(headers: w + l.headersOffset, path: w + l.pathOffset)
        }

        /// Parses `raw` as the head of a request from `peer` and runs the phases.
        func run(_ raw: String, peer: String = "192.0.2.10", tls: Bool = false) -> Pipeline.Step {
            head.clear()
            head.write(Array(raw.utf8))
            parser.reset()
            guard case .complete(let n) = parser.parse(head.readable, into: &parsed, headers: exchange.headers) else {
                Issue.record("head did not parse: \(raw)")
                return .wait
            }
            let x = exchange
            x.open(peer: IPAddress(peer)!)
            var view = RequestView()
            view.base = UnsafeRawPointer(head.readPointer)
            view.method = parsed.method
            view.methodRange = parsed.methodRange
            view.path = parsed.path
            view.query = parsed.query
            view.hasQuery = parsed.hasQuery
            view.isOriginless = parsed.form == .asterisk || parsed.form == .authority
            if case .contentLength(let len) = parsed.framing { view.declaredBodyLength = len }
            view.isTLS = tls
            x.request = view
            x.begin(headLength: n)
            return Pipeline.run(x)
        }

        static func get(_ path: String, key: String? = nil, method: String = "GET", extra: String = "") -> String {
            "\(method) \(path) HTTP/1.1\r\nHost: h\r\n" + (key.map { "X-API-Key: \($0)\r\n" } ?? "") + extra + "\r\n"
        }
    }

    struct Case: Sendable, CustomTestStringConvertible {
        var label: String
        var head: String
        var peer = "192.0.2.10"
        var tls = false
        var expected: DenialCode?
        var route: String?
        var testDescription: String { label }
    }

    static let cases: [Case] = [
        Case(label: "allow: key with the route's scope", head: Bench.get("/api/finance/accounts", key: alice), route: "finance-read"),
        Case(label: "allow: public route, no credential", head: Bench.get("/health"), route: "public-health"),
        Case(label: "allow: route without scopes needs only a valid key", head: Bench.get("/api/misc/x", key: bob), route: "any-key"),
        Case(label: "allow: Bearer credential", head: Bench.get("/api/finance/a", extra: "Authorization: Bearer \(alice)\r\n")),
        Case(label: "allow: query credential", head: Bench.get("/api/finance/a?x=1&api_key=\(alice)")),
        Case(label: "allow: normalised path matches", head: Bench.get("/api/x/../finance/%61", key: alice), route: "finance-read"),
        Case(label: "NO_ROUTE: unknown path", head: Bench.get("/nowhere", key: alice), expected: .noRoute),
        Case(label: "NO_ROUTE: method not in any route", head: Bench.get("/health", method: "POST"), expected: .noRoute),
        Case(label: "NO_ROUTE: asterisk form", head: "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", expected: .noRoute),
        Case(label: "BAD_REQUEST: path above the root", head: Bench.get("/../etc", key: alice), expected: .badRequest),
        Case(label: "IP_DENIED: global deny list", head: Bench.get("/api/finance/a", key: alice), peer: "203.0.113.7", expected: .ipDenied),
        Case(label: "IP_DENIED: global deny applies to public routes", head: Bench.get("/health"), peer: "203.0.113.7", expected: .ipDenied),
        Case(label: "IP_DENIED: denied client behind a trusted proxy",
             head: Bench.get("/api/finance/a", key: alice, extra: "X-Forwarded-For: 203.0.113.9\r\n"), peer: "10.1.2.3", expected: .ipDenied),
        Case(label: "IP_DENIED: key allow_ips excludes the client", head: Bench.get("/api/finance/a", key: locked), peer: "198.51.100.1",
             expected: .ipDenied),
        Case(label: "allow: key allow_ips includes the client (IPv6)", head: Bench.get("/api/finance/a", key: locked), peer: "2001:db8::1"),
        Case(label: "IP_DENIED: spoofed XFF from an untrusted peer is ignored",
             head: Bench.get("/api/finance/a", key: locked, extra: "X-Forwarded-For: 192.0.2.5\r\n"), peer: "198.51.100.1",
             expected: .ipDenied),
        Case(label: "allow: XFF from a trusted proxy chooses the client",
             head: Bench.get("/api/finance/a", key: locked, extra: "X-Forwarded-For: 192.0.2.5, 10.0.0.2\r\n"), peer: "10.0.0.1"),
        Case(label: "MISSING_CREDENTIAL", head: Bench.get("/api/finance/a"), expected: .missingCredential),
        Case(label: "MISSING_CREDENTIAL: empty Bearer", head: Bench.get("/api/finance/a", extra: "Authorization: Bearer \r\n"),
             expected: .missingCredential),
        Case(label: "INVALID_KEY: unknown hash", head: Bench.get("/api/finance/a", key: "no-such-key"), expected: .invalidKey),
        Case(label: "REVOKED", head: Bench.get("/api/finance/a", key: revoked), expected: .revoked),
        Case(label: "DISABLED", head: Bench.get("/api/finance/a", key: disabled), expected: .disabled),
        Case(label: "EXPIRED", head: Bench.get("/api/finance/a", key: expired), expected: .expired),
        Case(label: "INSUFFICIENT_SCOPE", head: Bench.get("/api/finance/a", key: alice, method: "POST"), tls: true,
             expected: .insufficientScope, route: "finance-write"),
        Case(label: "INSUFFICIENT_SCOPE: chat route without the chat scope",
             head: Bench.get("/api/v1/prediction/x", key: bob, method: "POST"), expected: .insufficientScope),
        Case(label: "HTTPS_REQUIRED", head: Bench.get("/api/finance/a", key: bob, method: "POST"), expected: .httpsRequired,
             route: "finance-write"),
        Case(label: "HTTPS_REQUIRED: a public route too", head: Bench.get("/secure-health"), expected: .httpsRequired),
        Case(label: "allow: TLS satisfies require_https", head: Bench.get("/api/finance/a", key: bob, method: "DELETE"), tls: true),
        Case(label: "allow: a trusted proxy's X-Forwarded-Proto satisfies require_https",
             head: Bench.get("/api/finance/a", key: bob, method: "DELETE", extra: "X-Forwarded-Proto: https\r\n"), peer: "10.0.0.1"),
    ]

    @Test(arguments: cases)
    func decides(_ c: Case) throws {
        let b = try Bench()
        let step = b.run(c.head, peer: c.peer, tls: c.tls)
        switch step {
        case .forward:
            #expect(c.expected == nil, "forwarded, expected \(c.expected?.rawValue ?? "")")
        case .refuse(let d):
            #expect(d.code == c.expected, "refused \(d.code.rawValue)")
        case .wait, .bodyTooLarge, .needBody, .noUpstreamCredential:
            Issue.record("unexpected step \(step)")
        }
        if let name = c.route { #expect(b.exchange.facts.route?.name == name) }
    }

    @Test func declaredBodyOverTheRouteLimitIsAnswered413BeforeCredentialWork() throws {
        let b = try Bench()
        let step = b.run(Bench.get("/api/finance/a", key: Self.bob, method: "POST", extra: "Content-Length: 5000\r\n"), tls: true)
        guard case .bodyTooLarge = step else { Issue.record("step \(step)"); return }
        #expect(b.exchange.facts.credentialSource == .none)
    }

    @Test func mintedKeyWithBadChecksumIsRefusedWithoutLookup() throws {
        let b = try Bench()
        var key = Array(KeyFormat.mint().utf8)
        key[10] = key[10] == UInt8(ascii: "a") ? UInt8(ascii: "b") : UInt8(ascii: "a")
        let step = b.run(Bench.get("/api/finance/a", key: String(decoding: key, as: UTF8.self)))
        guard case .refuse(let d) = step else { Issue.record("step \(step)"); return }
        #expect(d.code == .invalidKey)
        #expect(b.exchange.facts.phase == .extractCredential)   // the lookup phase never ran
    }

    @Test func rateLimitedAfterTheBudgetWithRetryAfter() throws {
        let b = try Bench()
        var steps: [Pipeline.Step] = []
        for _ in 0..<3 { steps.append(b.run(Bench.get("/api/finance/a", key: Self.tiny))) }
        guard case .forward = steps[0], case .forward = steps[1], case .refuse(let d) = steps[2] else {
            Issue.record("steps \(steps)"); return
        }
        #expect(d.code == .rateLimited)
        #expect(d.retryAfterSeconds == 1)
        #expect(b.exchange.facts.retryAfterSeconds == 1)
        #expect(b.exchange.facts.limitReport.remaining == 0)
    }

    @Test func keysWithoutPlanAreNotLimited() throws {
        let b = try Bench()
        for _ in 0..<100 {
            guard case .forward = b.run(Bench.get("/api/finance/a", key: Self.bob)) else { Issue.record("refused"); return }
        }
    }

    @Test func settleCountsAnExchangeOnceAndOnlyWhenAnswered() throws {
        let b = try Bench()
        let metrics = b.context.metrics
        func total() -> UInt64 {
            (0..<metrics.routeNames.count).reduce(0) { sum, slot in
                (0..<MetricCode.count).reduce(sum) { $0 + metrics.requests(slot: slot, code: $1) }
            }
        }
        _ = b.run(Bench.get("/api/finance/a", key: Self.alice))
        b.exchange.answer(status: 200, code: MetricCode.ok)
        b.exchange.settle()
        b.exchange.settle()
        #expect(total() == 1)
        #expect(metrics.requests(slot: 1, code: MetricCode.ok) == 1)   // slot 0 is "-"; finance-read is route 0
        // Refused: counted under its code.
        guard case .refuse(let d) = b.run(Bench.get("/api/finance/a")) else { Issue.record("not refused"); return }
        b.exchange.answer(status: d.code.status, code: MetricCode.index(d.code))
        b.exchange.settle()
        #expect(metrics.requests(slot: 1, code: MetricCode.index(.missingCredential)) == 1)
        // An exchange whose client left before any answer settles without a count.
        _ = b.run(Bench.get("/api/finance/a", key: Self.alice))
        b.exchange.settle()
        #expect(total() == 2)
        // A late store completion for a settled exchange resumes nothing.
        b.exchange.redisCompleted(token: b.exchange.facts.token &- 1, result: .reply(.nil))
        #expect(total() == 2)
    }
}
