import COpenSSL
import Foundation
import Glibc
import Policy
import Testing
@testable import Proxy

/// A real loopback webhook receiver: records every request (head, body, when) and answers
/// with the status the test sets.
final class WebhookReceiver: @unchecked Sendable {
    struct Delivery {
        var head: String
        var body: [UInt8]
        var at: Date
        var answered: Int
        var id: String { headerValue(head, "webhook-id") ?? "" }
        var timestamp: String { headerValue(head, "webhook-timestamp") ?? "" }
        var signature: String { headerValue(head, "webhook-signature") ?? "" }
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:] }
        var type: String { json["type"] as? String ?? "" }
        var data: [String: Any] { json["data"] as? [String: Any] ?? [:] }
    }
    private let lock = NSLock()
    private var items: [Delivery] = []
    private var answer = 200
    private(set) var server: ScriptedUpstream!

    init(status: Int = 200) throws {
        answer = status
        server = try ScriptedUpstream { [unowned self] peer in
            while let head = peer.readHead() {
                let n = headerValue(head, "Content-Length").flatMap { Int($0) } ?? 0
                let body = n > 0 ? (peer.read(count: n) ?? []) : []
                let status = self.record(head, body)
                peer.write("HTTP/1.1 \(status) X\r\nContent-Length: 0\r\n\r\n")
            }
        }
    }

    var port: UInt16 { server.port }
    var status: Int {
        get { lock.lock(); defer { lock.unlock() }; return answer }
        set { lock.lock(); answer = newValue; lock.unlock() }
    }
    var deliveries: [Delivery] { lock.lock(); defer { lock.unlock() }; return items }
    func of(_ type: String) -> [Delivery] { deliveries.filter { $0.type == type } }

    private func record(_ head: String, _ body: [UInt8]) -> Int {
        lock.lock()
        defer { lock.unlock() }
        items.append(Delivery(head: head, body: body, at: Date(), answered: answer))
        return answer
    }

    func stop() { server.stop() }
}

/// Webhooks through the real binary: Standard Webhooks signatures checked here with our own
/// HMAC, retries with back-off, the dead-letter file, a restart mid-retry, the events the
/// admin API, the command line and a 402 emit, and `tollgate webhooks verify`.
@Suite(.serialized) struct WebhookTests {
    static let secret1 = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    static let secret2 = "a-raw-second-secret-while-rotating"
    static let bobKey = "tg_webhooks_bob_0123456789"
    static let quinnKey = "tg_webhooks_quinn_0123456789"

    /// HMAC-SHA256, base64: computed here, independently of the proxy's code.
    static func sign(_ secret: [UInt8], _ content: [UInt8]) -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 32
        _ = secret.withUnsafeBufferPointer { k in
            content.withUnsafeBufferPointer { d in HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), d.baseAddress, d.count, &digest, &len) }
        }
        return Data(digest).base64EncodedString()
    }

    static func secretBytes(_ s: String) -> [UInt8] {
        s.hasPrefix("whsec_") ? [UInt8](Data(base64Encoded: String(s.dropFirst(6)))!) : Array(s.utf8)
    }

    /// The signatures a delivery must carry, one per secret.
    static func expectedSignatures(_ d: WebhookReceiver.Delivery, secrets: [String]) -> [String] {
        let content = Array("\(d.id).\(d.timestamp).".utf8) + d.body
        return secrets.map { "v1," + sign(secretBytes($0), content) }
    }

    struct Gate {
        let dir: String
        let port = freePort()
        let admin = freePort()
        let secrets: [String]
        var policy: String { dir + "/gateway.yaml" }
        var spool: String { dir + "/hooks" }
        var deadLetter: String { spool + "/dead-letter.jsonl" }
        var env: [String: String] { ["TG_WEBHOOK_SECRET": secrets.joined(separator: " ")] }

        init(receiver: UInt16, upstream: UInt16, secrets: [String] = [WebhookTests.secret1], firstRetry: String = "50ms",
             tries: Int = 3, events: String = "[key_revoked, key_rotated, credits_exhausted, quota_exhausted]") {
            dir = makeTempDir("tghooks")
            self.secrets = secrets
            writeFile(dir + "/admin-tokens", AdminAuth.tokensFileLine + "\n")
            writeFile(policy, """
            version: 1
            listen:
              - address: 127.0.0.1:\(port)
            admin: {address: "127.0.0.1:\(admin)", tokens_file: admin-tokens}
            credits:
              ledger: local
              account: consumer
            security:
              webhook_spool: hooks
              webhooks:
                - {url: "http://127.0.0.1:\(receiver)/hooks", secret_env: TG_WEBHOOK_SECRET,
                   events: \(events), first_retry: \(firstRetry), tries: \(tries), timeout: 2s}
            plans:
              tiny:
                quotas:
                  - {requests: 2, per: day}
            backends:
              up: {url: "http://127.0.0.1:\(upstream)"}
            routes:
              - {name: paid, match: {path_prefix: /paid/}, backend: up, credits: {per_request: 5}}
              - {name: all, match: {path_prefix: /}, backend: up, scopes: [read]}
            keys:
              - {id: key_bob, hash: \(KeyHash.sha256(WebhookTests.bobKey).description), consumer: bob, scopes: [read]}
              - {id: key_quinn, hash: \(KeyHash.sha256(WebhookTests.quinnKey).description), consumer: quinn, scopes: [read], plan: tiny}

            """)
        }

        func serve() throws -> TollgateProcess {
            let tg = try TollgateProcess(policies: policy, port: port, extra: ["--drain-timeout", "2"], environment: env)
            #expect(try poll(timeout: 10) { try get(admin, "/readyz").status == 200 } != nil)
            return tg
        }

        func tollgate(_ args: [String]) throws -> (Int32, String) {
            try runTollgate(args + ["--policies", policy], environment: env)
        }

        /// `keys new` then `keys revoke` from the command line: the key's id.
        func mintAndRevokeFromCLI() throws -> String {
            let (s1, out) = try tollgate(["keys", "new", "--consumer", "carol", "--scopes", "read"])
            #expect(s1 == 0, "\(out)")
            let id = try #require(out.split(separator: "\n").first { $0.hasPrefix("id: ") }).dropFirst(4)
            let (s2, out2) = try tollgate(["keys", "revoke", String(id)])
            #expect(s2 == 0, "\(out2)")
            return String(id)
        }

        func deadLetters() -> [[String: Any]] {
            ((try? String(contentsOfFile: deadLetter, encoding: .utf8)) ?? "").split(separator: "\n")
                .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        }

        func remove() { try? FileManager.default.removeItem(atPath: dir) }
    }

    // MARK: signatures

    /// The Standard Webhooks specification's example (secret, id, timestamp, body → signature).
    @Test func signatureMatchesTheStandardWebhooksReferenceVector() throws {
        let secrets = try #require(WebhookSecrets.parse(Array(Self.secret1.utf8)))
        let body = Array(#"{"test": 2432232314}"#.utf8)
        let h = WebhookSignature.header(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: 1614265330, body: body, secrets: secrets)
        #expect(h == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        #expect(WebhookSignature.verify(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: "1614265330", signature: h, body: body,
                                        secrets: secrets, tolerance: 300, now: 1614265330 + 10) == nil)
        #expect(WebhookSignature.verify(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: "1614265330", signature: h, body: body + [0x20],
                                        secrets: secrets, tolerance: 300, now: 1614265330) == .noMatch(checked: 1))
        #expect(WebhookSignature.verify(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: "1614265330", signature: h, body: body,
                                        secrets: secrets, tolerance: 300, now: 1614265330 + 301) == .tooOld(seconds: 301))
        // Two secrets: two entries, the first one's unchanged.
        let two = try #require(WebhookSecrets.parse(Array((Self.secret1 + " " + Self.secret2).utf8)))
        let h2 = WebhookSignature.header(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: 1614265330, body: body, secrets: two)
        #expect(h2.hasPrefix(h + " v1,") && h2.split(separator: " ").count == 2)
    }

    // MARK: the admin API, a 402, two secrets, verify

    /// Rotated and revoked through the admin API, a flood of 402s: each event signed once per
    /// secret (both checked here), `credits_exhausted` once for the flood; `tollgate webhooks
    /// verify` accepts a real delivery and refuses a tampered body or an old timestamp.
    @Test func adminAPIEventsAndCreditsExhaustedAreSignedWithEverySecret() throws {
        let receiver = try WebhookReceiver()
        defer { receiver.stop() }
        let up = try echoUpstream()
        defer { up.stop() }
        let g = Gate(receiver: receiver.port, upstream: up.port, secrets: [Self.secret1, Self.secret2])
        defer { g.remove() }
        let tg = try g.serve()
        defer { tg.stop() }

        // 402s: one event for the account, however many refusals.
        for _ in 0..<5 {
            let r = try get(g.port, "/paid/x", headers: ["X-API-Key": Self.bobKey])
            #expect(r.status == 402)
        }
        #expect(try poll(timeout: 10) { receiver.of("credits_exhausted").count == 1 } != nil)
        // A quota: two requests a day; the refusals after them are one event.
        for i in 0..<5 {
            let r = try get(g.port, "/q/\(i)", headers: ["X-API-Key": Self.quinnKey])
            #expect(r.status == (i < 2 ? 200 : 429))
        }

        let (s1, created, _) = try KeyAPITests.admin(g.admin, "POST", "/v1/keys", #"{"consumer":"erin","scopes":["read"]}"#)
        #expect(s1 == 201)
        let oldID = try #require(created["id"] as? String)
        let oldKey = try #require(created["key"] as? String)
        let (s2, rotated, _) = try KeyAPITests.admin(g.admin, "POST", "/v1/keys/\(oldID)/rotate", #"{"overlap":"0s"}"#)
        #expect(s2 == 201)
        let newID = try #require(rotated["id"] as? String)
        let newKey = try #require(rotated["key"] as? String)
        let (s3, _, _) = try KeyAPITests.admin(g.admin, "POST", "/v1/keys/\(newID)/revoke")
        #expect(s3 == 200)
        #expect(try poll(timeout: 10) { receiver.of("key_revoked").count == 1 } != nil)
        // Delivered in order: the revocation came after the 402 flood's event, which stays one.
        #expect(receiver.of("credits_exhausted").count == 1)
        #expect(try get(g.port, "/paid/y", headers: ["X-API-Key": Self.bobKey]).status == 402)

        let credits = try #require(receiver.of("credits_exhausted").first)
        #expect(credits.data["account"] as? String == "bob")
        #expect(credits.data["balance"] as? Int == 0)
        #expect(credits.data["route"] as? String == "paid")
        #expect(receiver.of("quota_exhausted").count == 1)
        let quota = try #require(receiver.of("quota_exhausted").first)
        #expect(quota.data["key_id"] as? String == "key_quinn" && quota.data["consumer"] as? String == "quinn")
        #expect(quota.data["quota"] as? String == "2 requests/day by key" && quota.data["plan"] as? String == "tiny")
        let rot = try #require(receiver.of("key_rotated").first)
        #expect(rot.data["key_id"] as? String == oldID && rot.data["replaced_by"] as? String == newID)
        #expect(rot.data["consumer"] as? String == "erin")
        let rev = try #require(receiver.of("key_revoked").first)
        #expect(rev.data["key_id"] as? String == newID)

        for d in receiver.deliveries {
            #expect(d.id.hasPrefix("msg_"))
            #expect(d.json["timestamp"] is String)
            #expect(abs((Int64(d.timestamp) ?? 0) - Int64(Date().timeIntervalSince1970)) < 60)
            // Both secrets sign, in the configured order; each checked with our own HMAC.
            #expect(d.signature.split(separator: " ").map(String.init) == Self.expectedSignatures(d, secrets: g.secrets))
            // Never a plain key, never a secret.
            let text = String(decoding: d.body, as: UTF8.self) + d.head
            for s in [oldKey, newKey, Self.bobKey, Self.secret1, Self.secret2] { #expect(!text.contains(s)) }
        }
        #expect(Set(receiver.deliveries.map(\.id)).count == receiver.deliveries.count)

        // `tollgate webhooks verify` on a real delivery (raw header block, body from a file).
        writeFile(g.dir + "/head.txt", rev.head)
        try Data(rev.body).write(to: URL(fileURLWithPath: g.dir + "/body.json"))
        let (v1, out1) = try runTollgate(["webhooks", "verify", "--secret-env", "TG_WEBHOOK_SECRET", "--headers", g.dir + "/head.txt",
                                          "--body", g.dir + "/body.json"], environment: g.env)
        #expect(v1 == 0 && out1 == "ok: key_revoked \(rev.id)\n", "\(out1)")
        // Only the second secret (the receiver has moved on): still verifies.
        writeFile(g.dir + "/secret2", Self.secret2 + "\n")
        let (v2, out2) = try runTollgate(["webhooks", "verify", "--secret-file", g.dir + "/secret2", "--id", rev.id,
                                          "--timestamp", rev.timestamp, "--signature", rev.signature, "--body", g.dir + "/body.json"])
        #expect(v2 == 0, "\(out2)")
        // A tampered body.
        var tampered = rev.body
        tampered[tampered.count - 2] ^= 0x01
        try Data(tampered).write(to: URL(fileURLWithPath: g.dir + "/tampered.json"))
        let (v3, out3) = try runTollgate(["webhooks", "verify", "--secret-env", "TG_WEBHOOK_SECRET", "--headers", g.dir + "/head.txt",
                                          "--body", g.dir + "/tampered.json"], environment: g.env)
        #expect(v3 != 0 && out3.contains("no signature matches"), "\(out3)")
        // Correctly signed, but an hour old.
        let old = Int64(Date().timeIntervalSince1970) - 3600
        let oldSig = "v1," + Self.sign(Self.secretBytes(Self.secret1), Array("\(rev.id).\(old).".utf8) + rev.body)
        let (v4, out4) = try runTollgate(["webhooks", "verify", "--secret-env", "TG_WEBHOOK_SECRET", "--id", rev.id,
                                          "--timestamp", String(old), "--signature", oldSig, "--body", g.dir + "/body.json"],
                                         environment: g.env)
        #expect(v4 != 0 && out4.contains("too old"), "\(out4)")
        // …which a wider tolerance accepts (the signature itself is right).
        let (v5, out5) = try runTollgate(["webhooks", "verify", "--secret-env", "TG_WEBHOOK_SECRET", "--id", rev.id,
                                          "--timestamp", String(old), "--signature", oldSig, "--body", g.dir + "/body.json",
                                          "--tolerance", "2h"], environment: g.env)
        #expect(v5 == 0, "\(out5)")
        // The secret is nowhere in the server's log.
        #expect(!tg.log.contains(Self.secret1) && !tg.log.contains(Self.secret2))
    }

    // MARK: retries and the dead letter

    /// A receiver that always answers 500: three attempts with the same webhook-id, 50 ms then
    /// 100 ms apart at least, then one dead-letter line (no secret in it). The event comes
    /// from `tollgate keys revoke` (another process), through the spool's inbox.
    @Test func failingReceiverIsRetriedWithBackOffThenDeadLettered() throws {
        let receiver = try WebhookReceiver(status: 500)
        defer { receiver.stop() }
        let up = try echoUpstream()
        defer { up.stop() }
        let g = Gate(receiver: receiver.port, upstream: up.port, firstRetry: "50ms", tries: 3)
        defer { g.remove() }
        let tg = try g.serve()
        defer { tg.stop() }
        let id = try g.mintAndRevokeFromCLI()
        #expect(try poll(timeout: 15) { g.deadLetters().count == 1 } != nil, "\(tg.log)")
        let attempts = receiver.of("key_revoked")
        #expect(attempts.count == 3)
        #expect(Set(attempts.map(\.id)).count == 1)
        #expect(attempts.allSatisfy { $0.data["key_id"] as? String == id })
        if attempts.count == 3 {
            #expect(attempts[1].at.timeIntervalSince(attempts[0].at) >= 0.045)
            #expect(attempts[2].at.timeIntervalSince(attempts[1].at) >= 0.095)
        }
        let dead = try #require(g.deadLetters().first)
        #expect(dead["id"] as? String == attempts.first?.id)
        #expect(dead["type"] as? String == "key_revoked")
        #expect(dead["attempts"] as? Int == 3)
        #expect(dead["endpoint"] as? String == "http://127.0.0.1:\(receiver.port)/hooks")
        #expect((dead["last_error"] as? String)?.contains("500") == true)
        #expect((dead["body"] as? [String: Any])?["type"] as? String == "key_revoked")
        let raw = (try? String(contentsOfFile: g.deadLetter, encoding: .utf8)) ?? ""
        #expect(!raw.contains(Self.secret1) && !raw.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
        // Nothing more comes for it (a later event is the barrier).
        receiver.status = 200
        _ = try g.mintAndRevokeFromCLI()
        #expect(try poll(timeout: 10) { receiver.of("key_revoked").count == 4 } != nil)
        #expect(receiver.of("key_revoked").filter { $0.id == attempts.first?.id }.count == 3)
        // Counted for operators: 3 failed attempts, 1 dead letter, then 1 delivered.
        let m = try scrapeMetrics(g.admin)
        #expect(m["tollgate_webhook_deliveries_total{result=\"failed\"}"] == 3)
        #expect(m["tollgate_webhook_deliveries_total{result=\"dead_lettered\"}"] == 1)
        #expect(m["tollgate_webhook_deliveries_total{result=\"delivered\"}"] == 1)
    }

    // MARK: restarts

    /// The receiver fails; the server is killed (SIGKILL) mid-retry; the receiver recovers;
    /// the next start delivers the event exactly once, with the same id. Then the same with
    /// SIGTERM (the drain leaves a backing-off delivery spooled). Also: an event written by
    /// the command line while no server runs is delivered by the next one to start.
    @Test func restartMidRetryDeliversOnceWithTheSameID() throws {
        let receiver = try WebhookReceiver(status: 503)
        defer { receiver.stop() }
        let up = try echoUpstream()
        defer { up.stop() }
        let g = Gate(receiver: receiver.port, upstream: up.port, firstRetry: "200ms", tries: 30)
        defer { g.remove() }

        for (round, signal) in [SIGKILL, SIGTERM].enumerated() {
            receiver.status = 503
            var tg = try g.serve()
            let key = try g.mintAndRevokeFromCLI()
            func attemptsFor() -> [WebhookReceiver.Delivery] { receiver.of("key_revoked").filter { $0.data["key_id"] as? String == key } }
            #expect(try poll(timeout: 15) { attemptsFor().count >= 2 } != nil, "\(tg.log)")
            tg.signal(signal)
            #expect(tg.waitForExit(timeout: 15) != nil)
            let failedAttempts = attemptsFor().count
            receiver.status = 200
            tg = try g.serve()
            #expect(try poll(timeout: 15) { attemptsFor().contains { $0.answered == 200 } } != nil, "round \(round): \(tg.log)")
            // A later event as the barrier: once it is delivered, the first is not sent again.
            let barrier = try g.mintAndRevokeFromCLI()
            #expect(try poll(timeout: 10) { receiver.of("key_revoked").contains { $0.data["key_id"] as? String == barrier } } != nil)
            let all = attemptsFor()
            #expect(all.count == failedAttempts + 1, "round \(round)")
            #expect(all.filter { $0.answered == 200 }.count == 1, "round \(round)")
            #expect(Set(all.map(\.id)).count == 1, "round \(round)")
            tg.stop()
        }

        // No server running: `keys revoke` spools the event; the next start delivers it.
        let offline = try g.mintAndRevokeFromCLI()
        #expect(!receiver.of("key_revoked").contains { $0.data["key_id"] as? String == offline })
        let tg = try g.serve()
        defer { tg.stop() }
        #expect(try poll(timeout: 10) { receiver.of("key_revoked").contains { $0.data["key_id"] as? String == offline } } != nil)
    }
}
