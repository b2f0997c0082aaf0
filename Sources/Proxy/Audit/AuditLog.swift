import Backends
import CSystem
import Foundation
import Glibc
import Policy
import Runtime

/// Why the audit trail could not be written. Names the file; never holds a key or secret.
struct AuditError: Error, CustomStringConvertible {
    var description: String
    init(_ s: String) { description = s }
    static func errno(_ path: String, _ what: String) -> AuditError {
        AuditError("\(path): \(what): \(String(cString: strerror(Glibc.errno)))")
    }
}

/// The signed audit trail (`audit:`): an append-only JSON-lines file in which every entry
/// carries the SHA-256 of the line before it, and every `checkpoint.every` entries (or once
/// the oldest uncovered entry is `checkpoint.interval` old, and at a clean shutdown) a
/// checkpoint entry signed with Ed25519 covers the entries since the previous one and names
/// it (the CloudTrail digest pattern). Line and checkpoint formats: ``AuditFormat``,
/// ``AuditCheckpoint``.
///
/// Discipline (the embedded key log's): every append opens the file, takes an exclusive
/// `flock` (the CLI and running instances may write at once), re-reads the tail for `seq`
/// and `prev` unless the file is exactly as this process left it, writes each entry with one
/// `write(2)`, and `fsync`s before returning, so the action an entry records is acknowledged
/// only once it is durable. A torn last line (a crash mid-append) is cut off under the lock
/// and the cut recorded (`audit.repaired`). The latest checkpoint is also written
/// atomically to `<path>.head`, so a log cut back to an earlier checkpoint is detectable. A
/// log whose last line is not an entry, or that ends before the checkpoint in `<path>.head`,
/// is not appended to: the error says to run `tollgate audit verify`.
///
/// Blocking (file I/O, fsync, Redis): call it from the CLI, the reload thread or its own
/// timer thread, never from a loop.
final class AuditLog: @unchecked Sendable {
    // SAFETY: `state` is read and written only while `lock` is held; everything else is
    // immutable after init (``AuditKey`` is safe to share).
    let spec: AuditSpec
    var path: String { spec.path }
    var headPath: String { spec.path + ".head" }
    let instance: String
    private let key: AuditKey?
    private let lock = NSLock()
    private var state = State()
    private let redis: RedisURL?

    /// The tail of the file as this process last wrote it, valid while the file's identity
    /// and size are unchanged.
    struct Tail {
        var lastSeq = 0
        /// SHA-256 of the last line (the next entry's `prev`).
        var lastLineHash = AuditFormat.zeros
        /// The latest checkpoint: seq (0 = none), SHA-256 of its line, its signature ("" = none).
        var checkpointSeq = 0
        var checkpointLineHash = AuditFormat.zeros
        var checkpointSignature = ""
        /// Wall-clock ms of the oldest entry after the latest checkpoint.
        var firstUncoveredMillis: Int64?
        var uncovered: Int { lastSeq - checkpointSeq }
    }

    private struct Stamp: Equatable {
        var device: UInt64
        var inode: UInt64
        var size: Int64
    }

    private struct State {
        var tail: Tail?
        var stamp: Stamp?
        var isClosed = false
        var publisher: RedisKeyDirectory?
        /// No reconnect before this (monotonic ns) after a failure.
        var publisherRetryAt: UInt64 = 0
    }

    /// Loads the signing key (errors name the key file and where the policy names it).
    init(spec: AuditSpec, instance: String, redis: RedisURL?) throws(AuditError) {
        self.spec = spec
        self.instance = instance
        self.redis = redis
        if let k = spec.signingKey {
            do {
                key = try AuditKey.loadPrivate(path: k)
            } catch {
                let at = spec.signingKeyLocation.isEmpty ? "" : spec.signingKeyLocation + ": "
                throw AuditError("\(at)audit.signing_key: \(error)")
            }
        } else {
            key = nil
        }
    }

    /// `body` with `state`, under `lock`.
    private func withState<T>(_ body: (inout State) -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body(&state)
    }

    /// Reads the signing key as `serve` would (for `tollgate check`).
    static func checkSigningKey(_ spec: AuditSpec) throws(AuditError) {
        _ = try AuditLog(spec: spec, instance: "check", redis: nil)
    }

    /// `host-pid`: names a CLI process in its entries.
    static func cliInstance() -> String {
        var host = [CChar](repeating: 0, count: 64)
        gethostname(&host, 63)
        return String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "-\(getpid())"
    }

    /// The user running this process (for `details.os_user`).
    static func osUser() -> String {
        let uid = getuid()
        if let pw = getpwuid(uid), let name = pw.pointee.pw_name { return String(cString: name) }
        return "uid:\(uid)"
    }

    var isSigned: Bool { key != nil }
    var keyFingerprint: String? { key?.fingerprint }

    // MARK: API

    /// Checks that the log can be appended to (its directory, the lock, a readable tail),
    /// repairing a torn last line; writes nothing else. Run before an action that will be
    /// recorded, so a broken log stops it before it happens.
    func prepare() throws(AuditError) {
        try withLockedFile { (_: inout Session) throws(AuditError) in }
    }

    /// Appends one entry (and a checkpoint when one is due) and fsyncs before returning.
    func record(_ event: AuditEvent) throws(AuditError) {
        try withLockedFile { (s: inout Session) throws(AuditError) in
            try s.append(event)
            if s.isCheckpointDue(now: AuditFormat.nowMillis()) { try s.appendCheckpoint() }
        }
    }

    /// Writes a checkpoint when one is due by time (the `interval` timer); errors are logged.
    func checkpointIfDue() {
        do {
            try withLockedFile(skipIfClosed: true) { (s: inout Session) throws(AuditError) in
                if s.isCheckpointDue(now: AuditFormat.nowMillis()) { try s.appendCheckpoint() }
            }
        } catch {
            Log.error("audit: checkpoint failed: \(error)")
        }
    }

    /// The last entry of a clean shutdown, then a checkpoint over whatever is uncovered;
    /// nothing is written after this.
    func shutDown(with event: AuditEvent) throws(AuditError) {
        defer { withState { $0.isClosed = true } }
        try withLockedFile { (s: inout Session) throws(AuditError) in
            try s.append(event)
            if s.tail.uncovered > 0 { try s.appendCheckpoint() }
        }
    }

    /// Checks every `min(interval, 1s)` whether a checkpoint is due; on its own thread.
    func startCheckpointTimer() {
        let tick = min(spec.checkpointInterval, .seconds(1)).nanoseconds
        let me = UncheckedBox(self)
        _ = spawnThreadDetached(name: "tollgate-audit") {
            while true {
                var left = timespec(tv_sec: Int(tick / 1_000_000_000), tv_nsec: Int(tick % 1_000_000_000))
                var rest = timespec()
                while nanosleep(&left, &rest) != 0 && errno == EINTR { left = rest }
                if me.value.withState({ $0.isClosed }) { return }
                if me.value.mayBeDue() { me.value.checkpointIfDue() }
            }
        }
    }

    /// A cheap test without the file lock: false when this process's view says nothing is
    /// due and the file is as this process left it.
    private func mayBeDue() -> Bool {
        var st = stat()
        guard stat(path, &st) == 0 else { return false }
        let now = AuditFormat.nowMillis()
        let every = spec.checkpointEvery, interval = spec.checkpointInterval.milliseconds
        return withState { s in
            guard let tail = s.tail, let stamp = s.stamp,
                  stamp == Stamp(device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: Int64(st.st_size))
            else { return true }
            guard tail.uncovered > 0 else { return false }
            return tail.uncovered >= every || now - (tail.firstUncoveredMillis ?? 0) >= interval
        }
    }

    // MARK: the locked session

    /// What a caller may do with the file while it holds the lock.
    struct Session {
        let log: AuditLog
        let fd: Int32
        var tail: Tail
        /// Lines written (for Redis), and whether a checkpoint was among them.
        var written: [[UInt8]] = []
        var checkpointLine: [UInt8]?

        mutating func append(_ e: AuditEvent) throws(AuditError) {
            let now = AuditFormat.nowMillis()
            let line = AuditFormat.line(seq: tail.lastSeq + 1, time: AuditFormat.time(millis: now), instance: log.instance,
                                        action: e.action, actor: e.actor, subject: e.subject, details: e.details,
                                        prev: tail.lastLineHash)
            try write(line)
            tail.lastSeq += 1
            tail.lastLineHash = AuditFormat.sha256(line)
            if tail.firstUncoveredMillis == nil { tail.firstUncoveredMillis = now }
        }

        func isCheckpointDue(now: Int64) -> Bool {
            guard tail.uncovered > 0 else { return false }
            if tail.uncovered >= log.spec.checkpointEvery { return true }
            return now - (tail.firstUncoveredMillis ?? 0) >= log.spec.checkpointInterval.milliseconds
        }

        /// A checkpoint over the entries after the previous one (signed when a key is set).
        mutating func appendCheckpoint() throws(AuditError) {
            let seq = tail.lastSeq + 1
            let time = AuditFormat.time(millis: AuditFormat.nowMillis())
            var cp = AuditCheckpoint(from: tail.checkpointSeq + 1, to: tail.lastSeq, entries: tail.uncovered,
                                     head: tail.lastLineHash, prevCheckpointSeq: tail.checkpointSeq,
                                     prevCheckpointHash: tail.checkpointLineHash, prevSignature: tail.checkpointSignature,
                                     key: log.key?.fingerprint, signature: nil)
            if let key = log.key {
                guard let sig = key.sign(cp.signingInput(seq: seq, time: time, key: key.fingerprint)) else {
                    throw AuditError("\(log.path): cannot sign a checkpoint (\(AuditKey.opensslError()))")
                }
                cp.signature = Data(sig).base64EncodedString()
            }
            let line = AuditFormat.line(seq: seq, time: time, instance: log.instance, action: .checkpoint, actor: .audit,
                                        subject: "", details: cp.details, prev: tail.lastLineHash)
            try write(line)
            let h = AuditFormat.sha256(line)
            tail = Tail(lastSeq: seq, lastLineHash: h, checkpointSeq: seq, checkpointLineHash: h,
                        checkpointSignature: cp.signature ?? "", firstUncoveredMillis: nil)
            checkpointLine = line
        }

        /// One `write(2)` per entry (looping only on a short write).
        private mutating func write(_ line: [UInt8]) throws(AuditError) {
            try AuditLog.writeAll(fd, line + [0x0A], path: log.path)
            written.append(line)
        }
    }

    /// Opens (creating it and its directory when needed), locks, brings the tail up to date,
    /// runs `body`, fsyncs, updates `<path>.head` after a checkpoint, unlocks; then publishes
    /// what was written to Redis (best effort).
    private func withLockedFile(skipIfClosed: Bool = false,
                                _ body: (inout Session) throws(AuditError) -> Void) throws(AuditError) {
        // The in-process lock serializes this process's writers (the reload thread, the timer,
        // the main thread at shutdown) and keeps a write from being cut by the exit after close.
        var published: [[UInt8]] = []
        let result: Result<Void, AuditError> = withState { st in
            if st.isClosed {
                return skipIfClosed ? .success(()) : .failure(AuditError("\(path): the audit log is closed"))
            }
            do throws(AuditError) {
                published = try locked(&st, body)
                return .success(())
            } catch {
                st.tail = nil
                st.stamp = nil
                return .failure(error)
            }
        }
        try result.get()
        if !published.isEmpty, redis != nil { publish(published) }
    }

    private func locked(_ st: inout State, _ body: (inout Session) throws(AuditError) -> Void) throws(AuditError) -> [[UInt8]] {
        let directory = (path as NSString).deletingLastPathComponent
        try Self.makeDirectory(directory.isEmpty ? "." : directory)
        let (fd, created) = try Self.openForAppend(path)
        defer { close(fd) }
        var fst = stat()
        if fstat(fd, &fst) != 0 { throw .errno(path, "cannot stat") }
        if (fst.st_mode & S_IFMT) != S_IFREG { throw AuditError("\(path): not a regular file") }
        while flock(fd, LOCK_EX) != 0 {
            if errno == EINTR { continue }
            throw .errno(path, "cannot lock (flock)")
        }
        defer { _ = flock(fd, LOCK_UN) }

        var session: Session
        var stamp = try Self.stamp(fd, path: path)
        if let tail = st.tail, st.stamp == stamp {
            session = Session(log: self, fd: fd, tail: tail)
        } else {
            let scan = try scanTail(fd, size: Int(stamp.size))
            session = Session(log: self, fd: fd, tail: scan.tail)
            if let cut = scan.cut {
                try session.append(AuditEvent(.auditRepaired, actor: .audit, details: [
                    ("reason", .string("a torn last line (an interrupted write) was cut off")),
                    ("cut_bytes", .int(Int64(cut.count))), ("cut_sha256", .string(AuditFormat.sha256(cut)))]))
            }
            if let line = scan.checkpointLine, try headNeedsUpdate(seq: session.tail.checkpointSeq, line: line) {
                try writeHead(line)
            }
        }
        // What was written is made durable even when a later step fails.
        var failure: AuditError?
        do throws(AuditError) { try body(&session) } catch { failure = error }
        if !session.written.isEmpty || created {
            if fsync(fd) != 0 { throw .errno(path, "cannot fsync") }
        }
        if let failure { throw failure }
        if created { try Self.syncDirectory(directory.isEmpty ? "." : directory) }
        if let line = session.checkpointLine { try writeHead(line) }
        stamp = try Self.stamp(fd, path: path)
        st.tail = session.tail
        st.stamp = stamp
        return session.written
    }

    // MARK: tail

    private struct Scan {
        var tail: Tail
        /// The latest checkpoint's line, when the file has one.
        var checkpointLine: [UInt8]?
        /// Bytes of a torn last line that were cut off.
        var cut: [UInt8]?
    }

    /// Reads back from the end until the latest checkpoint (or the start): the last line's
    /// seq and hash, the checkpoint's, and the time of the first entry after it. A torn last
    /// line is terminated when it is a whole entry, cut off otherwise.
    private func scanTail(_ fd: Int32, size startSize: Int) throws(AuditError) -> Scan {
        var size = startSize
        var cut: [UInt8]?
        if size > 0, try Self.readAt(fd, offset: size - 1, count: 1, path: path) != [0x0A] {
            var start = 0
            var end = size - 1
            while end > 0 {
                let from = max(0, end - 65_536)
                let chunk = try Self.readAt(fd, offset: from, count: end - from, path: path)
                if let i = chunk.lastIndex(of: 0x0A) { start = from + i + 1; break }
                end = from
            }
            let fragment = try Self.readAt(fd, offset: start, count: size - start, path: path)
            if let h = AuditFormat.hashes(of: fragment[...]), h.claimed == h.computed, Self.head(fragment[...]) != nil {
                try Self.writeAll(fd, [0x0A], path: path)
                size += 1
            } else {
                if ftruncate(fd, off_t(start)) != 0 { throw .errno(path, "cannot cut off a torn last line") }
                cut = fragment
                size = start
            }
        }
        var scan = Scan(tail: Tail(), cut: cut)
        guard size > 0 else { return scan }
        var window = 65_536
        while true {
            let from = max(0, size - window)
            let bytes = try Self.readAt(fd, offset: from, count: size - from, path: path)
            var lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false)
            if lines.last?.isEmpty == true { lines.removeLast() }
            if from > 0, !lines.isEmpty { lines.removeFirst() }   // partial
            var foundCheckpoint = false
            var earliestAfter: Int64?
            for (i, line) in lines.enumerated().reversed() {
                let isLast = i == lines.count - 1
                guard let h = AuditFormat.hashes(of: line), h.claimed == h.computed, let head = Self.head(line) else {
                    if isLast {
                        throw AuditError("\(path): the last line is not an intact audit entry; not appending "
                                         + "(run `tollgate audit verify \(path)`)")
                    }
                    continue
                }
                if isLast {
                    scan.tail.lastSeq = head.seq
                    scan.tail.lastLineHash = AuditFormat.sha256(line)
                }
                if head.action == AuditAction.checkpoint.rawValue, let cp = AuditCheckpoint.decode(line) {
                    scan.tail.checkpointSeq = head.seq
                    scan.tail.checkpointLineHash = AuditFormat.sha256(line)
                    scan.tail.checkpointSignature = cp.signature ?? ""
                    scan.checkpointLine = Array(line)
                    foundCheckpoint = true
                    break
                }
                earliestAfter = AuditFormat.millis(ofTime: head.time) ?? 0
            }
            if foundCheckpoint || from == 0 {
                scan.tail.firstUncoveredMillis = scan.tail.uncovered > 0 ? (earliestAfter ?? 0) : nil
                return scan
            }
            window *= 4
        }
    }

    static func head(_ line: ArraySlice<UInt8>) -> AuditEntryHead? {
        try? JSONDecoder().decode(AuditEntryHead.self, from: Data(line))
    }

    // MARK: <path>.head

    /// Whether `<path>.head` should be (re)written with the log's latest checkpoint: it is
    /// missing or names an older one. One that names a later checkpoint, or the same seq with
    /// other bytes, means the log was cut or rewritten: appending stops.
    private func headNeedsUpdate(seq: Int, line: [UInt8]) throws(AuditError) -> Bool {
        guard let data = FileManager.default.contents(atPath: headPath) else { return true }
        var bytes = Array(data)
        if bytes.last == 0x0A { bytes.removeLast() }
        if bytes == line { return false }
        guard let recorded = Self.head(bytes[...]) else {
            throw AuditError("\(headPath): not a checkpoint; not appending (run `tollgate audit verify \(path)`)")
        }
        if recorded.seq < seq { return true }
        throw AuditError("\(path): ends before (or differs from) the checkpoint seq \(recorded.seq) recorded in "
                         + "\(headPath): it was cut or rewritten; not appending (run `tollgate audit verify \(path)`)")
    }

    /// `<path>.head` replaced atomically (temporary file, fsync, rename, fsync of the directory).
    private func writeHead(_ line: [UInt8]) throws(AuditError) {
        let tmp = headPath + ".tmp.\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        if fd < 0 { throw .errno(tmp, "cannot create") }
        do throws(AuditError) {
            try Self.writeAll(fd, line + [0x0A], path: tmp)
            if fsync(fd) != 0 { throw AuditError.errno(tmp, "cannot fsync") }
        } catch {
            close(fd)
            unlink(tmp)
            throw error
        }
        close(fd)
        if rename(tmp, headPath) != 0 {
            let e = AuditError.errno(headPath, "cannot replace")
            unlink(tmp)
            throw e
        }
        let dir = (headPath as NSString).deletingLastPathComponent
        try Self.syncDirectory(dir.isEmpty ? "." : dir)
    }

    // MARK: Redis

    /// `XADD tg:audit * entry <line>` for each line: best effort (a failure is logged, and
    /// no reconnect is tried for 5 s so a dead Redis costs one timeout, not one per entry).
    private func publish(_ lines: [[UInt8]]) {
        guard let url = redis else { return }
        withState { st in
            if st.publisher == nil {
                guard monotonicNanos() >= st.publisherRetryAt else { return }
                do {
                    st.publisher = try RedisKeyDirectory(url: url, timeout: .milliseconds(300))
                } catch {
                    Log.warn("audit: cannot reach redis to publish to \(RedisKeys.auditStream): \(error)")
                    st.publisherRetryAt = monotonicNanos() &+ 5_000_000_000
                    return
                }
            }
            guard let redis = st.publisher else { return }
            for line in lines {
                do {
                    try redis.run([Array("XADD".utf8), Array(RedisKeys.auditStream.utf8), [UInt8(ascii: "*")],
                                   Array("entry".utf8), line])
                } catch {
                    Log.warn("audit: publishing to \(RedisKeys.auditStream) failed (the file has the entry): \(error)")
                    st.publisher = nil
                    st.publisherRetryAt = monotonicNanos() &+ 5_000_000_000
                    return
                }
            }
        }
    }

    // MARK: syscalls

    private static func stamp(_ fd: Int32, path: String) throws(AuditError) -> Stamp {
        var st = stat()
        if fstat(fd, &st) != 0 { throw .errno(path, "cannot stat") }
        return Stamp(device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: Int64(st.st_size))
    }

    /// The directory (0700) and its parents; a new one is made durable in its parent.
    private static func makeDirectory(_ directory: String) throws(AuditError) {
        var st = stat()
        if stat(directory, &st) == 0 { return }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw AuditError("\(directory): cannot create the audit directory: \(error.localizedDescription)")
        }
        let parent = (directory as NSString).deletingLastPathComponent
        try syncDirectory(parent.isEmpty ? "." : parent)
    }

    private static func openForAppend(_ path: String) throws(AuditError) -> (fd: Int32, created: Bool) {
        var attempts = 0
        while true {
            attempts += 1
            let fd = open(path, O_RDWR | O_APPEND | O_CLOEXEC)
            if fd >= 0 { return (fd, false) }
            if errno == EINTR { continue }
            guard errno == ENOENT else { throw .errno(path, "cannot open") }
            let made = open(path, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if made >= 0 { return (made, true) }
            if (errno == EEXIST || errno == EINTR) && attempts < 4 { continue }
            throw .errno(path, "cannot create")
        }
    }

    static func readAt(_ fd: Int32, offset: Int, count: Int, path: String) throws(AuditError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return pread(fd, base + done, count - done, off_t(offset + done))
            }
            if n < 0 { if errno == EINTR { continue }; throw .errno(path, "cannot read") }
            if n == 0 { throw AuditError("\(path): shrank while being read") }
            done += n
        }
        return out
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws(AuditError) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return Glibc.write(fd, base + off, raw.count - off)
            }
            if n < 0 { if errno == EINTR { continue }; throw .errno(path, "cannot write") }
            off += n
        }
    }

    private static func syncDirectory(_ dir: String) throws(AuditError) {
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 { throw .errno(dir, "cannot open directory to fsync it") }
        defer { close(fd) }
        if fsync(fd) != 0 { throw .errno(dir, "cannot fsync directory") }
    }
}

extension Duration {
    /// Whole milliseconds.
    var milliseconds: Int64 {
        let (s, atto) = components
        return s * 1000 + atto / 1_000_000_000_000_000
    }
}

extension AuditLog {
    /// The policy's audit trail for a command (`keys`, `credits`), checked writable (signing
    /// key loaded, tail readable), or nil when the policy has none. Run before the change: a
    /// broken trail stops it.
    static func openForCommand(_ snapshot: PolicySnapshot) throws(AuditCommandError) -> AuditLog? {
        guard let spec = snapshot.audit else { return nil }
        do {
            let log = try AuditLog(spec: spec, instance: AuditLog.cliInstance(), redis: snapshot.store?.url)
            try log.prepare()
            return log
        } catch {
            throw AuditCommandError(message: "audit: \(error); nothing was changed")
        }
    }
}

struct AuditCommandError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}
