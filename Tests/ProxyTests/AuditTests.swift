import Backends
import Foundation
import Glibc
import Policy
import Testing

/// The signed audit trail, through the real binary: key commands and reloads write chained
/// entries, checkpoints are signed, and `tollgate audit verify` names the first bad line of a
/// tampered log (each case fails without the hash chain, the checkpoints or `<path>.head`).
@Suite struct AuditTests {
    // MARK: fixtures

    /// A policy directory with an audit block (and a signing key made by `audit keygen`).
    struct AuditDir {
        let dir: String
        let port: UInt16
        var log: String { dir + "/.state/audit.jsonl" }
        var privateKey: String { dir + "/secrets/audit.pem" }
        var publicKey: String { dir + "/secrets/audit.pub.pem" }
        var policyFile: String { dir + "/00-main.yaml" }

        init(every: Int = 3, interval: String = "1h", signed: Bool = true, extraTop: String = "") throws {
            dir = makeTempDir("tgaudit")
            port = freePort()
            try FileManager.default.createDirectory(atPath: dir + "/secrets", withIntermediateDirectories: true)
            if signed {
                let (rc, out) = try runTollgate(["audit", "keygen", dir + "/secrets/audit.pem"])
                guard rc == 0 else { throw HarnessError("keygen: \(out)") }
            }
            writeFile(policyFile, """
                version: 1
                listen:
                  - address: 127.0.0.1:\(port)
                backends:
                  b: {url: http://127.0.0.1:\(refusedPort())}
                routes:
                  - {name: all, match: {path_prefix: /}, backend: b}
                audit:
                  path: .state/audit.jsonl
                \(signed ? "  signing_key: secrets/audit.pem\n" : "")  checkpoint: {every: \(every), interval: \(interval)}
                \(extraTop)
                """)
        }

        func cli(_ args: [String]) throws -> String {
            let (rc, out) = try runTollgate(args + ["--policies", dir])
            guard rc == 0 else { throw HarnessError("tollgate \(args.joined(separator: " ")) exited \(rc): \(out)") }
            return out
        }

        func verify(_ path: String? = nil, key: String? = nil) throws -> (Int32, String) {
            var args = ["audit", "verify", path ?? log]
            if let key { args += ["--public-key", key] }
            return try runTollgate(args)
        }

        var lines: [String] {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }
    }

    /// One parsed line.
    struct Entry {
        var seq: Int
        var action: String
        var subject: String
        var prev: String
        var hash: String
        var details: [String: Any]

        init?(_ line: String) {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let seq = o["seq"] as? Int, let action = o["action"] as? String, let prev = o["prev"] as? String,
                  let hash = o["hash"] as? String else { return nil }
            self.seq = seq; self.action = action; self.prev = prev; self.hash = hash
            subject = o["subject"] as? String ?? ""
            details = o["details"] as? [String: Any] ?? [:]
        }
    }

    static func sha256(_ s: String) -> String { KeyHash.sha256(s).hex }

    /// The line with its `hash` member recomputed (what a careful forger writes).
    static func rehashed(_ line: String) -> String {
        let cut = line.index(line.endIndex, offsetBy: -75)
        let body = String(line[..<cut])
        return body + ",\"hash\":\"" + sha256(body + "}") + "\"}"
    }

    /// Ten lines written by the CLI with `every: 3`:
    /// 1–3 key.created k1 k2 k3, 4 checkpoint, 5 key.disabled k1, 6 key.enabled k1,
    /// 7 key.revoked k2, 8 checkpoint, 9 key.created k4, 10 key.disabled k4.
    struct Fixture {
        let audit: AuditDir
        let lines: [String]
        let head: String
    }

    static let fixture: Result<Fixture, any Error> = Result {
        let a = try AuditDir()
        for id in ["k1", "k2", "k3"] { _ = try a.cli(["keys", "new", "--consumer", "c-\(id)", "--scopes", "s", "--id", id]) }
        _ = try a.cli(["keys", "disable", "k1"])
        _ = try a.cli(["keys", "enable", "k1"])
        _ = try a.cli(["keys", "revoke", "k2"])
        _ = try a.cli(["keys", "new", "--consumer", "c-k4", "--scopes", "s", "--id", "k4"])
        _ = try a.cli(["keys", "disable", "k4"])
        let head = try String(contentsOfFile: a.log + ".head", encoding: .utf8)
        return Fixture(audit: a, lines: a.lines, head: head)
    }

    /// A copy of the fixture's log (and `.head`), changed by `edit`; returns its path.
    static func tampered(_ f: Fixture, _ edit: (inout [String]) -> Void, text: ((String) -> String)? = nil) -> String {
        let dir = makeTempDir("tgaudit-t")
        var lines = f.lines
        edit(&lines)
        var body = lines.map { $0 + "\n" }.joined()
        if let text { body = text(body) }
        writeFile(dir + "/audit.jsonl", body)
        writeFile(dir + "/audit.jsonl.head", f.head)
        return dir + "/audit.jsonl"
    }

    // MARK: writing

    @Test func keyCommandsWriteChainedEntriesWithCheckpointsEveryN() throws {
        let f = try Self.fixture.get()
        let entries = f.lines.compactMap(Entry.init)
        #expect(entries.count == 10, "\(f.lines)")
        #expect(entries.map(\.action) == ["key.created", "key.created", "key.created", "checkpoint",
                                          "key.disabled", "key.enabled", "key.revoked", "checkpoint",
                                          "key.created", "key.disabled"])
        #expect(entries.map(\.seq) == Array(1...10))
        #expect(entries.map(\.subject).prefix(3) == ["k1", "k2", "k3"])
        // Each prev is the SHA-256 of the previous line's bytes; each hash that of its own line without it.
        var prev = String(repeating: "0", count: 64)
        for (line, e) in zip(f.lines, entries) {
            #expect(e.prev == prev, "seq \(e.seq)")
            #expect(Self.rehashed(line) == line, "seq \(e.seq): hash")
            prev = Self.sha256(line)
        }
        // Checkpoints cover the entries since the previous one and chain to it.
        let first = entries[3].details, second = entries[7].details
        #expect(first["from"] as? Int == 1 && first["to"] as? Int == 3 && first["prev_checkpoint_seq"] as? Int == 0)
        #expect(first["head"] as? String == Self.sha256(f.lines[2]))
        #expect(second["from"] as? Int == 5 && second["to"] as? Int == 7 && second["prev_checkpoint_seq"] as? Int == 4)
        #expect(second["prev_checkpoint_hash"] as? String == Self.sha256(f.lines[3]))
        #expect(second["prev_signature"] as? String == first["signature"] as? String)
        #expect((first["signature"] as? String)?.isEmpty == false)
        // A key's details: its id and hash, never the key.
        let created = entries[0].details
        #expect(created["id"] as? String == "k1")
        #expect((created["hash"] as? String)?.hasPrefix("sha256:") == true)
        #expect(entries[4].details["from"] as? String == "active" && entries[4].details["to"] as? String == "disabled")
        // <path>.head holds the latest checkpoint.
        #expect(f.head == f.lines[7] + "\n")
    }

    @Test func theUntouchedLogVerifiesWithThePublicKey() throws {
        let f = try Self.fixture.get()
        let (rc, out) = try f.audit.verify(key: f.audit.publicKey)
        #expect(rc == 0, "\(out)")
        #expect(out.contains("ok: 8 entries, 2 checkpoints"), "\(out)")
        #expect(out.contains("signatures: 2 verified with sha256:"), "\(out)")
        #expect(out.contains("uncovered: 2 entries after the last checkpoint"), "\(out)")
        // Without a key the signatures are reported as not checked.
        let (rc2, out2) = try f.audit.verify()
        #expect(rc2 == 0 && out2.contains("ok: 8 entries, 2 checkpoints") && out2.contains("not checked"), "\(out2)")
    }

    @Test func noPlainKeyReachesTheLog() throws {
        let a = try AuditDir()
        let out = try a.cli(["keys", "new", "--consumer", "c", "--scopes", "s", "--id", "kp"])
        let key = try #require(out.split(separator: "\n").first { $0.hasPrefix("key: ") }).dropFirst(5)
        let text = try String(contentsOfFile: a.log, encoding: .utf8)
        #expect(!text.isEmpty && !text.contains(String(key)))
        #expect(text.contains("sha256:" + KeyHash.sha256(String(key)).hex))
    }

    // MARK: tampering: each names the first bad line

    struct Tamper: CustomTestStringConvertible, Sendable {
        var name: String
        var line: Int
        var reason: String
        var testDescription: String { name }
    }

    static let tampers: [Tamper] = [
        Tamper(name: "edited", line: 5, reason: "edited"),
        Tamper(name: "edited, hash recomputed", line: 5, reason: "changed after it was written"),
        Tamper(name: "deleted", line: 6, reason: "deleted"),
        Tamper(name: "swapped", line: 5, reason: "reordered"),
        Tamper(name: "truncated mid-line", line: 10, reason: "torn last line"),
        Tamper(name: "truncated past a checkpoint", line: 8, reason: "truncated"),
        Tamper(name: "inserted entry", line: 7, reason: "inserted"),
        Tamper(name: "inserted garbage", line: 3, reason: "not an audit entry"),
        Tamper(name: "checkpoint deleted", line: 8, reason: "deleted"),
    ]

    @Test(arguments: tampers) func verifyNamesTheFirstBadLine(_ t: Tamper) throws {
        let f = try Self.fixture.get()
        let path: String
        switch t.name {
        case "edited":
            path = Self.tampered(f) { $0[4] = $0[4].replacingOccurrences(of: #""to":"disabled""#, with: #""to":"active""#) }
        case "edited, hash recomputed":
            path = Self.tampered(f) { $0[4] = Self.rehashed($0[4].replacingOccurrences(of: #""to":"disabled""#, with: #""to":"active""#)) }
        case "deleted":
            path = Self.tampered(f) { $0.remove(at: 5) }
        case "swapped":
            path = Self.tampered(f) { $0.swapAt(4, 5) }
        case "truncated mid-line":
            path = Self.tampered(f, { _ in }, text: { String($0.dropLast(20)) })
        case "truncated past a checkpoint":
            path = Self.tampered(f) { $0.removeLast(3) }
        case "inserted entry":
            // A well-formed entry that follows line 6's chain: only the next line shows it.
            path = Self.tampered(f) { lines in
                let body = #"{"seq":7,"time":"2026-01-01T00:00:00.000Z","instance":"x","action":"key.enabled","actor":"cli","#
                    + #""subject":"k2","details":{},"prev":""# + Self.sha256(lines[5]) + #"""#
                lines.insert(body + #","hash":""# + Self.sha256(body + "}") + #""}"#, at: 6)
            }
        case "inserted garbage":
            path = Self.tampered(f) { $0.insert("{\"seq\":3, \"note\": \"not mine\"}", at: 2) }
        case "checkpoint deleted":
            path = Self.tampered(f) { $0.remove(at: 7) }
        default:
            Issue.record("unknown case \(t.name)")
            return
        }
        let (rc, out) = try f.audit.verify(path, key: f.audit.publicKey)
        #expect(rc == 1, "\(t.name): \(out)")
        #expect(out.contains("audit.jsonl:\(t.line): \(t.reason)"), "\(t.name): expected line \(t.line) (\(t.reason)): \(out)")
        // The untouched copy of the same log passes (the failure is the edit's).
        let clean = Self.tampered(f) { _ in }
        #expect(try f.audit.verify(clean, key: f.audit.publicKey).0 == 0)
    }

    @Test func aCheckpointSignedByAnotherKeyFails() throws {
        let a = try AuditDir(every: 2)
        for id in ["k1", "k2"] { _ = try a.cli(["keys", "new", "--consumer", "c", "--scopes", "s", "--id", id]) }
        // The signing key is swapped for another: its checkpoint (line 6) is not the operator's.
        let (rc0, out0) = try runTollgate(["audit", "keygen", a.dir + "/secrets/other.pem"])
        #expect(rc0 == 0, "\(out0)")
        let policy = try String(contentsOfFile: a.policyFile, encoding: .utf8)
        writeFile(a.policyFile, policy.replacingOccurrences(of: "secrets/audit.pem", with: "secrets/other.pem"))
        for id in ["k3", "k4"] { _ = try a.cli(["keys", "new", "--consumer", "c", "--scopes", "s", "--id", id]) }
        #expect(a.lines.count == 6)
        let (rc, out) = try a.verify(key: a.publicKey)
        #expect(rc == 1 && out.contains("audit.jsonl:6: checkpoint signed by another key"), "\(out)")
        let (rcOther, outOther) = try a.verify(key: a.dir + "/secrets/other.pub.pem")
        #expect(rcOther == 1 && outOther.contains("audit.jsonl:3: checkpoint signed by another key"), "\(outOther)")
        // A forged signature under the right fingerprint fails too.
        var lines = a.lines
        let sig = try #require(Entry(lines[2])?.details["signature"] as? String)
        let other = try #require(Entry(lines[5])?.details["signature"] as? String)
        lines[2] = Self.rehashed(lines[2].replacingOccurrences(of: sig, with: other))
        writeFile(a.log, lines.map { $0 + "\n" }.joined())
        let (rc2, out2) = try a.verify(key: a.publicKey)
        #expect(rc2 == 1 && out2.contains("audit.jsonl:3: checkpoint signature does not verify"), "\(out2)")
    }

    @Test func verifySurvivesGarbage() throws {
        let dir = makeTempDir("tgaudit-g")
        var garbage: [UInt8] = Array("{\"seq\":1}\n\n[[[[\n\u{0}\u{1}\n".utf8)
        for _ in 0..<2000 { garbage.append(UInt8.random(in: 0...255)) }
        garbage += Array(",\"hash\":\"".utf8) + Array(repeating: UInt8(ascii: "a"), count: 64) + Array("\"}\n".utf8)
        _ = FileManager.default.createFile(atPath: dir + "/a.jsonl", contents: Data(garbage))
        let (rc, out) = try runTollgate(["audit", "verify", dir + "/a.jsonl"])
        #expect(rc == 1 && out.contains("a.jsonl:1: not an audit entry"), "\(out)")
        writeFile(dir + "/empty.jsonl", "")
        let (rc2, out2) = try runTollgate(["audit", "verify", dir + "/empty.jsonl"])
        #expect(rc2 == 0 && out2.contains("ok: 0 entries, 0 checkpoints"), "\(out2)")
        let (rc3, out3) = try runTollgate(["audit", "verify", dir + "/missing.jsonl"])
        #expect(rc3 != 0 && out3.contains("missing.jsonl: cannot read"), "\(out3)")
    }

    // MARK: the writer's discipline

    @Test func aTornLastLineIsCutAndRecorded() throws {
        let a = try AuditDir(every: 100)
        _ = try a.cli(["keys", "new", "--consumer", "c", "--scopes", "s", "--id", "k1"])
        // What a crash mid-append leaves: the start of a line, no newline.
        let fd = open(a.log, O_WRONLY | O_APPEND)
        let fragment = Array(#"{"seq":2,"time":"2026-01-01T00:00:00.000Z","inst"#.utf8)
        #expect(fragment.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == fragment.count)
        close(fd)
        #expect(try a.verify().1.contains("audit.jsonl:2: torn last line"))
        _ = try a.cli(["keys", "revoke", "k1"])
        let entries = a.lines.compactMap(Entry.init)
        #expect(entries.map(\.action) == ["key.created", "audit.repaired", "key.revoked"], "\(a.lines)")
        #expect(entries[1].details["cut_bytes"] as? Int == fragment.count)
        let (rc, out) = try a.verify()
        #expect(rc == 0 && out.contains("ok: 3 entries, 0 checkpoints"), "\(out)")
    }

    @Test func concurrentWritersNeverInterleave() throws {
        let a = try AuditDir(every: 4)
        let count = 12
        let errors = HeadLog()
        DispatchQueue.concurrentPerform(iterations: count) { i in
            do { _ = try a.cli(["keys", "new", "--consumer", "c", "--scopes", "s", "--id", "kc\(i)"]) } catch {
                errors.add("\(error)")
            }
        }
        #expect(errors.count == 0, "\(errors.heads)")
        let (rc, out) = try a.verify(key: a.publicKey)
        #expect(rc == 0 && out.contains("ok: \(count) entries, 3 checkpoints"), "\(out)")
    }

    @Test func aBrokenTrailStopsTheKeyChange() throws {
        let a = try AuditDir()
        _ = try a.cli(["keys", "new", "--consumer", "c", "--scopes", "s", "--id", "k1"])
        let fd = open(a.log, O_WRONLY | O_APPEND)
        let junk = Array("not an entry\n".utf8)
        _ = junk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        let (rc, out) = try runTollgate(["keys", "revoke", "k1", "--policies", a.dir])
        #expect(rc != 0 && out.contains("not an intact audit entry") && out.contains("nothing was changed"), "\(out)")
        let list = try a.cli(["keys", "list"])
        let row = list.split(separator: "\n").first { $0.hasPrefix("k1 ") }.map(String.init) ?? ""
        #expect(row.split(separator: " ").contains("active"), "\(list)")
    }

    @Test func unsignedCheckpointsVerifyOnlyWithoutAKey() throws {
        let a = try AuditDir(every: 1, signed: false)
        _ = try a.cli(["keys", "new", "--consumer", "c", "--scopes", "s", "--id", "k1"])
        let (rc, out) = try a.verify()
        #expect(rc == 0 && out.contains("ok: 1 entries, 1 checkpoints") && out.contains("unsigned: 1"), "\(out)")
        let (_, keyOut) = try runTollgate(["audit", "keygen", a.dir + "/secrets/k.pem"])
        #expect(keyOut.contains("fingerprint: sha256:"))
        let (rc2, out2) = try a.verify(key: a.dir + "/secrets/k.pub.pem")
        #expect(rc2 == 1 && out2.contains("audit.jsonl:2: checkpoint is unsigned"), "\(out2)")
    }

    @Test func checkNamesAMissingOrWrongSigningKey() throws {
        let a = try AuditDir()
        #expect(try runTollgate(["check", a.dir]).0 == 0)
        unlink(a.privateKey)
        let (rc, out) = try runTollgate(["check", a.dir])
        #expect(rc == 1 && out.contains("00-main.yaml:10: audit.signing_key: \(a.privateKey): cannot read"), "\(out)")
        writeFile(a.privateKey, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        let (rc2, out2) = try runTollgate(["check", a.dir])
        #expect(rc2 == 1 && out2.contains("\(a.privateKey): not a PEM private key"), "\(out2)")
        // The public half is not a signing key either; serve refuses the same way.
        writeFile(a.privateKey, try String(contentsOfFile: a.publicKey, encoding: .utf8))
        let tg = try TollgateProcess(arguments: ["serve", "--policies", a.dir], port: a.port, waitForPort: false)
        #expect(tg.waitForExit(timeout: 10) == 2, "\(tg.log)")
        #expect(tg.log.contains("audit.signing_key: \(a.privateKey): not a PEM private key"), "\(tg.log)")
    }

    // MARK: serve

    @Test func serveRecordsStartReloadAndStopAndSealsAtShutdown() throws {
        let a = try AuditDir(every: 1000)
        let tg = try TollgateProcess(policies: a.dir, port: a.port)
        defer { tg.stop() }
        #expect(poll(timeout: 10) { a.lines.contains { $0.contains(#""action":"server.started""#) } } != nil, "\(tg.log)")
        _ = try a.cli(["keys", "new", "--consumer", "c", "--scopes", "s", "--id", "k1"])
        let text = try String(contentsOfFile: a.policyFile, encoding: .utf8) + "# edited\n"
        writeFile(a.policyFile, text)
        let reloaded = poll(timeout: 10) {
            a.lines.contains { $0.contains(#""action":"policy.reloaded""#) && $0.contains(Self.sha256(text)) }
        }
        #expect(reloaded != nil, "no policy.reloaded entry with the file's SHA-256: \(a.lines) \(tg.log)")
        #expect(tg.stop() == 0, "\(tg.log)")
        let entries = a.lines.compactMap(Entry.init)
        // (An editor's write may raise two change events: one reload or two.)
        var actions = entries.map(\.action)
        if actions.count == 6, actions[2] == "policy.reloaded", actions[3] == "policy.reloaded" { actions.remove(at: 3) }
        #expect(actions == ["server.started", "key.created", "policy.reloaded", "server.stopped", "checkpoint"],
                "\(a.lines)")
        let reload = try #require(entries.last { $0.action == "policy.reloaded" })
        #expect(reload.subject == a.dir)
        let files = reload.details["files"] as? [[String: Any]] ?? []
        #expect(files.count == 1 && files.first?["sha256"] as? String == Self.sha256(text) &&
                (files.first?["file"] as? String)?.hasSuffix("00-main.yaml") == true, "\(files)")
        let (rc, out) = try a.verify(key: a.publicKey)
        #expect(rc == 0 && out.contains("ok: \(entries.count - 1) entries, 1 checkpoints") && !out.contains("uncovered"), "\(out)")
    }

    @Test func serveWritesACheckpointWhenTheIntervalPasses() throws {
        let a = try AuditDir(every: 1000, interval: "200ms")
        let tg = try TollgateProcess(policies: a.dir, port: a.port)
        defer { tg.stop() }
        // Nothing but the timer seals server.started.
        let first = poll(timeout: 10) { a.lines.last?.contains(#""action":"checkpoint""#) == true }
        #expect(first != nil, "\(a.lines) \(tg.log)")
        _ = try a.cli(["keys", "new", "--consumer", "c", "--scopes", "s", "--id", "k1"])
        let sealed = poll(timeout: 10) {
            a.lines.count >= 4 && a.lines.last?.contains(#""action":"checkpoint""#) == true
        }
        #expect(sealed != nil, "\(a.lines) \(tg.log)")
        #expect(a.lines.compactMap(Entry.init).map(\.action) == ["server.started", "checkpoint", "key.created", "checkpoint"])
        let (rc, out) = try a.verify(key: a.publicKey)
        #expect(rc == 0 && out.contains("checkpoints") && !out.contains("uncovered"), "\(out)")
    }

    // MARK: Redis

    @Test func withRedisEntriesArePublishedToTheStream() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let a = try AuditDir(every: 2, extraTop: "store: {redis: \"\(redis.urlText)\"}")
        for id in ["k1", "k2"] { _ = try a.cli(["keys", "new", "--consumer", "c", "--scopes", "s", "--id", id]) }
        let reply = try redis.client().run(["XRANGE", "tg:audit", "-", "+"])
        guard case .array(let items) = reply else { Issue.record("XRANGE: \(reply)"); return }
        let published = items.compactMap { item -> String? in
            guard case .array(let pair) = item, pair.count == 2, case .array(let fields) = pair[1], fields.count == 2,
                  case .string(let v) = fields[1] else { return nil }
            return String(decoding: v, as: UTF8.self)
        }
        #expect(published == a.lines, "\(published)")
    }
}
