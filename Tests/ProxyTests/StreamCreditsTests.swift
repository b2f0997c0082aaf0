import Foundation
import Glibc
import Policy
import Synchronization
import Testing

/// Streamed answers on a per-token route: counted event by event as they pass, the
/// reservation extended as it is spent, the stream ended cleanly when the account is empty,
/// and one settlement whatever ended it.
@Suite(.serialized) struct StreamCreditsTests {
    static let key = "tg_stream_alice_0123456789"

    /// A Flowise-style backend (the event bytes of BACKENDS.md): `start`, one `token` event per
    /// token `delay` apart, then `usageMetadata` with the real figures. It notes how many
    /// tokens it could write before its connection was closed under it.
    final class FlowiseStream: @unchecked Sendable {
        let upstream: ScriptedUpstream
        let stopped = DispatchSemaphore(value: 0)
        let lastBody = Mutex<String>("")
        let writtenBeforeClose = Mutex<Int>(-1)

        init(tokens: Int, delayMicros: UInt32 = 2_000) throws {
            let box = Box()
            upstream = try ScriptedUpstream { peer in
                guard let me = box.value else { return }
                while let head = peer.readHead() {
                    let n = Int(headerValue(head, "Content-Length") ?? "0") ?? 0
                    let body = n > 0 ? String(decoding: peer.read(count: n) ?? [], as: UTF8.self) : ""
                    me.lastBody.withLock { $0 = body }
                    func chunk(_ s: String) -> Bool {
                        let b = Array(s.utf8)
                        return peer.trySend(Array(String(b.count, radix: 16).utf8) + [13, 10] + b + [13, 10])
                    }
                    guard peer.trySend(Array("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)),
                          chunk("message:\ndata:{\"event\":\"start\",\"data\":\"\"}\n\n") else { return }
                    for i in 0..<tokens {
                        if !chunk("message:\ndata:{\"event\":\"token\",\"data\":\"w\(i) \"}\n\n") {
                            me.writtenBeforeClose.withLock { $0 = i }
                            me.stopped.signal()
                            return
                        }
                        usleep(delayMicros)
                    }
                    _ = chunk("message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"input_tokens\":7,\"output_tokens\":\(tokens),\"total_tokens\":\(tokens + 7)}}\n\n")
                    _ = peer.trySend(Array("0\r\n\r\n".utf8))
                }
            }
            box.value = self
        }
        final class Box: @unchecked Sendable { var value: FlowiseStream? }
        var port: UInt16 { upstream.port }
        func stop() { upstream.stop() }
    }

    struct Gate {
        let dir: String
        let port: UInt16
        let admin = freePort()
        var policy: String { dir + "/gw-\(port).yaml" }

        init(upstream: UInt16, reserveTokens: Int = 4, redis: String? = nil, ttl: String = "5m", dir shared: String? = nil,
             tokenQuota: Int? = nil) {
            dir = shared ?? makeTempDir("tgstream")
            port = freePort()
            writeFile(dir + "/admin-tokens-\(port)", AdminAuth.tokensFileLine + "\n")
            writeFile(dir + "/gw-\(port).yaml", """
            version: 1
            listen:
              - address: 127.0.0.1:\(port)
            admin: {address: "127.0.0.1:\(admin)", tokens_file: admin-tokens-\(port)}
            \(redis.map { "store: {redis: \"\($0)\", deadline: 500ms}" } ?? "")
            credits:
              ledger: \(redis == nil ? "local" : "redis")
              reservation_ttl: \(ttl)
            usage:
              spool: spool-\(port)
              durability: 0ms
              sinks:
                - {kind: file, path: out/usage-\(port).jsonl}
            backends:
              flowise: {url: "http://127.0.0.1:\(upstream)"}
            plans:
              metered: {quotas: [{tokens: \(tokenQuota ?? 1_000_000_000), per: day}]}
            routes:
              - name: chat
                match: {methods: [POST], path_prefix: /api/v1/prediction/}
                backend: flowise
                credits:
                  per_token: {input: 0, output: 1, per: 1}
                  reserve_tokens: \(reserveTokens)
                  stream: flowise
            keys:
              - {id: key_alice, hash: \(KeyHash.sha256(StreamCreditsTests.key).description), consumer: alice, plan: metered, scopes: []}

            """)
        }

        /// Started, and ready (the store connected when there is one).
        func serve() throws -> TollgateProcess {
            let tg = try TollgateProcess(policies: policy, port: port, extra: ["--drain-timeout", "5"])
            #expect(try poll(timeout: 10) { try get(admin, "/readyz").status == 200 } != nil)
            return tg
        }

        func grant(_ n: Int) throws {
            let (s, out) = try runTollgate(["credits", "grant", "alice", String(n), "--policies", policy])
            #expect(s == 0, "\(out)")
        }

        func balance() throws -> (Int, Int) {
            let (s, out) = try runTollgate(["credits", "balance", "alice", "--policies", policy])
            #expect(s == 0, "\(out)")
            var b = -1, r = 0
            for line in out.split(separator: "\n") {
                if line.hasPrefix("balance: ") { b = Int(line.dropFirst(9)) ?? -1 }
                if line.hasPrefix("reserved: ") { r = Int(line.dropFirst(10)) ?? -1 }
            }
            return (b, r)
        }

        func usage() -> [[String: Any]] {
            ((try? String(contentsOfFile: dir + "/out/usage-\(port).jsonl", encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }

        func stop() { try? FileManager.default.removeItem(atPath: dir) }
    }

    static func chat(_ body: String = #"{"question":"hi","streaming":true}"#) -> String {
        "POST /api/v1/prediction/flow1 HTTP/1.1\r\nHost: t\r\nX-API-Key: \(key)\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
    }

    static func tokenEvents(_ text: String) -> Int { text.components(separatedBy: "\"event\":\"token\"").count - 1 }

    /// 10 credits at one per token: the answer is cut after its 11th token (one event of
    /// overshoot) with the Flowise error event and the last chunk; the account pays 10 and
    /// is empty; the backend's connection is closed so it stops generating.
    @Test func aStreamIsCutOffWhenCreditRunsOut() throws {
        let flow = try FlowiseStream(tokens: 200)
        defer { flow.stop() }
        let gate = Gate(upstream: flow.port)
        defer { gate.stop() }
        try gate.grant(10)
        let tg = try gate.serve()
        let c = try RawClient(port: gate.port)
        let r = try c.request(Self.chat(), method: "POST")   // reads to the last chunk
        c.close()
        let text = String(decoding: r.body, as: UTF8.self)
        #expect(r.status == 200)
        #expect(Self.tokenEvents(text) == 11, "\(text)")
        #expect(text.hasSuffix("message:\ndata:{\"event\":\"error\",\"data\":\"INSUFFICIENT_CREDITS: Credits ran out; the answer was cut off.\"}\n\n"))
        #expect(flow.stopped.wait(timeout: .now() + 10) == .success)
        #expect(flow.writtenBeforeClose.withLock { $0 } < 200)
        #expect(tg.stop() == 0)
        #expect(try gate.balance() == (0, 0))
        let rec = gate.usage().first { $0["route"] as? String == "chat" }
        #expect(rec?["credits"] as? Int == 10)
        #expect(rec?["tokens_out"] as? Int == 11)
    }

    /// The same over HTTP/2 (curl): the error event, then END_STREAM (curl exits 0).
    @Test func aStreamIsCutOffOverHTTP2() throws {
        let flow = try FlowiseStream(tokens: 200)
        defer { flow.stop() }
        let gate = Gate(upstream: flow.port)
        defer { gate.stop() }
        try gate.grant(6)
        let tg = try gate.serve()
        defer { tg.stop() }
        let (rc, out) = try run("/usr/bin/curl", ["-sS", "-N", "--http2-prior-knowledge", "-H", "X-API-Key: \(Self.key)",
                                                          "-d", #"{"question":"hi","streaming":true}"#,
                                                          "http://127.0.0.1:\(gate.port)/api/v1/prediction/flow1"])
        #expect(rc == 0, "\(out)")
        #expect(Self.tokenEvents(out) == 7, "\(out)")
        #expect(out.hasSuffix("data:{\"event\":\"error\",\"data\":\"INSUFFICIENT_CREDITS: Credits ran out; the answer was cut off.\"}\n\n"))
    }

    /// Enough credit: the whole answer passes, extended 4 tokens at a time, and the charge
    /// is the backend's own usage figure.
    @Test func aStreamWithEnoughCreditIsChargedItsUsageFigure() throws {
        let flow = try FlowiseStream(tokens: 30)
        defer { flow.stop() }
        let gate = Gate(upstream: flow.port)
        defer { gate.stop() }
        try gate.grant(100)
        let tg = try gate.serve()
        let c = try RawClient(port: gate.port)
        let r = try c.request(Self.chat(), method: "POST")
        c.close()
        let text = String(decoding: r.body, as: UTF8.self)
        #expect(Self.tokenEvents(text) == 30)
        #expect(text.contains("usageMetadata"))
        #expect(!text.contains("INSUFFICIENT_CREDITS"))
        #expect(tg.stop() == 0)
        #expect(try gate.balance() == (70, 0))
    }

    /// A client that leaves mid-stream pays for what it was sent, not for the rest; the
    /// backend's connection is closed so it stops generating.
    @Test func aClientThatLeavesMidStreamPaysForWhatWasDelivered() throws {
        let flow = try FlowiseStream(tokens: 400, delayMicros: 20_000)
        defer { flow.stop() }
        let gate = Gate(upstream: flow.port, reserveTokens: 1000)
        defer { gate.stop() }
        try gate.grant(1000)
        let tg = try gate.serve()
        let c = try RawClient(port: gate.port)
        try c.send(Self.chat())
        _ = try c.readHead()
        var seen = ""
        while Self.tokenEvents(seen) < 5 {
            guard try c.fill() else { break }
            seen = String(decoding: c.buffer, as: UTF8.self)
        }
        c.close()
        #expect(flow.stopped.wait(timeout: .now() + 10) == .success)
        #expect(tg.stop() == 0)
        let (balance, reserved) = try gate.balance()
        #expect(reserved == 0)
        // Charged for the tokens that passed: the five read, and at most a couple more that were
        // already on their way when the client closed.
        #expect(balance <= 995 && balance >= 990, "balance \(balance)")
        let rec = gate.usage().first { $0["route"] as? String == "chat" }
        #expect((rec?["credits"] as? Int).map { 1000 - $0 } == balance)
    }

    /// `max_tokens: 10` beside `max_completion_tokens: 300`: the larger is reserved (so the
    /// remaining balance the answer reports is 1000 − 300), whichever order they come in.
    @Test func theLargestOutputFieldIsReserved() throws {
        let flow = try FlowiseStream(tokens: 3)
        defer { flow.stop() }
        let gate = Gate(upstream: flow.port)
        defer { gate.stop() }
        try gate.grant(1000)
        let tg = try gate.serve()
        defer { tg.stop() }
        for body in [#"{"question":"q","streaming":true,"max_tokens":10,"max_completion_tokens":300}"#,
                     #"{"question":"q","streaming":true,"max_completion_tokens":300,"max_tokens":10}"#,
                     #"{"question":"q","streaming":true,"overrideConfig":{"maxTokens":{"chatOpenAI_0":300}},"max_tokens":10}"#] {
            let c = try RawClient(port: gate.port)
            let r = try c.request(Self.chat(body), method: "POST")
            c.close()
            #expect(r.status == 200)
            // Available after the reservation: what is left minus 300 (input is free here).
            let remaining = Int(r.header("X-Tollgate-Credits-Remaining") ?? "") ?? -1
            let (balance, _) = try gate.balance()
            #expect(remaining == balance + 3 - 300, "remaining \(remaining) balance \(balance)")
            #expect(flow.lastBody.withLock { $0 } == body)   // the body went upstream unchanged
        }
        let c = try RawClient(port: gate.port)
        let bad = try c.request(Self.chat(#"{"question":"q","max_tokens":-5}"#), method: "POST")
        c.close()
        #expect(bad.status == 400)
    }

    /// Redis ledger: extensions go to Redis while the stream waits; the cut-off and the charge
    /// are the same as the local ledger's. A proxy killed mid-stream strands nothing: its
    /// reservation expires back to the account.
    @Test func redisLedgerExtendsCutsOffAndExpiresReservations() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let flow = try FlowiseStream(tokens: 200)
        defer { flow.stop() }
        let gate = Gate(upstream: flow.port, redis: redis.urlText, ttl: "1s")
        defer { gate.stop() }
        try gate.grant(20)
        var tg = try gate.serve()
        let c = try RawClient(port: gate.port)
        let r = try c.request(Self.chat(), method: "POST")
        c.close()
        let text = String(decoding: r.body, as: UTF8.self)
        #expect(Self.tokenEvents(text) == 21, "\(text)")
        #expect(text.contains("INSUFFICIENT_CREDITS"))
        #expect(tg.stop() == 0)
        #expect(try gate.balance() == (0, 0))

        // Killed mid-stream: the reservation (4 tokens' worth, extended as it goes) comes back.
        try gate.grant(50)
        let slow = try FlowiseStream(tokens: 1000, delayMicros: 20_000)
        defer { slow.stop() }
        let gate2 = Gate(upstream: slow.port, reserveTokens: 40, redis: redis.urlText, ttl: "1s", dir: gate.dir)
        tg = try gate2.serve()
        let c2 = try RawClient(port: gate2.port)
        try c2.send(Self.chat())
        _ = try c2.readHead()
        var seen = ""
        while Self.tokenEvents(seen) < 3 {
            guard try c2.fill() else { break }
            seen = String(decoding: c2.buffer, as: UTF8.self)
        }
        // Held: 40 at first, more once the stream has spent it (a slow machine reads later).
        let held = try gate2.balance()
        #expect(held.0 == 50 && held.1 >= 40, "\(held)")
        tg.signal(SIGKILL)
        _ = tg.waitForExit()
        c2.close()
        let deadline = Date().addingTimeInterval(10)
        var now = (0, 0)
        while Date() < deadline {
            now = try gate2.balance()
            if now.1 == 0 { break }
            usleep(100_000)
        }
        #expect(now == (50, 0))
    }

    /// A token quota: checked at admission, and the tokens a stream used (input and output, the
    /// backend's figures) count against it at settle.
    @Test func tokensCountAgainstATokenQuota() throws {
        let flow = try FlowiseStream(tokens: 30)
        defer { flow.stop() }
        let gate = Gate(upstream: flow.port, tokenQuota: 40)
        defer { gate.stop() }
        try gate.grant(1000)
        let tg = try gate.serve()
        defer { tg.stop() }
        let c = try RawClient(port: gate.port)
        #expect(try c.request(Self.chat(), method: "POST").status == 200)   // 7 + 30 = 37 of 40
        #expect(try c.request(Self.chat(), method: "POST").status == 200)   // 37 < 40: admitted; 74 after
        let third = try c.request(Self.chat(), method: "POST")
        c.close()
        #expect(third.status == 429)
        #expect(String(decoding: third.body, as: UTF8.self).contains("QUOTA_EXCEEDED"))
        #expect(Int(third.header("Retry-After") ?? "") ?? 0 >= 1)
    }

    /// Through the reference Flowise backend (`tollgate backends`, its real event bytes): a
    /// streamed chat cut off when credit runs out, the backend's usage figure charged when
    /// there is enough, the price in the usage record.
    @Test func theReferenceFlowiseBackendIsMeteredAndCutOff() throws {
        let flowPort = freePort()
        let dir = makeTempDir("tgflowref")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let backends = try TollgateProcess(arguments: ["backends", "--finance", "off", "--accounting", "off",
                                                       "--flowise", "127.0.0.1:\(flowPort)", "--data", dir + "/be",
                                                       "--token-delay-ms", "1"], port: flowPort)
        defer { backends.stop() }
        let gate = Gate(upstream: flowPort, reserveTokens: 8, dir: dir)
        try gate.grant(30)
        let tg = try gate.serve()
        let chat = #"{"question":"What does Tollgate do?","streaming":true,"answerTokens":100}"#
        let c = try RawClient(port: gate.port)
        let cut = try c.request(Self.chat(chat).replacingOccurrences(of: "flow1", with: "8c1f3e52-3c4b-4d2a-9a57-0d5f2b7c6a11"), method: "POST")
        let cutText = String(decoding: cut.body, as: UTF8.self)
        #expect(cut.status == 200)
        #expect(Self.tokenEvents(cutText) == 31, "\(cutText)")   // 30 credits: 30 tokens, +1 of overshoot
        #expect(cutText.hasSuffix("message:\ndata:{\"event\":\"error\",\"data\":\"INSUFFICIENT_CREDITS: Credits ran out; the answer was cut off.\"}\n\n"))
        try gate.grant(1000)
        #expect(try poll(timeout: 5) { (try? gate.balance().0) == 1000 } != nil)
        let short = #"{"question":"hi","streaming":true,"answerTokens":12}"#
        let full = try c.request(Self.chat(short).replacingOccurrences(of: "flow1", with: "8c1f3e52-3c4b-4d2a-9a57-0d5f2b7c6a11"), method: "POST")
        c.close()
        let fullText = String(decoding: full.body, as: UTF8.self)
        #expect(Self.tokenEvents(fullText) == 12)
        #expect(fullText.contains("usageMetadata"))
        // The per-key usage API shows what was charged, in credits and tokens.
        #expect(try poll(timeout: 5) {
            String(decoding: try adminGet(gate.admin, "/v1/usage?key_id=key_alice").body, as: UTF8.self).contains("\"credits\":42")
        } != nil)
        #expect(tg.stop() == 0)
        #expect(try gate.balance() == (988, 0))
        let recs = gate.usage().filter { $0["route"] as? String == "chat" }
        #expect(recs.map { $0["credits"] as? Int } == [30, 12])
        #expect(recs.last?["tokens_out"] as? Int == 12)
    }
}

/// Metered answers the upstream frames by Content-Length or by closing its connection (found
/// by the credits fuzz campaign, `Fuzz/blackbox/repro/credits_length_framed_meter.py`).
extension StreamCreditsTests {
    /// Answers by path: `/length` an SSE stream of `tokens` token events with Content-Length,
    /// `/json` a JSON answer with Content-Length (metered by its bytes), `/close` the SSE stream
    /// ended by closing the connection. Each answer's bytes are `body(path)`.
    final class FramedAnswers: @unchecked Sendable {
        let upstream: ScriptedUpstream
        let tokens: Int

        init(tokens: Int) throws {
            self.tokens = tokens
            upstream = try ScriptedUpstream { [tokens] peer in
                while let head = peer.readHead() {
                    let n = Int(headerValue(head, "Content-Length") ?? "0") ?? 0
                    if n > 0 { _ = peer.read(count: n) }
                    let path = head.split(separator: " ").dropFirst().first.map(String.init) ?? ""
                    let body = FramedAnswers.body(path, tokens: tokens)
                    if path.hasSuffix("/close") {
                        peer.write(Array("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n".utf8) + body)
                        return
                    }
                    let type = path.hasSuffix("/json") ? "application/json" : "text/event-stream"
                    peer.write(Array("HTTP/1.1 200 OK\r\nContent-Type: \(type)\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body)
                }
            }
        }

        static func body(_ path: String, tokens: Int) -> [UInt8] {
            if path.hasSuffix("/json") { return Array(#"{"text":"hello","usage":{"output_tokens":5}}"#.utf8) }
            return Array((0..<tokens).map { "message:\ndata:{\"event\":\"token\",\"data\":\"w\($0) \"}\n\n" }.joined().utf8)
        }
        var port: UInt16 { upstream.port }
        func stop() { upstream.stop() }
    }

    /// With enough credit, a metered answer framed by Content-Length reaches an HTTP/1.1 client
    /// as it came (no chunk size lines inside a Content-Length body, nothing left over to be
    /// read as the next answer on the kept-alive connection), and a close-delimited one too.
    @Test func aMeteredAnswerFramedByLengthOrCloseKeepsItsFraming() throws {
        let up = try FramedAnswers(tokens: 20)
        defer { up.stop() }
        let gate = Gate(upstream: up.port)
        defer { gate.stop() }
        try gate.grant(1000)
        let tg = try gate.serve()
        defer { tg.stop() }
        let c = try RawClient(port: gate.port)
        for path in ["length", "json", "length"] {
            let r = try c.request(Self.chat().replacingOccurrences(of: "flow1", with: path), method: "POST")
            #expect(r.status == 200)
            #expect(r.header("Transfer-Encoding") == nil)
            #expect(r.text == String(decoding: FramedAnswers.body("/" + path, tokens: 20), as: UTF8.self), "\(path)")
        }
        c.close()
        let c2 = try RawClient(port: gate.port)
        defer { c2.close() }
        let r = try c2.request(Self.chat().replacingOccurrences(of: "flow1", with: "close"), method: "POST")
        #expect(r.status == 200)
        #expect(r.header("Transfer-Encoding") == nil && r.header("Content-Length") == nil)
        #expect(r.text == String(decoding: FramedAnswers.body("/close", tokens: 20), as: UTF8.self))
    }

    /// A Content-Length answer cannot take the cut-off event: when credit runs out it ends
    /// short of its length. HTTP/1.1: the connection closes after a prefix of the stream;
    /// HTTP/2: the stream is reset (it used to end with END_STREAM short of its content-length,
    /// a malformed answer).
    @Test func aLengthFramedStreamCutOffEndsShort() throws {
        let up = try FramedAnswers(tokens: 200)
        defer { up.stop() }
        let full = FramedAnswers.body("/length", tokens: 200)

        let gate = Gate(upstream: up.port)
        defer { gate.stop() }
        try gate.grant(6)
        let tg = try gate.serve()
        defer { tg.stop() }
        let c = try RawClient(port: gate.port)
        defer { c.close() }
        try c.send(Self.chat().replacingOccurrences(of: "flow1", with: "length"))
        let head = try c.readHead()
        #expect(head.status == 200)
        #expect(head.header("Content-Length") == String(full.count))
        #expect(c.isClosedByPeer(timeout: 10))
        let got = c.unreadBytes
        #expect(got.count < full.count && Array(full.prefix(got.count)) == got, "\(String(decoding: got.prefix(40), as: UTF8.self))")

        let gate2 = Gate(upstream: up.port)
        defer { gate2.stop() }
        try gate2.grant(6)
        let tg2 = try gate2.serve()
        defer { tg2.stop() }
        let a = try #require(try H2Client.request(gate2.port, paths: ["/api/v1/prediction/length"],
                                                  headers: ["x-api-key: \(Self.key)"], extra: ["--method", "POST"]).first)
        #expect(a.status == 200)
        #expect(a.header("content-length") == String(full.count))
        #expect(a.reset == 2, "RST_STREAM INTERNAL_ERROR expected: \(a.bodyLength) bytes, reset \(String(describing: a.reset))")
        #expect(a.bodyLength < full.count)
    }
}

/// Metered answers that wait on a slow client (found by the credits fuzz target: the answer
/// stopped once the upstream buffer was full of bytes waiting for room, and rechunked events
/// overran the client buffer's margin).
extension StreamCreditsTests {
    /// Token events, chunked or ended by close, written until the proxy stops reading (the
    /// first send that would block: every buffer on the way is full, the client's answer
    /// buffer too), then `extra` bytes more, blocking.
    final class Flood: @unchecked Sendable {
        let upstream: ScriptedUpstream
        /// Signalled when a send first would block.
        let blocked = DispatchSemaphore(value: 0)
        /// Events written, once the answer is complete.
        let written = Mutex<Int>(0)

        init(chunked: Bool, extra: Int = 1 << 20) throws {
            let box = Box()
            upstream = try ScriptedUpstream { peer in
                guard let me = box.value, let head = peer.readHead() else { return }
                let n = Int(headerValue(head, "Content-Length") ?? "0") ?? 0
                if n > 0 { _ = peer.read(count: n) }
                peer.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                           + (chunked ? "Transfer-Encoding: chunked\r\n\r\n" : "Connection: close\r\n\r\n"))
                var events = 0, after = -1
                while after < extra {
                    var batch: [UInt8] = []
                    for i in events..<(events + 64) { batch += Flood.event(i) }
                    events += 64
                    if chunked { batch = Array(String(batch.count, radix: 16).utf8) + [13, 10] + batch + [13, 10] }
                    var off = 0
                    while off < batch.count {
                        let k = batch[off...].withUnsafeBytes { Glibc.send(peer.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
                        if k > 0 { off += k; continue }
                        guard errno == EAGAIN else { return }
                        if after < 0 { after = 0; me.blocked.signal() }
                        var pfd = pollfd(fd: peer.fd, events: Int16(POLLOUT), revents: 0)
                        guard poll(&pfd, 1, 20_000) == 1 else { return }
                    }
                    if after >= 0 { after += batch.count }
                }
                if chunked { peer.write("0\r\n\r\n") }
                me.written.withLock { $0 = events }
            }
            box.value = self
        }
        final class Box: @unchecked Sendable { var value: Flood? }

        static func event(_ i: Int) -> [UInt8] { Array("message:\ndata:{\"event\":\"token\",\"data\":\"w\(i) \"}\n\n".utf8) }
        static func events(_ n: Int) -> [UInt8] { (0..<n).reduce(into: []) { $0 += event($1) } }
        var port: UInt16 { upstream.port }
        func stop() { upstream.stop() }
    }

    /// A slow client (a 4 KiB receive buffer, 4 KiB reads) that starts reading only once the
    /// proxy has stopped reading the upstream (its answer buffer and the upstream buffer full):
    /// the rest must still come, whole. Chunked: the events are framed as chunks again, their
    /// size lines within the buffer (with the buffer kept nearly full by the slow reads they
    /// used to overrun it and be dropped: broken chunk framing). Close-delimited: it used to
    /// stop there, the upstream buffer never framed again, until the backend's idle time-out.
    @Test(arguments: [true, false]) func aMeteredStreamWaitingOnASlowClientArrivesWhole(chunked: Bool) throws {
        let flood = try Flood(chunked: chunked)
        defer { flood.stop() }
        let gate = Gate(upstream: flood.port)
        defer { gate.stop() }
        try gate.grant(100_000_000)
        let tg = try gate.serve()
        defer { tg.stop() }
        let fd = try Self.slowClient(port: gate.port)
        defer { Glibc.close(fd) }
        let request = Array(Self.chat().replacingOccurrences(of: "Content-Type:", with: "Connection: close\r\nContent-Type:").utf8)
        #expect(request.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == request.count)
        #expect(flood.blocked.wait(timeout: .now() + 60) == .success)
        var raw: [UInt8] = []
        var piece = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = piece.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 4096, 0) }
            if n <= 0 { break }   // EOF (or the 10 s receive time-out: the payload check says what came)
            raw += piece[0..<n]
        }
        let end = try #require(raw.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound)
        let head = String(decoding: raw[..<end], as: UTF8.self)
        #expect(head.hasPrefix("HTTP/1.1 200 "))
        #expect(head.contains("Transfer-Encoding: chunked") == chunked)
        let payload = chunked ? try #require(Self.dechunk(raw[end...]), "broken chunk framing") : Array(raw[end...])
        let expected = Flood.events(flood.written.withLock { $0 })
        #expect(payload.count == expected.count)
        let same = payload == expected
        #expect(same, "the payload is not the upstream's events")
    }

    /// Over HTTP/2 with a small stream window (refilled as the client reads): the metered
    /// stream used to stop after one answer buffer (24,560 bytes) and wait for the backend's
    /// idle time-out.
    @Test func aMeteredStreamWaitingOnAnHTTP2WindowArrivesWhole() throws {
        let up = try FramedAnswers(tokens: 5000)
        defer { up.stop() }
        let full = FramedAnswers.body("/close", tokens: 5000)
        let gate = Gate(upstream: up.port)
        defer { gate.stop() }
        try gate.grant(100_000)
        let tg = try gate.serve()
        defer { tg.stop() }
        let a = try #require(try H2Client.request(gate.port, paths: ["/api/v1/prediction/close"], headers: ["x-api-key: \(Self.key)"],
                                                  extra: ["--method", "POST", "--window", "4096"]).first)
        #expect(a.status == 200)
        #expect(a.reset == nil)
        #expect(a.bodyLength == full.count)
    }

    /// A client socket with a 4 KiB receive buffer (set before connecting: the window is small
    /// from the start), a 10 s receive time-out.
    static func slowClient(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var small: Int32 = 4096
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, 4)
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        sin.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        if rc != 0 { Glibc.close(fd); throw HarnessError("connect \(port): errno \(errno)") }
        return fd
    }

    /// Strict chunked framing through the last chunk: the payload, or nil.
    static func dechunk(_ bytes: ArraySlice<UInt8>) -> [UInt8]? {
        var out: [UInt8] = []
        var i = bytes.startIndex
        func line() -> String? {
            guard let r = bytes[i...].firstRange(of: [13, 10]) else { return nil }
            defer { i = r.upperBound }
            return String(decoding: bytes[i..<r.lowerBound], as: UTF8.self)
        }
        while let l = line() {
            guard !l.isEmpty, l.count <= 8, let n = Int(l, radix: 16), n >= 0 else { return nil }
            if n == 0 { return line() == "" && i == bytes.endIndex ? out : nil }
            guard bytes.endIndex - i >= n + 2, bytes[(i + n)..<(i + n + 2)].elementsEqual([13, 10]) else { return nil }
            out += bytes[i..<(i + n)]
            i += n + 2
        }
        return nil
    }
}
