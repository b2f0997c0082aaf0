import Foundation
import Glibc
import Testing

/// A certificate and key made with the openssl CLI (self-signed, ECDSA P-256 or RSA-2048).
struct TestCertificate {
    let cert: String
    let key: String

    static func make(in dir: String, name: String, host: String, rsa: Bool = false) throws -> TestCertificate {
        let c = TestCertificate(cert: "\(dir)/\(name).pem", key: "\(dir)/\(name)-key.pem")
        let keyArgs = rsa ? ["-newkey", "rsa:2048"] : ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        let (rc, out) = try run("/usr/bin/openssl", ["req", "-x509"] + keyArgs + ["-nodes", "-subj", "/CN=\(host)",
            "-addext", "subjectAltName=DNS:\(host),IP:127.0.0.1", "-days", "2", "-keyout", c.key, "-out", c.cert])
        if rc != 0 { throw HarnessError("openssl req: \(out)") }
        return c
    }
}

/// Runs a program to completion: (exit status, stdout + stderr).
func run(_ path: String, _ args: [String]) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    p.standardInput = FileHandle.nullDevice
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// curl over HTTPS: (exit status, verbose output + body).
func curlTLS(_ url: String, _ extra: [String] = []) throws -> (Int32, String) {
    try run("/usr/bin/curl", ["-sS", "-v", "--max-time", "10"] + extra + [url])
}

@Suite(.serialized) struct TLSTests {
    static func policy(port: UInt16, upstream: UInt16, tls: String, admin: UInt16? = nil) -> String {
        """
        version: 1
        listen:
          - address: 127.0.0.1:\(port)
            tls: \(tls)
        \(admin.map { "admin:\n  address: 127.0.0.1:\($0)" } ?? "")
        backends:
          up: {url: "http://127.0.0.1:\(upstream)"}
        routes:
          - name: secure
            match: {path_prefix: /secure/}
            backend: up
            auth: none
            require_https: true
          - name: all
            match: {path_prefix: /}
            backend: up
            auth: none

        """
    }

    @Test func servesHTTP1OverTLSWithALPNAndTheHTTPSFacts() throws {
        let dir = makeTempDir("tgtls")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = try TestCertificate.make(in: dir, name: "server", host: "localhost")
        let log = HeadLog()
        let up = try recordingUpstream(log)
        defer { up.stop() }
        let port = freePort()
        // Relative paths resolve against the policy file's directory.
        writeFile(dir + "/gateway.yaml", Self.policy(port: port, upstream: up.port,
                                                     tls: "{certificate: server.pem, private_key: server-key.pem}"))
        let tg = try TollgateProcess(policies: dir + "/gateway.yaml", port: port)
        defer { tg.stop() }
        let (rc, out) = try curlTLS("https://localhost:\(port)/secure/a", ["--cacert", c.cert, "--http1.1"])
        #expect(rc == 0, "\(out)")
        #expect(out.contains("ALPN: server accepted http/1.1"), "\(out)")
        #expect(out.contains("< HTTP/1.1 200"))
        // require_https is met by the TLS listener; the backend is told so.
        #expect(headerValue(log.heads.last ?? "", "X-Forwarded-Proto") == "https")
        // A client offering h2 and http/1.1 gets h2; over h2 the backend is told the same.
        let (rc2, out2) = try curlTLS("https://localhost:\(port)/secure/b", ["--cacert", c.cert, "--http2"])
        #expect(rc2 == 0 && out2.contains("ALPN: server accepted h2") && out2.contains("< HTTP/2 200"), "\(out2)")
        #expect(headerValue(log.heads.last ?? "", "X-Forwarded-Proto") == "https")
        // Nothing older than TLS 1.2.
        let (rc3, _) = try curlTLS("https://localhost:\(port)/a", ["--cacert", c.cert, "--tls-max", "1.1"])
        #expect(rc3 != 0)
        // Keep-alive over TLS: several requests on one connection.
        let (rc4, out4) = try curlTLS("https://localhost:\(port)/k1", ["--cacert", c.cert, "https://localhost:\(port)/k2"])
        #expect(rc4 == 0 && out4.contains("Re-using existing connection"), "\(out4)")
    }

    @Test func sniChoosesTheCertificateAndMinVersionHolds() throws {
        let dir = makeTempDir("tgtls")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = try TestCertificate.make(in: dir, name: "a", host: "localhost")
        let b = try TestCertificate.make(in: dir, name: "b", host: "other.test", rsa: true)
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        writeFile(dir + "/gateway.yaml", Self.policy(port: port, upstream: up.port, tls: """
        {certificates: [{certificate: a.pem, private_key: a-key.pem}, {certificate: b.pem, private_key: b-key.pem}], min_version: "1.3"}
        """))
        let tg = try TollgateProcess(policies: dir + "/gateway.yaml", port: port)
        defer { tg.stop() }
        // The default certificate, and the one SNI names (curl verifies each against its own CA).
        #expect(try curlTLS("https://localhost:\(port)/a", ["--cacert", a.cert]).0 == 0)
        let (rc, out) = try curlTLS("https://other.test:\(port)/b", ["--cacert", b.cert, "--resolve", "other.test:\(port):127.0.0.1"])
        #expect(rc == 0, "\(out)")
        // The wrong CA for a name fails verification: the right certificate was really chosen.
        #expect(try curlTLS("https://other.test:\(port)/b", ["--cacert", a.cert, "--resolve", "other.test:\(port):127.0.0.1"]).0 != 0)
        // min_version 1.3: a TLS 1.2 client is refused.
        #expect(try curlTLS("https://localhost:\(port)/a", ["--cacert", a.cert, "--tls-max", "1.2"]).0 != 0)
        #expect(tg.process.isRunning)
    }

    @Test func failedHandshakesCloseOnlyThatConnection() throws {
        let dir = makeTempDir("tgtls")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = try TestCertificate.make(in: dir, name: "server", host: "localhost")
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort(), admin = freePort()
        writeFile(dir + "/gateway.yaml", Self.policy(port: port, upstream: up.port,
                                                     tls: "{certificate: server.pem, private_key: server-key.pem}", admin: admin))
        let tg = try TollgateProcess(policies: dir + "/gateway.yaml", port: port, extra: ["--header-timeout", "0.5"])
        defer { tg.stop() }
        // Plain HTTP to a TLS port: not a handshake; that connection is closed.
        let plain = try RawClient(port: port)
        try plain.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(plain.isClosedByPeer())
        // A client that never starts its handshake is closed at the header time-out.
        let silent = try RawClient(port: port)
        #expect(silent.isClosedByPeer(timeout: 5))
        // The process serves on.
        #expect(try curlTLS("https://localhost:\(port)/a", ["--cacert", c.cert]).0 == 0)
        let m = try scrapeMetrics(admin)
        #expect(m["tollgate_tls_handshake_failures_total{reason=\"protocol\"}"] ?? 0 >= 1)
        #expect(m["tollgate_tls_handshake_failures_total{reason=\"timeout\"}"] ?? 0 >= 1)
    }

    @Test func badCertificateFilesAreNamedAndAReloadKeepsTheOldOnes() throws {
        let dir = makeTempDir("tgtls")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = try TestCertificate.make(in: dir, name: "server", host: "localhost")
        let other = try TestCertificate.make(in: dir, name: "other", host: "localhost")
        let up = try echoUpstream()
        defer { up.stop() }
        // At start: a missing key, a key that does not match, each named.
        let port = freePort()
        writeFile(dir + "/missing.yaml", Self.policy(port: port, upstream: up.port, tls: "{certificate: server.pem, private_key: nope.pem}"))
        var (rc, out) = try runTollgate(["serve", "--policies", dir + "/missing.yaml"])
        #expect(rc != 0 && out.contains("\(dir)/nope.pem"), "\(out)")
        writeFile(dir + "/mismatch.yaml", Self.policy(port: port, upstream: up.port, tls: "{certificate: server.pem, private_key: other-key.pem}"))
        (rc, out) = try runTollgate(["serve", "--policies", dir + "/mismatch.yaml"])
        #expect(rc != 0 && out.contains("other-key.pem") && out.contains("does not match"), "\(out)")
        // `check` says the same.
        (rc, out) = try runTollgate(["check", dir + "/mismatch.yaml"])
        #expect(rc != 0 && out.contains("does not match"), "\(out)")

        // Renewed on disk + SIGHUP: new connections get the new certificate.
        let live = dir + "/live"
        try FileManager.default.createDirectory(atPath: live, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: c.cert, toPath: live + "/cert.pem")
        try FileManager.default.copyItem(atPath: c.key, toPath: live + "/key.pem")
        writeFile(live + "/gateway.conf", Self.policy(port: port, upstream: up.port, tls: "{certificate: cert.pem, private_key: key.pem}"))
        let tg = try TollgateProcess(policies: live + "/gateway.conf", port: port)
        defer { tg.stop() }
        #expect(try curlTLS("https://localhost:\(port)/a", ["--cacert", c.cert]).0 == 0)
        try FileManager.default.removeItem(atPath: live + "/cert.pem")
        try FileManager.default.removeItem(atPath: live + "/key.pem")
        try FileManager.default.copyItem(atPath: other.cert, toPath: live + "/cert.pem")
        try FileManager.default.copyItem(atPath: other.key, toPath: live + "/key.pem")
        tg.signal(SIGHUP)
        #expect(try poll(timeout: 10, step: 0.1) { try curlTLS("https://localhost:\(port)/a", ["--cacert", other.cert]).0 == 0 } != nil)
        // A broken renewal: the reload fails, named, and the certificate that works stays.
        writeFile(live + "/key.pem", "not a key\n")
        tg.signal(SIGHUP)
        #expect(poll(timeout: 10) { tg.log.contains("\(live)/key.pem") } != nil, "\(tg.log)")
        #expect(try curlTLS("https://localhost:\(port)/a", ["--cacert", other.cert]).0 == 0)
    }

    @Test func sessionResumptionCanBeSwitchedOff() throws {
        let dir = makeTempDir("tgtls")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try TestCertificate.make(in: dir, name: "server", host: "localhost")
        let up = try echoUpstream()
        defer { up.stop() }
        for resumption in [true, false] {
            let port = freePort()
            writeFile(dir + "/gateway.yaml", Self.policy(port: port, upstream: up.port,
                tls: "{certificate: server.pem, private_key: server-key.pem, session_resumption: \(resumption)}"))
            let tg = try TollgateProcess(policies: dir + "/gateway.yaml", port: port)
            defer { tg.stop() }
            let sess = dir + "/session-\(resumption)"
            let base = ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "localhost", "-tls1_2"]
            _ = try run("/usr/bin/openssl", base + ["-sess_out", sess])
            let (_, second) = try run("/usr/bin/openssl", base + ["-sess_in", sess])
            #expect(second.contains("Reused, TLSv1.2") == resumption, "resumption \(resumption): \(second.prefix(400))")
        }
    }
}

extension TLSTests {
    /// A renewed certificate written over the old files is picked up without a signal.
    @Test func renewedCertificateFilesAreReloadedOnChange() throws {
        let dir = makeTempDir("tgtls")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let certs = dir + "/certs"
        try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
        let old = try TestCertificate.make(in: dir, name: "old", host: "localhost")
        let new = try TestCertificate.make(in: dir, name: "new", host: "localhost")
        try FileManager.default.copyItem(atPath: old.cert, toPath: certs + "/cert.pem")
        try FileManager.default.copyItem(atPath: old.key, toPath: certs + "/key.pem")
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let policies = dir + "/policies"
        try FileManager.default.createDirectory(atPath: policies, withIntermediateDirectories: true)
        writeFile(policies + "/gateway.yaml", Self.policy(port: port, upstream: up.port,
                                                          tls: "{certificate: ../certs/cert.pem, private_key: ../certs/key.pem}"))
        let tg = try TollgateProcess(policies: policies, port: port)
        defer { tg.stop() }
        #expect(try curlTLS("https://localhost:\(port)/a", ["--cacert", old.cert]).0 == 0)
        // Renewal as certbot-like tools do it: key first, then the certificate, renamed into place.
        try FileManager.default.copyItem(atPath: new.key, toPath: certs + "/key.pem.tmp")
        _ = rename(certs + "/key.pem.tmp", certs + "/key.pem")
        try FileManager.default.copyItem(atPath: new.cert, toPath: certs + "/cert.pem.tmp")
        _ = rename(certs + "/cert.pem.tmp", certs + "/cert.pem")
        #expect(try poll(timeout: 10, step: 0.1) { try curlTLS("https://localhost:\(port)/a", ["--cacert", new.cert]).0 == 0 } != nil,
                "\(tg.log)")
    }
}

/// A TLS backend: Python's http.server behind ssl (a real TLS stack, not ours), answering
/// `tls-ok <Host>`; `ready` on its stdout once it listens.
final class TLSBackend {
    let process = Process()
    let port: UInt16

    init(cert: String, key: String) throws {
        port = freePort()
        let script = """
        import http.server, ssl, sys
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def do_GET(self):
                body = ("tls-ok " + self.headers.get("Host", "")).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *a): pass
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        print("ready", flush=True)
        srv.serve_forever()
        """
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, String(port), cert, key]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let line = out.fileHandleForReading.availableData
        guard String(decoding: line, as: UTF8.self).contains("ready") else {
            stop()
            throw HarnessError("TLS backend did not start")
        }
    }

    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
    }
}

extension TLSTests {
    @Test func httpsBackendsAreVerified() throws {
        let dir = makeTempDir("tgtlsb")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let good = try TestCertificate.make(in: dir, name: "backend", host: "localhost")
        let stranger = try TestCertificate.make(in: dir, name: "stranger", host: "localhost")
        let backend = try TLSBackend(cert: good.cert, key: good.key)
        defer { backend.stop() }
        let port = freePort()
        writeFile(dir + "/gateway.yaml", """
        version: 1
        listen:
          - address: 127.0.0.1:\(port)
        backends:
          trusted: {url: "https://localhost:\(backend.port)", tls: {ca: backend.pem}}
          byip: {url: "https://127.0.0.1:\(backend.port)", tls: {ca: backend.pem}}
          untrusted: {url: "https://localhost:\(backend.port)", tls: {ca: stranger.pem}}
          system: {url: "https://localhost:\(backend.port)"}
        routes:
          - {name: trusted, match: {path_prefix: /trusted/}, backend: trusted, auth: none}
          - {name: byip, match: {path_prefix: /byip/}, backend: byip, auth: none}
          - {name: untrusted, match: {path_prefix: /untrusted/}, backend: untrusted, auth: none}
          - {name: system, match: {path_prefix: /system/}, backend: system, auth: none}

        """)
        _ = stranger
        let tg = try TollgateProcess(policies: dir + "/gateway.yaml", port: port)
        defer { tg.stop() }
        // Verified against tls.ca, by name (SNI) and by IP address; kept alive and reused.
        let c = try RawClient(port: port)
        for i in 0..<3 {
            let r = try c.request("GET /trusted/\(i) HTTP/1.1\r\nHost: example.test\r\n\r\n")
            #expect(r.status == 200 && r.text == "tls-ok example.test", "\(r.status) \(r.text)")
        }
        #expect(try get(port, "/byip/a").status == 200)
        // A certificate no configured CA signed, or one the system store does not know: 502.
        expectDenial(try get(port, "/untrusted/a"), "UPSTREAM_UNAVAILABLE", 502)
        expectDenial(try get(port, "/system/a"), "UPSTREAM_UNAVAILABLE", 502)
        // A CA file that does not load is named at start.
        writeFile(dir + "/bad.yaml", """
        version: 1
        listen:
          - address: 127.0.0.1:\(freePort())
        backends:
          b: {url: "https://localhost:1", tls: {ca: missing-ca.pem}}
        routes:
          - {name: r, match: {path_prefix: /}, backend: b, auth: none}

        """)
        let (rc, out) = try runTollgate(["check", dir + "/bad.yaml"])
        #expect(rc != 0 && out.contains("\(dir)/missing-ca.pem"), "\(out)")
    }
}

extension TLSTests {
    /// Ticket keys (and the session cache) are replaced on a schedule: a session from before
    /// a rotation is not resumed after it.
    @Test func ticketKeysRotate() throws {
        let dir = makeTempDir("tgtls")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try TestCertificate.make(in: dir, name: "server", host: "localhost")
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        writeFile(dir + "/gateway.yaml", Self.policy(port: port, upstream: up.port,
                                                     tls: "{certificate: server.pem, private_key: server-key.pem}"))
        let tg = try TollgateProcess(policies: dir + "/gateway.yaml", port: port, extra: ["--ticket-key-rotation", "1"])
        defer { tg.stop() }
        let base = ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "localhost", "-tls1_2"]
        // Right after a rotation, a fresh session resumes…
        let rotations = { tg.log.components(separatedBy: "TLS session ticket keys rotated").count - 1 }
        #expect(poll(timeout: 10) { rotations() >= 1 } != nil)
        let seen = rotations()
        let sess = dir + "/session"
        _ = try run("/usr/bin/openssl", base + ["-sess_out", sess])
        let (_, again) = try run("/usr/bin/openssl", base + ["-sess_in", sess])
        // (unless a rotation fell in between: then it is new, which is what rotation means)
        let rotatedBetween = rotations() != seen
        #expect(again.contains("Reused, TLSv1.2") || rotatedBetween)
        // …and after the next rotation it does not.
        #expect(poll(timeout: 10) { rotations() > seen + (rotatedBetween ? 1 : 0) } != nil)
        let (_, after) = try run("/usr/bin/openssl", base + ["-sess_in", sess])
        #expect(after.contains("New, TLSv1.2"), "\(after.prefix(300))")
    }
}
