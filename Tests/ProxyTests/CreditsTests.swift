import Foundation
import Glibc
import Synchronization
import Policy
import Testing

/// Credits through the real binary: the local journal ledger, reserve in admission and one
/// settlement per exchange, under 200 concurrent clients.
@Suite(.serialized) struct CreditsTests {
    static let aliceKey = "tg_credits_alice_0123456789"
    static let bobKey = "tg_credits_bob_0123456789"

    struct Gate {
        let dir: String
        let port: UInt16
        let admin: UInt16
        var policy: String { dir + "/gateway-\(port).yaml" }
        var journal: String { dir + "/.state/credits.journal" }
        var sink: String { dir + "/out/usage-\(port).jsonl" }

        init(upstreamPort: UInt16, price: Int = 1, refundOn: String = "[5xx, unavailable]", extraRoutes: String = "",
             redis: String? = nil, reservationTTL: String = "5m", dir shared: String? = nil) {
            dir = shared ?? makeTempDir("tgcredits")
            port = freePort()
            admin = freePort()
            let store = redis.map { "store: {redis: \"\($0)\", deadline: 500ms}" } ?? ""
            let ledger = redis == nil ? "local" : "redis"
            writeFile(policy, """
            version: 1
            listen:
              - address: 127.0.0.1:\(port)
            admin:
              address: 127.0.0.1:\(admin)
            usage:
              spool: spool-\(port)
              durability: 0ms
              sinks:
                - {kind: file, path: out/usage-\(port).jsonl}
            audit:
              path: audit.jsonl
            \(store)
            credits:
              ledger: \(ledger)
              account: consumer
              reservation_ttl: \(reservationTTL)
            backends:
              up: {url: "http://127.0.0.1:\(upstreamPort)"}
            routes:
              - name: paid
                match: {path_prefix: /paid/}
                backend: up
                credits: {per_request: \(price), refund_on: \(refundOn)}
              - name: free
                match: {path_prefix: /free/}
                backend: up
            \(extraRoutes)
            keys:
              - {id: key_alice, hash: \(Self.hash(CreditsTests.aliceKey)), consumer: alice, scopes: []}
              - {id: key_bob, hash: \(Self.hash(CreditsTests.bobKey)), consumer: bob, scopes: []}

            """)
        }

        static func hash(_ key: String) -> String { KeyHash.sha256(key).description }

        /// Started, and ready (the store connected when there is one).
        func serve() throws -> TollgateProcess {
            let tg = try TollgateProcess(policies: policy, port: port, extra: ["--drain-timeout", "5"])
            #expect(try poll(timeout: 10) { try get(admin, "/readyz").status == 200 } != nil)
            return tg
        }

        func grant(_ account: String, _ n: Int) throws -> String {
            let (status, out) = try runTollgate(["credits", "grant", account, String(n), "--policies", policy])
            #expect(status == 0, "\(out)")
            return out
        }

        func balance(_ account: String) throws -> Int? {
            let (status, out) = try runTollgate(["credits", "balance", account, "--policies", policy])
            #expect(status == 0, "\(out)")
            return out.split(separator: "\n").first { $0.hasPrefix("balance: ") }.flatMap { Int($0.dropFirst(9)) }
        }

        /// Sum of the journal's charge lines for `account`.
        func journalCharges(_ account: String) -> (count: Int, sum: Int) {
            var n = 0, sum = 0
            for line in ((try? String(contentsOfFile: journal, encoding: .utf8)) ?? "").split(separator: "\n") {
                guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                      o["op"] as? String == "charge", o["account"] as? String == account else { continue }
                n += 1
                sum += (o["amount"] as? Int) ?? 0
            }
            return (n, sum)
        }

        /// Usage records of route `paid`: (count, credits summed, statuses).
        func usage() -> [(status: Int, credits: Int)] {
            ((try? String(contentsOfFile: sink, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line in
                guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                      o["route"] as? String == "paid" else { return nil }
                return ((o["status"] as? Int) ?? 0, (o["credits"] as? Int) ?? -1)
            }
        }

        func stop() { try? FileManager.default.removeItem(atPath: dir) }

        /// `credits balance` lines: (balance, reserved).
        func balanceAndReserved(_ account: String) throws -> (Int, Int) {
            let (status, out) = try runTollgate(["credits", "balance", account, "--policies", policy])
            #expect(status == 0, "\(out)")
            var b = -1, r = 0
            for line in out.split(separator: "\n") {
                if line.hasPrefix("balance: ") { b = Int(line.dropFirst(9)) ?? -1 }
                if line.hasPrefix("reserved: ") { r = Int(line.dropFirst(10)) ?? -1 }
            }
            return (b, r)
        }
    }

    /// Many clients at once on `/paid/x`: 200 or a well-formed 402, nothing else.
    static func hammer(ports: [UInt16], clients: Int, perClient: Int, key: String) -> (counts: [Int: Int], failures: [String]) {
        ProxyTests.hammer(ports: ports, clients: clients, perClient: perClient,
                          request: "GET /paid/x HTTP/1.1\r\nHost: t\r\nX-API-Key: \(key)\r\n\r\n") { r in
            let body = String(decoding: r.body, as: UTF8.self)
            if r.status == 402, r.header("X-Tollgate-Credits-Remaining") == nil || !body.contains("\"code\":\"INSUFFICIENT_CREDITS\"") {
                return "402 without the header or code: \(body)"
            }
            return r.status != 200 && r.status != 402 ? "\(r.status): \(body)" : nil
        }
    }

    static func request(_ c: RawClient, _ path: String, key: String) throws -> HTTPResponse {
        try c.request("GET \(path) HTTP/1.1\r\nHost: t\r\nX-API-Key: \(key)\r\n\r\n")
    }

    /// 200 clients at once on one account: exactly as many requests are served as the balance
    /// pays for, never one more, every refusal is a 402 that costs nothing, and the ledger's
    /// journal, the usage records and the audit trail agree.
    @Test func twoHundredClientsOnOneAccountAreChargedExactly() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let gate = Gate(upstreamPort: up.port, price: 2)
        defer { gate.stop() }
        // 1,001 credits at 2 per request: 500 requests, 1 credit left over that buys nothing.
        _ = try gate.grant("alice", 1000)
        _ = try gate.grant("alice", 1)
        let tg = try gate.serve()
        let (counts, failures) = Self.hammer(ports: [gate.port], clients: 200, perClient: 5, key: Self.aliceKey)
        #expect(failures.isEmpty, "\(failures.prefix(3))")
        #expect(counts[200] == 500, "\(counts)")
        #expect(counts[402] == 500, "\(counts)")
        // Another consumer is untouched by alice's run and has nothing to spend.
        let c = try RawClient(port: gate.port)
        let bob = try Self.request(c, "/paid/x", key: Self.bobKey)
        c.close()
        #expect(bob.status == 402)
        #expect(bob.header("X-Tollgate-Credits-Remaining") == "0")
        #expect(String(decoding: bob.body, as: UTF8.self).contains("\"balance\":0"))
        #expect(tg.stop() == 0)

        #expect(try gate.balance("alice") == 1)
        let journal = gate.journalCharges("alice")
        #expect(journal.count == 500 && journal.sum == 1000, "\(journal)")
        let usage = gate.usage()
        #expect(usage.filter { $0.status == 200 }.count == 500)
        #expect(usage.filter { $0.status == 200 }.allSatisfy { $0.credits == 2 })
        #expect(usage.filter { $0.status == 402 }.count == 501)
        #expect(usage.filter { $0.status == 402 }.allSatisfy { $0.credits == 0 })
        let audit = (try? String(contentsOfFile: gate.dir + "/audit.jsonl", encoding: .utf8)) ?? ""
        let grants = audit.split(separator: "\n").filter { $0.contains("\"action\":\"credits.granted\"") && $0.contains("\"subject\":\"alice\"") }
        #expect(grants.count == 2)
        let (status, out) = try runTollgate(["audit", "verify", gate.dir + "/audit.jsonl"])
        #expect(status == 0, "\(out)")
    }

    /// An upstream 5xx and an upstream that is not there are given back (refund_on), a free
    /// route costs nothing, and with `refund_on: []` a 5xx is charged.
    @Test func failedExchangesAreRefundedPerRefundOn() throws {
        let up = try ScriptedUpstream { peer in
            while let head = peer.readHead() {
                if head.contains("/boom") {
                    peer.write("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nboom")
                } else {
                    peer.write(okResponse("fine"))
                }
            }
        }
        defer { up.stop() }
        let gate = Gate(upstreamPort: up.port, price: 3, extraRoutes: """
              - name: gone
                match: {path_prefix: /gone/}
                backend: nowhere
                credits: {per_request: 3}
              - name: strict
                match: {path_prefix: /strict/}
                backend: up
                credits: {per_request: 3, refund_on: []}
            """)
        defer { gate.stop() }
        // The `nowhere` backend: a port nothing listens on.
        var text = try String(contentsOfFile: gate.policy, encoding: .utf8)
        text = text.replacingOccurrences(of: "backends:\n", with: "backends:\n  nowhere: {url: \"http://127.0.0.1:\(refusedPort())\"}\n")
        writeFile(gate.policy, text)
        _ = try gate.grant("alice", 30)
        let tg = try gate.serve()
        let c = try RawClient(port: gate.port)
        #expect(try Self.request(c, "/paid/ok", key: Self.aliceKey).status == 200)        // −3
        #expect(try Self.request(c, "/paid/boom", key: Self.aliceKey).status == 503)      // refunded
        #expect(try Self.request(c, "/free/x", key: Self.aliceKey).status == 200)         // free
        let gone = try Self.request(c, "/gone/x", key: Self.aliceKey)                     // refunded
        #expect(gone.status == 502)
        c.close()
        let c2 = try RawClient(port: gate.port)
        #expect(try Self.request(c2, "/strict/boom", key: Self.aliceKey).status == 503)   // −3
        c2.close()
        #expect(tg.stop() == 0)
        #expect(try gate.balance("alice") == 24)
        #expect(gate.journalCharges("alice").sum == 6)
    }

    /// A grant reaches the running proxy by itself (the journal is read every 200 ms): a
    /// refused account is served once credits are granted, without a reload.
    @Test func aGrantReachesTheRunningProxy() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let gate = Gate(upstreamPort: up.port)
        defer { gate.stop() }
        let tg = try gate.serve()
        defer { tg.stop() }
        #expect(try get(gate.port, "/paid/x", headers: ["X-API-Key": Self.aliceKey]).status == 402)
        let out = try gate.grant("alice", 2)
        #expect(out.contains("balance: 2"))
        // Wait for the grant to be seen: the first 200 (bounded: 5 s; it takes ≤ 200 ms).
        let deadline = Date().addingTimeInterval(5)
        var status = 0
        while Date() < deadline {
            status = try get(gate.port, "/paid/x", headers: ["X-API-Key": Self.aliceKey]).status
            if status == 200 { break }
            usleep(20_000)
        }
        #expect(status == 200)
        #expect(try get(gate.port, "/paid/x", headers: ["X-API-Key": Self.aliceKey]).status == 200)
        #expect(try get(gate.port, "/paid/x", headers: ["X-API-Key": Self.aliceKey]).status == 402)
    }

    /// Three instances on one Redis, 200 clients spread over them: the account is charged for
    /// exactly the requests served, to the credit, and never goes below zero.
    @Test func threeInstancesOnOneRedisChargeExactly() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try echoUpstream()
        defer { up.stop() }
        let dir = makeTempDir("tgcredits3")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let gates = (0..<3).map { _ in Gate(upstreamPort: up.port, price: 2, redis: redis.urlText, dir: dir) }
        #expect(try gates[0].grant("alice", 600).contains("balance: 600"))
        #expect(try gates[1].grant("alice", 1).contains("balance: 601"))
        let procs = try gates.map { try $0.serve() }
        let (counts, failures) = Self.hammer(ports: gates.map(\.port), clients: 200, perClient: 3, key: Self.aliceKey)
        #expect(failures.isEmpty, "\(failures.prefix(3))")
        #expect(counts[200] == 300, "\(counts)")
        #expect(counts[402] == 300, "\(counts)")
        for p in procs { #expect(p.stop() == 0) }
        let (balance, reserved) = try gates[2].balanceAndReserved("alice")
        #expect(balance == 1)
        #expect(reserved == 0)
        let usage = gates.flatMap { $0.usage() }
        #expect(usage.filter { $0.status == 200 }.count == 300)
        #expect(usage.reduce(0) { $0 + $1.credits } == 600)
        // A retried grant (same id) adds nothing.
        let (s1, o1) = try runTollgate(["credits", "grant", "alice", "5", "--id", "g-fixed", "--policies", gates[0].policy])
        let (s2, o2) = try runTollgate(["credits", "grant", "alice", "5", "--id", "g-fixed", "--policies", gates[0].policy])
        #expect(s1 == 0 && s2 == 0, "\(o1) \(o2)")
        #expect(try gates[0].balanceAndReserved("alice").0 == 6)
    }

    /// A proxy killed while it holds a reservation strands nothing: the reservation expires
    /// back to the account (`reservation_ttl`), and nothing was charged.
    @Test func aReservationOfAKilledProxyExpiresBackToTheAccount() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let headSeen = DispatchSemaphore(value: 0)
        let up = try ScriptedUpstream { peer in
            if peer.readHead() != nil { headSeen.signal() }
            _ = peer.read(count: 1)   // never answers; returns when the proxy is gone
        }
        defer { up.stop() }
        let gate = Gate(upstreamPort: up.port, price: 7, redis: redis.urlText, reservationTTL: "1s")
        defer { gate.stop() }
        _ = try gate.grant("alice", 10)
        let tg = try gate.serve()
        let c = try RawClient(port: gate.port)
        try c.send("GET /paid/slow HTTP/1.1\r\nHost: t\r\nX-API-Key: \(Self.aliceKey)\r\n\r\n")
        #expect(headSeen.wait(timeout: .now() + 10) == .success)
        #expect(try gate.balanceAndReserved("alice") == (10, 7))
        tg.signal(SIGKILL)
        _ = tg.waitForExit()
        c.close()
        // Wait for the expiry (1 s) to be visible: bounded at 10 s.
        let deadline = Date().addingTimeInterval(10)
        var now = (0, 0)
        while Date() < deadline {
            now = try gate.balanceAndReserved("alice")
            if now.1 == 0 { break }
            usleep(100_000)
        }
        #expect(now == (10, 0))
    }
}
