import CSystem
import Glibc
import Policy
import Runtime
import Synchronization

/// Where access log lines go: a file (appended, reopened on SIGHUP for rotation) or standard
/// output. One background thread writes; loops hand it whole buffers and never wait for it.
///
/// ```
/// loop ── line ──► AccessLogBuffer (64 KiB, per loop) ── full, or 100 ms ──► queue ──► writer thread ──► write(2)
/// ```
/// The queue is bounded (8 MiB): when the disk cannot keep up, whole buffers are dropped and
/// counted (`tollgate_access_log_dropped_total`), a warning is logged once per episode, and
/// requests never slow down. Usage records, which must never be lost, are not this.
final class AccessLogWriter: @unchecked Sendable {
    // SAFETY: `fd` and `path` are touched only under `state`'s lock or by the writer thread
    // while it holds the lock to swap them (reopen); the queue is under the lock.
    enum Target: Sendable, Equatable { case stdout, file(String) }

    private struct State {
        var queue: [[UInt8]] = []
        var queuedBytes = 0
        var isStopping = false
        var isDropping = false
        var fd: Int32 = -1
        var reopenRequested = false
    }
    private let state = Mutex(State())
    private let wakeFD: Int32
    let target: Target
    static let maxQueuedBytes = 8 << 20
    private var thread: pthread_t?

    /// The policy's `access_log` target.
    static func target(of snapshot: PolicySnapshot) -> Target? {
        switch snapshot.accessLog?.target {
        case .none: return nil
        case .stdout?: return .stdout
        case .file(let path)?: return .file(path)
        }
    }

    init(target: Target) throws(Errno) {
        self.target = target
        let fd = try Self.open(target)
        state.withLock { $0.fd = fd }
        let ev = eventfd(0, Int32(EFD_CLOEXEC))
        if ev < 0 { throw Errno.current }
        wakeFD = ev
        let box = UncheckedBox(self)
        thread = spawnThread(name: "tollgate-alog") { box.value.run() }
    }

    private static func open(_ t: Target) throws(Errno) -> Int32 {
        switch t {
        case .stdout: return 1
        case .file(let path):
            makeParentDirectories(of: path)
            let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            if fd < 0 { throw Errno.current }
            return fd
        }
    }

    /// `mkdir -p` of the file's directory (0750), so a fresh checkout can log where it is told.
    private static func makeParentDirectories(of path: String) {
        var parts = path.split(separator: "/", omittingEmptySubsequences: false).dropLast()
        var prefix = path.hasPrefix("/") ? "" : "."
        if path.hasPrefix("/") { parts = parts.dropFirst() }
        for p in parts where !p.isEmpty {
            prefix += "/" + p
            _ = mkdir(prefix, 0o750)
        }
    }

    /// A full buffer from a loop (any thread). Never blocks on I/O.
    func submit(_ bytes: [UInt8]) {
        let accepted = state.withLock { s -> Bool in
            if s.queuedBytes + bytes.count > Self.maxQueuedBytes {
                if !s.isDropping { s.isDropping = true; Log.warn("access log: the writer is behind; dropping lines until it catches up") }
                return false
            }
            s.isDropping = false
            s.queue.append(bytes)
            s.queuedBytes += bytes.count
            return true
        }
        if accepted { wake() } else {
            MetricsRegistry.shared.accessLogDropped.add(UInt64(Self.lineCount(bytes)), ordering: .relaxed)
        }
    }

    /// Log rotation: the file is reopened by name before the next write.
    func reopen() {
        state.withLock { $0.reopenRequested = true }
        wake()
    }

    /// Writes what is queued and stops the thread (after the loops have handed in their last buffers).
    func stop() {
        state.withLock { $0.isStopping = true }
        wake()
        if let t = thread { pthread_join(t, nil) }
        thread = nil
        state.withLock { s in if s.fd > 2 { Glibc.close(s.fd); s.fd = -1 } }
    }

    private func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }

    private func run() {
        while true {
            var counter: UInt64 = 0
            _ = Glibc.read(wakeFD, &counter, 8)
            while true {
                let (batch, fd, stopping, reopen) = state.withLock { s -> ([[UInt8]], Int32, Bool, Bool) in
                    let b = s.queue
                    s.queue.removeAll()
                    s.queuedBytes = 0
                    let r = s.reopenRequested
                    s.reopenRequested = false
                    return (b, s.fd, s.isStopping, r)
                }
                if reopen, case .file = target, let nfd = try? Self.open(target) {
                    state.withLock { s in
                        if s.fd > 2 { Glibc.close(s.fd) }
                        s.fd = nfd
                    }
                    continue
                }
                for chunk in batch { Self.writeAll(fd, chunk) }
                if batch.isEmpty {
                    if stopping { return }
                    break
                }
            }
        }
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 { if errno == EINTR { continue }; return }
                off += n
            }
        }
    }

    static func lineCount(_ b: [UInt8]) -> Int { b.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) } }
}

/// One loop's pending access log lines; handed to the writer when full, every 100 ms, and at
/// shutdown.
final class AccessLogBuffer: TimerHandler {
    let writer: AccessLogWriter
    let buffer: IOBuffer
    static let capacity = 64 * 1024
    static let flushInterval: UInt64 = 100_000_000
    private var isTimerArmed = false
    /// Wall-clock second whose RFC 3339 text is cached in `secondText`.
    private var cachedSecond = -1
    private var secondText: (UInt64, UInt64, UInt64) = (0, 0, 0)   // "2026-12-05T21:46:40." (20 bytes)

    init(writer: AccessLogWriter) {
        self.writer = writer
        buffer = IOBuffer(capacity: Self.capacity)
    }

    /// Room for a line of up to `bytes`; hands the buffer over first when it is too full.
    func reserve(_ bytes: Int, loop: EventLoop) {
        if buffer.writableBytes < bytes { flush() }
        if !isTimerArmed {
            isTimerArmed = true
            loop.schedule(at: loop.now &+ Self.flushInterval, handler: self)
        }
    }

    func timerFired(loop: EventLoop) {
        isTimerArmed = false
        flush()
    }

    func flush() {
        guard buffer.readableBytes > 0 else { return }
        writer.submit(Array(buffer.readable))
        buffer.clear()
    }

    /// `"2026-12-05T21:46:40.123Z"` (with the quotes) for the current wall-clock time.
    func writeTime() {
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        let sec = t.tv_sec
        if sec != cachedSecond {
            cachedSecond = sec
            var tm = tm()
            var s = sec
            gmtime_r(&s, &tm)
            withUnsafeMutableBytes(of: &secondText) { raw in
                var i = 0
                func put(_ v: Int32, _ digits: Int) {
                    var d = digits
                    var x = Int(v)
                    while d > 0 { raw[i + d - 1] = UInt8(0x30 + x % 10); x /= 10; d -= 1 }
                    i += digits
                }
                put(tm.tm_year + 1900, 4); raw[i] = 0x2D; i += 1
                put(tm.tm_mon + 1, 2); raw[i] = 0x2D; i += 1
                put(tm.tm_mday, 2); raw[i] = 0x54; i += 1
                put(tm.tm_hour, 2); raw[i] = 0x3A; i += 1
                put(tm.tm_min, 2); raw[i] = 0x3A; i += 1
                put(tm.tm_sec, 2); raw[i] = 0x2E
            }
        }
        buffer.write(byte: 0x22)
        withUnsafeBytes(of: &secondText) { buffer.write($0.baseAddress!, count: 20) }
        let ms = Int(t.tv_nsec / 1_000_000)
        buffer.write(byte: UInt8(0x30 + ms / 100))
        buffer.write(byte: UInt8(0x30 + ms / 10 % 10))
        buffer.write(byte: UInt8(0x30 + ms % 10))
        buffer.write(byte: 0x5A)
        buffer.write(byte: 0x22)
    }
}

/// One JSON object per answered request (never the key: its id and consumer only).
/// `{"time":…,"request_id":…,"client":…,"method":…,"path":…,"route":…,"key_id":…,"consumer":…,
///   "code":…,"status":…,"bytes_in":…,"bytes_out":…,"duration_ms":…,"upstream":…}`
enum AccessLogLine {
    static let tTime: StaticString = "{\"time\":"
    static let tRequestID: StaticString = ",\"request_id\":\""
    static let tClient: StaticString = "\",\"client\":\""
    static let tMethod: StaticString = "\",\"method\":\""
    static let tPath: StaticString = "\",\"path\":"
    static let tRoute: StaticString = ",\"route\":"
    static let tKeyID: StaticString = ",\"key_id\":"
    static let tConsumer: StaticString = ",\"consumer\":"
    static let tCode: StaticString = ",\"code\":\""
    static let tStatus: StaticString = "\",\"status\":"
    static let tBytesIn: StaticString = ",\"bytes_in\":"
    static let tBytesOut: StaticString = ",\"bytes_out\":"
    static let tDuration: StaticString = ",\"duration_ms\":"
    static let tUpstream: StaticString = ",\"upstream\":"
    static let tEnd: StaticString = "}\n"
    static let null: StaticString = "null"
    static let aborted: StaticString = "ABORTED"

    /// The longest line this writes: fixed text, a path of up to the target limit (escaped up
    /// to 6 bytes each), names of up to 256 bytes each.
    static func bound(pathBytes: Int) -> Int { 512 + pathBytes * 6 + 4 * 256 * 6 }

    static func write(_ x: Exchange, nanos: UInt64, into log: AccessLogBuffer) {
        let f = x.facts
        let pathCount = f.pathCount
        log.reserve(bound(pathBytes: pathCount), loop: x.context.loop)
        let out = log.buffer
        let mark = out.writerIndex
        out.isOverflowed = false
        out.write(tTime)
        log.writeTime()
        out.write(tRequestID)
        x.withRequestID { out.write($0) }
        out.write(tClient)
        switch x.downstream {
        case .h1(let s) where f.clientIP == s.peerIP: s.peer.text.withUnsafeBytes { out.write($0) }
        case .h2(let s) where f.clientIP == s.session.peerIP: s.session.peer.text.withUnsafeBytes { out.write($0) }
        default: out.write(string: f.clientIP.description)
        }
        out.write(tMethod)
        x.writeMethod(into: out)
        out.write(tPath)
        if pathCount > 0 {
            out.write(byte: 0x22)
            escape(UnsafeRawBufferPointer(start: x.pathBuffer, count: pathCount), into: out)
            out.write(byte: 0x22)
        } else {
            out.write(null)
        }
        let route = f.routeIndex >= 0 && f.routeIndex < f.snapshot.routes.count ? f.snapshot.routes[f.routeIndex] : nil
        out.write(tRoute)
        quoted(route?.name, into: out)
        out.write(tKeyID)
        quoted(f.record?.id, into: out)
        out.write(tConsumer)
        quoted(f.record?.consumer, into: out)
        out.write(tCode)
        if x.answerStatus == 0 { out.write(aborted) } else { out.write(string: MetricCode.names[x.answerCode]) }
        out.write(tStatus)
        out.write(decimal: x.answerStatus == 0 ? 499 : x.answerStatus)
        out.write(tBytesIn)
        out.write(decimal: Int(x.bytesIn))
        out.write(tBytesOut)
        out.write(decimal: Int(x.bytesOut))
        out.write(tDuration)
        out.write(decimal: Int(nanos / 1_000_000))
        out.write(byte: 0x2E)
        let micros = Int(nanos / 1_000 % 1_000)
        out.write(byte: UInt8(0x30 + micros / 100))
        out.write(byte: UInt8(0x30 + micros / 10 % 10))
        out.write(byte: UInt8(0x30 + micros % 10))
        out.write(tUpstream)
        let forwarded = x.answerCode == MetricCode.ok || x.answerCode == MetricCode.index(.upstreamUnavailable)
        if let route, forwarded, x.answerStatus != 0, route.backend < f.snapshot.backends.count {
            quoted(f.snapshot.backends[route.backend].name, into: out)
        } else {
            out.write(null)
        }
        out.write(tEnd)
        if out.isOverflowed {
            // Cannot happen within `bound`; never a torn line either way.
            out.writerIndex = mark
            out.isOverflowed = false
        }
    }

    static func quoted(_ s: String?, into out: IOBuffer) {
        guard var s else { out.write(null); return }
        out.write(byte: 0x22)
        s.withUTF8 { escape(UnsafeRawBufferPointer($0), into: out) }
        out.write(byte: 0x22)
    }

    /// JSON string content: `"` and `\` escaped, control bytes as \u00XX.
    static func escape(_ b: UnsafeRawBufferPointer, into out: IOBuffer) {
        var start = 0
        for i in 0..<b.count {
            let c = b[i]
            if c >= 0x20 && c != 0x22 && c != 0x5C && c != 0x7F { continue }
            if i > start { out.write(b.baseAddress! + start, count: i - start) }
            out.write(byte: 0x5C)
            if c == 0x22 || c == 0x5C {
                out.write(byte: c)
            } else {
                out.write(byte: 0x75); out.write(byte: 0x30); out.write(byte: 0x30)
                out.write(byte: Hex.digit(c >> 4)); out.write(byte: Hex.digit(c & 0xF))
            }
            start = i + 1
        }
        if b.count > start { out.write(b.baseAddress! + start, count: b.count - start) }
    }
}
