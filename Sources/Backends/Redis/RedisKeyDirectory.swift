import CHiredis
import Foundation
import Glibc
import Policy
import Runtime

/// Why a blocking store call failed.
public enum RedisStoreError: Error, Equatable, CustomStringConvertible {
    case connect(String)
    case command(String)
    case notFound(id: String)
    case conflictingID(id: String)
    case invalidRecord(String)

    public var description: String {
        switch self {
        case .connect(let s): "cannot reach redis: \(s)"
        case .command(let s): "redis command failed: \(s)"
        case .notFound(let id): "no key with id '\(id)' in redis"
        case .conflictingID(let id): "key id '\(id)' already names another key"
        case .invalidRecord(let s): "invalid key record: \(s)"
        }
    }
}

/// The key records in Redis, for the CLI (`tollgate keys new|list|revoke|disable|enable`)
/// when the store is Redis. Blocking (hiredis's synchronous API); never use it on a loop.
///
/// Layout (hashes only, never a plain key):
/// - `tg:{<hex>}:key` → the record, JSON of ``KeyLogEntry`` (op `put`, status folded in)
/// - `tg:keyid:<id>` → `<hex>`, and the set `tg:keyids` of every id
/// - every change is published on `tg:invalidate` as `<hex>`, so each instance drops its
///   cached copy (and any negative entry) at once.
public final class RedisKeyDirectory {
    private let ctx: UnsafeMutablePointer<redisContext>

    public init(url: RedisURL, timeout: Duration = .seconds(2)) throws(RedisStoreError) {
        let ns = RedisConnection.nanos(timeout)
        let tv = timeval(tv_sec: Int(ns / 1_000_000_000), tv_usec: Int(ns % 1_000_000_000 / 1000))
        let made: UnsafeMutablePointer<redisContext>?
        switch url.endpoint {
        case .tcp(let host, let port): made = redisConnectWithTimeout(host, Int32(port), tv)
        case .unix(let path): made = redisConnectUnixWithTimeout(path, tv)
        }
        guard let c = made else { throw .connect("cannot allocate a hiredis context") }
        if c.pointee.err != 0 {
            let msg = RedisKeyDirectory.errorText(c)
            redisFree(c)
            throw .connect(msg)
        }
        _ = redisSetTimeout(c, tv)
        ctx = c   // from here on, deinit frees it (also when the handshake below throws)
        if let pass = url.password {
            if let user = url.username { try run(["AUTH", user, pass]) } else { try run(["AUTH", pass]) }
        }
        if url.database != 0 { try run(["SELECT", String(url.database)]) }
    }

    deinit { redisFree(ctx) }

    private static func errorText(_ c: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafeBytes(of: c.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// Runs one command; error replies throw.
    @discardableResult
    public func run(_ args: [String]) throws(RedisStoreError) -> RedisReply {
        try run(args.map { Array($0.utf8) })
    }

    @discardableResult
    public func run(_ args: [[UInt8]]) throws(RedisStoreError) -> RedisReply {
        // Copy each argument to stable C memory for the duration of the call.
        let ptrs = args.map { a -> UnsafeMutablePointer<CChar> in
            let p = UnsafeMutablePointer<CChar>.allocate(capacity: max(1, a.count))
            a.withUnsafeBytes { if let b = $0.baseAddress { UnsafeMutableRawPointer(p).copyMemory(from: b, byteCount: a.count) } }
            return p
        }
        defer { ptrs.forEach { $0.deallocate() } }
        var argv = ptrs.map { UnsafePointer<CChar>?(UnsafePointer($0)) }
        var lens = args.map(\.count)
        let raw = redisCommandArgv(ctx, Int32(args.count), &argv, &lens)
        guard let raw else { throw .command(RedisKeyDirectory.errorText(ctx)) }
        defer { freeReplyObject(raw) }
        let reply = RedisReply(copying: raw.assumingMemoryBound(to: redisReply.self))
        if case .error = reply { throw .command(reply.text ?? "error") }
        return reply
    }

    private static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return e
    }()

    /// `sha256:<hex>` or `<hex>` → the hash.
    static func hash(of record: KeyLogEntry) throws(RedisStoreError) -> KeyHash {
        guard var text = record.hash else { throw .invalidRecord("record '\(record.id)' has no hash") }
        if text.hasPrefix("sha256:") { text.removeFirst(7) }
        guard let h = KeyHash(hex: text) else { throw .invalidRecord("record '\(record.id)' has a malformed hash") }
        return h
    }

    /// Stores (or replaces) a key record and its id index, then publishes its hash.
    public func put(_ record: KeyLogEntry) throws(RedisStoreError) {
        let h = try RedisKeyDirectory.hash(of: record)
        if case .string(let existing) = try run(["GET", RedisKeys.id(record.id)]),
           String(decoding: existing, as: UTF8.self) != h.hex {
            throw .conflictingID(id: record.id)
        }
        var r = record
        r.op = .put
        r.hash = "sha256:" + h.hex
        if r.status == nil { r.status = "active" }
        try write(r, hash: h)
        try run(["SET", RedisKeys.id(r.id), h.hex])
        try run(["SADD", RedisKeys.idSet, r.id])
        try run(["PUBLISH", RedisKeys.invalidationChannel, h.hex])
    }

    private func write(_ r: KeyLogEntry, hash h: KeyHash) throws(RedisStoreError) {
        let json: Data
        do { json = try RedisKeyDirectory.encoder.encode(r) } catch { throw .invalidRecord("\(error)") }
        try run([Array("SET".utf8), Array(RedisKeys.record(h).utf8), Array(json)])
    }

    /// Sets a key's status (`active` | `disabled` | `revoked`), rewrites its record and
    /// publishes its hash on `tg:invalidate`. Returns the updated record.
    @discardableResult
    public func setStatus(id: String, status: String, at: Int64 = wallClockSeconds()) throws(RedisStoreError) -> KeyLogEntry {
        guard ["active", "disabled", "revoked"].contains(status) else {
            throw .invalidRecord("status must be active, disabled or revoked, not '\(status)'")
        }
        guard var r = try get(id: id) else { throw .notFound(id: id) }
        let h = try RedisKeyDirectory.hash(of: r)
        r.status = status
        r.at = at
        try write(r, hash: h)
        try run(["PUBLISH", RedisKeys.invalidationChannel, h.hex])
        return r
    }

    /// The record of `id`, or nil.
    public func get(id: String) throws(RedisStoreError) -> KeyLogEntry? {
        guard case .string(let hex) = try run(["GET", RedisKeys.id(id)]),
              let h = KeyHash(hex: String(decoding: hex, as: UTF8.self)) else { return nil }
        return try get(hash: h)
    }

    /// The record stored under a key hash, or nil.
    public func get(hash: KeyHash) throws(RedisStoreError) -> KeyLogEntry? {
        guard case .string(let json) = try run(["GET", RedisKeys.record(hash)]) else { return nil }
        return try RedisKeyDirectory.decode(json)
    }

    public static func decode(_ json: [UInt8]) throws(RedisStoreError) -> KeyLogEntry {
        do { return try JSONDecoder().decode(KeyLogEntry.self, from: Data(json)) } catch {
            throw .invalidRecord("undecodable record JSON")
        }
    }

    /// Every stored record, oldest first (by `at`, then id).
    public func list() throws(RedisStoreError) -> [KeyLogEntry] {
        guard case .array(let ids) = try run(["SMEMBERS", RedisKeys.idSet]) else { return [] }
        var out: [KeyLogEntry] = []
        for case .string(let id) in ids {
            if let r = try get(id: String(decoding: id, as: UTF8.self)) { out.append(r) }
        }
        return out.sorted { ($0.at, $0.id) < ($1.at, $1.id) }
    }
}
