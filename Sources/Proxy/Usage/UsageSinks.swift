import CHiredis
import CSystem
import Glibc
import Policy
import Runtime

/// A batch of whole JSON lines (each ending in `\n`), split without copying.
struct UsageLines: Sequence {
    let bytes: UnsafeRawBufferPointer

    struct Iterator: IteratorProtocol {
        let bytes: UnsafeRawBufferPointer
        var at = 0
        /// The line without its newline, and the offset just past it.
        mutating func next() -> (line: UnsafeRawBufferPointer, end: Int)? {
            guard at < bytes.count, let base = bytes.baseAddress else { return nil }
            guard let nl = memchr(base + at, 0x0A, bytes.count - at) else { return nil }
            let e = UnsafeRawPointer(nl) - base
            let line = UnsafeRawBufferPointer(start: base + at, count: e - at)
            at = e + 1
            return (line, at)
        }
    }

    func makeIterator() -> Iterator { Iterator(bytes: bytes) }

    /// A string field of one of our own lines (no escapes inside ids and names we look up).
    static func field(_ line: UnsafeRawBufferPointer, _ name: StaticString) -> UnsafeRawBufferPointer? {
        // `"name":"value"`
        let n = name.utf8CodeUnitCount
        guard let base = line.baseAddress, line.count > n + 4 else { return nil }
        var i = 0
        while i + n + 4 <= line.count {
            if base.load(fromByteOffset: i, as: UInt8.self) == 0x22, memcmp(base + i + 1, name.utf8Start, n) == 0,
               base.load(fromByteOffset: i + n + 1, as: UInt8.self) == 0x22, base.load(fromByteOffset: i + n + 2, as: UInt8.self) == 0x3A {
                let v = i + n + 3
                guard base.load(fromByteOffset: v, as: UInt8.self) == 0x22 else { return nil }   // null
                var e = v + 1
                while e < line.count && base.load(fromByteOffset: e, as: UInt8.self) != 0x22 {
                    if base.load(fromByteOffset: e, as: UInt8.self) == 0x5C { e += 1 }
                    e += 1
                }
                return UnsafeRawBufferPointer(start: base + v + 1, count: Swift.min(e, line.count) - v - 1)
            }
            i += 1
        }
        return nil
    }

    /// An integer field of one of our own lines.
    static func intField(_ line: UnsafeRawBufferPointer, _ name: StaticString) -> Int64 {
        let n = name.utf8CodeUnitCount
        guard let base = line.baseAddress else { return 0 }
        var i = 0
        while i + n + 3 < line.count {
            if base.load(fromByteOffset: i, as: UInt8.self) == 0x22, memcmp(base + i + 1, name.utf8Start, n) == 0,
               base.load(fromByteOffset: i + n + 1, as: UInt8.self) == 0x22, base.load(fromByteOffset: i + n + 2, as: UInt8.self) == 0x3A {
                var v: Int64 = 0
                var k = i + n + 3
                while k < line.count, case let c = base.load(fromByteOffset: k, as: UInt8.self), c >= 0x30 && c <= 0x39 {
                    v = v &* 10 &+ Int64(c - 0x30)
                    k += 1
                }
                return v
            }
            i += 1
        }
        return 0
    }
}

/// `kind: redis_stream`: `XADD stream MAXLEN ~ N * id <record id> record <json>`, the batch
/// pipelined on one blocking hiredis connection (the sink's own thread), reconnected after
/// any failure. A partly applied batch is delivered again from its first unconfirmed entry
/// (the `id` field lets a reader drop the rare duplicate).
final class RedisStreamUsageSink: UsageSink, @unchecked Sendable {
    // SAFETY: used by one sink thread only.
    let url: RedisURL
    let stream: String
    let maxLength: Int
    private var ctx: UnsafeMutablePointer<redisContext>?

    init(url: RedisURL, stream: String, maxLength: Int) {
        self.url = url
        self.stream = stream
        self.maxLength = maxLength
    }

    deinit { if let c = ctx { redisFree(c) } }

    private func connect() -> Bool {
        if ctx != nil { return true }
        let tv = timeval(tv_sec: 2, tv_usec: 0)
        let made: UnsafeMutablePointer<redisContext>?
        switch url.endpoint {
        case .tcp(let host, let port): made = redisConnectWithTimeout(host, Int32(port), tv)
        case .unix(let path): made = redisConnectUnixWithTimeout(path, tv)
        }
        guard let c = made else { return false }
        if c.pointee.err != 0 { redisFree(c); return false }
        _ = redisSetTimeout(c, tv)
        ctx = c
        var ok = true
        if let pass = url.password {
            ok = command(url.username.map { ["AUTH", $0, pass] } ?? ["AUTH", pass])
        }
        if ok && url.database != 0 { ok = command(["SELECT", String(url.database)]) }
        if !ok { disconnect() }
        return ok
    }

    private func disconnect() {
        if let c = ctx { redisFree(c) }
        ctx = nil
    }

    private func command(_ args: [String]) -> Bool {
        guard append(args.map { Array($0.utf8) }) else { return false }
        return readReply()
    }

    private func append(_ args: [[UInt8]]) -> Bool {
        guard let c = ctx else { return false }
        var ptrs: [UnsafePointer<CChar>?] = []
        var lens: [Int] = []
        var storage: [UnsafeMutableRawPointer] = []
        for a in args {
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(1, a.count), alignment: 1)
            a.withUnsafeBytes { if let b = $0.baseAddress { p.copyMemory(from: b, byteCount: a.count) } }
            storage.append(p)
            ptrs.append(UnsafePointer(p.assumingMemoryBound(to: CChar.self)))
            lens.append(a.count)
        }
        defer { storage.forEach { $0.deallocate() } }
        return redisAppendCommandArgv(c, Int32(args.count), &ptrs, &lens) == REDIS_OK
    }

    private func readReply() -> Bool {
        guard let c = ctx else { return false }
        var raw: UnsafeMutableRawPointer?
        guard redisGetReply(c, &raw) == REDIS_OK, let r = raw else { return false }
        defer { freeReplyObject(r) }
        return r.assumingMemoryBound(to: redisReply.self).pointee.type != REDIS_REPLY_ERROR
    }

    func deliver(_ lines: UnsafeRawBufferPointer, lines count: Int) -> Int {
        guard connect() else { return 0 }
        var ends: [Int] = []
        for (line, end) in UsageLines(bytes: lines) {
            let id = UsageLines.field(line, "id").map { Array($0) } ?? []
            let args: [[UInt8]] = [Array("XADD".utf8), Array(stream.utf8), Array("MAXLEN".utf8), [0x7E], Array(String(maxLength).utf8),
                                   [0x2A], Array("id".utf8), id, Array("record".utf8), Array(line)]
            guard append(args) else { disconnect(); return 0 }
            ends.append(end)
        }
        var delivered = 0
        for end in ends {
            guard readReply() else {
                disconnect()   // the rest of the pipeline is in an unknown state
                return delivered
            }
            delivered = end
        }
        return delivered
    }
}

/// `kind: http`: batches POSTed over a kept-alive HTTP/1.1 connection (blocking, on the sink's
/// own thread, every wait bounded by `timeout`). A 2xx accepts; anything else (or a
/// time-out) is a failure and the batch is tried again later.
/// - `json`: a JSON array of up to `batch` records, `Idempotency-Key: <first record id>`.
/// - `accounting`: one `POST` per record in seed 003's shape — `{"service": route, "operation":
///   method, "credits", "metadata": record}` for the record's consumer (`X-Tollgate-Consumer`),
///   `Idempotency-Key: <record id>` so the accounting service applies each record once. A
///   record without a consumer (a refused unknown key) has nobody to bill and is skipped.
final class HTTPUsageSink: UsageSink, @unchecked Sendable {
    // SAFETY: used by one sink thread only.
    let path: String
    let format: UsageSinkSpec.HTTPFormat
    let batch: Int
    private let client: BlockingHTTPClient

    /// The TLS set-up failed (an unreadable CA file): nothing is sent (never in clear text to
    /// an https endpoint); the records stay spooled and the log says why.
    private let tlsFailure: String?

    init(host: String, port: UInt16, path: String, format: UsageSinkSpec.HTTPFormat, timeout: Duration, batch: Int,
         tls: Bool = false, caFile: String? = nil) {
        self.path = path
        self.format = format
        self.batch = batch
        var context: BlockingTLS?
        var why = ""
        if tls {
            context = BlockingTLS(caFile: caFile, error: &why)
            if context == nil { Log.error("usage sink https://\(host):\(port)\(path): \(why); records stay spooled") }
        }
        tlsFailure = tls && context == nil ? why : nil
        client = BlockingHTTPClient(host: host, port: port, timeout: timeout, tls: context)
    }

    func deliver(_ lines: UnsafeRawBufferPointer, lines count: Int) -> Int {
        if tlsFailure != nil { return 0 }
        var delivered = 0
        var body: [UInt8] = []
        var inBatch = 0
        var firstID: [UInt8] = []
        var batchEnd = 0
        for (line, end) in UsageLines(bytes: lines) {
            switch format {
            case .json:
                if inBatch == 0 { body = [0x5B]; firstID = UsageLines.field(line, "id").map { Array($0) } ?? [] } else { body.append(0x2C) }
                body.append(contentsOf: line)
                inBatch += 1
                batchEnd = end
                if inBatch == batch {
                    body.append(0x5D)
                    guard post(body, idempotencyKey: firstID, consumer: nil) else { return delivered }
                    delivered = batchEnd
                    inBatch = 0
                }
            case .accounting:
                guard let consumer = UsageLines.field(line, "consumer") else { delivered = end; continue }
                let id = UsageLines.field(line, "id").map { Array($0) } ?? []
                var b = Array("{\"service\":".utf8)
                if let route = UsageLines.field(line, "route") { b.append(0x22); b.append(contentsOf: route); b.append(0x22) } else {
                    b.append(contentsOf: "\"tollgate\"".utf8)
                }
                b.append(contentsOf: ",\"operation\":".utf8)
                if let method = UsageLines.field(line, "method") { b.append(0x22); b.append(contentsOf: method); b.append(0x22) } else {
                    b.append(contentsOf: "\"request\"".utf8)
                }
                b.append(contentsOf: ",\"credits\":\(UsageLines.intField(line, "credits")),\"metadata\":".utf8)
                b.append(contentsOf: line)
                b.append(0x7D)
                guard post(b, idempotencyKey: id, consumer: Array(consumer)) else { return delivered }
                delivered = end
            }
        }
        if format == .json && inBatch > 0 {
            body.append(0x5D)
            guard post(body, idempotencyKey: firstID, consumer: nil) else { return delivered }
            delivered = batchEnd
        }
        return delivered
    }

    /// One request and its answer; true on 2xx.
    private func post(_ body: [UInt8], idempotencyKey: [UInt8], consumer: [UInt8]?) -> Bool {
        var headers = [("Content-Type", "application/json"), ("Idempotency-Key", String(decoding: idempotencyKey, as: UTF8.self))]
        if let consumer { headers.append(("X-Tollgate-Consumer", String(decoding: consumer, as: UTF8.self))) }
        guard let a = client.request("POST", path, headers: headers, body: body, keepBody: 0) else { return false }
        return a.status >= 200 && a.status < 300
    }
}
