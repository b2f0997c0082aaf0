import Backends
import ReferenceBackends
import Foundation
import Glibc
import Testing

/// Usage records through the real binary: spool first, a file sink with its own cursor.
@Suite(.serialized) struct UsageTests {
    /// A gateway with an access log (the ground truth: one line per answered request, written
    /// by the same settle) and usage records to a file sink.
    struct Gate {
        let dir: String
        let port: UInt16
        let admin: UInt16
        let upstream: ScriptedUpstream
        var sinkPath: String { dir + "/out/usage.jsonl" }
        var accessPath: String { dir + "/access.jsonl" }
        var spool: String { dir + "/spool" }

        init(sinkPath: String = "out/usage.jsonl", durability: String = "100ms") throws {
            dir = makeTempDir("tgusage")
            port = freePort()
            admin = freePort()
            upstream = try echoUpstream()
            writeFile(dir + "/gateway.yaml", """
            version: 1
            listen:
              - address: 127.0.0.1:\(port)
            admin:
              address: 127.0.0.1:\(admin)
            access_log: {path: access.jsonl}
            usage:
              spool: spool
              durability: \(durability)
              sinks:
                - {kind: file, path: \(sinkPath), rotate: {size: 256KiB, keep: 50}}
            backends:
              up: {url: "http://127.0.0.1:\(upstream.port)"}
            routes:
              - name: open
                match: {path_prefix: /open/}
                backend: up
                auth: none

            """)
        }

        func serve() throws -> TollgateProcess {
            try TollgateProcess(policies: dir + "/gateway.yaml", port: port, extra: ["--drain-timeout", "5"])
        }

        func stop() {
            upstream.stop()
            try? FileManager.default.removeItem(atPath: dir)
        }

        /// Record ids in the sink's files (current and rotated), with how often each came.
        func sinkIDs() -> [String: Int] {
            var ids: [String: Int] = [:]
            let files = ((try? FileManager.default.contentsOfDirectory(atPath: dir + "/out")) ?? []).filter { $0.hasPrefix("usage.jsonl") }
            for f in files {
                for line in ((try? String(contentsOfFile: dir + "/out/" + f, encoding: .utf8)) ?? "").split(separator: "\n") {
                    if let id = jsonField(line, "id") { ids[id, default: 0] += 1 }
                }
            }
            return ids
        }

        /// Request ids of the sink's records.
        func sinkRequestIDs() -> Set<String> {
            var out = Set<String>()
            let files = ((try? FileManager.default.contentsOfDirectory(atPath: dir + "/out")) ?? []).filter { $0.hasPrefix("usage.jsonl") }
            for f in files {
                for line in ((try? String(contentsOfFile: dir + "/out/" + f, encoding: .utf8)) ?? "").split(separator: "\n") {
                    if let id = jsonField(line, "request_id") { out.insert(id) }
                }
            }
            return out
        }

        func accessRequestIDs() -> Set<String> {
            // Exchanges the client left before any answer are logged as ABORTED: not answered.
            Set(((try? String(contentsOfFile: accessPath, encoding: .utf8)) ?? "").split(separator: "\n")
                .filter { !$0.contains("\"code\":\"ABORTED\"") }.compactMap { jsonField($0, "request_id") })
        }
    }

    /// h2load in the background: a bounded load (count) over a few connections, half of it refused.
    static func startLoad(_ port: UInt16, requests: Int) throws -> (Process, Pipe) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/h2load")
        p.arguments = ["-n", String(requests), "-c", "4", "-m", "4", "http://127.0.0.1:\(port)/open/a", "http://127.0.0.1:\(port)/none"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        return (p, out)
    }

    @Test func everyAnsweredRequestIsDeliveredAcrossSigtermAndARestart() throws {
        let g = try Gate()
        defer { g.stop() }
        var tg = try g.serve()
        // SIGTERM mid-load: once the sink has records, the load still running.
        let (load, _) = try Self.startLoad(g.port, requests: 200_000)
        #expect(try poll(timeout: 20) { g.sinkIDs().count > 500 } != nil)
        tg.signal(SIGTERM)
        #expect(tg.waitForExit(timeout: 20) == 0)
        load.terminate()
        load.waitUntilExit()
        // Restart: the spool resumes and new requests are recorded too.
        tg = try g.serve()
        let (rc, out) = try run("/usr/bin/h2load", ["-n", "3000", "-c", "2", "-m", "4", "http://127.0.0.1:\(g.port)/open/b"])
        #expect(rc == 0, "\(out)")
        tg.signal(SIGTERM)
        #expect(tg.waitForExit(timeout: 20) == 0)
        let answered = g.accessRequestIDs()
        let delivered = g.sinkRequestIDs()
        let ids = g.sinkIDs()
        #expect(answered.count > 3000)
        #expect(delivered == answered, "answered \(answered.count), delivered \(delivered.count): missing \(answered.subtracting(delivered).prefix(5))")
        // One record per answered request; none delivered twice on a clean stop.
        #expect(ids.count == answered.count && ids.values.allSatisfy { $0 == 1 })
        // The spool keeps only what some sink has not taken.
        let segments = (try? FileManager.default.contentsOfDirectory(atPath: g.spool).filter { $0.hasPrefix("seg-") }) ?? []
        #expect(segments.count <= 2, "\(segments)")
    }

    @Test func killNineLosesAtMostWhatWasInMemory() throws {
        let g = try Gate()
        defer { g.stop() }
        var tg = try g.serve()
        let (load, outPipe) = try Self.startLoad(g.port, requests: 30_000)
        #expect(try poll(timeout: 20) { g.sinkIDs().count > 2000 } != nil)
        kill(tg.pid, SIGKILL)
        _ = tg.waitForExit()
        load.waitUntilExit()
        let report = String(decoding: outPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        // Responses the clients received (every one was answered, hence settled).
        let received = h2loadStatusTotal(report)
        // A new start delivers what the spool holds.
        tg = try g.serve()
        let before = g.sinkIDs().count
        tg.signal(SIGTERM)
        #expect(tg.waitForExit(timeout: 20) == 0)
        let delivered = g.sinkIDs()
        let lost = max(0, received - delivered.count)
        print("usage: kill -9 under load: \(received) answers received, \(delivered.count) records delivered (\(before) before the restart), \(lost) lost")
        #expect(received > 2000)
        // What can be lost is what the loops' rings held and the writer had not written: it
        // drains them every 10 ms (the page cache survives a killed process), so on a quiet
        // machine that is ~10 ms of traffic (README); a starved writer holds more, never more
        // than the rings (2 loops).
        #expect(lost <= 2 * 8192, "\(lost) of \(received)")
        #expect(delivered.values.allSatisfy { $0 <= 2 })
    }

    @Test func aFailingSinkCatchesUpFromItsCursorWithoutHoldingRequests() throws {
        // The sink's directory is a regular file at first: every delivery fails.
        let g = try Gate(sinkPath: "blocked/usage.jsonl")
        defer { g.stop() }
        writeFile(g.dir + "/blocked", "not a directory\n")
        let tg = try g.serve()
        defer { tg.stop() }
        for i in 0..<50 { #expect(try get(g.port, "/open/\(i)").status == 200) }
        let failed = try poll(timeout: 10) {
            let m = try scrapeMetrics(g.admin)
            return m.first { $0.key.hasPrefix("tollgate_usage_records_total{sink=\"file:") && $0.key.hasSuffix("result=\"failed\"}") }?.value ?? 0 > 0
        }
        #expect(failed != nil)
        // Requests are answered all the while.
        #expect(try get(g.port, "/open/during").status == 200)
        // The sink comes back: everything it missed arrives, in order, once.
        try FileManager.default.removeItem(atPath: g.dir + "/blocked")
        try FileManager.default.createDirectory(atPath: g.dir + "/blocked", withIntermediateDirectories: true)
        let text = { (try? String(contentsOfFile: g.dir + "/blocked/usage.jsonl", encoding: .utf8)) ?? "" }
        #expect(try poll(timeout: 15) { text().split(separator: "\n").count == 51 } != nil, "\(text().split(separator: "\n").count)")
        let ids = text().split(separator: "\n").compactMap { jsonField($0, "id") }
        #expect(Set(ids).count == 51)
        // The lag gauge follows once the sink has stored its cursor (just after the lines).
        #expect(try poll(timeout: 10) {
            try scrapeMetrics(g.admin).first { $0.key.hasPrefix("tollgate_usage_sink_lag_bytes") }?.value == 0
        } != nil)
    }

    @Test func usageSettingsAreCheckedAtTheirLine() throws {
        let dir = makeTempDir("tgusage")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func check(_ usage: String) throws -> (Int32, String) {
            writeFile(dir + "/gateway.yaml", """
            version: 1
            listen:
              - address: 127.0.0.1:\(freePort())
            backends:
              up: {url: "http://127.0.0.1:1"}
            routes:
              - name: all
                match: {path_prefix: /}
                backend: up
                auth: none
            \(usage)
            """)
            return try runTollgate(["check", dir + "/gateway.yaml"])
        }
        let (rc1, o1) = try check("usage:\n  spool: s\n  sinks:\n    - {kind: http, url: \"http://h.example/u\", ca_file: ca.pem}\n")
        #expect(rc1 != 0 && o1.contains("gateway.yaml:14") && o1.contains("usage.sinks[0].ca_file: ca_file needs an https:// url"), "\(o1)")
        let (rc0, o0) = try check("usage:\n  spool: s\n  sinks:\n    - {kind: redis_stream, stream: x}\n")
        #expect(rc0 != 0 && o0.contains("store.redis"), "\(o0)")
        let (rc2, o2) = try check("usage:\n  spool: s\n  durability: soon\n")
        #expect(rc2 != 0 && o2.contains("usage.durability") && o2.contains("invalid duration"), "\(o2)")
        let (rc3, o3) = try check("usage:\n  sinks: []\n")
        #expect(rc3 != 0 && o3.contains("spool"), "\(o3)")
        let (rc4, o4) = try check("usage:\n  spool: s\n  sinks:\n    - {kind: file, path: a.jsonl, colour: red}\n")
        #expect(rc4 != 0 && o4.contains("usage.sinks[0].colour"), "\(o4)")
        let (rc5, o5) = try check("usage:\n  spool: s\n  durability: 0ms\n  sinks:\n    - {kind: file, path: a.jsonl}\n")
        #expect(rc5 == 0, "\(o5)")
    }
}

/// A string field of a JSON line (the records' own writer puts no spaces around `:`).
func jsonField<S: StringProtocol>(_ line: S, _ name: String) -> String? {
    guard let r = line.range(of: "\"\(name)\":\"") else { return nil }
    let rest = line[r.upperBound...]
    guard let end = rest.firstIndex(of: "\"") else { return nil }
    return String(rest[..<end])
}

/// The total of h2load's "status codes:" line.
func h2loadStatusTotal(_ report: String) -> Int {
    guard let line = report.split(separator: "\n").first(where: { $0.contains("status codes:") }) else { return 0 }
    return line.split(whereSeparator: { $0 == " " || $0 == "," }).compactMap { Int($0) }.reduce(0, +)
}

extension UsageTests {
    /// A Redis stream and an HTTP sink (JSON batches) beside the file sink: the stream's Redis
    /// goes away for a while and the HTTP receiver answers 500, then stalls past the timeout;
    /// requests are served all along, and afterwards every sink holds every record.
    @Test func sinksThatFailCatchUpAndNeverHoldRequestsOrEachOther() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        // The HTTP receiver: 500 for the first batches, then silence past the sink's timeout,
        // then 200 — keeping what it accepted.
        final class Receiver: @unchecked Sendable {
            let lock = NSLock()
            var calls = 0
            var ids: [String: Int] = [:]
            let release = DispatchSemaphore(value: 0)
        }
        let rx = Receiver()
        let receiver = try ScriptedUpstream { peer in
            while let head = peer.readHead() {
                let n = Int(headerValue(head, "Content-Length") ?? "0") ?? 0
                let body = String(decoding: peer.read(count: n) ?? [], as: UTF8.self)
                rx.lock.lock(); rx.calls += 1; let call = rx.calls; rx.lock.unlock()
                if call <= 3 { peer.write("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"); continue }
                if call <= 5 {
                    // Stalls: the sink's 300 ms timeout fires; the connection is dropped.
                    _ = rx.release.wait(timeout: .now() + 1)
                    return
                }
                rx.lock.lock()
                for part in body.components(separatedBy: "{\"id\":\"").dropFirst() {
                    let id = String(part.prefix { $0 != "\"" })
                    rx.ids[id, default: 0] += 1
                }
                rx.lock.unlock()
                peer.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            }
        }
        defer { receiver.stop() }
        let g = try Gate()
        defer { g.stop() }
        // The same gate with two more sinks and the store.
        let policy = try String(contentsOfFile: g.dir + "/gateway.yaml", encoding: .utf8)
            .replacingOccurrences(of: "    - {kind: file, path: out/usage.jsonl, rotate: {size: 256KiB, keep: 50}}\n", with: """
                - {kind: file, path: out/usage.jsonl, rotate: {size: 256KiB, keep: 50}}
                - {kind: redis_stream, stream: "tg:usage", maxlen: 100000}
                - {kind: http, url: "http://127.0.0.1:\(receiver.port)/batches", format: json, timeout: 300ms, batch: 50}
            store:
              redis: redis://127.0.0.1:\(redis.port)/0
              on_error: open

            """)
        writeFile(g.dir + "/gateway.yaml", policy)
        let tg = try g.serve()
        for i in 0..<200 { #expect(try get(g.port, "/open/\(i)").status == 200) }
        // Redis goes away; requests go on (the HTTP sink is failing meanwhile too).
        redis.kill9()
        for i in 0..<200 { #expect(try get(g.port, "/open/down-\(i)").status == 200) }
        #expect(try poll(timeout: 10) { g.sinkIDs().count == 400 } != nil, "the file sink is held back by nobody")
        try redis.restart()
        for i in 0..<100 { #expect(try get(g.port, "/open/back-\(i)").status == 200) }
        rx.release.signal(); rx.release.signal()
        let streamed = { () -> Int64 in
            switch try? redis.client().run(["XLEN", "tg:usage"]) {
            case .integer(let n)?: return n
            default: return 0
            }
        }
        // Redis was killed (not saved): what it held before is gone with it; what the sink
        // delivered since the restart is there. The cursor shows all 500 delivered.
        #expect(try poll(timeout: 20) {
            let m = try scrapeMetrics(g.admin)
            return m["tollgate_usage_records_total{sink=\"redis_stream:tg:usage\",result=\"delivered\"}"] == 500
                && m.first { $0.key.hasPrefix("tollgate_usage_records_total{sink=\"http:") && $0.key.hasSuffix("delivered\"}") }?.value == 500
        } != nil, "\((try? scrapeMetrics(g.admin))?.filter { $0.key.contains("usage") } ?? [:])")
        #expect(streamed() >= 100)
        rx.lock.lock()
        let httpIDs = rx.ids
        rx.lock.unlock()
        #expect(Set(httpIDs.keys) == Set(g.sinkIDs().keys), "\(httpIDs.count) vs \(g.sinkIDs().count)")
        // The two that failed say so; the file sink never did.
        let failures = try scrapeMetrics(g.admin).filter { $0.key.hasSuffix("result=\"failed\"}") }
        #expect(failures.filter { !$0.key.contains("sink=\"file:") }.values.allSatisfy { $0 > 0 }, "\(failures)")
        #expect(failures.filter { $0.key.contains("sink=\"file:") }.values.allSatisfy { $0 == 0 }, "\(failures)")
        tg.stop()
    }

    /// The seed 003 accounting service as a sink: one usage record per request of a known
    /// consumer, applied once each (the record id is the Idempotency-Key).
    @Test func theAccountingServiceReceivesEachRecordOnce() throws {
        let data = makeTempDir("tgacct")
        defer { try? FileManager.default.removeItem(atPath: data) }
        let backends = try ReferenceBackends.start(finance: nil, accounting: ReferenceAddress(host: "127.0.0.1", port: 0), flowise: nil,
                                                   dataDirectory: data)
        defer { backends.stop() }
        let accounting = try #require(backends.accountingPort)
        let gate = try PolicyGate(extraTop: """
        usage:
          spool: spool
          sinks:
            - {kind: http, url: "http://127.0.0.1:\(accounting)/api/usage/record", format: accounting}

        """)
        defer { gate.stop() }
        for i in 0..<5 { #expect(try gate.get("/api/finance/accounts?i=\(i)", key: PlainKey.alice).status == 200) }
        #expect(try gate.get("/api/finance/accounts", key: "unknown-key").status == 401)   // nobody to bill
        let listed = try poll(timeout: 10) { () throws -> Bool in
            let r = try get(accounting, "/api/usage/records", headers: ["X-Tollgate-Consumer": "alice"])
            return r.text.contains("\"total\":5")
        }
        #expect(listed != nil)
        // A restart re-reads nothing twice (cursor), and a replayed record would be answered
        // from the idempotency store anyway.
        try gate.restart()
        #expect(try gate.get("/api/finance/accounts", key: PlainKey.alice).status == 200)
        #expect(try poll(timeout: 10) { () throws -> Bool in
            try get(accounting, "/api/usage/records", headers: ["X-Tollgate-Consumer": "alice"]).text.contains("\"total\":6")
        } != nil)
        let r = try get(accounting, "/api/usage/records", headers: ["X-Tollgate-Consumer": "alice"])
        #expect(r.text.contains("\"service\":\"finance-read\"") && r.text.contains("\"operation\":\"GET\""), "\(r.text)")
    }
}

extension UsageTests {
    /// `GET /v1/usage` on the admin listener: per key, by hour or day, refusals by code; kept
    /// across a restart.
    @Test func perKeyUsageIsAggregatedAsRecordsPass() throws {
        let gate = try PolicyGate(extraTop: """
        usage:
          spool: spool
          sinks:
            - {kind: file, path: usage.jsonl}

        """, withAdmin: true)
        defer { gate.stop() }
        let admin = try #require(gate.adminPort)
        for i in 0..<4 { #expect(try gate.get("/open/\(i)", key: PlainKey.alice).status == 200) }
        for _ in 0..<5 { _ = try gate.get("/open/x", key: PlainKey.limited) }   // 3 per hour: 2 refused
        #expect(try gate.get("/admin/x", key: PlainKey.alice).status == 403)
        func usage(_ q: String) throws -> String { try adminGet(admin, "/v1/usage?" + q).text }
        let alice = try poll(timeout: 10) { try usage("key_id=key_alice&by=hour").contains("\"requests\":5") }
        #expect(alice != nil, "\((try? usage("key_id=key_alice&by=hour")) ?? "-")")
        let a = try usage("key_id=key_alice&by=day")
        #expect(a.contains("\"refusals\":{\"INSUFFICIENT_SCOPE\":1}") && a.contains("\"by\":\"day\""), "\(a)")
        #expect(try poll(timeout: 10) { try usage("key_id=key_limited").contains("\"RATE_LIMITED\":2") } != nil)
        // Outside the window: nothing.
        #expect(try usage("key_id=key_alice&from=2001-01-01&to=2001-01-02").contains("\"buckets\":[]"))
        #expect(try adminGet(admin, "/v1/usage").status == 400)
        #expect(try adminGet(admin, "/v1/usage?key_id=key_alice&by=week").status == 400)
        #expect(try get(admin, "/v1/usage?key_id=key_alice").status == 401)   // behind the admin credential
        // A restart keeps them (saved at the clean stop).
        try gate.restart()
        #expect(try usage("key_id=key_alice&by=hour").contains("\"requests\":5"))
    }
}
