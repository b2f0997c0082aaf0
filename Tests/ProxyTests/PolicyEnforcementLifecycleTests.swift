import Backends
import Foundation
import Glibc
import Policy
import Testing

/// A small policy for the reload tests: `/open/` to the recorder (any valid key), one key.
private func reloadPolicy(port: UInt16, recorder: UInt16, extraRoutes: String = "", backend: String = "recorder") -> String {
    """
    version: 1
    listen:
      - address: 127.0.0.1:\(port)
    backends:
      recorder: {url: "http://127.0.0.1:\(recorder)"}
    routes:
      - name: open
        match: {path_prefix: /open/}
        backend: \(backend)
    \(extraRoutes)
    keys:
      - id: key_alice
        hash: sha256:\(KeyHash.sha256(PlainKey.alice).hex)
        consumer: alice
        scopes: [finance:read]

    """
}

/// Line (1-based) of the first line of `text` containing `needle`.
private func line(of needle: String, in text: String) -> Int {
    (text.components(separatedBy: "\n").firstIndex { $0.contains(needle) } ?? -1) + 1
}

private func occurrences(_ needle: String, in text: String) -> Int {
    text.components(separatedBy: needle).count - 1
}

/// The lines `tollgate keys new` prints: `key: …`, `id: …`, `hash: sha256:…`.
private func parseMinted(_ out: String) -> (key: String, id: String, hash: String)? {
    var fields: [String: String] = [:]
    for l in out.split(separator: "\n") {
        guard let c = l.firstIndex(of: ":") else { continue }
        fields[String(l[..<c])] = l[l.index(after: c)...].trimmingCharacters(in: .whitespaces)
    }
    guard let k = fields["key"], let i = fields["id"], let h = fields["hash"] else { return nil }
    return (k, i, h)
}

extension PolicyEnforcementTests {
    // MARK: 5. reload

    @Test func fileChangeReloadKeepsServingThroughBrokenFiles() throws {
        let log = HeadLog()
        let up = try recordingUpstream(log)
        defer { up.stop() }
        let dir = makeTempDir("tgreload")
        let port = freePort()
        let file = dir + "/gateway.yaml"
        writeFile(file, reloadPolicy(port: port, recorder: up.port))
        let tg = try TollgateProcess(policies: dir, port: port)
        defer { tg.stop() }
        #expect(try get(port, "/open/a", headers: ["X-API-Key": PlainKey.alice]).status == 200)
        expectDenial(try get(port, "/new/a", headers: ["X-API-Key": PlainKey.alice]), "NO_ROUTE", 404)

        // 1. Broken YAML (an unclosed flow mapping): the old policy keeps serving, the log says where.
        let broken = reloadPolicy(port: port, recorder: up.port)
            .replacingOccurrences(of: "recorder: {url: \"http://127.0.0.1:\(up.port)\"}",
                                  with: "recorder: {url: \"http://127.0.0.1:\(up.port)\"")
        writeFile(file, broken)
        let failed1 = poll(timeout: 10) { occurrences("failed; the current policy keeps serving", in: tg.log) >= 1 }
        #expect(failed1 != nil, "no reload failure logged: \(tg.log)")
        #expect(tg.log.range(of: #"gateway\.yaml:\d+: invalid YAML"#, options: .regularExpression) != nil, "\(tg.log)")
        #expect(try get(port, "/open/b", headers: ["X-API-Key": PlainKey.alice]).status == 200)
        expectDenial(try get(port, "/open/b"), "MISSING_CREDENTIAL", 401)

        // 2. A semantic error (a route naming a backend that does not exist), with a new route
        //    that must NOT take effect: exact file:line: key.path in the log.
        let dangling = reloadPolicy(port: port, recorder: up.port, extraRoutes: """
              - name: new
                match: {path_prefix: /new/}
                backend: nowhere
            """)
        writeFile(file, dangling)
        let where2 = "\(file):\(line(of: "backend: nowhere", in: dangling)): routes[1].backend: unknown backend 'nowhere'"
        let failed2 = poll(timeout: 10) { tg.log.contains(where2) }
        #expect(failed2 != nil, "expected `\(where2)` in the log: \(tg.log)")
        #expect(try get(port, "/open/c", headers: ["X-API-Key": PlainKey.alice]).status == 200)
        expectDenial(try get(port, "/new/c", headers: ["X-API-Key": PlainKey.alice]), "NO_ROUTE", 404)
        #expect(tg.process.isRunning)

        // 3. A valid change takes effect.
        writeFile(file, reloadPolicy(port: port, recorder: up.port, extraRoutes: """
              - name: new
                match: {path_prefix: /new/}
                backend: recorder
                auth: none
            """))
        let applied = try poll(timeout: 10) { try get(port, "/new/d").status == 200 }
        #expect(applied != nil, "the new route never took effect: \(tg.log)")
        #expect(try get(port, "/open/e", headers: ["X-API-Key": PlainKey.alice]).status == 200)
        #expect(log.targets.filter { $0.hasPrefix("/new/") }.contains("/new/d"))
    }

    @Test func sighupReloads() throws {
        let log = HeadLog()
        let up = try recordingUpstream(log)
        defer { up.stop() }
        // A single policy file whose name the file watcher ignores (not *.yaml): only SIGHUP reloads it.
        let dir = makeTempDir("tghup")
        let port = freePort()
        let file = dir + "/gateway.conf"
        writeFile(file, reloadPolicy(port: port, recorder: up.port))
        let tg = try TollgateProcess(policies: file, port: port)
        defer { tg.stop() }
        #expect(try get(port, "/open/a", headers: ["X-API-Key": PlainKey.alice]).status == 200)

        // A broken file + SIGHUP: the old policy keeps serving, the log names file:line.
        let dangling = reloadPolicy(port: port, recorder: up.port, backend: "missing")
        writeFile(file, dangling)
        tg.signal(SIGHUP)
        let where1 = "\(file):\(line(of: "backend: missing", in: dangling)): routes[0].backend: unknown backend 'missing'"
        #expect(poll(timeout: 10) { tg.log.contains(where1) } != nil, "expected `\(where1)`: \(tg.log)")
        #expect(tg.log.contains("policy reload (SIGHUP) failed"))
        #expect(try get(port, "/open/b", headers: ["X-API-Key": PlainKey.alice]).status == 200)

        // A valid change is not picked up until SIGHUP...
        writeFile(file, reloadPolicy(port: port, recorder: up.port, extraRoutes: """
              - name: hup
                match: {path_prefix: /hup/}
                backend: recorder
                auth: none
            """))
        usleep(200_000)
        expectDenial(try get(port, "/hup/x"), "NO_ROUTE", 404)
        // ...and is after it.
        tg.signal(SIGHUP)
        let applied = try poll(timeout: 10) { try get(port, "/hup/y").status == 200 }
        #expect(applied != nil, "SIGHUP did not apply the new policy: \(tg.log)")
        // The line is written just after the new policy is installed: wait for it.
        #expect(poll(timeout: 10) { tg.log.contains("policy reloaded (SIGHUP)") } != nil)
    }

    // MARK: 6. minted keys and key status changes

    @Test func mintedKeyLifecycleOnARunningInstance() throws {
        let g = try PolicyGate()
        defer { g.stop() }
        func whoami(_ key: String) throws -> HTTPResponse { try g.get("/api/finance/whoami", key: key) }

        let (rc, out) = try runTollgate(["keys", "new", "--policies", g.dir, "--consumer", "bob",
                                         "--scopes", "finance:read,reports", "--id", "key_bob"])
        #expect(rc == 0, "\(out)")
        let minted = try #require(parseMinted(out), "unexpected output: \(out)")
        let lines = out.split(separator: "\n").map(String.init)
        #expect(lines == ["key: \(minted.key)", "id: key_bob", "hash: sha256:\(KeyHash.sha256(minted.key).hex)"])
        #expect(KeyFormat.classify(minted.key) == .minted)
        let stored = FileManager.default.contents(atPath: g.dir + "/.state/keys.jsonl").map { String(decoding: $0, as: UTF8.self) }
        #expect(stored?.contains("sha256:" + KeyHash.sha256(minted.key).hex) == true, "\(stored ?? "no store")")
        #expect(stored?.contains(minted.key) == false, "the plain key was stored")

        // Propagation to the running instance: within 1 s (poll every 50 ms).
        let took = try poll(timeout: 3) { try whoami(minted.key).status == 200 }
        let seconds = try #require(took, "the minted key never worked: \(g.tg.log)")
        #expect(seconds < 1.0, "minted key took \(seconds)s to propagate")
        let who = try whoami(minted.key)
        #expect(who.json?["keyId"] as? String == "key_bob")
        #expect(who.json?["consumerHeader"] as? String == "bob")
        expectDenial(try g.get("/admin/x", key: minted.key), "INSUFFICIENT_SCOPE", 403)

        // It survives a restart (the embedded store is durable).
        try g.restart()
        #expect(try whoami(minted.key).status == 200)

        // Revoke: refused within 1 s; and a revoked key cannot be enabled again.
        let (rrc, rout) = try runTollgate(["keys", "revoke", "key_bob", "--policies", g.dir])
        #expect(rrc == 0, "\(rout)")
        let revoked = try poll(timeout: 3) { try whoami(minted.key).errorCode == "REVOKED" }
        let rs = try #require(revoked, "revocation never took effect: \(g.tg.log)")
        #expect(rs < 1.0, "revocation took \(rs)s")
        expectDenial(try whoami(minted.key), "REVOKED", 401)
        let (erc, eout) = try runTollgate(["keys", "enable", "key_bob", "--policies", g.dir])
        #expect(erc != 0, "a revoked key was re-enabled: \(eout)")
        try g.restart()
        expectDenial(try whoami(minted.key), "REVOKED", 401)

        // Disable / enable a key declared in a policy file.
        #expect(try whoami(PlainKey.alice).status == 200)
        let (drc, dout) = try runTollgate(["keys", "disable", "key_alice", "--policies", g.dir])
        #expect(drc == 0, "\(dout)")
        let disabled = try poll(timeout: 3) { try whoami(PlainKey.alice).errorCode == "DISABLED" }
        let ds = try #require(disabled, "disable never took effect: \(g.tg.log)")
        #expect(ds < 1.0, "disable took \(ds)s")
        expectDenial(try whoami(PlainKey.alice), "DISABLED", 403)
        let (enrc, enout) = try runTollgate(["keys", "enable", "key_alice", "--policies", g.dir])
        #expect(enrc == 0, "\(enout)")
        let enabled = try poll(timeout: 3) { try whoami(PlainKey.alice).status == 200 }
        let es = try #require(enabled, "enable never took effect: \(g.tg.log)")
        #expect(es < 1.0, "enable took \(es)s")
        // A declared key disabled on the command line stays disabled across a restart.
        _ = try runTollgate(["keys", "disable", "key_alice", "--policies", g.dir])
        try g.restart()
        expectDenial(try whoami(PlainKey.alice), "DISABLED", 403)

        // keys list: id, prefix, consumer, scopes, status; never a plain key or a hash.
        let (lrc, list) = try runTollgate(["keys", "list", "--policies", g.dir])
        #expect(lrc == 0, "\(list)")
        let bobRow = try #require(list.split(separator: "\n").first { $0.hasPrefix("key_bob ") }, "\(list)")
        let bob = bobRow.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        #expect(bob.contains(String(minted.key.prefix(8))), "\(bobRow)")
        #expect(bob.contains("bob") && bob.contains("finance:read,reports") && bob.contains("revoked"), "\(bobRow)")
        let aliceRow = try #require(list.split(separator: "\n").first { $0.hasPrefix("key_alice ") }, "\(list)")
        #expect(aliceRow.contains(" alice ") && aliceRow.contains("disabled"), "\(aliceRow)")
        #expect(list.contains("key_revoked") && list.contains("key_expired"))
        for secret in [minted.key, KeyHash.sha256(minted.key).hex, PlainKey.alice, KeyHash.sha256(PlainKey.alice).hex,
                       g.mintedGood] {
            #expect(!list.contains(secret), "keys list shows a key or a hash")
        }
        #expect(!list.contains("sha256:"))
        // Nor does the proxy's log.
        #expect(!g.tg.log.contains(minted.key) && !g.tg.log.contains(PlainKey.alice))
    }

    // MARK: 7. tollgate check

    @Test func checkReportsFileLineAndKeyPath() throws {
        let dir = makeTempDir("tgcheck")
        let gateway = """
        version: 1
        listen:
          - address: 127.0.0.1:1
        backends:
          up: {url: "http://127.0.0.1:2"}
        routes:
          - name: r
            match: {path_prefx: /x/}
            backend: up
          - name: s
            match: {path_prefix: /s/}
            backend: nowhere

        """
        writeFile(dir + "/00-gateway.yaml", gateway)
        writeFile(dir + "/10-keys.yaml", """
        version: 1
        keys:
          - id: k
            hash: sha256:nothex
            consumer: c

        """)
        let (rc, out) = try runTollgate(["check", dir])
        #expect(rc != 0, "\(out)")
        #expect(out.contains("\(dir)/00-gateway.yaml:\(line(of: "path_prefx", in: gateway)): routes[0].match.path_prefx: unknown field"), "\(out)")
        #expect(out.contains("\(dir)/00-gateway.yaml:\(line(of: "nowhere", in: gateway)): routes[1].backend: unknown backend 'nowhere'"), "\(out)")
        #expect(out.contains("\(dir)/10-keys.yaml:4: keys[0].hash: "), "\(out)")
        // Every line is file:line: …
        for l in out.split(separator: "\n") {
            #expect(l.range(of: #"^/.+\.yaml:\d+: "#, options: .regularExpression) != nil, "not file:line: \(l)")
        }

        // Broken YAML names the file and a line too.
        let yamlDir = makeTempDir("tgcheck")
        writeFile(yamlDir + "/a.yaml", "version: 1\nbackends:\n  up: {url: \"http://127.0.0.1:2\"\nroutes: []\n")
        let (yrc, yout) = try runTollgate(["check", yamlDir])
        #expect(yrc != 0)
        #expect(yout.range(of: #"a\.yaml:\d+: invalid YAML"#, options: .regularExpression) != nil, "\(yout)")

        let (okrc, okout) = try runTollgate(["check", packageRoot() + "/policies"])
        #expect(okrc == 0, "\(okout)")
    }
}

extension PolicyEnforcementTests {
    @Test func keyChangeArrivingWithAPolicyChangeIsNotLost() throws {
        let g = try PolicyGate()
        defer { g.stop() }
        let gateway = try String(contentsOfFile: g.dir + "/00-gateway.yaml", encoding: .utf8)
        let store = EmbeddedKeyLog(directory: g.dir + "/.state")
        // The watcher is up once a first change has been applied (by an event or the startup catch-up).
        writeFile(g.dir + "/00-gateway.yaml", gateway + "# touch 0\n")
        #expect(poll(timeout: 5) { g.tg.log.contains("policy reloaded (") } != nil, "\(g.tg.log)")
        // Wake the watcher with a policy write, then — while it waits for editors to finish —
        // change a policy file and the key store together: both land in one batch of events.
        writeFile(g.dir + "/00-gateway.yaml", gateway + "# touch 1\n")
        usleep(5_000)
        writeFile(g.dir + "/00-gateway.yaml", gateway + "# touch 2\n")
        let key = KeyFormat.mint()
        try store.append(KeyLogEntry(op: .put, id: "key_batch", hash: "sha256:" + KeyHash.sha256(key).hex,
                                     prefix: KeyFormat.displayPrefix(of: key), consumer: "batch", scopes: ["finance:read"],
                                     status: "active", at: Int64(time(nil))))
        let took = try poll(timeout: 3) { try g.get("/api/finance/whoami", key: key).status == 200 }
        #expect(took != nil, "a key added together with a policy change never took effect: \(g.tg.log)")
    }

    @Test func mintedKeyOptionsAreEnforced() throws {
        let g = try PolicyGate()
        defer { g.stop() }
        let (rc1, out1) = try runTollgate(["keys", "new", "--policies", g.dir, "--consumer", "old", "--scopes", "finance:read",
                                           "--expires", "2020-01-01T00:00:00Z"])
        let (rc2, out2) = try runTollgate(["keys", "new", "--policies", g.dir, "--consumer", "lim", "--scopes", "finance:read",
                                           "--plan", "tight"])
        let (rc3, out3) = try runTollgate(["keys", "new", "--policies", g.dir, "--consumer", "far", "--scopes", "finance:read",
                                           "--allow-ips", "10.0.0.0/8"])
        #expect(rc1 == 0 && rc2 == 0 && rc3 == 0, "\(out1)\(out2)\(out3)")
        let expired = try #require(parseMinted(out1)), limited = try #require(parseMinted(out2))
        let remote = try #require(parseMinted(out3))
        // Wait until the last one is known (INVALID_KEY → IP_DENIED), then judge them all.
        #expect(try poll(timeout: 3) { try g.get("/open/x", key: remote.key).errorCode == "IP_DENIED" } != nil)
        expectDenial(try g.get("/open/x", key: expired.key), "EXPIRED", 401)
        for _ in 0..<3 { #expect(try g.get("/open/x", key: limited.key).status == 200) }
        expectDenial(try g.get("/open/x", key: limited.key), "RATE_LIMITED", 429)
        // A plan the policy does not define, and a duplicate id, are refused by the CLI.
        let (badPlan, _) = try runTollgate(["keys", "new", "--policies", g.dir, "--consumer", "x", "--scopes", "a", "--plan", "gold"])
        #expect(badPlan != 0)
        let (dup, _) = try runTollgate(["keys", "new", "--policies", g.dir, "--consumer", "x", "--scopes", "a", "--id", "key_alice"])
        #expect(dup != 0)
    }
}

extension PolicyEnforcementTests {
    @Test func changesRightAfterStartupAreNotLost() throws {
        // The proxy listens before its file watcher is set up; what changes in between must
        // still be picked up (not only at the next, unrelated change).
        let g = try PolicyGate()
        defer { g.stop() }
        let key = KeyFormat.mint()
        try EmbeddedKeyLog(directory: g.dir + "/.state").append(
            KeyLogEntry(op: .put, id: "key_early", hash: "sha256:" + KeyHash.sha256(key).hex,
                        prefix: KeyFormat.displayPrefix(of: key), consumer: "early", scopes: ["finance:read"],
                        status: "active", at: Int64(time(nil))))
        let gateway = try String(contentsOfFile: g.dir + "/00-gateway.yaml", encoding: .utf8)
        writeFile(g.dir + "/00-gateway.yaml", gateway.replacingOccurrences(of: "path_prefix: /pub/", with: "path_prefix: /early/"))
        let keyOK = try poll(timeout: 3) { try g.get("/api/finance/whoami", key: key).status == 200 }
        #expect(keyOK != nil, "a key added right after startup never took effect: \(g.tg.log)")
        let routeOK = try poll(timeout: 3) { try g.get("/early/x").status == 200 }
        #expect(routeOK != nil, "a policy change right after startup never took effect: \(g.tg.log)")
    }
}

extension PolicyEnforcementTests {
    @Test func aPolicyReloadDoesNotRefillRateLimits() throws {
        let g = try PolicyGate()
        defer { g.stop() }
        for _ in 0..<3 { #expect(try g.get("/open/x", key: PlainKey.limited).status == 200) }
        expectDenial(try g.get("/open/x", key: PlainKey.limited), "RATE_LIMITED", 429)
        // An unrelated change (a new public route) reloads the policy...
        let gateway = try String(contentsOfFile: g.dir + "/00-gateway.yaml", encoding: .utf8)
        writeFile(g.dir + "/00-gateway.yaml", gateway + """
          - name: later
            match: {path_prefix: /later/}
            backend: recorder
            auth: none

        """)
        #expect(try poll(timeout: 5) { try g.get("/later/x").status == 200 } != nil, "\(g.tg.log)")
        // ...and the spent budget stays spent.
        expectDenial(try g.get("/open/x", key: PlainKey.limited), "RATE_LIMITED", 429)
    }
}
