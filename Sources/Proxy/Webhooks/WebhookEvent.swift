import Foundation
import Glibc
import Policy

/// One event as spooled: its body is rendered once, when it is emitted, and those exact bytes
/// are signed and sent on every attempt (and after a restart).
struct WebhookEvent: Sendable {
    /// `msg_<32 hex>`: the `webhook-id` header, the same on every attempt.
    var id: String
    var type: WebhookEventType
    var consumer: String?
    var subject: String
    /// Wall clock, milliseconds: the body's `timestamp`.
    var millis: Int64
    /// The endpoints (`WebhookSpec.id`) that want it.
    var endpoints: [String]
    /// `{"type":…,"timestamp":…,"data":{…}}`.
    var body: [UInt8]

    static func newID() -> String {
        var g = SystemRandomNumberGenerator()
        let a = g.next() as UInt64, b = g.next() as UInt64
        func hex(_ v: UInt64) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }
        return "msg_" + hex(a) + hex(b)
    }

    init(id: String, type: WebhookEventType, consumer: String?, subject: String, millis: Int64,
         endpoints: [String], body: [UInt8]) {
        self.id = id; self.type = type; self.consumer = consumer; self.subject = subject
        self.millis = millis; self.endpoints = endpoints; self.body = body
    }

    /// A new event: `data` is `subject`, then `consumer` (unless `data` names one), then `data`.
    init(type: WebhookEventType, consumer: String?, subject: String, data: [(String, AuditValue)], endpoints: [String]) {
        let millis = AuditFormat.nowMillis()
        var fields: [(String, AuditValue)] = [("subject", .string(subject))]
        if let consumer, !data.contains(where: { $0.0 == "consumer" }) { fields.append(("consumer", .string(consumer))) }
        fields += data
        var body: [UInt8] = []
        body.reserveCapacity(256)
        AuditFormat.append(.object([("type", .string(type.rawValue)), ("timestamp", .string(AuditFormat.time(millis: millis))),
                                    ("data", .object(fields))]), to: &body)
        self.init(id: Self.newID(), type: type, consumer: consumer, subject: subject, millis: millis,
                  endpoints: endpoints, body: body)
    }

    /// The spool line (no newline): `{"op":"event","id",…,"endpoints":[…],"body":<body>}`; the
    /// body is the last member, kept byte for byte.
    var line: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(body.count + 200)
        out += Array(#"{"op":"event","id":"#.utf8); AuditFormat.appendString(id, to: &out)
        out += Array(#","type":"#.utf8); AuditFormat.appendString(type.rawValue, to: &out)
        out += Array(#","consumer":"#.utf8); AuditFormat.append(.optional(consumer), to: &out)
        out += Array(#","subject":"#.utf8); AuditFormat.appendString(subject, to: &out)
        out += Array(#","time":"#.utf8) + Array(String(millis).utf8)
        out += Array(#","endpoints":"#.utf8); AuditFormat.append(.strings(endpoints), to: &out)
        out += Self.bodyMember + body + [0x7D]
        return out
    }

    static let bodyMember = Array(#","body":"#.utf8)

    /// An event line read back; nil for anything else (a torn last line, another op).
    static func parse(_ line: ArraySlice<UInt8>) -> WebhookEvent? {
        guard let at = JournalLine.find(bodyMember, in: line), line.last == 0x7D else { return nil }
        let head = Array(line[line.startIndex..<at]) + [0x7D]
        guard let o = try? JSONSerialization.jsonObject(with: Data(head)) as? [String: Any], o["op"] as? String == "event",
              let id = o["id"] as? String, let t = (o["type"] as? String).flatMap(WebhookEventType.init(rawValue:)),
              let time = (o["time"] as? NSNumber)?.int64Value else { return nil }
        let body = Array(line[(at + bodyMember.count)..<(line.endIndex - 1)])
        guard (try? JSONSerialization.jsonObject(with: Data(body))) != nil else { return nil }
        return WebhookEvent(id: id, type: t, consumer: o["consumer"] as? String, subject: o["subject"] as? String ?? "",
                            millis: time, endpoints: o["endpoints"] as? [String] ?? [], body: body)
    }
}

/// The other spool lines: `{"op":"try"|"done"|"dead","id":…,"endpoint":…,"attempts":n,"due":ms}`.
struct JournalLine {
    enum Op: String { case attempt = "try", done, dead }
    var op: Op
    var id: String
    var endpoint: String
    var attempts: Int
    var due: Int64

    var line: [UInt8] {
        var out = Array(#"{"op":"#.utf8)
        AuditFormat.appendString(op.rawValue, to: &out)
        out += Array(#","id":"#.utf8); AuditFormat.appendString(id, to: &out)
        out += Array(#","endpoint":"#.utf8); AuditFormat.appendString(endpoint, to: &out)
        out += Array(",\"attempts\":\(attempts),\"due\":\(due)}".utf8)
        return out
    }

    static func parse(_ line: ArraySlice<UInt8>) -> JournalLine? {
        guard let o = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
              let op = (o["op"] as? String).flatMap(Op.init(rawValue:)), let id = o["id"] as? String,
              let ep = o["endpoint"] as? String else { return nil }
        return JournalLine(op: op, id: id, endpoint: ep, attempts: (o["attempts"] as? NSNumber)?.intValue ?? 0,
                           due: (o["due"] as? NSNumber)?.int64Value ?? 0)
    }

    static func find(_ needle: [UInt8], in hay: ArraySlice<UInt8>) -> Int? {
        guard hay.count >= needle.count, let first = needle.first else { return nil }
        var i = hay.startIndex
        while i <= hay.endIndex - needle.count {
            if hay[i] == first && hay[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }
}

/// Small file helpers for the spool (background threads and the command line only).
enum SpoolFile {
    static func readAll(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 { if errno == EINTR { continue }; return nil }
            if n == 0 { return out }
            out += chunk[0..<n]
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let w = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, $0.count - off) }
            if w < 0 { if errno == EINTR { continue }; return false }
            off += w
        }
        return true
    }

    /// Appends and fsyncs (the dead-letter file).
    static func append(_ path: String, _ bytes: [UInt8]) -> Bool {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        if fd < 0 { return false }
        defer { close(fd) }
        return writeAll(fd, bytes) && fsync(fd) == 0
    }

    /// Written whole: a temporary file, fsync, rename, the directory fsync'd.
    static func replace(_ path: String, _ bytes: [UInt8], directory: String) -> Bool {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        if fd < 0 { return false }
        let ok = writeAll(fd, bytes) && fsync(fd) == 0
        close(fd)
        guard ok, rename(tmp, path) == 0 else { unlink(tmp); return false }
        UsageSpool.syncDirectory(directory)
        return true
    }

    static func names(in dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { out.append(name) }
        }
        return out.sorted()
    }

    /// Lines (without newlines) of a byte buffer; a last line without its newline is left out
    /// (a torn write).
    static func lines(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        var out: [ArraySlice<UInt8>] = []
        var start = 0
        for (i, b) in bytes.enumerated() where b == 0x0A {
            if i > start { out.append(bytes[start..<i]) }
            start = i + 1
        }
        return out
    }
}
