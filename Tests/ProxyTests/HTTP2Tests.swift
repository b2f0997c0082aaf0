import Foundation
import Glibc
import Testing

/// The HTTP/2 client of the tests (`Tests/tools/h2client.py`, on Debian's python3-h2).
enum H2Client {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("tools/h2client.py").path
    /// Debian's interpreter (python3-h2 is installed for it, whatever `python3` is on PATH).
    static let python = "/usr/bin/python3"

    /// Runs the client to completion; every JSON line it printed.
    static func run(_ port: UInt16, _ mode: String, _ args: [String]) throws -> [[String: Any]] {
        let (rc, out) = try ProxyTests.run(python, [script, String(port), mode] + args)
        let lines = out.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        if rc != 0 && lines.isEmpty { throw HarnessError("h2client \(mode) failed (\(rc)): \(out)") }
        return lines
    }

    /// One request per path on one connection.
    static func request(_ port: UInt16, paths: [String], headers: [String] = [], extra: [String] = []) throws -> [H2Answer] {
        var args = extra
        for p in paths { args += ["--path", p] }
        for h in headers { args += ["--header", h] }
        return try run(port, "request", args).map(H2Answer.init)
    }
}

struct H2Answer {
    var status: Int
    var headers: [String: [String]]
    var body: String
    var bodyLength: Int
    var reset: Int?

    init(_ j: [String: Any]) {
        status = j["status"] as? Int ?? 0
        headers = j["headers"] as? [String: [String]] ?? [:]
        body = j["body"] as? String ?? ""
        bodyLength = j["bodyLength"] as? Int ?? 0
        reset = j["reset"] as? Int
    }

    func header(_ name: String) -> String? { headers[name.lowercased()]?.first }
}

/// The JSON error body without its request id (which differs per request).
private func errorShape(_ body: String) -> String {
    guard let j = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
          var e = j["error"] as? [String: Any] else { return "not JSON: \(body)" }
    e["request_id"] = nil
    return "\(e["code"] ?? "-")|\(e["message"] ?? "-")"
}

/// Reads a child's stdout line by line as it comes (no waiting for its end).
final class LineReader {
    private let fd: Int32
    private var pending: [UInt8] = []
    init(_ handle: FileHandle) { fd = handle.fileDescriptor }

    /// The next line, or nil at the end of output (or after `timeout` seconds without one).
    func next(timeout: Double = 15) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let i = pending.firstIndex(of: 0x0A) {
                let line = String(decoding: pending[..<i], as: UTF8.self)
                pending.removeFirst(i + 1)
                return line
            }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, Int32(left * 1000)) <= 0 { return nil }
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = Glibc.read(fd, &buf, buf.count)
            if n <= 0 { return nil }
            pending += buf[0..<n]
        }
    }
}

/// A gate over plain (h2c) and TLS (h2 by ALPN) listeners.
final class H2Gate {
    let gate: PolicyGate
    let tlsPort = freePort()
    let cert: TestCertificate

    init() throws {
        gate = try PolicyGate()
        cert = try TestCertificate.make(in: gate.dir, name: "server", host: "localhost")
        // A second listener, with TLS (policy lists concatenate across files).
        writeFile(gate.dir + "/20-tls.yaml", """
        version: 1
        listen:
          - address: 127.0.0.1:\(tlsPort)
            tls: {certificate: server.pem, private_key: server-key.pem}

        """)
        try gate.restart()
        try gate.tg.waitUntilListening(port: tlsPort)
    }

    var port: UInt16 { gate.port }
    func stop() { gate.stop() }
    var tlsArgs: [String] { ["--tls", "--cafile", cert.cert] }
}

/// `tollgate serve` on a fresh port with one open route (`auth: none`) to `upstream`, its
/// policy written in `dir`; an admin listener when `admin` is given.
func openGate(upstream: UInt16, dir: String, admin: UInt16? = nil, routeExtra: String = "") throws -> (TollgateProcess, UInt16) {
    let port = freePort()
    writeFile(dir + "/gateway.yaml", """
    version: 1
    listen:
      - address: 127.0.0.1:\(port)
    \(admin.map { "admin:\n  address: 127.0.0.1:\($0)" } ?? "")
    backends:
      up: {url: "http://127.0.0.1:\(upstream)"}
    routes:
      - name: all
        match: {path_prefix: /}
        backend: up
        auth: none
    \(routeExtra)

    """)
    return (try TollgateProcess(policies: dir + "/gateway.yaml", port: port), port)
}

@Suite(.serialized) struct HTTP2Tests {
    @Test func refusalsAreTheSameOverHTTP1AndHTTP2() throws {
        let g = try H2Gate()
        defer { g.stop() }
        let cases: [(String, String?)] = [
            ("/api/finance/accounts", nil),                       // MISSING_CREDENTIAL
            ("/api/finance/accounts", "not-a-key"),               // INVALID_KEY
            ("/api/finance/accounts", PlainKey.revoked),          // REVOKED
            ("/admin/stats", PlainKey.alice),                     // INSUFFICIENT_SCOPE
            ("/nowhere", PlainKey.alice),                         // NO_ROUTE
        ]
        for (path, key) in cases {
            let h1 = try g.gate.get(path, key: key)
            let headers = key.map { ["x-api-key: \($0)"] } ?? []
            for extra in [[], g.tlsArgs] {
                let port = extra.isEmpty ? g.port : g.tlsPort
                let a = try #require(try H2Client.request(port, paths: [path], headers: headers, extra: extra).first)
                #expect(a.status == h1.status, "\(path) \(key ?? "-"): h2 \(a.status) vs h1 \(h1.status)")
                #expect(errorShape(a.body) == errorShape(h1.text), "\(a.body) vs \(h1.text)")
                // The same fields, minus HTTP/1.1's connection management.
                let h1Names = Set(h1.headers.map { $0.0.lowercased() }).subtracting(["connection", "keep-alive"])
                #expect(Set(a.headers.keys) == h1Names, "\(a.headers.keys.sorted()) vs \(h1Names.sorted())")
                #expect(a.header("www-authenticate") == h1.header("WWW-Authenticate"))
                #expect(a.header("content-type") == "application/json")
            }
        }
        // Rate limited: the same status, Retry-After and RateLimit fields.
        for _ in 0..<3 { _ = try g.gate.get("/open/x", key: PlainKey.limited) }
        let h1 = try g.gate.get("/open/x", key: PlainKey.limited)
        let a = try #require(try H2Client.request(g.port, paths: ["/open/x"], headers: ["x-api-key: \(PlainKey.limited)"]).first)
        #expect(h1.status == 429 && a.status == 429)
        #expect(a.header("retry-after") != nil && a.header("ratelimit") != nil && a.header("ratelimit-policy") == h1.header("RateLimit-Policy"))
        #expect(errorShape(a.body) == errorShape(h1.text))
    }

    @Test func admittedRequestsReachTheBackendAsHTTP1WithTheSameFacts() throws {
        let g = try H2Gate()
        defer { g.stop() }
        let before = g.gate.log.heads.count
        // h2c (prior knowledge), several streams on one connection.
        let answers = try H2Client.request(g.port, paths: ["/open/a?x=1", "/open/b"], headers: ["x-api-key: \(PlainKey.alice)",
                                           "cookie: a=1", "cookie: b=2", "x-request-id: h2-test-1"])
        #expect(answers.map(\.status) == [200, 200])
        #expect(answers[0].header("x-request-id") == "h2-test-1")
        // h2 over TLS, chosen by ALPN.
        let tls = try H2Client.request(g.tlsPort, paths: ["/secure/c"], headers: ["x-api-key: \(PlainKey.alice)"], extra: g.tlsArgs)
        #expect(tls.first?.status == 200)
        let heads = Array(g.gate.log.heads.dropFirst(before))
        #expect(heads.count == 3)
        let first = try #require(heads.first)
        #expect(first.hasPrefix("GET /open/a?x=1 HTTP/1.1\r\n"), "\(first)")
        #expect(headerValue(first, "Host") == "127.0.0.1:\(g.port)")
        #expect(headerValue(first, "X-Tollgate-Consumer") == "alice")
        #expect(headerValue(first, "X-API-Key") == nil)
        #expect(headerValue(first, "cookie") == "a=1; b=2")   // split cookies joined (RFC 9113 §8.2.3)
        #expect(headerValue(first, "X-Forwarded-Proto") == "http")
        #expect(headerValue(heads[2], "X-Forwarded-Proto") == "https")   // require_https met by the TLS listener
        // curl, both ways.
        let (rc, out) = try run("/usr/bin/curl", ["-sS", "-v", "--http2-prior-knowledge", "-H", "X-API-Key: \(PlainKey.alice)",
                                                  "http://127.0.0.1:\(g.port)/open/curl"])
        #expect(rc == 0 && out.contains("< HTTP/2 200"), "\(out)")
        let (rc2, out2) = try run("/usr/bin/curl", ["-sS", "-v", "--http2", "--cacert", g.cert.cert, "--resolve", "localhost:\(g.tlsPort):127.0.0.1",
                                                    "-H", "X-API-Key: \(PlainKey.alice)", "https://localhost:\(g.tlsPort)/open/curl"])
        #expect(rc2 == 0 && out2.contains("ALPN: server accepted h2") && out2.contains("< HTTP/2 200"), "\(out2)")
    }

    @Test func theDowngradeForwardsNothingAStrictHTTP1ParserWouldRefuse() throws {
        let g = try H2Gate()
        defer { g.stop() }
        let key = "x-api-key: \(PlainKey.alice)"
        let before = g.gate.log.heads.count
        // Each is refused (a stream reset, or a 400 answer); none reaches the backend.
        let bad: [[String]] = [
            [key, "connection: keep-alive"],
            [key, "transfer-encoding: chunked"],
            [key, "te: gzip"],
            [key, "upgrade: websocket"],
            [key, "X-Upper: 1"],
            [key, #"x-bad: a\r\nx-injected: 1"#],
            [key, #"x-nul: a\x00b"#],
            [key, #"x-cr: a\rb"#],
            [key, "host: other.example"],   // disagrees with :authority
        ]
        for headers in bad {
            let a = try #require(try H2Client.request(g.port, paths: ["/open/bad"], headers: headers).first)
            #expect(a.reset != nil || a.status == 400, "\(headers): \(a.status) \(a.body)")
        }
        #expect(g.gate.log.heads.count == before, "\(g.gate.log.heads.dropFirst(before))")
        // A content-length the DATA frames exceed: the stream is reset, and the backend (which
        // may have had the head) never gets more than the 5 bytes announced.
        let cl = try #require(try H2Client.request(g.port, paths: ["/open/cl"], headers: [key, "content-length: 5"],
                                                   extra: ["--method", "POST", "--body-size", "9"]).first)
        #expect(cl.reset != nil && cl.status != 200, "\(cl)")
        // The connection-level damage is nil: a good request still works.
        #expect(try H2Client.request(g.port, paths: ["/open/ok"], headers: [key]).first?.status == 200)
    }

    @Test func bodiesFlowBothWaysWithinTheWindows() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let dir = makeTempDir("tgh2")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (tg, port) = try openGate(upstream: up.port, dir: dir, routeExtra: "    max_body: 4MiB")
        defer { tg.stop() }
        // 600 KB up without a length (chunked to the backend), and the echo (600 KB) back:
        // ten times the stream window each way.
        let size = 600_000
        let a = try #require(try H2Client.request(port, paths: ["/upload"], extra: ["--method", "POST", "--body-size", String(size)]).first)
        #expect(a.status == 200)
        #expect(a.bodyLength > size)
        // With a length: passed as Content-Length.
        let b = try #require(try H2Client.request(port, paths: ["/upload2"], headers: ["content-length: \(size)"],
                                                  extra: ["--method", "POST", "--body-size", String(size)]).first)
        #expect(b.status == 200 && b.bodyLength > size)
        #expect(tg.process.isRunning)
    }

    /// A chunked answer of 2 MB (de-chunked into DATA frames) arrives whole, through the
    /// client's windows and our buffers' limits.
    @Test func aLargeChunkedAnswerArrivesWhole() throws {
        let chunk = String(repeating: "z", count: 3000)
        let up = try ScriptedUpstream { peer in
            guard peer.readHead() != nil else { return }
            var out = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            for _ in 0..<700 { out += String(chunk.utf8.count, radix: 16) + "\r\n" + chunk + "\r\n" }
            peer.write(out + "0\r\n\r\n")
        }
        defer { up.stop() }
        let dir = makeTempDir("tgh2")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (tg, port) = try openGate(upstream: up.port, dir: dir)
        defer { tg.stop() }
        let a = try #require(try H2Client.request(port, paths: ["/big"]).first)
        #expect(a.status == 200 && a.bodyLength == 700 * 3000, "\(a.status) \(a.bodyLength)")
    }

    @Test func anSSEAnswerArrivesEventByEventAndShutdownFinishesIt() throws {
        // The backend sends one event, then waits until the client has shown it before the
        // next: an answer held back until its end would never get past the first.
        let gateOpen = DispatchSemaphore(value: 0)
        let up = try ScriptedUpstream { peer in
            guard peer.readHead() != nil else { return }
            peer.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in 1...3 {
                let event = "data: event-\(i)\n\n"
                peer.write(String(event.utf8.count, radix: 16) + "\r\n" + event + "\r\n")
                if gateOpen.wait(timeout: .now() + 15) == .timedOut { return }
            }
            peer.write("0\r\n\r\n")
        }
        defer { up.stop() }
        let dir = makeTempDir("tgh2")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let admin = freePort()
        let (tg, port) = try openGate(upstream: up.port, dir: dir, admin: admin)
        defer { tg.stop() }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: H2Client.python)
        p.arguments = [H2Client.script, String(port), "stream", "--path", "/events"]
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        defer { if p.isRunning { p.terminate() } }
        let lines = LineReader(pipe.fileHandleForReading)
        #expect(lines.next()?.contains("200") == true)
        // An open h2 connection is counted as such.
        let metrics = try get(admin, "/metrics").text
        #expect(metrics.contains("tollgate_connections{protocol=\"h2\"} 1"), "\(metrics)")
        for i in 1...3 {
            let line = lines.next() ?? "nothing"
            #expect(line.contains("event-\(i)"), "\(line)")
            if i == 2 {
                // Graceful shutdown with the stream in flight: GOAWAY, and the stream finishes.
                tg.signal(SIGTERM)
                let g = lines.next() ?? "nothing"
                #expect(g.contains("\"goaway\": 0"), "\(g)")
            }
            gateOpen.signal()
        }
        var rest: [String] = []
        while let l = lines.next() { rest.append(l) }
        #expect(rest.last?.contains("ended") == true, "\(rest)")
        #expect(tg.waitForExit() == 0)
    }

    @Test func floodsCloseTheFloodingConnectionAndOthersAreServed() throws {
        let g = try H2Gate()
        defer { g.stop() }
        let key = "x-api-key: \(PlainKey.alice)"
        let upstreamBefore = g.gate.recorder.connections
        // Rapid reset (CVE-2023-44487): 5,000 streams opened and cancelled.
        let rr = try #require(try H2Client.run(g.port, "flood", ["--kind", "rapid-reset", "--count", "5000", "--path", "/open/rr", "--header", key]).first)
        #expect(rr["closed"] as? Bool == true, "\(rr)")
        // It cost the upstream pool next to nothing (streams reset before their exchange ran).
        #expect(g.gate.recorder.connections - upstreamBefore < 50, "\(g.gate.recorder.connections - upstreamBefore) upstream connections")
        // CONTINUATION flood (CVE-2024-27316): endless CONTINUATION frames without END_HEADERS.
        let cf = try #require(try H2Client.run(g.port, "flood", ["--kind", "continuation", "--count", "10000", "--header", key]).first)
        #expect(cf["closed"] as? Bool == true, "\(cf)")
        // A header block decoding far past the limit: the connection is closed.
        let hb = try #require(try H2Client.run(g.port, "flood", ["--kind", "headers-big", "--count", "40", "--header", key]).first)
        #expect(hb["closed"] as? Bool == true, "\(hb)")
        // One somewhat over the head limit: answered 431, like HTTP/1.1.
        let big = (0..<5).map { "x-filler-\($0): " + String(repeating: "v", count: 4000) }
        #expect(try H2Client.request(g.port, paths: ["/open/big"], headers: [key] + big).first?.status == 431)
        // SETTINGS and PING floods: answered within bounds, the proxy stays up.
        for kind in ["settings", "ping"] {
            _ = try H2Client.run(g.port, "flood", ["--kind", kind, "--count", "20000", "--header", key])
        }
        // Everyone else is served as usual, over both protocols.
        #expect(try H2Client.request(g.port, paths: ["/open/after"], headers: [key]).first?.status == 200)
        #expect(try g.gate.get("/open/after", key: PlainKey.alice).status == 200)
        #expect(g.gate.tg.process.isRunning)
    }

    @Test func h2loadIsServedOverH2cAndH2() throws {
        let g = try H2Gate()
        defer { g.stop() }
        for url in ["http://127.0.0.1:\(g.port)/open/load", "https://127.0.0.1:\(g.tlsPort)/open/load"] {
            let (rc, out) = try run("/usr/bin/h2load", ["-n", "400", "-c", "4", "-m", "10", "-H", "x-api-key: \(PlainKey.swarm)", url])
            #expect(rc == 0, "\(out)")
            // 20 per hour for this key: the rest are 429, all answered, none failed at the protocol level.
            #expect(out.contains("400 done"), "\(out)")
            #expect(out.contains("status codes: 20 2xx, 0 3xx, 380 4xx, 0 5xx") || url.hasPrefix("https"), "\(out)")
            #expect(out.contains("0 errored"), "\(out)")
        }
    }
}

extension HTTP2Tests {
    /// Renewed certificates under h2 load: the open connections keep theirs and finish every
    /// request; connections made after the reload get the new certificate.
    @Test func aCertificateReloadUnderLoadDropsNoConnection() throws {
        let dir = makeTempDir("tgh2")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let old = try TestCertificate.make(in: dir, name: "old", host: "localhost")
        let new = try TestCertificate.make(in: dir, name: "new", host: "localhost")
        try FileManager.default.copyItem(atPath: old.cert, toPath: dir + "/cert.pem")
        try FileManager.default.copyItem(atPath: old.key, toPath: dir + "/key.pem")
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let admin = freePort()
        let policies = dir + "/policies"
        try FileManager.default.createDirectory(atPath: policies, withIntermediateDirectories: true)
        writeFile(policies + "/gateway.yaml", """
        version: 1
        listen:
          - address: 127.0.0.1:\(port)
            tls: {certificate: ../cert.pem, private_key: ../key.pem}
        admin:
          address: 127.0.0.1:\(admin)
        backends:
          up: {url: "http://127.0.0.1:\(up.port)"}
        routes:
          - name: all
            match: {path_prefix: /}
            backend: up
            auth: none

        """)
        let tg = try TollgateProcess(policies: policies, port: port)
        defer { tg.stop() }
        // Four h2 connections under load for 4 seconds (bounded by time, not by our waiting).
        let load = Process()
        load.executableURL = URL(fileURLWithPath: "/usr/bin/h2load")
        load.arguments = ["-D", "4", "-c", "4", "-m", "4", "https://127.0.0.1:\(port)/load"]
        let out = Pipe()
        load.standardOutput = out
        load.standardError = out
        try load.run()
        // Once they are open: renew the files and reload.
        let opened = try poll(timeout: 10) { try get(admin, "/metrics").text.contains("tollgate_connections{protocol=\"h2\"} 4") }
        #expect(opened != nil)
        try FileManager.default.removeItem(atPath: dir + "/cert.pem")
        try FileManager.default.removeItem(atPath: dir + "/key.pem")
        try FileManager.default.copyItem(atPath: new.key, toPath: dir + "/key.pem")
        try FileManager.default.copyItem(atPath: new.cert, toPath: dir + "/cert.pem")
        tg.signal(SIGHUP)
        // New connections get the new certificate…
        #expect(try poll(timeout: 10, step: 0.1) {
            try run("/usr/bin/curl", ["-sS", "--http2", "--cacert", new.cert, "https://localhost:\(port)/after"]).0 == 0
        } != nil, "\(tg.log)")
        // …while the load's connections were still open, and they lost nothing.
        let stillOpen = try get(admin, "/metrics").text.contains("tollgate_connections{protocol=\"h2\"} 4")
        let report = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        load.waitUntilExit()
        #expect(stillOpen || report.contains("finished in 4"), "\(report)")
        #expect(report.contains(" 0 failed, 0 errored, 0 timeout"), "\(report)")
        #expect(!report.contains("requests: 0 total"), "\(report)")
        #expect(tg.log.contains("policy reloaded"))
    }
}

extension HTTP2Tests {
    /// An expired certificate, a name the certificate does not cover, and garbage instead of a
    /// ClientHello: each fails that one handshake; an h2 connection opened before them is
    /// served throughout and after.
    @Test func failedHandshakesLeaveOtherH2ConnectionsServed() throws {
        let dir = makeTempDir("tgh2")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Expired yesterday (openssl x509 -days -1), for localhost.
        writeFile(dir + "/san.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        let (rc1, o1) = try run("/usr/bin/openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                                                      "-keyout", dir + "/old-key.pem", "-out", dir + "/old.csr", "-subj", "/CN=localhost"])
        #expect(rc1 == 0, "\(o1)")
        let (rc2, o2) = try run("/usr/bin/openssl", ["x509", "-req", "-in", dir + "/old.csr", "-signkey", dir + "/old-key.pem",
                                                      "-out", dir + "/old.pem", "-days", "-1", "-extfile", dir + "/san.ext"])
        #expect(rc2 == 0, "\(o2)")
        let good = try TestCertificate.make(in: dir, name: "good", host: "localhost")
        let up = try echoUpstream()
        defer { up.stop() }
        let goodPort = freePort(), expiredPort = freePort(), admin = freePort()
        writeFile(dir + "/gateway.yaml", """
        version: 1
        listen:
          - address: 127.0.0.1:\(goodPort)
            tls: {certificate: good.pem, private_key: good-key.pem}
          - address: 127.0.0.1:\(expiredPort)
            tls: {certificate: old.pem, private_key: old-key.pem}
        admin:
          address: 127.0.0.1:\(admin)
        backends:
          up: {url: "http://127.0.0.1:\(up.port)"}
        routes:
          - name: all
            match: {path_prefix: /}
            backend: up
            auth: none

        """)
        let tg = try TollgateProcess(policies: dir + "/gateway.yaml", port: goodPort, threads: 1)
        defer { tg.stop() }
        try tg.waitUntilListening(port: expiredPort)
        // An h2 client that keeps one connection through everything below (it sends its
        // next request when told, on stdin).
        let p = Process()
        p.executableURL = URL(fileURLWithPath: H2Client.python)
        p.arguments = [H2Client.script, String(goodPort), "request", "--tls", "--cafile", good.cert, "--path", "/before", "--path", "/after",
                       "--wait-stdin"]
        let out = Pipe(), inp = Pipe()
        p.standardOutput = out
        p.standardInput = inp
        try p.run()
        defer { if p.isRunning { p.terminate() } }
        let lines = LineReader(out.fileHandleForReading)
        #expect(lines.next()?.contains("\"status\": 200") == true)
        // The expired certificate: the client refuses it (curl: 60, certificate problem).
        let (e, eo) = try run("/usr/bin/curl", ["-sS", "--http2", "--cacert", dir + "/old.pem", "https://localhost:\(expiredPort)/x"])
        #expect(e == 60 && eo.contains("expired"), "\(eo)")
        // A name the certificate does not cover.
        let (m, mo) = try run("/usr/bin/curl", ["-sS", "--http2", "--cacert", good.cert, "--resolve", "wrong.test:\(goodPort):127.0.0.1",
                                                "https://wrong.test:\(goodPort)/x"])
        #expect(m == 60, "\(mo)")
        // Garbage where a ClientHello belongs.
        let g = try RawClient(port: goodPort)
        try g.send(String(repeating: "\u{16}\u{03}\u{01}\u{ff}\u{ff}garbage", count: 20))
        #expect(g.isClosedByPeer())
        // The first client's connection is still served.
        inp.fileHandleForWriting.write(Data("next\n".utf8))
        #expect(lines.next()?.contains("\"status\": 200") == true)
        let metrics = try scrapeMetrics(admin)
        #expect(metrics["tollgate_tls_handshake_failures_total{reason=\"protocol\"}"] ?? 0 >= 1, "\(metrics)")
        #expect(tg.process.isRunning)
    }
}

extension HTTP2Tests {
    /// A client that never opens its flow-control window cannot hold a stream (and its
    /// buffers) forever: after a body time-out without a byte from it, the stream is reset,
    /// then the idle connection closed (found by the h2 fuzz campaign).
    @Test func aClientThatNeverOpensItsWindowIsLetGo() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let dir = makeTempDir("tgh2")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = freePort()
        writeFile(dir + "/gateway.yaml", """
        version: 1
        listen:
          - address: 127.0.0.1:\(port)
        backends:
          up: {url: "http://127.0.0.1:\(up.port)"}
        routes:
          - name: keyed
            match: {path_prefix: /keyed}
            backend: up

        """)
        let tg = try TollgateProcess(policies: dir + "/gateway.yaml", port: port,
                                     extra: ["--body-timeout", "0.5", "--idle-timeout", "1"])
        defer { tg.stop() }
        // A local 401 with a JSON body that a zero window cannot take.
        let r = try #require(try H2Client.run(port, "stall", ["--path", "/keyed"]).first)
        #expect(r["status"] as? Int == 401, "\(r)")
        #expect(r["reset"] as? Int == 8, "CANCEL expected: \(r)")
        #expect(r["closed"] as? Bool == true, "\(r)")
        #expect(tg.process.isRunning)
    }
}

extension HTTP2Tests {
    /// A connection that sends a request and closes in the same read leaves its streams to be
    /// reused by the loop: a later stream on a kept-alive upstream connection must still be
    /// forwarded at once (it used to wait, marked as already queued, for an upstream event
    /// that never came: found by the h2 fuzz campaign).
    @Test func aStreamReusedAfterItsConnectionClosedMidWorkIsServed() throws {
        let log = HeadLog()
        let up = try recordingUpstream(log)
        defer { up.stop() }
        let dir = makeTempDir("tgh2")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (tg, port) = try openGate(upstream: up.port, dir: dir)
        defer { tg.stop() }
        for round in 0..<3 {
            _ = try H2Client.run(port, "poison", ["--path", "/poison"])
            // An HTTP/1.1 request leaves an idle upstream connection in the pool…
            #expect(try get(port, "/warm/\(round)").status == 200)
            // …which the next h2 stream is given.
            let a = try #require(try H2Client.request(port, paths: ["/after/\(round)"]).first)
            #expect(a.status == 200, "round \(round): \(a.status) reset \(String(describing: a.reset))")
        }
    }
}
