import Foundation
import Glibc
import Testing

/// Every exchange settles exactly once, whatever ended it, and what settle counts is what the
/// clients saw (through the admin listener's `/metrics`).
@Suite(.serialized) struct SettleAndMetricsTests {
    /// An upstream that streams server-sent events until the client (through the proxy) goes.
    static func streamingUpstream() throws -> ScriptedUpstream {
        try ScriptedUpstream { peer in
            while let head = peer.readHead() {
                if head.hasPrefix("GET /stream") {
                    peer.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for i in 0..<400 {
                        let ev = "data: event \(i)\n\n"
                        peer.write(String(ev.utf8.count, radix: 16) + "\r\n" + ev + "\r\n")
                        usleep(10_000)
                    }
                    peer.write("0\r\n\r\n")
                } else if head.hasPrefix("GET /cut") {
                    // A head and half the body, then the connection closes.
                    peer.write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
                    peer.close()
                    return
                } else {
                    peer.write(okResponse("fine"))
                }
            }
        }
    }

    static let routes = """
      - name: stream
        match: {path_prefix: /stream}
        backend: streamer
        auth: none
      - name: cut
        match: {path_prefix: /cut}
        backend: streamer
        auth: none
      - name: down
        match: {path_prefix: /down/}
        backend: down
        auth: none
    """

    /// The enforcement fixture plus a streaming upstream and a backend nobody listens on.
    static func start() throws -> (ScriptedUpstream, PolicyGate) {
        let streamer = try streamingUpstream()
        let backends = "  streamer: {url: \"http://127.0.0.1:\(streamer.port)\"}\n"
            + "  down: {url: \"http://127.0.0.1:\(refusedPort())\"}"
        do {
            return (streamer, try PolicyGate(extraRoutes: routes, extraBackends: backends, withAdmin: true))
        } catch {
            streamer.stop()
            throw error
        }
    }

    @Test func requestsTotalMatchesWhatClientsSawAfterAMixedRun() throws {
        let (streamer, gate) = try Self.start()
        defer { streamer.stop(); gate.stop() }
        var seen: [String: Int] = [:]
        func note(_ r: HTTPResponse) { seen[r.errorCode ?? "OK", default: 0] += 1 }

        for _ in 0..<3 { note(try gate.get("/api/finance/accounts", key: PlainKey.alice)) }
        note(try gate.get("/open/x"))                                           // MISSING_CREDENTIAL
        note(try gate.get("/open/x", key: "not-a-key"))                         // INVALID_KEY
        note(try gate.get("/api/finance/accounts", key: PlainKey.revoked))      // REVOKED
        note(try gate.get("/api/finance/accounts", key: PlainKey.disabled))     // DISABLED
        note(try gate.get("/api/finance/accounts", key: PlainKey.expired))      // EXPIRED
        note(try gate.get("/api/finance/accounts", key: PlainKey.remote))       // IP_DENIED
        note(try gate.get("/admin/x", key: PlainKey.alice))                     // INSUFFICIENT_SCOPE
        note(try gate.get("/secure/x", key: PlainKey.alice))                    // HTTPS_REQUIRED
        note(try gate.get("/nothing/here", key: PlainKey.alice))                // NO_ROUTE
        note(try gate.get("/open/x;y", key: PlainKey.alice))                    // BAD_REQUEST (path)
        note(try RawClient(port: gate.port).request("GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"))   // BAD_REQUEST (head)
        for _ in 0..<4 { note(try gate.get("/api/finance/accounts", key: PlainKey.limited)) }  // 3 OK, RATE_LIMITED
        note(try gate.get("/down/x"))                                           // UPSTREAM_UNAVAILABLE 502
        #expect(seen["UPSTREAM_UNAVAILABLE"] == 1)
        // An upstream that cuts its body: the client saw a 200 head.
        let cut = try RawClient(port: gate.port)
        try cut.send("GET /cut HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(try cut.readHead().status == 200)
        #expect(cut.isClosedByPeer())
        seen["OK", default: 0] += 1
        // A client that aborts mid-response (an SSE stream): it saw a 200 head.
        let aborter = try RawClient(port: gate.port)
        try aborter.send("GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(try aborter.readHead().status == 200)
        aborter.close()
        seen["OK", default: 0] += 1

        let answered = seen.values.reduce(0, +)
        #expect(seen["OK"] == 8)
        for code in ["MISSING_CREDENTIAL", "INVALID_KEY", "REVOKED", "DISABLED", "EXPIRED", "IP_DENIED",
                     "INSUFFICIENT_SCOPE", "HTTPS_REQUIRED", "NO_ROUTE", "RATE_LIMITED"] {
            #expect(seen[code] == 1, "\(code): \(seen)")
        }
        #expect(seen["BAD_REQUEST"] == 2)
        // Settled when the last byte went (or the client went): wait for the count, not a time.
        let admin = gate.adminPort!
        var byCode: [String: Int] = [:]
        let settled = try poll(timeout: 10) {
            byCode = requestsByCode(try scrapeMetrics(admin))
            return byCode.values.reduce(0, +) >= answered
        }
        #expect(settled != nil, "metrics \(byCode) vs seen \(seen)")
        #expect(byCode == seen)
        let m = try scrapeMetrics(admin)
        #expect(m["tollgate_requests_total{route=\"-\",code=\"NO_ROUTE\"}"] == 1)
        #expect(m["tollgate_requests_total{route=\"finance-read\",code=\"RATE_LIMITED\"}"] == 1)
        #expect(m["tollgate_requests_total{route=\"down\",code=\"UPSTREAM_UNAVAILABLE\"}"] == 1)
        #expect(m["tollgate_upstream_errors_total{backend=\"down\",kind=\"connect\"}"] == 1)
        #expect(m["tollgate_upstream_errors_total{backend=\"streamer\",kind=\"invalid\"}"] == 1)
        #expect(m["tollgate_request_duration_seconds_count{route=\"finance-read\"}"] == 11)
        #expect(m["tollgate_request_duration_seconds_bucket{route=\"finance-read\",le=\"+Inf\"}"] == 11)
        #expect(m["tollgate_policy_reloads_total{result=\"ok\"}"] == 0)
        // Nothing settled twice: the count stays where it is.
        #expect(requestsByCode(try scrapeMetrics(admin)) == seen)
    }

    @Test func everyExchangeSettlesExactlyOnceHoweverItEnds() throws {
        let (streamer, gate) = try Self.start()
        defer { streamer.stop(); gate.stop() }
        let admin = gate.adminPort!
        func total() throws -> Int { requestsByCode(try scrapeMetrics(admin)).values.reduce(0, +) }
        func settles(to n: Int) throws -> Bool { try poll(timeout: 10) { try total() >= n } != nil && (try total()) == n }

        // A refusal on a keep-alive connection, then the client closes: one.
        var c = try RawClient(port: gate.port)
        #expect(try c.request("GET /open/x HTTP/1.1\r\nHost: h\r\n\r\n").status == 401)
        c.close()
        #expect(try settles(to: 1))
        // A forwarded exchange, then a refusal on the same connection, then close: two more.
        c = try RawClient(port: gate.port)
        #expect(try c.request("GET /pub/a HTTP/1.1\r\nHost: h\r\n\r\n").status == 200)
        #expect(try c.request("GET /nope HTTP/1.1\r\nHost: h\r\n\r\n").status == 404)
        c.close()
        #expect(try settles(to: 3))
        // An upstream failure before the head (502, the connection kept), then one after it (cut).
        c = try RawClient(port: gate.port)
        #expect(try c.request("GET /down/a HTTP/1.1\r\nHost: h\r\n\r\n").status == 502)
        try c.send("GET /cut HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(try c.readHead().status == 200)
        #expect(c.isClosedByPeer())
        #expect(try settles(to: 5))
        // A malformed head answered 400 and closed: one; a request body that never comes
        // (the client leaves): the exchange settles, but nothing was answered.
        #expect(try RawClient(port: gate.port).request("GET / HTTP/1.1\r\n\r\n").status == 400)
        #expect(try settles(to: 6))
        c = try RawClient(port: gate.port)
        try c.send("POST /open/x HTTP/1.1\r\nHost: h\r\nX-API-Key: \(PlainKey.alice)\r\nContent-Length: 10\r\n\r\nabc")
        usleep(100_000)
        c.close()
        #expect(try settles(to: 6))
        // A stream the client leaves half-way: one.
        c = try RawClient(port: gate.port)
        try c.send("GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(try c.readHead().status == 200)
        c.close()
        #expect(try settles(to: 7))
    }

    @Test func adminListenerAnswersHealthAndReadiness() throws {
        let gate = try PolicyGate(withAdmin: true)
        defer { gate.stop() }
        let admin = gate.adminPort!
        let h = try get(admin, "/healthz")
        #expect(h.status == 200)
        // Ready once the policy is loaded and the listeners serve (the proxy port may accept a
        // moment before start-up is done: "starting" until then).
        #expect(try poll(timeout: 5) { try get(admin, "/readyz").status == 200 } != nil)
        let m = try get(admin, "/metrics")
        #expect(m.header("Content-Type")?.hasPrefix("text/plain; version=0.0.4") == true)
        #expect(m.text.contains("# TYPE tollgate_requests_total counter"))
        #expect(m.text.contains("tollgate_connections{protocol=\"http1\"}"))
        #expect(!m.text.contains("tollgate_store_up"))   // no store configured
        #expect(try get(admin, "/other").status == 404)
        // Connections are counted while open.
        let open = try (0..<3).map { _ in try RawClient(port: gate.port) }
        #expect(try poll(timeout: 5) { (try scrapeMetrics(admin)["tollgate_connections{protocol=\"http1\"}"] ?? 0) >= 3 } != nil)
        for c in open { c.close() }
        #expect(try poll(timeout: 5) { (try scrapeMetrics(admin)["tollgate_connections{protocol=\"http1\"}"] ?? -1) == 0 } != nil)
        // A reload is counted by result.
        writeFile(gate.dir + "/20-extra.yaml", "version: 1\nplans:\n  extra:\n    rate_limits:\n      - {requests: 1, per: 1s}\n")
        #expect(try poll(timeout: 10) { try scrapeMetrics(admin)["tollgate_policy_reloads_total{result=\"ok\"}"] ?? 0 >= 1 } != nil)
        writeFile(gate.dir + "/30-broken.yaml", "version: 1\nplans: [\n")
        #expect(try poll(timeout: 10) { try scrapeMetrics(admin)["tollgate_policy_reloads_total{result=\"rejected\"}"] ?? 0 >= 1 } != nil)
    }
}
