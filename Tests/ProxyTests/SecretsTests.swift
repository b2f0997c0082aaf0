import Backends
import Foundation
import Glibc
import Policy
import Testing

/// Provider secrets (seed 004) through the real binary: `tollgate secrets set|list|delete`,
/// the encrypted store, and the credential injected into requests to the reference
/// Flowise-style backend, which requires its API key and names the one it received
/// (`X-Flowise-Key`: 1 the system key, 2 alice's, 3 bob's, 4 a key the client holds itself).
@Suite(.serialized) struct SecretsTests {
    static let aliceKey = "tg_secrets_alice_0123456789"
    static let bobKey = "tg_secrets_bob_0123456789"
    static let flow = FlowiseBackendID.chatflow

    enum FlowiseBackendID { static let chatflow = "8c1f3e52-3c4b-4d2a-9a57-0d5f2b7c6a11" }

    struct Gate {
        let dir: String
        let port = freePort()
        let admin = freePort()
        let flowisePort = freePort()
        /// The Flowise backend's keys, in its numbering (index 0 = `X-Flowise-Key: 1`).
        let providerKeys: [String]
        let masterKeyHex: String
        var policy: String { dir + "/gateway.yaml" }
        var store: String { dir + "/.state/secrets.json" }
        var sink: String { dir + "/out/usage.jsonl" }
        let redis: String?
        let useEnvironment: Bool
        var environment: [String: String] { useEnvironment ? ["TG_TEST_MASTER_KEY": masterKeyHex] : [:] }

        init(redis: String? = nil, useEnvironment: Bool = false) {
            dir = makeTempDir("tgsecrets")
            self.redis = redis
            self.useEnvironment = useEnvironment
            let tag = String(UInt64.random(in: 0 ... .max), radix: 16)
            providerKeys = ["sk-system-\(tag)", "sk-alice-\(tag)", "sk-bob-\(tag)", "sk-client-\(tag)"]
            masterKeyHex = Self.randomHex(32)
            try? FileManager.default.createDirectory(atPath: dir + "/keys", withIntermediateDirectories: true)
            writeFile(dir + "/keys/master.key", masterKeyHex + "\n")
            writeFile(dir + "/keys/flowise-keys", providerKeys.joined(separator: "\n") + "\n")
            let store = redis.map { "store: {redis: \"\($0)\", deadline: 500ms}" } ?? ""
            let secrets = useEnvironment ? "secrets: {master_key_env: TG_TEST_MASTER_KEY}" : "secrets: {master_key_file: keys/master.key}"
            writeFile(policy, """
            version: 1
            listen:
              - address: 127.0.0.1:\(port)
            admin:
              address: 127.0.0.1:\(admin)
            usage:
              spool: spool
              durability: 0ms
              sinks:
                - {kind: file, path: out/usage.jsonl}
            audit:
              path: audit.jsonl
            \(store)
            \(secrets)
            backends:
              flowise:
                url: http://127.0.0.1:\(flowisePort)
                inject: {header: Authorization, format: "Bearer {secret}", secret: flowise_api_key}
            routes:
              - {name: flows, match: {methods: [GET], path: /api/v1/chatflows}, backend: flowise, auth: none}
              - {name: chat, match: {path_prefix: /api/v1/}, backend: flowise}
            keys:
              - {id: key_alice, hash: \(KeyHash.sha256(SecretsTests.aliceKey).description), consumer: alice, scopes: []}
              - {id: key_bob, hash: \(KeyHash.sha256(SecretsTests.bobKey).description), consumer: bob, scopes: []}

            """)
        }

        static func randomHex(_ n: Int) -> String {
            (0..<n).map { _ in String(UInt8.random(in: 0 ... 255), radix: 16) }.map { $0.count == 1 ? "0" + $0 : $0 }.joined()
        }

        /// The reference Flowise backend, requiring one of `providerKeys`.
        func backend() throws -> TollgateProcess {
            try TollgateProcess(arguments: ["backends", "--finance", "off", "--accounting", "off",
                                            "--flowise", "127.0.0.1:\(flowisePort)", "--data", dir + "/be",
                                            "--flowise-api-keys", dir + "/keys/flowise-keys", "--token-delay-ms", "1"],
                                port: flowisePort)
        }

        func serve() throws -> TollgateProcess {
            let tg = try TollgateProcess(policies: policy, port: port, extra: ["--drain-timeout", "5"], environment: environment)
            #expect(try poll(timeout: 10) { try get(admin, "/readyz").status == 200 } != nil)
            return tg
        }

        /// `tollgate secrets ARGS --policies P` with `input` on standard input.
        @discardableResult
        func secrets(_ args: [String], input: String = "", environment extra: [String: String] = [:]) throws -> (Int32, String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: tollgateBinary())
            p.arguments = ["secrets"] + args + ["--policies", policy]
            var env = ProcessInfo.processInfo.environment
            for (k, v) in environment.merging(extra, uniquingKeysWith: { $1 }) { env[k] = v }
            p.environment = env
            let stdin = Pipe(), out = Pipe()
            p.standardInput = stdin
            p.standardOutput = out
            p.standardError = out
            try p.run()
            stdin.fileHandleForWriting.write(Data(input.utf8))
            try stdin.fileHandleForWriting.close()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return (p.terminationStatus, String(decoding: data, as: UTF8.self))
        }

        /// Sets `value` (and expects success); returns the fingerprint printed.
        @discardableResult
        func set(_ value: String, consumer: String? = nil) throws -> String {
            let (rc, out) = try secrets(["set", "flowise_api_key"] + (consumer.map { ["--consumer", $0] } ?? []), input: value + "\n")
            #expect(rc == 0, "\(out)")
            #expect(!out.contains(value))
            return out.split(separator: "\n").first { $0.hasPrefix("fingerprint: ") }.map { String($0.dropFirst(13)) } ?? ""
        }

        /// A chat prediction as `key` (nil: no Tollgate key), plus `extra` header lines.
        func chat(_ key: String?, extra: String = "") throws -> HTTPResponse {
            let body = #"{"question":"Which key do you see?"}"#
            let c = try RawClient(port: port)
            defer { c.close() }
            return try c.request("POST /api/v1/prediction/\(SecretsTests.flow) HTTP/1.1\r\nHost: t\r\n"
                + (key.map { "X-API-Key: \($0)\r\n" } ?? "") + extra
                + "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)", method: "POST")
        }

        /// Usage records (`route`, `consumer`, `status`, `secret`) in the file sink.
        func usage() -> [[String: Any]] {
            ((try? String(contentsOfFile: sink, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }

        func remove() { try? FileManager.default.removeItem(atPath: dir) }
    }

    /// set (system and a consumer's), list (names, consumers, fingerprints; never a value),
    /// delete; each change audited, the trail verifiable and free of values.
    @Test func setListDeleteRoundTrip() throws {
        let gate = Gate()
        defer { gate.remove() }
        let systemPrint = try gate.set(gate.providerKeys[0])
        let alicePrint = try gate.set(gate.providerKeys[1], consumer: "alice")
        #expect(systemPrint.count == 8 && alicePrint.count == 8 && systemPrint != alicePrint)
        // The same value under another scope has another fingerprint (its own key): not a plain hash.
        let (_, list) = try gate.secrets(["list"])
        let rows = list.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(rows.first == ["NAME", "CONSUMER", "FINGERPRINT", "UPDATED"])
        #expect(rows.dropFirst().map { Array($0.prefix(3)) } == [["flowise_api_key", "-", systemPrint],
                                                                  ["flowise_api_key", "alice", alicePrint]])
        for k in gate.providerKeys { #expect(!list.contains(k)) }
        // Setting again replaces (one row), with the new value's fingerprint.
        let again = try gate.set(gate.providerKeys[2], consumer: "alice")
        #expect(again != alicePrint)
        let (_, replaced) = try gate.secrets(["list"])
        #expect(replaced.contains(again) && !replaced.contains(alicePrint))
        #expect(replaced.split(separator: "\n").count == 3)
        let (rc, deleted) = try gate.secrets(["delete", "flowise_api_key", "--consumer", "alice"])
        #expect(rc == 0, "\(deleted)")
        #expect(deleted.contains("deleted: flowise_api_key for consumer alice"))
        let (_, after) = try gate.secrets(["list"])
        #expect(after.split(separator: "\n").count == 2)
        #expect(!after.contains("alice"))
        let (missingRC, missing) = try gate.secrets(["delete", "flowise_api_key", "--consumer", "nobody"])
        #expect(missingRC != 0)
        #expect(missing.contains("no secret flowise_api_key for consumer nobody"))
        // A value never comes from an argument, and a bad one is refused without showing it.
        let (badRC, bad) = try gate.secrets(["set", "flowise_api_key"], input: "line1\r\nline2")
        #expect(badRC != 0)
        #expect(bad.contains("control character") && !bad.contains("line1"))
        let (emptyRC, empty) = try gate.secrets(["set", "flowise_api_key"], input: "")
        #expect(emptyRC != 0 && empty.contains("empty"))
        // Audited: two sets and a replacement, one delete; no value in the trail; the chain verifies.
        let trail = try String(contentsOfFile: gate.dir + "/audit.jsonl", encoding: .utf8)
        #expect(trail.components(separatedBy: "\"action\":\"secret.set\"").count - 1 == 3)
        #expect(trail.components(separatedBy: "\"action\":\"secret.deleted\"").count - 1 == 1)
        for k in gate.providerKeys { #expect(!trail.contains(k)) }
        #expect(trail.contains("\"fingerprint\":\"\(systemPrint)\""))
        let (verifyRC, verify) = try runTollgate(["audit", "verify", gate.dir + "/audit.jsonl"])
        #expect(verifyRC == 0, "\(verify)")
    }

    /// At rest: the store holds neither a value nor its hex; without the master key nothing
    /// opens — `secrets list` and `serve` name the wrong key (never show it) and exit non-zero;
    /// an altered entry is named too.
    @Test func theStoreIsUnreadableWithoutTheMasterKey() throws {
        let gate = Gate()
        defer { gate.remove() }
        try gate.set(gate.providerKeys[0])
        try gate.set(gate.providerKeys[1], consumer: "alice")
        let raw = try String(contentsOfFile: gate.store, encoding: .utf8)
        for k in gate.providerKeys.prefix(2) {
            #expect(!raw.contains(k))
            #expect(!raw.contains(Array(k.utf8).map { String(format: "%02x", $0) }.joined()))
        }
        #expect(!raw.contains(gate.masterKeyHex))
        var st = stat()
        #expect(stat(gate.store, &st) == 0 && st.st_mode & 0o077 == 0)   // 0600

        let good = gate.masterKeyHex
        let wrong = Gate.randomHex(32)
        writeFile(gate.dir + "/keys/master.key", wrong + "\n")
        let (listRC, list) = try gate.secrets(["list"])
        #expect(listRC != 0)
        #expect(list.contains("wrong master key"), "\(list)")
        let (setRC, _) = try gate.secrets(["set", "flowise_api_key"], input: "sk-other")
        #expect(setRC != 0)   // nothing is written under another key
        let tg = try TollgateProcess(arguments: ["serve", "--policies", gate.policy], port: gate.port, waitForPort: false)
        let rc = tg.waitForExit()
        #expect(rc != nil && rc != 0)
        #expect(tg.log.contains("wrong master key"), "\(tg.log)")
        #expect(!tg.log.contains(wrong) && !tg.log.contains(good))

        // A malformed key file, and a missing one.
        writeFile(gate.dir + "/keys/master.key", "not-hex\n")
        let bad = try TollgateProcess(arguments: ["serve", "--policies", gate.policy], port: gate.port, waitForPort: false)
        #expect(bad.waitForExit() == 2)
        #expect(bad.log.contains("expected 64 hex characters"), "\(bad.log)")
        let (checkRC, check) = try runTollgate(["check", gate.policy])
        #expect(checkRC != 0 && check.contains("master_key_file"))

        // The right key, but an altered ciphertext: named, and not served.
        writeFile(gate.dir + "/keys/master.key", good)
        var doc = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: gate.store))) as? [String: Any])
        var entries = try #require(doc["secrets"] as? [[String: Any]])
        let ct = try #require(entries[0]["ciphertext"] as? String)
        entries[0]["ciphertext"] = (ct.hasPrefix("0") ? "1" : "0") + ct.dropFirst()
        doc["secrets"] = entries
        try JSONSerialization.data(withJSONObject: doc).write(to: URL(fileURLWithPath: gate.store))
        let altered = try TollgateProcess(arguments: ["serve", "--policies", gate.policy], port: gate.port, waitForPort: false)
        #expect(altered.waitForExit() == 2)
        #expect(altered.log.contains("does not decrypt"), "\(altered.log)")
    }

    /// The two-consumer case: alice has her own key, bob has none and gets the system one,
    /// a public route gets the system one; a client-sent Authorization (any scheme) never
    /// reaches the backend (it answers 400 to two Authorization fields, and names the key
    /// it saw); the usage record says which secret was used.
    @Test func eachConsumerGetsItsOwnKeyOrTheSystemOneAndNeverTheClients() throws {
        let gate = Gate()
        defer { gate.remove() }
        let backend = try gate.backend()
        defer { backend.stop() }
        try gate.set(gate.providerKeys[0])
        try gate.set(gate.providerKeys[1], consumer: "alice")
        let tg = try gate.serve()
        let client = gate.providerKeys[3]
        let alice = try gate.chat(SecretsTests.aliceKey, extra: "Authorization: Basic \(client)\r\n")
        #expect(alice.status == 200, "\(alice.text)")
        #expect(alice.header("X-Flowise-Key") == "2")
        let bob = try gate.chat(SecretsTests.bobKey, extra: "authorization: Bearer \(client)\r\nAUTHORIZATION: Token \(client)\r\n")
        #expect(bob.status == 200, "\(bob.text)")
        #expect(bob.header("X-Flowise-Key") == "1")
        // The client's own provider key is a valid one for the backend: were it forwarded
        // alone, the backend would say 4; beside ours, 400.
        let direct = try RawClient(port: gate.flowisePort)
        let check = try direct.request("GET /api/v1/chatflows HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(client)\r\n\r\n")
        direct.close()
        #expect(check.header("X-Flowise-Key") == "4")
        let open = try get(gate.port, "/api/v1/chatflows", headers: ["Authorization": "Bearer \(client)"])
        #expect(open.status == 200)
        #expect(open.header("X-Flowise-Key") == "1")
        // No Tollgate key, on a keyed route: refused before anything is injected.
        #expect(try gate.chat(nil).status == 401)
        #expect(poll(timeout: 5) { gate.usage().count >= 4 } != nil)
        #expect(tg.stop() == 0)
        let records = gate.usage()
        let bySecret = records.map { "\($0["route"] as? String ?? "-")/\($0["consumer"] as? String ?? "-")/\($0["secret"] as? String ?? "null")" }
        // (Two loops: records arrive in any order.)
        #expect(bySecret.sorted() == ["chat/-/null", "chat/alice/consumer", "chat/bob/system", "flows/-/system"])
        #expect(records.allSatisfy { $0.keys.contains("secret") })
        // Never in a log, the usage records or the access path's answers.
        let sinkText = (try? String(contentsOfFile: gate.sink, encoding: .utf8)) ?? ""
        for k in gate.providerKeys.prefix(3) {
            #expect(!tg.log.contains(k))
            #expect(!sinkText.contains(k))
            #expect(!alice.text.contains(k) && !bob.text.contains(k))
        }
    }

    /// A running proxy picks up `secrets set` and `delete` within a second (polled here, no
    /// sleeps): none at all → 503 UPSTREAM_UNAVAILABLE and nothing sent; the system key; bob's
    /// own; bob's deleted → the system key again.
    @Test func aRunningProxyPicksUpSecretChanges() throws {
        let gate = Gate()
        defer { gate.remove() }
        let backend = try gate.backend()
        defer { backend.stop() }
        let tg = try gate.serve()
        let none = try gate.chat(SecretsTests.bobKey)
        #expect(none.status == 503)
        #expect(none.errorCode == "UPSTREAM_UNAVAILABLE")
        #expect(none.text.contains("none is set for this consumer"))
        try gate.set(gate.providerKeys[0])
        #expect(try poll(timeout: 5) { try gate.chat(SecretsTests.bobKey).header("X-Flowise-Key") == "1" } != nil)
        try gate.set(gate.providerKeys[2], consumer: "bob")
        #expect(try poll(timeout: 5) { try gate.chat(SecretsTests.bobKey).header("X-Flowise-Key") == "3" } != nil)
        // alice has none of her own: still the system key.
        #expect(try gate.chat(SecretsTests.aliceKey).header("X-Flowise-Key") == "1")
        let (rc, out) = try gate.secrets(["delete", "flowise_api_key", "--consumer", "bob"])
        #expect(rc == 0, "\(out)")
        #expect(try poll(timeout: 5) { try gate.chat(SecretsTests.bobKey).header("X-Flowise-Key") == "1" } != nil)
        // A reload that names a master key which does not open the store is refused; the
        // secrets in memory keep serving.
        let wrong = Gate.randomHex(32)
        writeFile(gate.dir + "/keys/other.key", wrong)
        let text = try String(contentsOfFile: gate.policy, encoding: .utf8)
        writeFile(gate.policy, text.replacingOccurrences(of: "keys/master.key", with: "keys/other.key"))
        #expect(poll(timeout: 5) { tg.log.contains("refused: secrets: the master key does not open the secret store") } != nil,
                "\(tg.log)")
        #expect(!tg.log.contains(wrong))
        #expect(try gate.chat(SecretsTests.bobKey).header("X-Flowise-Key") == "1")
        #expect(tg.stop() == 0)
        // The 503s (the first request, and polls before the store was read again): nothing injected.
        let refused = gate.usage().filter { $0["status"] as? Int == 503 }
        #expect(!refused.isEmpty)
        #expect(refused.allSatisfy { $0["secret"] is NSNull && $0["code"] as? String == "UPSTREAM_UNAVAILABLE" })
        #expect(gate.usage().filter { $0["status"] as? Int == 200 }.allSatisfy { $0["secret"] as? String != nil })
        for k in gate.providerKeys { #expect(!tg.log.contains(k)) }
    }

    /// `secrets rekey`: every secret re-encrypted under a new master key in one change; the
    /// old key no longer opens the store; a running instance keeps serving from memory, and
    /// the policy pointed at the new key serves the same values.
    @Test func rekeyMovesTheStoreToANewMasterKey() throws {
        let gate = Gate()
        defer { gate.remove() }
        let backend = try gate.backend()
        defer { backend.stop() }
        try gate.set(gate.providerKeys[0])
        try gate.set(gate.providerKeys[2], consumer: "bob")
        let tg = try gate.serve()
        #expect(try gate.chat(SecretsTests.bobKey).header("X-Flowise-Key") == "3")
        let before = try String(contentsOfFile: gate.store, encoding: .utf8)
        let newKey = Gate.randomHex(32)
        writeFile(gate.dir + "/keys/master-2.key", newKey + "\n")
        // The same key, or none, is refused.
        #expect(try gate.secrets(["rekey", "--new-master-key-file", gate.dir + "/keys/master.key"]).0 != 0)
        #expect(try gate.secrets(["rekey"]).0 != 0)
        let (rc, out) = try gate.secrets(["rekey", "--new-master-key-file", gate.dir + "/keys/master-2.key"])
        #expect(rc == 0 && out.contains("rekeyed: 2 secret(s)"), "\(out)")
        #expect(!out.contains(newKey) && !out.contains(gate.masterKeyHex))
        let after = try String(contentsOfFile: gate.store, encoding: .utf8)
        #expect(after != before)
        for k in gate.providerKeys { #expect(!after.contains(k)) }
        // The policy still names the old key: the store no longer opens with it.
        let (listRC, listOut) = try gate.secrets(["list"])
        #expect(listRC != 0 && listOut.contains("master key does not open"), "\(listOut)")
        // The running instance keeps serving what it holds.
        #expect(try gate.chat(SecretsTests.bobKey).header("X-Flowise-Key") == "3")
        // Pointed at the new key (a reload): the same secrets serve.
        let text = try String(contentsOfFile: gate.policy, encoding: .utf8)
        writeFile(gate.policy, text.replacingOccurrences(of: "keys/master.key", with: "keys/master-2.key"))
        #expect(poll(timeout: 5) { tg.log.contains("policy reloaded") } != nil, "\(tg.log)")
        #expect(!tg.log.contains("refused"), "\(tg.log)")
        #expect(try gate.chat(SecretsTests.bobKey).header("X-Flowise-Key") == "3")
        #expect(try gate.chat(SecretsTests.aliceKey).header("X-Flowise-Key") == "1")
        let (l2, o2) = try gate.secrets(["list"])
        #expect(l2 == 0 && o2.contains("flowise_api_key"), "\(o2)")
        let audit = (try? String(contentsOfFile: gate.dir + "/audit.jsonl", encoding: .utf8)) ?? ""
        #expect(audit.contains("\"action\":\"secret.rekeyed\"") && !audit.contains(newKey))
        #expect(tg.stop() == 0)
        for k in gate.providerKeys { #expect(!tg.log.contains(k)) }
        #expect(!tg.log.contains(newKey))
    }

    /// HTTP/2: the same injection (the stream's head is written by the same writer).
    @Test func http2StreamsGetTheInjectedKey() throws {
        let gate = Gate()
        defer { gate.remove() }
        let backend = try gate.backend()
        defer { backend.stop() }
        try gate.set(gate.providerKeys[0])
        try gate.set(gate.providerKeys[1], consumer: "alice")
        let tg = try gate.serve()
        defer { tg.stop() }
        let client = gate.providerKeys[3]
        let answers = try H2Client.request(gate.port, paths: ["/api/v1/chatmessage/\(SecretsTests.flow)"],
                                           headers: ["x-api-key: \(SecretsTests.aliceKey)", "authorization: Basic \(client)"])
        #expect(answers.first?.status == 200, "\(answers.first?.body ?? "")")
        #expect(answers.first?.header("x-flowise-key") == "2")
        let open = try H2Client.request(gate.port, paths: ["/api/v1/chatflows"], headers: ["authorization: Bearer \(client)"])
        #expect(open.first?.status == 200)
        #expect(open.first?.header("x-flowise-key") == "1")
    }

    /// With `store.redis` the secrets live in Redis (no plaintext there either), the master
    /// key may come from the environment, and a running instance sees a change within a second.
    @Test func secretsInRedisReachTheRunningInstance() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let gate = Gate(redis: redis.urlText, useEnvironment: true)
        defer { gate.remove() }
        let backend = try gate.backend()
        defer { backend.stop() }
        try gate.set(gate.providerKeys[0])
        #expect(!FileManager.default.fileExists(atPath: gate.store))
        let tg = try gate.serve()
        #expect(try gate.chat(SecretsTests.aliceKey).header("X-Flowise-Key") == "1")
        try gate.set(gate.providerKeys[1], consumer: "alice")
        #expect(try poll(timeout: 5) { try gate.chat(SecretsTests.aliceKey).header("X-Flowise-Key") == "2" } != nil)
        let all = try redis.client().run(["HGETALL", "tg:secrets"])
        guard case .array(let items) = all else { Issue.record("HGETALL: \(all)"); return }
        #expect(items.count >= 8)   // check, two salts, two secrets: field + value each
        let text = items.compactMap(\.text).joined(separator: "\n")
        for k in gate.providerKeys { #expect(!text.contains(k)) }
        // Without the key in the environment, nothing opens.
        let (rc, out) = try gate.secrets(["list"], environment: ["TG_TEST_MASTER_KEY": Gate.randomHex(32)])
        #expect(rc != 0 && out.contains("wrong master key"))
        #expect(tg.stop() == 0)
    }
}
