import Backends
import Foundation
import Glibc
import Policy
import Runtime
import Testing

struct RedisOutageTests {
    @Test func killedServerOpensTheBreakerAndRestartClosesIt() throws {
        try withRedis { server, live in
            let c = Collector()
            // Commands in flight when the server dies get `.disconnected` (or a reply), once each.
            live.on { conn in for i in 0..<20 { _ = conn.command("PING", waiter: c, token: UInt64(i)) } }
            server.kill9()
            #expect(eventually { live.on { $0.health } == .down })
            #expect(eventually { c.count == 20 })
            #expect(Set(c.all.map(\.token)).count == 20)
            #expect(live.health.all == [.up, .down])

            // While down: fail fast, synchronously, and the waiter is never called.
            let fast = live.on { conn -> [RedisResult?] in
                [conn.lookupKey(KeyHash.sha256("k"), waiter: c, token: 100),
                 conn.admit(KeyHash.sha256("k"), plan: PlanSpec(index: 0, name: "p", windows: [RateWindow(plan: "p", requests: 1, per: .seconds(1))]),
                            waiter: c, token: 101),
                 conn.command("PING", waiter: c, token: 102)]
            }
            #expect(fast.allSatisfy { $0?.isUnavailable == true })
            #expect(live.on { $0.lastError } != nil)

            // Back-off keeps retrying; after a restart on the same port it comes back.
            usleep(300_000)
            #expect(live.health.all == [.up, .down])   // reported once, however many retries failed
            try server.restart()
            #expect(eventually(15) { live.on { $0.health } == .up })
            #expect(live.health.all == [.up, .down, .up])
            live.on { _ = $0.command("PING", waiter: c, token: 200) }
            #expect(eventually { c.results(for: 200).first?.replyText == "PONG" })
            #expect(c.results(for: 100).isEmpty && c.results(for: 101).isEmpty && c.results(for: 102).isEmpty)
        }
    }

    @Test func consecutiveTimeoutsOpenTheBreakerAndAProbeClosesIt() throws {
        var opts = RedisConnection.Options()
        opts.failureThreshold = 3
        try withRedis(deadline: .milliseconds(30), options: opts) { server, live in
            try server.client().run(["CLIENT", "PAUSE", "400", "ALL"])
            let c = Collector()
            // Three deadline sweeps with no reply in between (one batch each) open the breaker.
            for round in 0..<3 {
                live.on { conn in for i in 0..<5 { _ = conn.command("PING", waiter: c, token: UInt64(round * 5 + i)) } }
                usleep(45_000)
            }
            #expect(eventually { c.count == 15 })
            #expect(c.all.allSatisfy { $0.result.isTimedOut })
            #expect(eventually { live.on { $0.health } == .down })
            // The pause ends; a PING probe on the back-off tick closes the breaker.
            #expect(eventually(15) { live.on { $0.health } == .up })
            #expect(live.health.all == [.up, .down, .up])
            usleep(100_000)
            #expect(c.count == 15)   // late replies dropped
        }
    }

    @Test func oneSlowBatchDoesNotOpenTheBreaker() throws {
        try withRedis(deadline: .milliseconds(30), options: RedisConnection.Options()) { server, live in
            // A short stall: one pipelined batch times out, then its replies arrive late.
            try server.client().run(["CLIENT", "PAUSE", "120", "ALL"])
            let c = Collector()
            live.on { conn in for i in 0..<10 { _ = conn.command("PING", waiter: c, token: UInt64(i)) } }
            #expect(eventually { c.count == 10 })
            #expect(c.all.allSatisfy { $0.result.isTimedOut })
            usleep(300_000)
            // Slow is not gone: the breaker stayed closed and new commands are answered.
            #expect(live.health.all == [.up])
            live.on { _ = $0.command("PING", waiter: c, token: 100) }
            #expect(eventually { c.results(for: 100).first?.replyText == "PONG" })
        }
    }

    @Test func neverConnectedReportsNothingAndFailsFast() throws {
        let port = RedisServer.freePort()
        let live = try LiveConnection(url: RedisURL(endpoint: .tcp(host: "127.0.0.1", port: port)))
        defer { live.shutdown() }
        usleep(200_000)
        let c = Collector()
        #expect(live.on { $0.command("PING", waiter: c, token: 1) }?.isUnavailable == true)
        #expect(live.health.all.isEmpty)
        #expect(live.on { $0.lastError } != nil)
    }
}
