import Foundation
import Glibc
import Policy

/// One line of the embedded key log: a key minted by `tollgate keys new`, or a status
/// change of any key (minted or declared in a policy file) by id. Hashes only, never keys.
public struct KeyLogEntry: Codable, Sendable, Equatable {
    public enum Op: String, Codable, Sendable { case put, status }
    public var op: Op
    public var id: String
    public var hash: String?          // "sha256:<hex>" (put)
    public var prefix: String?        // display prefix (put)
    public var consumer: String?
    public var plan: String?
    public var scopes: [String]?
    public var allowIPs: [String]?
    public var expires: Int64?        // unix seconds
    public var status: String?        // active | disabled | revoked
    public var at: Int64              // unix seconds of the change
    public var requireHTTPS: Bool?    // the key API's per-key HTTPS requirement
    public var metadata: [String: String]?
    public var replaces: String?      // rotation: the id this key replaced
    public var rotatedTo: String?     // rotation: the id that replaced this key (it expires at `expires`)
    public var created: Int64?        // unix seconds the key was minted (kept by later changes)

    public init(op: Op, id: String, hash: String? = nil, prefix: String? = nil, consumer: String? = nil, plan: String? = nil,
                 scopes: [String]? = nil, allowIPs: [String]? = nil, expires: Int64? = nil, status: String? = nil, at: Int64) {
        self.op = op; self.id = id; self.hash = hash; self.prefix = prefix; self.consumer = consumer; self.plan = plan
        self.scopes = scopes; self.allowIPs = allowIPs; self.expires = expires; self.status = status; self.at = at
    }
}

/// The folded state of the log: the latest record per id, and status overrides per id.
///
/// Revoked is final: once a record or an override says `revoked`, no later line of the log
/// (a put, `active`, `disabled`) changes that, whatever order the lines were written in.
public struct KeyLogState: Sendable, Equatable {
    public var records: [String: KeyLogEntry] = [:]   // id → put entry (status folded in)
    public var overrides: [String: String] = [:]      // id → status, for ids with no put (declared keys)
    public var order: [String] = []                   // ids in creation order (for listing)
    /// Lines that were skipped, as `<path>:<line>: <reason>` (never a line's content), for the log.
    public var problems: [String] = []
    public init() {}

    public mutating func apply(_ e: KeyLogEntry) {
        let revoked = KeyStatus.revoked.rawValue
        switch e.op {
        case .put:
            let wasRevoked = records[e.id]?.status == revoked
            if records[e.id] == nil { order.append(e.id) }
            var r = e
            if r.status == nil { r.status = KeyStatus.active.rawValue }
            if wasRevoked { r.status = revoked }
            records[e.id] = r
        case .status:
            guard let s = e.status else { return }
            if var r = records[e.id] {
                if r.status != revoked { r.status = s }
                records[e.id] = r
            } else if overrides[e.id] != revoked {
                overrides[e.id] = s
            }
        }
    }
}

/// Why the key log could not be read or written. Names the file; never holds key material.
public struct KeyLogError: Error, CustomStringConvertible {
    public var path: String
    public var reason: String
    init(_ path: String, _ reason: String) { self.path = path; self.reason = reason }
    /// `reason` followed by the text of the current `errno`.
    static func errno(_ path: String, _ what: String) -> KeyLogError {
        KeyLogError(path, "\(what): \(String(cString: strerror(Glibc.errno)))")
    }
    public var description: String { "\(path): \(reason)" }
}

/// What `append` found at the end of the file before it wrote (a crash mid-append leaves a
/// last line without its newline).
public enum KeyLogTailRepair: Equatable, Sendable {
    /// The file was empty or ended with a newline.
    case none
    /// The last line was a whole entry missing only its newline: the newline was added.
    case terminated
    /// The last line was a fragment of an entry: it was cut off (`bytes` long).
    case truncated(bytes: Int)
}

/// An append-only JSON-lines file, fsync'd on every append (and its directory when the file
/// is created) and locked with flock so the CLI and running instances never interleave: an
/// append holds an exclusive lock, a load a shared one. Survives restarts.
///
/// A torn last line (a crash mid-append) is repaired under the lock by the next append, so a
/// new line never glues onto a fragment; a load skips it, and every other line it cannot
/// decode, and reports them by line number. A file that exists but cannot be read is an
/// error (a missing one is empty): losing the log would silently undo revocations.
public final class EmbeddedKeyLog: Sendable {
    public let directory: String
    public var path: String { directory + "/keys.jsonl" }
    /// `flock(2)`; a seam for fault injection in tests only.
    private let lockFile: @Sendable (Int32, Int32) -> Int32

    public init(directory: String) {
        self.directory = directory
        lockFile = { flock($0, $1) }
    }

    /// A log whose `flock` calls go through `lock` (tests: a lock that fails).
    public init(directory: String, lock: @escaping @Sendable (Int32, Int32) -> Int32) {
        self.directory = directory
        lockFile = lock
    }

    /// The state directory for a policy path: `<dir>/.state` for a directory,
    /// `<dirname>/.state` for a file; `TOLLGATE_STATE_DIR` overrides.
    public static func defaultDirectory(forPolicies path: String) -> String {
        if let env = ProcessInfo.processInfo.environment["TOLLGATE_STATE_DIR"], !env.isEmpty { return env }
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
            return (path as NSString).appendingPathComponent(".state")
        }
        return ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent(".state")
    }

    // MARK: append

    /// Appends one entry: repairs a torn last line first, writes the line, fsyncs the file
    /// (and the directory when this call created the file). All under an exclusive flock.
    @discardableResult
    public func append(_ entry: KeyLogEntry) throws(KeyLogError) -> KeyLogTailRepair {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        var line: [UInt8]
        do { line = Array(try enc.encode(entry)) } catch { throw KeyLogError(path, "cannot encode entry '\(entry.id)': \(error)") }
        line.append(0x0A)

        try makeDirectory()
        let (fd, created) = try openForAppend()
        defer { close(fd) }
        try requireRegularFile(fd)
        try lock(fd, LOCK_EX)
        defer { _ = lockFile(fd, LOCK_UN) }
        let repair = try repairTail(fd)
        try writeAll(fd, line)
        if fsync(fd) != 0 { throw .errno(path, "cannot fsync") }
        if created { try syncDirectory(directory) }
        return repair
    }

    /// Creates the state directory (0700) if needed; a new directory is made durable in its parent.
    private func makeDirectory() throws(KeyLogError) {
        var st = stat()
        if stat(directory, &st) == 0 { return }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw KeyLogError(directory, "cannot create the key store directory: \(error.localizedDescription)")
        }
        let parent = (directory as NSString).deletingLastPathComponent
        try syncDirectory(parent.isEmpty ? "." : parent)
    }

    /// The log opened for appending; `created` when this call made the file.
    private func openForAppend() throws(KeyLogError) -> (fd: Int32, created: Bool) {
        var attempts = 0
        while true {
            attempts += 1
            let fd = open(path, O_RDWR | O_APPEND | O_CLOEXEC)
            if fd >= 0 { return (fd, false) }
            if errno == EINTR { continue }
            guard errno == ENOENT else { throw .errno(path, "cannot open") }
            let made = open(path, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if made >= 0 { return (made, true) }
            // EEXIST: another writer created it in between (open it again), or the name is a
            // dangling symlink, which O_EXCL never follows (give up after a few rounds).
            if (errno == EEXIST || errno == EINTR) && attempts < 4 { continue }
            throw .errno(path, "cannot create")
        }
    }

    private func lock(_ fd: Int32, _ op: Int32) throws(KeyLogError) {
        while lockFile(fd, op) != 0 {
            if errno == EINTR { continue }
            throw .errno(path, op == LOCK_EX ? "cannot lock for writing (flock)" : "cannot lock for reading (flock)")
        }
    }

    private func requireRegularFile(_ fd: Int32) throws(KeyLogError) {
        var st = stat()
        if fstat(fd, &st) != 0 { throw .errno(path, "cannot stat") }
        if (st.st_mode & S_IFMT) != S_IFREG { throw KeyLogError(path, "not a regular file") }
    }

    /// A last line without its newline: terminated when it is a whole entry, cut off otherwise.
    private func repairTail(_ fd: Int32) throws(KeyLogError) -> KeyLogTailRepair {
        var st = stat()
        if fstat(fd, &st) != 0 { throw .errno(path, "cannot stat") }
        let size = Int(st.st_size)
        guard size > 0 else { return .none }
        guard try readAt(fd, offset: size - 1, count: 1) != [0x0A] else { return .none }
        // Find where the last line starts (just after the previous newline, or at 0).
        var start = 0
        var end = size - 1
        search: while end > 0 {
            let from = max(0, end - 4096)
            let chunk = try readAt(fd, offset: from, count: end - from)
            if let i = chunk.lastIndex(of: 0x0A) { start = from + i + 1; break search }
            end = from
        }
        let tail = try readAt(fd, offset: start, count: size - start)
        if (try? JSONDecoder().decode(KeyLogEntry.self, from: Data(tail))) != nil {
            try writeAll(fd, [0x0A])
            return .terminated
        }
        if ftruncate(fd, off_t(start)) != 0 { throw .errno(path, "cannot cut off a torn last line") }
        return .truncated(bytes: size - start)
    }

    private func readAt(_ fd: Int32, offset: Int, count: Int) throws(KeyLogError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return pread(fd, base + done, count - done, off_t(offset + done))
            }
            if n < 0 { if errno == EINTR { continue }; throw .errno(path, "cannot read") }
            if n == 0 { throw KeyLogError(path, "shrank while being read") }
            done += n
        }
        return out
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(KeyLogError) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return write(fd, base + off, raw.count - off)
            }
            if n < 0 { if errno == EINTR { continue }; throw .errno(path, "cannot write") }
            off += n
        }
    }

    /// fsync of a directory: makes a file (or directory) created in it durable.
    private func syncDirectory(_ dir: String) throws(KeyLogError) {
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 { throw .errno(dir, "cannot open directory to fsync it") }
        defer { close(fd) }
        if fsync(fd) != 0 { throw .errno(dir, "cannot fsync directory") }
    }

    // MARK: load

    /// Reads and folds the whole log under a shared lock. A missing file is empty; a file
    /// that exists but cannot be read (not a regular file, an I/O error, a failed lock) throws.
    /// Lines that cannot be decoded are skipped and listed in ``KeyLogState/problems``.
    public func load() throws(KeyLogError) -> KeyLogState {
        var state = KeyLogState()
        var fd: Int32
        repeat { fd = open(path, O_RDONLY | O_CLOEXEC) } while fd < 0 && errno == EINTR
        if fd < 0 {
            let openErrno = errno
            var st = stat()
            // Missing means empty; a name that exists but does not open (a dangling link) does not.
            if openErrno == ENOENT && lstat(path, &st) != 0 && errno == ENOENT { return state }
            errno = openErrno
            throw .errno(path, "cannot open")
        }
        defer { close(fd) }
        try requireRegularFile(fd)
        try lock(fd, LOCK_SH)
        defer { _ = lockFile(fd, LOCK_UN) }
        var data = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = chunk.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return read(fd, base, raw.count)
            }
            if n < 0 { if errno == EINTR { continue }; throw .errno(path, "cannot read") }
            if n == 0 { break }
            data.append(contentsOf: chunk[0..<n])
        }

        let dec = JSONDecoder()
        var lineNumber = 0
        var start = 0
        while start < data.count {
            lineNumber += 1
            let newline = data[start...].firstIndex(of: 0x0A)
            let end = newline ?? data.count
            defer { start = end + 1 }
            if start == end { continue }
            if let e = try? dec.decode(KeyLogEntry.self, from: Data(data[start..<end])) {
                state.apply(e)
            } else if newline == nil {
                state.problems.append("\(path):\(lineNumber): incomplete last line (an interrupted write), ignored")
            } else {
                state.problems.append("\(path):\(lineNumber): undecodable entry, ignored")
            }
        }
        return state
    }

    /// ``load()`` for `serve`'s start: skipped lines go to `warn`; a log that cannot be read
    /// is an error naming the file (`serve` refuses to start rather than forget revocations).
    public func loadForStartup(warn: (String) -> Void) throws(PolicyLoadError) -> KeyLogState {
        do {
            let state = try load()
            for p in state.problems { warn(p) }
            return state
        } catch {
            throw PolicyLoadError(errors: [PolicyError(file: error.path, line: 1, keyPath: "",
                                                       reason: "key store unreadable (\(error.reason)); not serving without it")])
        }
    }

    /// Size and modification time, to notice changes cheaply.
    public func fingerprint() -> (Int64, Int64) {
        var st = stat()
        if stat(path, &st) != 0 { return (-1, -1) }
        return (Int64(st.st_size), Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec))
    }
}
