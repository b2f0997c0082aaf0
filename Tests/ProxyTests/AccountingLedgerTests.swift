import Foundation
import Glibc
import Policy
import Synchronization
import Testing

/// The `accounting` ledger against the reference accounting service of seed 003 (its real
/// binary, JWT mode): deduct first as the reservation, give back the difference, recover a
/// reservation a killed proxy held.
@Suite(.serialized) struct AccountingLedgerTests {
    static let key = "tg_acct_alice_0123456789"
    static let secret = "accounting-test-secret-0123456789"

    /// An HS256 JWT with `role: admin` (the service credential), minted by Python's stdlib.
    static func serviceToken() throws -> String {
        let script = """
        import base64, hmac, hashlib, json, time
        b = lambda d: base64.urlsafe_b64encode(d).rstrip(b'=').decode()
        h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        p = b(json.dumps({"sub": "tollgate", "role": "admin", "exp": int(time.time()) + 3600}).encode())
        s = b(hmac.new(b"\(secret)", (h + "." + p).encode(), hashlib.sha256).digest())
        print(h + "." + p + "." + s)
        """
        let (rc, out) = try run("/usr/bin/python3", ["-c", script])
        guard rc == 0 else { throw HarnessError("jwt: \(out)") }
        return out.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    struct Setup {
        let dir = makeTempDir("tgacct")
        let acctPort = freePort()
        let port = freePort()
        let admin = freePort()
        let token: String
        let backends: TollgateProcess
        var policy: String { dir + "/gw.yaml" }
        var env: [String: String] { ["ACCT_TOKEN": token] }

        /// With `tls`, the service is reached over HTTPS: a second Tollgate terminates TLS in
        /// front of it (a certificate of the test's own, the CA named by `tls.ca`).
        var front: TollgateProcess?

        init(upstream: UInt16, tls: Bool = false) throws {
            token = try AccountingLedgerTests.serviceToken()
            backends = try TollgateProcess(arguments: ["backends", "--finance", "off", "--flowise", "off",
                                                       "--accounting", "127.0.0.1:\(acctPort)", "--data", dir + "/acct",
                                                       "--jwt-secret", AccountingLedgerTests.secret], port: acctPort)
            var service = "accounting: {url: \"http://127.0.0.1:\(acctPort)\"}"
            if tls {
                let frontPort = freePort()
                let cert = try TestCertificate.make(in: dir, name: "acct", host: "localhost")
                try FileManager.default.createDirectory(atPath: dir + "/front", withIntermediateDirectories: true)
                writeFile(dir + "/front/front.yaml", """
                version: 1
                listen:
                  - address: 127.0.0.1:\(frontPort)
                    tls: {certificate: \(cert.cert), private_key: \(cert.key)}
                credentials:
                  api_key: {headers: [X-Front-Key], forward: true}
                backends:
                  acct: {url: "http://127.0.0.1:\(acctPort)"}
                routes:
                  - {name: all, match: {path_prefix: /}, backend: acct, auth: none}

                """)
                front = try TollgateProcess(policies: dir + "/front", port: frontPort, threads: 1)
                service = "accounting: {url: \"https://localhost:\(frontPort)\", tls: {ca: \(cert.cert)}}"
            }
            writeFile(policy, """
            version: 1
            listen:
              - address: 127.0.0.1:\(port)
            admin: {address: "127.0.0.1:\(admin)"}
            credits:
              ledger: accounting
              accounting: {backend: accounting, token_env: ACCT_TOKEN}
            backends:
              \(service)
              up: {url: "http://127.0.0.1:\(upstream)"}
            routes:
              - name: paid
                match: {path_prefix: /paid/}
                backend: up
                credits: {per_request: 2}
            keys:
              - {id: key_alice, hash: \(KeyHash.sha256(AccountingLedgerTests.key).description), consumer: alice, scopes: []}

            """)
        }

        func serve() throws -> TollgateProcess {
            let tg = try TollgateProcess(policies: policy, port: port, extra: ["--drain-timeout", "5"], environment: env)
            #expect(try poll(timeout: 10) { try get(admin, "/readyz").status == 200 } != nil)
            return tg
        }

        func balance() throws -> Int {
            let (s, out) = try runTollgate(["credits", "balance", "alice", "--policies", policy], environment: env)
            #expect(s == 0, "\(out)")
            return out.split(separator: "\n").first { $0.hasPrefix("balance: ") }.flatMap { Int($0.dropFirst(9)) } ?? -1
        }

        func grant(_ n: Int) throws {
            let (s, out) = try runTollgate(["credits", "grant", "alice", String(n), "--policies", policy], environment: env)
            #expect(s == 0, "\(out)")
        }

        func stop() {
            front?.stop()
            backends.stop()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// 200 clients at once: exactly as many served as the service's balance pays for (the
    /// service is asked to deduct first; its answer decides), the rest 402, the account at the
    /// odd credit left.
    @Test func twoHundredClientsChargeExactlyThroughTheAccountingService() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let s = try Setup(upstream: up.port)
        defer { s.stop() }
        try s.grant(1)                           // a new user starts with 100: now 101
        #expect(try s.balance() == 101)
        let tg = try s.serve()
        let results = Mutex<[Int: Int]>([:])
        DispatchQueue.concurrentPerform(iterations: 200) { _ in
            let status = (try? get(s.port, "/paid/x", headers: ["X-API-Key": Self.key]).status) ?? -1
            results.withLock { $0[status, default: 0] += 1 }
        }
        let counts = results.withLock { $0 }
        #expect(counts[200] == 50, "\(counts)")
        #expect(counts[402] == 150, "\(counts)")
        #expect(tg.stop() == 0)
        #expect(try s.balance() == 1)
    }

    /// A proxy killed while it holds a reservation (deducted from the service) gives it back
    /// at its next start, from its journal.
    @Test func aKilledProxysReservationIsGivenBackAtTheNextStart() throws {
        let headSeen = DispatchSemaphore(value: 0)
        let up = try ScriptedUpstream { peer in
            if peer.readHead() != nil { headSeen.signal() }
            _ = peer.read(count: 1)
        }
        defer { up.stop() }
        let s = try Setup(upstream: up.port)
        defer { s.stop() }
        try s.grant(1)
        var tg = try s.serve()
        let c = try RawClient(port: s.port)
        try c.send("GET /paid/slow HTTP/1.1\r\nHost: t\r\nX-API-Key: \(Self.key)\r\n\r\n")
        #expect(headSeen.wait(timeout: .now() + 10) == .success)
        #expect(try s.balance() == 99)           // deducted first
        tg.signal(SIGKILL)
        _ = tg.waitForExit()
        c.close()
        tg = try s.serve()
        defer { tg.stop() }
        #expect(try poll(timeout: 10) { try s.balance() == 101 } != nil)
    }

    /// The accounting service over HTTPS (its certificate checked against `tls.ca`): the
    /// deduct-first ledger and the credits commands work the same.
    @Test func theAccountingServiceMayBeHTTPS() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let s = try Setup(upstream: up.port, tls: true)
        defer { s.stop() }
        try s.grant(1)                           // through the CLI, over TLS
        #expect(try s.balance() == 101)
        let tg = try s.serve()
        for _ in 0..<3 { #expect(try get(s.port, "/paid/x", headers: ["X-API-Key": Self.key]).status == 200) }
        #expect(tg.stop() == 0)
        #expect(try s.balance() == 95)
    }
}
