import Foundation
import Glibc
import Testing

/// `access_log`: one JSON line per answered request, written off the request path.
@Suite(.serialized) struct AccessLogTests {
    static func lines(_ path: String) -> [[String: Any]] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    @Test func oneLinePerAnsweredRequestWithoutTheKey() throws {
        let logDir = makeTempDir("tgalog")
        defer { try? FileManager.default.removeItem(atPath: logDir) }
        let path = logDir + "/access.jsonl"
        let gate = try PolicyGate(extraTop: "\naccess_log:\n  path: \(path)\n", withAdmin: true)
        defer { gate.stop() }
        var sent: [(id: String, status: Int)] = []
        func note(_ r: HTTPResponse) { sent.append((r.header("X-Request-Id") ?? "", r.status)) }
        note(try gate.get("/api/finance/accounts", key: PlainKey.alice))
        note(try gate.get("/api/finance/accounts", key: PlainKey.revoked))
        note(try gate.get("/nowhere"))
        note(try gate.get("/pub/x", headers: ["X-Request-Id": "client-chosen-id"]))
        note(try RawClient(port: gate.port).request("GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"))
        // Written within the flush interval (100 ms), not per request: wait for the lines.
        var got: [[String: Any]] = []
        #expect(try poll(timeout: 10) { got = Self.lines(path); return got.count >= sent.count } != nil)
        #expect(got.count == sent.count)
        // Each loop writes its own lines: match them by request id, not by order.
        let byID = Dictionary(got.map { ($0["request_id"] as? String ?? "", $0) }, uniquingKeysWith: { a, _ in a })
        got = sent.map { byID[$0.id] ?? [:] }
        for (line, s) in zip(got, sent) {
            #expect(line["request_id"] as? String == s.id)
            #expect(line["status"] as? Int == s.status)
            for field in ["time", "client", "method", "path", "route", "key_id", "consumer", "code", "bytes_in",
                          "bytes_out", "duration_ms", "upstream"] {
                #expect(line.keys.contains(field), "\(field) missing in \(line)")
            }
        }
        #expect(got[0]["code"] as? String == "OK")
        #expect(got[0]["key_id"] as? String == "key_alice")
        #expect(got[0]["consumer"] as? String == "alice")
        #expect(got[0]["route"] as? String == "finance-read")
        #expect(got[0]["upstream"] as? String == "finance")
        #expect(got[0]["method"] as? String == "GET")
        #expect(got[0]["path"] as? String == "/api/finance/accounts")
        #expect(got[0]["client"] as? String == "127.0.0.1")
        #expect((got[0]["bytes_out"] as? Int ?? 0) > 0)
        #expect(got[1]["code"] as? String == "REVOKED")
        #expect(got[1]["upstream"] is NSNull)
        #expect(got[2]["code"] as? String == "NO_ROUTE")
        #expect(got[2]["route"] is NSNull)
        #expect(got[3]["request_id"] as? String == "client-chosen-id")
        #expect(got[4]["code"] as? String == "BAD_REQUEST")
        #expect(got[4]["method"] as? String == "-")
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        for k in [PlainKey.alice, PlainKey.revoked] { #expect(!text.contains(k), "a key reached the access log") }
        if let t = got[0]["time"] as? String { #expect(t.hasSuffix("Z") && t.count == 24, "time \(t)") }
    }

    @Test func reopenedOnSIGHUPAndFlushedOnSIGTERM() throws {
        let logDir = makeTempDir("tgalog")
        defer { try? FileManager.default.removeItem(atPath: logDir) }
        let path = logDir + "/access.jsonl"
        let gate = try PolicyGate(extraTop: "\naccess_log:\n  path: \(path)\n")
        defer { gate.stop() }
        _ = try gate.get("/pub/one")
        #expect(try poll(timeout: 10) { Self.lines(path).count == 1 } != nil)
        // Rotation: the old file is renamed, SIGHUP, the next lines go to a new file.
        try FileManager.default.moveItem(atPath: path, toPath: path + ".1")
        gate.tg.signal(SIGHUP)
        var probes = 0
        #expect(try poll(timeout: 10) {
            _ = try gate.get("/pub/probe")
            probes += 1
            return FileManager.default.fileExists(atPath: path)
        } != nil)
        // SIGTERM: what is buffered is written before the process exits.
        for i in 0..<20 { _ = try gate.get("/pub/\(i)") }
        #expect(gate.tg.stop() == 0)
        #expect(Self.lines(path + ".1").count + Self.lines(path).count == 1 + probes + 20)
    }
}
