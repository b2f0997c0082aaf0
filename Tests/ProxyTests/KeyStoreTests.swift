import Backends
import Foundation
import Glibc
import Policy
import Testing

/// Key status precedence and the embedded key log, through the real binary (`serve` and the
/// `keys` commands) and, for the Redis mode, a real redis-server.
@Suite(.serialized) struct KeyStoreTests {
    // MARK: 1. revoked is final, whatever the source

    @Test func enableNeverLiftsARevocationWrittenLaterInThePolicyFile() throws {
        let g = try PolicyGate()
        defer { g.stop() }
        func whoami(_ key: String) throws -> HTTPResponse { try g.get("/api/finance/whoami", key: key) }

        // disable + enable on the command line first...
        for verb in ["disable", "enable"] {
            let (rc, out) = try runTollgate(["keys", verb, "key_alice", "--policies", g.dir])
            #expect(rc == 0, "\(verb): \(out)")
        }
        #expect(try poll(timeout: 3) { try whoami(PlainKey.alice).status == 200 } != nil, "\(g.tg.log)")
        // ...then the policy file revokes the key: revoked it is.
        let keysFile = g.dir + "/10-keys.yaml"
        let keys = try String(contentsOfFile: keysFile, encoding: .utf8)
        writeFile(keysFile, keys.replacingOccurrences(of: "    consumer: alice\n", with: "    consumer: alice\n    status: revoked\n"))
        let revoked = try poll(timeout: 5) { try whoami(PlainKey.alice).errorCode == "REVOKED" }
        #expect(revoked != nil, "an earlier `keys enable` outranked the policy's revocation: \(g.tg.log)")
        expectDenial(try whoami(PlainKey.alice), "REVOKED", 401)

        // The command line cannot lift it, and says why.
        for verb in ["enable", "disable"] {
            let (rc, out) = try runTollgate(["keys", verb, "key_alice", "--policies", g.dir])
            #expect(rc != 0, "\(verb) of a key revoked in its policy file succeeded: \(out)")
            #expect(out.contains("key_alice is revoked (by its policy file)") && out.contains("revocation is final"), "\(out)")
        }
        let (_, list) = try runTollgate(["keys", "list", "--policies", g.dir])
        let row = list.split(separator: "\n").first { $0.hasPrefix("key_alice ") }.map(String.init) ?? ""
        #expect(row.split(separator: " ").contains("revoked"), "\(list)")
        try g.restart()
        expectDenial(try whoami(PlainKey.alice), "REVOKED", 401)

        // Revoked through the key store: the same refusal, naming the store.
        #expect(try runTollgate(["keys", "revoke", "key_admin", "--policies", g.dir]).0 == 0)
        let (rc, out) = try runTollgate(["keys", "enable", "key_admin", "--policies", g.dir])
        #expect(rc != 0 && out.contains("key_admin is revoked (by the key store)"), "\(out)")
        #expect(try poll(timeout: 3) { try g.get("/open/x", key: PlainKey.admin).errorCode == "REVOKED" } != nil)
    }

    // MARK: 2. Redis holds only the status of a declared key

    @Test func declaredKeysInRedisFollowEditsOfThePolicy() throws {
        func entry(_ id: String, _ key: String, _ extra: String = "") -> String {
            "  - id: \(id)\n    hash: sha256:\(KeyHash.sha256(key).hex)\n    consumer: \(id)\n    plan: shared\n\(extra)"
        }
        let dan = "dan-declared-plain-key", eve = "eve-declared-plain-key"
        func keysYAML(dan danExtra: String, eve eveExtra: String) -> String {
            "version: 1\nkeys:\n" + entry("key_dan", dan, danExtra) + entry("key_eve", eve, eveExtra)
        }
        let fleet = try RedisFleet(modes: ["closed"], deadline: "500ms",
                                   keys: keysYAML(dan: "    scopes: [api]\n", eve: "    scopes: [api]\n"))
        defer { fleet.stop() }
        let port = fleet.ports[0], dir = fleet.dirs[0]
        #expect(try fleet.untilEveryLoop(port, key: dan) { $0.status == 200 } != nil)

        // disable: Redis gets a status-only entry, not a copy of the declared record.
        try fleet.cli(["keys", "disable", "key_dan", "--policies", dir])
        #expect(try fleet.untilEveryLoop(port, key: dan) { $0.errorCode == "DISABLED" } != nil)
        let client = try fleet.redis.client()
        let stored = try #require(try client.get(hash: KeyHash.sha256(dan)))
        #expect(stored.op == .status && stored.status == "disabled" && stored.id == "key_dan", "\(stored)")
        #expect(stored.scopes == nil && stored.plan == nil && stored.allowIPs == nil && stored.expires == nil, "\(stored)")
        #expect(try client.get(id: "key_dan") == nil)
        try fleet.cli(["keys", "enable", "key_dan", "--policies", dir])
        #expect(try fleet.untilEveryLoop(port, key: dan) { $0.status == 200 } != nil)

        // A later edit of the policy (the key's scopes) applies, with Redis's status.
        writeFile(dir + "/10-keys.yaml", keysYAML(dan: "    scopes: [elsewhere]\n", eve: "    scopes: [api]\n"))
        let rescoped = try fleet.untilEveryLoop(port, key: dan, timeout: 5) { $0.errorCode == "INSUFFICIENT_SCOPE" }
        #expect(rescoped != nil, "the policy's new scopes were ignored for a key with a status in Redis")

        // Revoked in Redis (eve) stays revoked whatever the policy says; revoked in the policy
        // (dan, enabled through Redis earlier) is revoked too.
        try fleet.cli(["keys", "revoke", "key_eve", "--policies", dir])
        #expect(try fleet.untilEveryLoop(port, key: eve) { $0.errorCode == "REVOKED" } != nil)
        writeFile(dir + "/10-keys.yaml", keysYAML(dan: "    scopes: [api]\n    status: revoked\n",
                                                  eve: "    scopes: [api]\n    status: active\n"))
        let danRevoked = try fleet.untilEveryLoop(port, key: dan, timeout: 5) { $0.errorCode == "REVOKED" }
        #expect(danRevoked != nil, "Redis's `active` outranked the policy's revocation")
        expectDenial(try get(port, "/api/x", headers: ["X-API-Key": eve]), "REVOKED", 401)
        for id in ["key_dan", "key_eve"] {
            let (rc, out) = try runTollgate(["keys", "enable", id, "--policies", dir])
            #expect(rc != 0 && out.contains("\(id) is revoked") && out.contains("revocation is final"), "\(out)")
        }
        #expect(try client.get(hash: KeyHash.sha256(eve))?.status == "revoked")

        // keys list: one row per declared key, with the status that applies.
        let (_, list) = try runTollgate(["keys", "list", "--policies", dir])
        for id in ["key_dan", "key_eve"] {
            let rows = list.split(separator: "\n").filter { $0.hasPrefix(id + " ") }
            #expect(rows.count == 1 && rows[0].split(separator: " ").contains("revoked"), "\(list)")
        }
    }

    // MARK: 3. the embedded log

    @Test func aTornLastLineDoesNotSwallowTheNextChange() throws {
        let g = try PolicyGate()
        defer { g.stop() }
        let state = g.dir + "/.state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        // What a crash mid-append leaves: the start of a line, no newline.
        let fd = open(state + "/keys.jsonl", O_WRONLY | O_APPEND | O_CREAT, 0o600)
        #expect(fd >= 0)
        let fragment = Array(#"{"at":1,"id":"key_admin","op":"sta"#.utf8)
        #expect(fragment.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == fragment.count)
        close(fd)

        let (rc, out) = try runTollgate(["keys", "revoke", "key_alice", "--policies", g.dir])
        #expect(rc == 0, "\(out)")
        let revoked = try poll(timeout: 3) { try g.get("/api/finance/whoami", key: PlainKey.alice).errorCode == "REVOKED" }
        #expect(revoked != nil, "the revocation glued onto the torn line and was lost: \(g.tg.log)")
        let folded = try EmbeddedKeyLog(directory: state).load()
        #expect(folded.problems.isEmpty && folded.overrides == ["key_alice": "revoked"], "\(folded)")
    }

    @Test func undecodableLinesAreLoggedByLineNumber() throws {
        let g = try PolicyGate()
        defer { g.stop() }
        let state = g.dir + "/.state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        let revoke = try JSONEncoder().encode(KeyLogEntry(op: .status, id: "key_admin", status: "revoked", at: 1))
        writeFile(state + "/keys.jsonl", "sentinel-QX7 this is not an entry\n" + String(decoding: revoke, as: UTF8.self) + "\n")
        #expect(try poll(timeout: 3) { try g.get("/open/x", key: PlainKey.admin).errorCode == "REVOKED" } != nil, "\(g.tg.log)")
        let expected = "\(state)/keys.jsonl:1: undecodable entry, ignored"
        #expect(poll(timeout: 3) { g.tg.log.contains(expected) } != nil, "expected `\(expected)`: \(g.tg.log)")
        #expect(!g.tg.log.contains("sentinel-QX7"), "a line's content reached the log")
        // At startup too.
        try g.restart()
        #expect(g.tg.log.contains(expected), "\(g.tg.log)")
    }

    /// Root reads files whatever their mode, so the log is made unreadable with a link to a
    /// directory (replaced atomically, so a reload never sees it missing) and a directory.
    @Test func anUnreadableKeyLogFailsClosed() throws {
        let g = try PolicyGate()
        defer { g.stop() }
        let state = g.dir + "/.state", path = state + "/keys.jsonl"
        #expect(try runTollgate(["keys", "revoke", "key_admin", "--policies", g.dir]).0 == 0)
        #expect(try poll(timeout: 3) { try g.get("/open/x", key: PlainKey.admin).errorCode == "REVOKED" } != nil, "\(g.tg.log)")

        // A running instance keeps the state it has and says why.
        #expect(symlink(".", state + "/keys.swap") == 0)
        #expect(rename(state + "/keys.swap", path) == 0)
        let failed = "key store reload failed; the previous key state keeps serving: \(path): not a regular file"
        #expect(poll(timeout: 3) { g.tg.log.contains(failed) } != nil, "expected `\(failed)`: \(g.tg.log)")
        for _ in 0..<4 { expectDenial(try g.get("/open/x", key: PlainKey.admin), "REVOKED", 401) }

        // A new one refuses to start, naming the file.
        g.tg.stop()
        #expect(unlink(path) == 0 && mkdir(path, 0o700) == 0)
        let refused = try TollgateProcess(arguments: ["serve", "--policies", g.dir, "--threads", "1"], port: g.port,
                                          waitForPort: false)
        defer { refused.stop() }
        let status = refused.waitForExit(timeout: 15)
        #expect(status != nil && status != 0, "serve started without its key store")
        #expect(refused.log.contains("\(path):1: key store unreadable"), "\(refused.log)")
        #expect(throws: (any Error).self) { _ = try get(g.port, "/open/x", headers: ["X-API-Key": PlainKey.admin]) }
        // So does the command line.
        let (rc, out) = try runTollgate(["keys", "enable", "key_alice", "--policies", g.dir])
        #expect(rc != 0 && out.contains(path), "\(out)")
        // A missing log is an empty one.
        #expect(rmdir(path) == 0)
        try g.restart()
        #expect(try g.get("/open/x", key: PlainKey.admin).status == 200)
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/strace"), "needs strace"))
    func creatingTheKeyLogMakesItDurableInItsDirectory() throws {
        let dir = makeTempDir("tgsync")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        writeFile(dir + "/keys.yaml", """
        version: 1
        keys:
          - id: key_x
            hash: sha256:\(KeyHash.sha256("x-plain-key").hex)
            consumer: x

        """)
        func tracedFsyncs(_ args: [String]) throws -> [String] {
            let trace = dir + "/trace-\(UUID().uuidString)"
            defer { unlink(trace) }
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/strace")
            p.arguments = ["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", trace, tollgateBinary()] + args
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            p.waitUntilExit()
            #expect(p.terminationStatus == 0, "tollgate \(args) under strace: \(p.terminationStatus)")
            let text = (try? String(contentsOfFile: trace, encoding: .utf8)) ?? ""
            // `fsync(3</tmp/x/.state>) = 0` → `/tmp/x/.state`
            return text.split(separator: "\n").compactMap { line in
                guard line.contains("fsync("), line.hasSuffix("= 0"), let lt = line.firstIndex(of: "<"),
                      let gt = line[lt...].firstIndex(of: ">") else { return nil }
                return String(line[line.index(after: lt)..<gt])
            }
        }
        let first = try tracedFsyncs(["keys", "disable", "key_x", "--policies", dir])
        #expect(first.contains(dir + "/.state/keys.jsonl"), "\(first)")
        #expect(first.contains(dir + "/.state"), "the new log file's directory entry was not fsync'd: \(first)")
        #expect(first.contains(dir), "the new state directory's entry was not fsync'd: \(first)")
        // Later appends sync the file only.
        let second = try tracedFsyncs(["keys", "enable", "key_x", "--policies", dir])
        #expect(second == [dir + "/.state/keys.jsonl"], "\(second)")
    }
}
