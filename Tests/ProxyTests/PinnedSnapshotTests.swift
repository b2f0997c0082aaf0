import Backends
import Foundation
import Glibc
import Policy
import Testing

/// A request is decided under the policy it started with, even when a reload lands while it
/// waits for Redis.
@Suite(.serialized) struct PinnedSnapshotTests {
    static let key = "pinned-plain-key-0001"

    static func gateway(port: UInt16, admin: UInt16, redis: String, upstream: UInt16) -> String {
        """
        version: 1
        listen:
          - address: 127.0.0.1:\(port)
        admin:
          address: 127.0.0.1:\(admin)
        store:
          redis: \(redis)
          on_error: closed
          deadline: 5s
        backends:
          up: {url: "http://127.0.0.1:\(upstream)"}
        plans:
          roomy:
            rate_limits:
              - {requests: 100, per: 1h, burst: 100}
          tiny:
            rate_limits:
              - {requests: 1, per: 1h, burst: 1}
        routes:
          - name: api
            match: {path_prefix: /api/}
            backend: up
            scopes: [api]

        """
    }

    static func keys(scopes: String, plan: String) -> String {
        """
        version: 1
        keys:
          - id: key_pinned
            hash: sha256:\(KeyHash.sha256(key).hex)
            consumer: pat
            plan: \(plan)
            scopes: [\(scopes)]

        """
    }

    @Test func reloadDuringARedisWaitKeepsTheRequestsScopesAndPlan() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let log = HeadLog()
        let up = try recordingUpstream(log)
        defer { up.stop() }
        let dir = makeTempDir("tgpin")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = freePort(), admin = freePort()
        writeFile(dir + "/00-gateway.yaml", Self.gateway(port: port, admin: admin, redis: redis.urlText, upstream: up.port))
        writeFile(dir + "/10-keys.yaml", Self.keys(scopes: "api", plan: "roomy"))
        let tg = try TollgateProcess(policies: dir, port: port, threads: 1)
        defer { tg.stop() }
        #expect(try poll(timeout: 10) { try scrapeMetrics(admin)["tollgate_store_up"] == 1 } != nil)

        // Redis holds every command for 3 s: the request parks in its key lookup.
        let c = try RawClient(port: port)
        _ = try redis.client().run(["CLIENT", "PAUSE", "3000", "ALL"])
        try c.send("GET /api/a HTTP/1.1\r\nHost: h\r\nX-API-Key: \(Self.key)\r\n\r\n")
        // Meanwhile the key loses its scope and moves to a one-request plan.
        writeFile(dir + "/10-keys.yaml", Self.keys(scopes: "other", plan: "tiny"))
        #expect(try poll(timeout: 10) { try scrapeMetrics(admin)["tollgate_policy_reloads_total{result=\"ok\"}"] ?? 0 >= 1 } != nil)
        // Redis answers: the request is decided under the policy it started with.
        let r = try c.readResponse()
        #expect(r.status == 200, "\(r.status) \(r.text)")
        #expect(headerValue(log.heads.last ?? "", "X-Tollgate-Scopes") == "api")
        #expect(r.header("RateLimit-Policy")?.contains("q=100") == true, "\(r.header("RateLimit-Policy") ?? "nil")")
        // The next request is decided under the new one.
        expectDenial(try c.request("GET /api/b HTTP/1.1\r\nHost: h\r\nX-API-Key: \(Self.key)\r\n\r\n"), "INSUFFICIENT_SCOPE", 403)
    }
}
