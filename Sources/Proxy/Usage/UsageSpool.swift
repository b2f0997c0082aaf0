import CSystem
import Glibc
import Policy
import Runtime
import Synchronization

/// Usage records, spool first:
///
/// ```
/// loops ── fixed-size records ──► UsageQueue (ring, per loop)
///        writer thread, every 10 ms: drain, render JSON lines, append to the spool segment,
///        fdatasync every `durability` (group commit)
///        ──► spool/seg-NNNNNNNNNNNNNNNNNNNN.jsonl ──► one thread per sink, from its own cursor
///            (spool/cursor-SINKID: segment, offset), in order, at least once
/// ```
///
/// A record is on disk (written, and synced within `durability`) before any sink sees it; a
/// sink that fails retries the same batch with back-off and never holds the others or the
/// request path back; a segment is deleted once every sink's cursor is past it. Every record
/// has an id (`u-INSTANCE-LOOP-SEQ`) so a sink can drop the duplicates at-least-once delivery
/// allows (a crash between a delivery and its cursor's write).
final class UsageSpool: @unchecked Sendable {
    // SAFETY: `queues` is fixed before the writer starts. The segment fd, counters and
    // `renderBuffer` belong to the writer thread; `current` and `isStopping` are atomics;
    // sinks only read segment files and their own cursor.
    let spec: UsageSpec
    let directory: String
    let instance: String
    let counters: UsageCounters
    private(set) var queues: [UsageQueue] = []
    private(set) var sinks: [UsageSinkRunner] = []
    /// Per-key usage by hour, for `GET /v1/usage`.
    let aggregates: UsageAggregates
    private var lastAggregateSave: UInt64 = 0
    /// The segment being written (sinks move past a segment only when a newer one exists).
    let current = Atomic<UInt64>(0)
    let isStopping = Atomic<Bool>(false)
    private var fd: Int32 = -1
    private var segmentSize = 0
    private var lastSync: UInt64 = 0
    private var isFailing = false
    private var thread: pthread_t?
    private let wakeFD: Int32
    static let segmentBytes = 64 << 20
    static let drainInterval: Int32 = 10   // ms

    /// The store's Redis, for `redis_stream` sinks.
    let store: RedisURL?

    init(spec: UsageSpec, instance: String, loops: Int, store: RedisURL? = nil) throws(UsageError) {
        self.spec = spec
        self.store = store
        directory = spec.spool
        self.instance = String(instance.utf8.filter { Self.isIDByte($0) }.map { Character(Unicode.Scalar($0)) })
        counters = UsageCounters()
        let ev = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        if ev < 0 { throw UsageError("usage: eventfd: \(Errno.current)") }
        wakeFD = ev
        try Self.makeDirectory(directory)
        aggregates = UsageAggregates(path: spec.spool + "/aggregates.tsv")
        for i in 0..<loops { queues.append(UsageQueue(loopIndex: i, counters: counters)) }
        // A new segment per start: an older one may end in a torn line (sinks skip it).
        let existing = Self.segments(in: directory)
        let next = (existing.last ?? 0) + 1
        try openSegment(next)
        for s in spec.sinks { sinks.append(UsageSinkRunner(spec: s, spool: self, oldest: existing.first ?? next)) }
        MetricsRegistry.shared.register(usage: self)
    }

    static func isIDByte(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7A) || c == 0x2D || c == 0x2E
    }

    func start() {
        let box = UncheckedBox(self)
        thread = spawnThread(name: "tollgate-usage") { box.value.run() }
        for s in sinks { s.start() }
    }

    /// The loops are stopped: write what they left, fsync, and give the sinks a moment to
    /// deliver it (what they do not deliver now they deliver after the next start).
    func stop(sinkGrace: Double = 2) {
        isStopping.store(true, ordering: .sequentiallyConsistent)
        wake()
        if let t = thread { pthread_join(t, nil) }
        thread = nil
        for s in sinks { s.stop(grace: sinkGrace) }
    }

    private func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }

    // MARK: the writer thread

    /// The writer's render buffer (written out whenever it nears full, and after each drain).
    private let out = IOBuffer(capacity: 1 << 20)
    private var pending = 0
    private lazy var line = UsageLine(instance: instance)

    private func run() {
        var p = pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)
        while true {
            _ = poll(&p, 1, Self.drainInterval)
            var counter: UInt64 = 0
            _ = Glibc.read(wakeFD, &counter, 8)
            let stopping = isStopping.load(ordering: .sequentiallyConsistent)
            writeBatch()
            let now = monotonicNanos()
            if stopping || spec.durability == .zero || now &- lastSync >= spec.durability.nanoseconds {
                if fd >= 0 && segmentSize > 0 { _ = fdatasync(fd) }
                lastSync = now
            }
            if stopping {
                writeBatch()
                if fd >= 0 { _ = fsync(fd) }
                aggregates.saveIfDirty()
                return
            }
            if now &- lastAggregateSave >= 10_000_000_000 {
                lastAggregateSave = now
                aggregates.saveIfDirty()
            }
            deleteAcknowledgedSegments()
        }
    }

    private func writeBatch() {
        var n = 0
        for q in queues {
            n += q.drain { r in
                if out.writableBytes < UsageLine.maxBytes { writeRendered() }
                line.render(r.pointee, into: out)
                pending += 1
                aggregates.add(r)
            }
        }
        writeRendered()
        if n > 0 { for s in sinks { s.wake() } }
    }

    /// Appends what is rendered to the segment (rotating first when it would grow past its size).
    private func writeRendered() {
        guard pending > 0 else { out.clear(); return }
        if segmentSize + out.readableBytes > Self.segmentBytes && segmentSize > 0 {
            _ = fsync(fd)
            do { try openSegment(current.load(ordering: .relaxed) + 1) } catch { Log.error("\(error)") }
        }
        if writeAll(out.readable) {
            segmentSize += out.readableBytes
            counters.written.add(UInt64(pending), ordering: .relaxed)
            counters.spoolBytes.add(UInt64(out.readableBytes), ordering: .relaxed)
            if isFailing { isFailing = false; Log.info("usage: the spool is writable again") }
        } else {
            // Disk full or failing: these records cannot be kept. Counted, and said once per episode.
            counters.dropped.add(UInt64(pending), ordering: .relaxed)
            if !isFailing { isFailing = true; Log.error("usage: cannot write the spool (\(Errno.current)); records are being dropped") }
        }
        out.clear()
        pending = 0
    }

    private func writeAll(_ raw: UnsafeRawBufferPointer) -> Bool {
        guard fd >= 0 else { return false }
        let start = segmentSize
        let ok = { () -> Bool in
            var off = 0
            while off < raw.count {
                let w = Glibc.write(fd, raw.baseAddress! + off, raw.count - off)
                if w < 0 { if errno == EINTR { continue }; return false }
                off += w
            }
            return true
        }()
        // A partial batch would leave a torn line the next batch continues: cut it off.
        if !ok { _ = ftruncate(fd, off_t(start)); _ = lseek(fd, off_t(start), SEEK_SET) }
        return ok
    }

    private func openSegment(_ n: UInt64) throws(UsageError) {
        if fd >= 0 { Glibc.close(fd) }
        let path = Self.segmentPath(directory, n)
        fd = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        if fd < 0 { throw UsageError("usage: cannot open the spool segment \(path): \(Errno.current)") }
        segmentSize = 0
        current.store(n, ordering: .sequentiallyConsistent)
        Self.syncDirectory(directory)
    }

    /// Segments every sink's cursor has moved past (and that are not being written).
    private var lastCleanup: UInt64 = 0
    private func deleteAcknowledgedSegments() {
        let now = monotonicNanos()
        if now &- lastCleanup < 1_000_000_000 { return }
        lastCleanup = now
        let cur = current.load(ordering: .relaxed)
        let keepFrom = sinks.map { $0.position.segment }.min() ?? cur
        var bytes: UInt64 = 0
        for seg in Self.segments(in: directory) {
            let path = Self.segmentPath(directory, seg)
            if seg < keepFrom && seg < cur {
                unlink(path)
            } else {
                var st = stat()
                if stat(path, &st) == 0 { bytes += UInt64(st.st_size) }
            }
        }
        counters.spoolBytes.store(bytes, ordering: .relaxed)
    }

    /// Bytes written to the spool that `sink` has not delivered (segment sizes past its cursor).
    func lag(of sink: UsageSinkRunner) -> UInt64 {
        let p = sink.position
        var bytes: UInt64 = 0
        for seg in Self.segments(in: directory) where seg >= p.segment {
            var st = stat()
            guard stat(Self.segmentPath(directory, seg), &st) == 0 else { continue }
            let size = UInt64(st.st_size)
            bytes += seg == p.segment ? size - min(size, UInt64(p.offset)) : size
        }
        return bytes
    }

    // MARK: files

    static func segmentPath(_ dir: String, _ n: UInt64) -> String {
        var digits = String(n)
        digits = String(repeating: "0", count: max(0, 20 - digits.count)) + digits
        return dir + "/seg-" + digits + ".jsonl"
    }

    static func segments(in dir: String) -> [UInt64] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var out: [UInt64] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name.hasPrefix("seg-"), name.hasSuffix(".jsonl") else { continue }
            if let n = UInt64(name.dropFirst(4).dropLast(6)) { out.append(n) }
        }
        return out.sorted()
    }

    static func makeDirectory(_ path: String) throws(UsageError) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") where !part.isEmpty {
            prefix += "/" + part
            if mkdir(prefix, 0o750) != 0 && errno != EEXIST {
                throw UsageError("usage: cannot create the spool directory \(prefix): \(Errno.current)")
            }
        }
        var st = stat()
        guard stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            throw UsageError("usage: the spool \(path) is not a directory")
        }
    }

    static func syncDirectory(_ dir: String) {
        let d = Glibc.open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if d >= 0 { _ = fsync(d); Glibc.close(d) }
    }
}

struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A record as one JSON line (the spool's format, and what the file sink writes), rendered
/// straight into the writer's buffer (no allocation per record).
struct UsageLine {
    /// The longest line: fixed text, six text fields of 64 bytes each escaped at worst
    /// (`\u00XX`), numbers, the instance.
    static let maxBytes = 4096
    let instance: [UInt8]
    /// The wall-clock second whose `YYYY-MM-DDTHH:MM:SS.` is cached.
    private var second: Int64 = -1
    private var secondText = [UInt8](repeating: 0, count: 20)

    init(instance: String) { self.instance = Array(instance.utf8.prefix(256)) }

    mutating func render(_ r: UsageRecord, into out: IOBuffer) {
        out.write("{\"id\":\"u-")
        out.write(instance)
        out.write(byte: 0x2D)
        out.write(decimal: Int(r.loop))
        out.write(byte: 0x2D)
        out.write(decimal: Int(truncatingIfNeeded: r.seq))
        out.write("\",\"time\":\"")
        writeTime(r.time, into: out)
        out.write("\",\"request_id\":")
        Self.text(r.requestID, into: out)
        out.write(",\"key_id\":")
        Self.text(r.keyID, into: out)
        out.write(",\"consumer\":")
        Self.text(r.consumer, into: out)
        out.write(",\"route\":")
        Self.text(r.route, into: out)
        out.write(",\"method\":")
        Self.text(r.method, into: out)
        out.write(",\"status\":")
        out.write(decimal: Int(r.status))
        out.write(",\"code\":\"")
        out.write(string: Int(r.code) < MetricCode.names.count ? MetricCode.names[Int(r.code)] : "-")
        out.write("\",\"duration_ms\":")
        out.write(decimal: Int(r.durationNanos / 1_000_000))
        out.write(byte: 0x2E)
        let micros = Int((r.durationNanos / 1_000) % 1_000)
        if micros < 100 { out.write(byte: 0x30) }
        if micros < 10 { out.write(byte: 0x30) }
        out.write(decimal: micros)
        out.write(",\"bytes_in\":")
        out.write(decimal: Int(r.bytesIn))
        out.write(",\"bytes_out\":")
        out.write(decimal: Int(r.bytesOut))
        out.write(",\"credits\":")
        out.write(decimal: Int(r.credits))
        out.write(",\"tokens_in\":")
        out.write(decimal: Int(r.tokensIn))
        out.write(",\"tokens_out\":")
        out.write(decimal: Int(r.tokensOut))
        out.write(",\"upstream\":")
        Self.text(r.upstream, into: out)
        switch r.secret {
        case 1: out.write(",\"secret\":\"consumer\"")
        case 2: out.write(",\"secret\":\"system\"")
        default: out.write(",\"secret\":null")
        }
        out.write(",\"instance\":\"")
        out.write(instance)
        out.write("\"}\n")
    }

    /// `null`, or the text as a JSON string (a field longer than a record keeps ends in `…`).
    static func text(_ t: InlineText, into out: IOBuffer) {
        if t.isEmpty { out.write("null"); return }
        out.write(byte: 0x22)
        t.withBytes { b in
            var plain = 0
            for (i, c) in b.enumerated() where c < 0x20 || c == 0x22 || c == 0x5C {
                if i > plain { out.write(UnsafeRawBufferPointer(rebasing: b[plain..<i])) }
                plain = i + 1
                switch c {
                case 0x22: out.write("\\\"")
                case 0x5C: out.write("\\\\")
                default:
                    out.write("\\u00")
                    out.write(byte: Hex.digit(c >> 4))
                    out.write(byte: Hex.digit(c & 15))
                }
            }
            if plain < b.count { out.write(UnsafeRawBufferPointer(rebasing: b[plain...])) }
        }
        if t.isTruncated { out.write("…") }
        out.write(byte: 0x22)
    }

    /// RFC 3339 UTC with milliseconds (the date and time text computed once a second).
    mutating func writeTime(_ nanos: Int64, into out: IOBuffer) {
        let sec = nanos / 1_000_000_000
        if sec != second {
            second = sec
            var t = time_t(sec)
            var tm = tm()
            gmtime_r(&t, &tm)
            let y = Int(tm.tm_year) + 1900
            var b = [UInt8]()
            b.reserveCapacity(20)
            b += [UInt8(0x30 + y / 1000 % 10), UInt8(0x30 + y / 100 % 10), UInt8(0x30 + y / 10 % 10), UInt8(0x30 + y % 10), 0x2D]
            func two(_ v: Int32) { b.append(0x30 &+ UInt8(v / 10)); b.append(0x30 &+ UInt8(v % 10)) }
            two(tm.tm_mon + 1); b.append(0x2D); two(tm.tm_mday); b.append(0x54)
            two(tm.tm_hour); b.append(0x3A); two(tm.tm_min); b.append(0x3A); two(tm.tm_sec); b.append(0x2E)
            secondText = b
        }
        out.write(secondText)
        let ms = Int((nanos / 1_000_000) % 1000)
        out.write(byte: UInt8(0x30 + ms / 100)); out.write(byte: UInt8(0x30 + ms / 10 % 10)); out.write(byte: UInt8(0x30 + ms % 10))
        out.write(byte: 0x5A)
    }
}
