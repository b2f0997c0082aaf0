import Foundation
import Glibc
import Policy
import Synchronization
import Testing

/// Calendar quotas through the real binary: exact under concurrency, kept across a restart
/// (embedded) and shared by instances (Redis), given back when a later phase refuses.
@Suite(.serialized) struct QuotaTests {
    static let key = "tg_quota_key_0123456789"

    func policy(dir: String, port: UInt16, upstream: UInt16, quota: Int, redis: String? = nil, credits: Bool = false) -> String {
        let path = dir + "/gw-\(port).yaml"
        writeFile(path, """
        version: 1
        listen:
          - address: 127.0.0.1:\(port)
        \(redis.map { "store: {redis: \"\($0)\", deadline: 500ms}" } ?? "")
        \(credits ? "credits: {ledger: local}" : "")
        backends:
          up: {url: "http://127.0.0.1:\(upstream)"}
        plans:
          metered:
            rate_limits:
              - {requests: 100000, per: 1s}
            quotas:
              - {requests: \(quota), per: day}
              - {requests: \(quota * 10), per: month, by: consumer}
        routes:
          - name: api
            match: {path_prefix: /api/}
            backend: up
            \(credits ? "credits: {per_request: 1}" : "")
        keys:
          - {id: key_q, hash: \(KeyHash.sha256(Self.key).description), consumer: carol, plan: metered, scopes: []}

        """)
        return path
    }

    /// Many clients at once: 200 or a well-formed 429 `QUOTA_EXCEEDED` with a sane `Retry-After`.
    static func hammer(ports: [UInt16], clients: Int, perClient: Int) -> ([Int: Int], [String]) {
        let r = ProxyTests.hammer(ports: ports, clients: clients, perClient: perClient,
                                  request: "GET /api/x HTTP/1.1\r\nHost: t\r\nX-API-Key: \(Self.key)\r\n\r\n") { r in
            guard r.status == 429 else { return nil }
            let body = String(decoding: r.body, as: UTF8.self)
            let retry = Int(r.header("Retry-After") ?? "") ?? 0
            if !body.contains("\"code\":\"QUOTA_EXCEEDED\"") || retry < 1 || retry > 86_400 {
                return "429 \(r.header("Retry-After") ?? "-"): \(body)"
            }
            return nil
        }
        return (r.counts, r.failures)
    }

    /// 200 clients at once against a daily quota of 300: exactly 300 served, the rest 429
    /// `QUOTA_EXCEEDED` with `Retry-After` to the end of the UTC day; still used up after a
    /// restart (the counts are saved).
    @Test func embeddedQuotaIsExactAndSurvivesARestart() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let dir = makeTempDir("tgquota")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = freePort()
        let path = policy(dir: dir, port: port, upstream: up.port, quota: 300)
        var tg = try TollgateProcess(policies: path, port: port)
        let (counts, failures) = Self.hammer(ports: [port], clients: 200, perClient: 3)
        #expect(failures.isEmpty, "\(failures.prefix(3))")
        #expect(counts[200] == 300, "\(counts)")
        #expect(counts[429] == 300, "\(counts)")
        #expect(tg.stop() == 0)
        tg = try TollgateProcess(policies: path, port: port)
        defer { tg.stop() }
        let r = try get(port, "/api/x", headers: ["X-API-Key": Self.key])
        #expect(r.status == 429)
        let (start, end) = QuotaSpec.bounds(.day, now: Int64(time(nil)))
        #expect(start <= Int64(time(nil)))
        #expect(Int(r.header("Retry-After") ?? "") ?? 0 <= Int(end - Int64(time(nil))) + 1)
    }

    /// Three instances on one Redis share one count.
    @Test func redisQuotaIsSharedByInstances() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try echoUpstream()
        defer { up.stop() }
        let dir = makeTempDir("tgquota3")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ports = (0..<3).map { _ in freePort() }
        let procs = try ports.map { try TollgateProcess(policies: policy(dir: dir, port: $0, upstream: up.port, quota: 150, redis: redis.urlText), port: $0) }
        let (counts, failures) = Self.hammer(ports: ports, clients: 150, perClient: 2)
        #expect(failures.isEmpty, "\(failures.prefix(3))")
        #expect(counts[200] == 150, "\(counts)")
        #expect(counts[429] == 150, "\(counts)")
        for p in procs { #expect(p.stop() == 0) }
    }

    /// A request the credits phase refuses (402) does not use up the quota.
    @Test func aRequestRefusedForCreditsGivesItsQuotaBack() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let dir = makeTempDir("tgquotacr")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = freePort()
        let path = policy(dir: dir, port: port, upstream: up.port, quota: 2, credits: true)
        let (s, out) = try runTollgate(["credits", "grant", "carol", "1", "--policies", path])
        #expect(s == 0, "\(out)")
        let tg = try TollgateProcess(policies: path, port: port)
        defer { tg.stop() }
        let h = ["X-API-Key": Self.key]
        #expect(try get(port, "/api/x", headers: h).status == 200)   // quota 1/2, credits 0
        #expect(try get(port, "/api/x", headers: h).status == 402)   // refused: quota given back
        #expect(try get(port, "/api/x", headers: h).status == 402)
        _ = try runTollgate(["credits", "grant", "carol", "5", "--policies", path])
        let deadline = Date().addingTimeInterval(5)
        var status = 0
        while Date() < deadline {
            status = try get(port, "/api/x", headers: h).status   // quota 2/2 once the grant is seen
            if status != 402 { break }
            usleep(20_000)
        }
        #expect(status == 200)
        #expect(try get(port, "/api/x", headers: h).status == 429)
    }
}
