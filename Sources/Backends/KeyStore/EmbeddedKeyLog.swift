import Foundation
import Glibc

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

    public init(op: Op, id: String, hash: String? = nil, prefix: String? = nil, consumer: String? = nil, plan: String? = nil,
                 scopes: [String]? = nil, allowIPs: [String]? = nil, expires: Int64? = nil, status: String? = nil, at: Int64) {
        self.op = op; self.id = id; self.hash = hash; self.prefix = prefix; self.consumer = consumer; self.plan = plan
        self.scopes = scopes; self.allowIPs = allowIPs; self.expires = expires; self.status = status; self.at = at
    }
}

/// The folded state of the log: the latest record per id, and status overrides per id.
public struct KeyLogState: Sendable, Equatable {
    public var records: [String: KeyLogEntry] = [:]   // id → put entry (status folded in)
    public var overrides: [String: String] = [:]      // id → status, for ids with no put (declared keys)
    public var order: [String] = []                   // ids in creation order (for listing)
    public init() {}

    public mutating func apply(_ e: KeyLogEntry) {
        switch e.op {
        case .put:
            if records[e.id] == nil { order.append(e.id) }
            var r = e
            if r.status == nil { r.status = "active" }
            records[e.id] = r
        case .status:
            if var r = records[e.id] {
                r.status = e.status
                records[e.id] = r
            } else if let s = e.status {
                overrides[e.id] = s
            }
        }
    }
}

public struct KeyLogError: Error, CustomStringConvertible {
    public var description: String
    init(_ s: String) { description = s }
}

/// An append-only JSON-lines file, fsync'd on every append and locked with flock so the
/// CLI and running instances never interleave. Survives restarts; a torn last line (a crash
/// mid-append) is ignored on read.
public final class EmbeddedKeyLog: Sendable {
    public let directory: String
    public var path: String { directory + "/keys.jsonl" }

    public init(directory: String) {
        self.directory = directory
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

    public func append(_ entry: KeyLogEntry) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        if fd < 0 { throw KeyLogError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        flock(fd, LOCK_EX)
        defer { flock(fd, LOCK_UN) }
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        var line = try enc.encode(entry)
        line.append(0x0A)
        let ok = line.withUnsafeBytes { raw -> Bool in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 { if errno == EINTR { continue }; return false }
                off += n
            }
            return true
        }
        if !ok { throw KeyLogError("cannot write \(path): \(String(cString: strerror(errno)))") }
        if fsync(fd) != 0 { throw KeyLogError("cannot fsync \(path): \(String(cString: strerror(errno)))") }
    }

    /// Reads and folds the whole log (missing file = empty).
    public func load() throws -> KeyLogState {
        var state = KeyLogState()
        guard let data = FileManager.default.contents(atPath: path) else { return state }
        let dec = JSONDecoder()
        for line in data.split(separator: 0x0A) where !line.isEmpty {
            guard let e = try? dec.decode(KeyLogEntry.self, from: Data(line)) else { continue }
            state.apply(e)
        }
        return state
    }

    /// Size and modification time, to notice changes cheaply.
    public func fingerprint() -> (Int64, Int64) {
        var st = stat()
        if stat(path, &st) != 0 { return (-1, -1) }
        return (Int64(st.st_size), Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec))
    }
}
