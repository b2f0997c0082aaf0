import Backends
import Foundation
import Glibc
import Policy
import Runtime
import Testing

struct RedisEndpointTests {
    @Test func connectsOverAUnixSocket() throws {
        let server = try RedisServer(extraArguments: ["--unixsocket", "/tmp/tollgate-redis-test-{port}.sock", "--unixsocketperm", "700"])
        defer { server.stop() }
        let url = try RedisURL(parsing: "unix:///tmp/tollgate-redis-test-\(server.port).sock?db=2")
        try RedisKeyDirectory(url: url).run(["SET", "via", "unix"])
        let live = try LiveConnection(url: url)
        defer { live.shutdown() }
        #expect(live.waitUp())
        let c = Collector()
        live.on { _ = $0.command("GET", "via", waiter: c, token: 1) }
        #expect(eventually { c.count == 1 })
        #expect(c.results(for: 1).first?.replyText == "unix")
    }

    @Test func authenticatesWithUserAndPassword() throws {
        let server = try RedisServer(extraArguments: ["--requirepass", "s3cret", "--user", "alice", "on", ">w0nderland", "~*", "&*", "+@all"],
                                     password: "s3cret")
        defer { server.stop() }
        let good = try RedisURL(parsing: "redis://alice:w0nderland@127.0.0.1:\(server.port)/1")
        let live = try LiveConnection(url: good)
        defer { live.shutdown() }
        #expect(live.waitUp())
        let c = Collector()
        live.on { _ = $0.command("ACL", "WHOAMI", waiter: c, token: 1) }
        #expect(eventually { c.count == 1 })
        #expect(c.results(for: 1).first?.replyText == "alice")

        // Password only (the default user).
        let legacy = try LiveConnection(url: server.url)
        defer { legacy.shutdown() }
        #expect(legacy.waitUp())
    }

    @Test func wrongPasswordNeverComesUp() throws {
        let server = try RedisServer(extraArguments: ["--requirepass", "s3cret"], password: "s3cret")
        defer { server.stop() }
        let bad = try RedisURL(parsing: "redis://:nope@127.0.0.1:\(server.port)")
        let live = try LiveConnection(url: bad)
        defer { live.shutdown() }
        #expect(eventually { live.on { $0.lastError }?.contains("handshake") == true })
        #expect(!live.isUp)
        #expect(live.health.all.isEmpty)
        #expect(throws: RedisStoreError.self) { try RedisKeyDirectory(url: bad) }
    }
}
