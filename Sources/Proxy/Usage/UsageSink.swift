import CSystem
import Glibc
import Policy
import Runtime
import Synchronization

/// Where a sink has delivered up to: a spool segment and a byte offset in it (always at a
/// line's start), kept in `spool/cursor-SINKID`.
struct SpoolPosition: Equatable {
    var segment: UInt64
    var offset: Int
}

/// One sink's delivery thread: reads the spool from its cursor, delivers whole lines in
/// batches, in order, and moves its cursor (written to disk) only after the sink took them.
/// A failing sink retries the same batch with back-off (0.1 s doubling to 5 s); the others and
/// the request path never wait for it.
final class UsageSinkRunner: @unchecked Sendable {
    // SAFETY: `position` is written by the sink thread under `positionLock` and read by the
    // spool writer (cleanup) and the metrics under it; the rest belongs to the sink thread.
    let spec: UsageSinkSpec
    unowned let spool: UsageSpool
    private let positionLock = Mutex(SpoolPosition(segment: 0, offset: 0))
    var position: SpoolPosition { positionLock.withLock { $0 } }
    let delivered = Atomic<UInt64>(0)
    let failed = Atomic<UInt64>(0)
    private let stopAt = Atomic<UInt64>(0)   // monotonic deadline once stopping; 0 = running
    private let wakeFD = WakeFD()
    private var thread: pthread_t?
    private let sink: any UsageSink
    static let batchBytes = 256 * 1024

    init(spec: UsageSinkSpec, spool: UsageSpool, oldest: UInt64) {
        self.spec = spec
        self.spool = spool
        switch spec.kind {
        case .file(let path, let rotate, let keep): sink = FileUsageSink(path: path, rotateBytes: rotate, keep: keep)
        case .redisStream(let stream, let maxLength):
            // The compiler refused a redis_stream sink without store.redis.
            sink = RedisStreamUsageSink(url: spool.store ?? RedisURL(endpoint: .tcp(host: "127.0.0.1", port: 6379)), stream: stream, maxLength: maxLength)
        case .http(let host, let port, let path, let format, let timeout, let batch, let tls, let caFile):
            sink = HTTPUsageSink(host: host, port: port, path: path, format: format, timeout: timeout, batch: batch,
                                 tls: tls, caFile: caFile)
        }
        let start = Self.readCursor(cursorPath) ?? SpoolPosition(segment: oldest, offset: 0)
        positionLock.withLock { $0 = start }
    }

    var cursorPath: String { spool.directory + "/cursor-" + spec.id }

    func start() {
        let box = UncheckedBox(self)
        thread = spawnThread(name: "tollgate-sink") { box.value.run() }
    }

    func wake() {
        wakeFD.wake()
    }

    /// Delivers what it can within `grace` seconds, then stops (the cursor says where it was).
    func stop(grace: Double) {
        stopAt.store(monotonicNanos() &+ UInt64(grace * 1e9), ordering: .sequentiallyConsistent)
        wake()
        if let t = thread { pthread_join(t, nil) }
        thread = nil
    }

    private func waitForWork(_ ms: Int32) {
        wakeFD.wait(ms)
    }

    private func run() {
        var backoff: Int32 = 100
        var buffer = [UInt8](repeating: 0, count: Self.batchBytes)
        var pos = position
        while true {
            let deadline = stopAt.load(ordering: .sequentiallyConsistent)
            if deadline != 0 && monotonicNanos() >= deadline { return }
            let (count, lines) = readBatch(at: pos, into: &buffer)
            if count == 0 {
                // Nothing new in this segment: on to the next one if the writer has moved on.
                if let next = nextSegment(after: pos.segment) {
                    pos = SpoolPosition(segment: next, offset: 0)
                    commit(pos)
                    continue
                }
                if deadline != 0 { return }   // stopping, and caught up
                waitForWork(200)
                continue
            }
            let taken = buffer.withUnsafeBytes { sink.deliver(UnsafeRawBufferPointer(rebasing: $0[0..<count]), lines: lines) }
            if taken > 0 {
                let n = taken == count ? lines : Self.countLines(buffer, taken)
                delivered.add(UInt64(n), ordering: .relaxed)
                pos.offset += taken
                commit(pos)
            }
            if taken == count {
                backoff = 100
            } else {
                failed.add(UInt64(lines - (taken == 0 ? 0 : Self.countLines(buffer, taken))), ordering: .relaxed)
                if deadline != 0 { return }
                waitForWork(backoff)
                backoff = min(backoff * 2, 5000)
            }
        }
    }

    /// Newlines in the first `n` bytes (memchr: a record is ~350 bytes).
    static func countLines(_ b: [UInt8], _ n: Int) -> Int {
        b.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return 0 }
            var at = 0
            var lines = 0
            while at < n, let nl = memchr(base + at, 0x0A, n - at) {
                lines += 1
                at = UnsafeRawPointer(nl) - base + 1
            }
            return lines
        }
    }

    /// Whole lines from `pos` (at most a batch): (bytes, lines).
    private func readBatch(at pos: SpoolPosition, into buffer: inout [UInt8]) -> (Int, Int) {
        let path = UsageSpool.segmentPath(spool.directory, pos.segment)
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return (0, 0) }
        defer { Glibc.close(fd) }
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, $0.count, off_t(pos.offset)) }
        if n <= 0 { return (0, 0) }
        // Up to the last newline: a line still being written (or torn) waits.
        var end = n
        var lines = 0
        while end > 0 && buffer[end - 1] != 0x0A { end -= 1 }
        lines = Self.countLines(buffer, end)
        if end == 0 && n == buffer.count {
            // One line longer than a batch cannot be: skip the segment's rest rather than stall.
            Log.error("usage: \(path) at \(pos.offset): a line longer than \(Self.batchBytes) bytes; skipped")
            return (0, 0)
        }
        return (end, lines)
    }

    /// The next segment, once the writer is past `segment` (its remaining bytes, if any,
    /// are a torn line from a crash: said and skipped).
    private func nextSegment(after segment: UInt64) -> UInt64? {
        guard segment < spool.current.load(ordering: .sequentiallyConsistent) else { return nil }
        return UsageSpool.segments(in: spool.directory).first { $0 > segment } ?? spool.current.load(ordering: .relaxed)
    }

    private func commit(_ p: SpoolPosition) {
        positionLock.withLock { $0 = p }
        Self.writeCursor(cursorPath, p)
    }

    static func readCursor(_ path: String) -> SpoolPosition? {
        guard let text = try? readSmallFile(path) else { return nil }
        let parts = text.split(separator: " ")
        guard parts.count >= 2, let s = UInt64(parts[0]), let o = Int(String(parts[1].filter { $0.isNumber })), o >= 0
        else { return nil }
        return SpoolPosition(segment: s, offset: o)
    }

    /// Written whole (temporary file, fsync, rename): a crash leaves the old cursor or the new.
    static func writeCursor(_ path: String, _ p: SpoolPosition) {
        let tmp = path + ".tmp"
        let fd = Glibc.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard fd >= 0 else { return }
        let text = Array("\(p.segment) \(p.offset)\n".utf8)
        _ = text.withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, $0.count) }
        _ = fdatasync(fd)
        Glibc.close(fd)
        _ = rename(tmp, path)
    }

    static func readSmallFile(_ path: String) throws -> String {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw Errno.current }
        defer { Glibc.close(fd) }
        var buf = [UInt8](repeating: 0, count: 256)
        let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
        if n < 0 { throw Errno.current }
        return String(decoding: buf[0..<n], as: UTF8.self)
    }
}

/// Where records go. `deliver` is called from the sink's own thread with whole JSON lines and
/// returns how many bytes of them (whole lines, from the start) the sink has taken — durably,
/// as far as it can say; fewer than given is a failure for the rest.
protocol UsageSink: Sendable {
    func deliver(_ lines: UnsafeRawBufferPointer, lines count: Int) -> Int
}

/// `kind: file`: JSON lines appended to a file, fsync'd per batch, rotated by size
/// (`path` → `path.1` → … → `path.KEEP`, the oldest removed).
final class FileUsageSink: UsageSink, @unchecked Sendable {
    // SAFETY: used by one sink thread only.
    let path: String
    let rotateBytes: Int
    let keep: Int
    private var fd: Int32 = -1
    private var size = 0

    init(path: String, rotateBytes: Int, keep: Int) {
        self.path = path
        self.rotateBytes = rotateBytes
        self.keep = keep
    }

    func deliver(_ lines: UnsafeRawBufferPointer, lines count: Int) -> Int {
        if fd < 0 && !open() { return 0 }
        if rotateBytes > 0 && size > 0 && size + lines.count > rotateBytes { rotate() ; if fd < 0 && !open() { return 0 } }
        var off = 0
        while off < lines.count {
            let w = Glibc.write(fd, lines.baseAddress! + off, lines.count - off)
            if w < 0 {
                if errno == EINTR { continue }
                // A partial batch is cut off again so the retry does not double its head.
                _ = ftruncate(fd, off_t(size))
                Glibc.close(fd)
                fd = -1
                return 0
            }
            off += w
        }
        guard fsync(fd) == 0 else {
            Glibc.close(fd)
            fd = -1
            return 0
        }
        size += lines.count
        return lines.count
    }

    private func open() -> Bool {
        var parts = path.split(separator: "/", omittingEmptySubsequences: false).dropLast()
        var prefix = path.hasPrefix("/") ? "" : "."
        if path.hasPrefix("/") { parts = parts.dropFirst() }
        for p in parts where !p.isEmpty {
            prefix += "/" + p
            _ = mkdir(prefix, 0o750)
        }
        fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        if fd < 0 { return false }
        var st = stat()
        size = fstat(fd, &st) == 0 ? Int(st.st_size) : 0
        return true
    }

    private func rotate() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
        if keep == 0 {
            unlink(path)
        } else {
            unlink("\(path).\(keep)")
            var i = keep - 1
            while i >= 1 { _ = rename("\(path).\(i)", "\(path).\(i + 1)"); i -= 1 }
            _ = rename(path, "\(path).1")
        }
        size = 0
    }
}
