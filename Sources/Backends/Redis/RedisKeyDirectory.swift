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
    /// The key is revoked, and revocation is final: it cannot be enabled or disabled again.
    case revoked(id: String)

    public var description: String {
        switch self {
        case .connect(let s): "cannot reach redis: \(s)"
        case .command(let s): "redis command failed: \(s)"
        case .notFound(let id): "no key with id '\(id)' in redis"
        case .conflictingID(let id): "key id '\(id)' already names another key"
        case .invalidRecord(let s): "invalid key record: \(s)"
        case .revoked(let id): "key '\(id)' is revoked; revocation is final (it cannot be enabled or disabled again)"
        }
    }
}

/// The key records in Redis, for the CLI (`tollgate keys new|list|revoke|disable|enable`)
/// when the store is Redis. Blocking (hiredis's synchronous API); never use it on a loop.
///
/// Layout (hashes only, never a plain key):
/// - `tg:{<hex>}:key` → JSON of ``KeyLogEntry``: for a key minted into Redis, its whole
///   record (op `put`, status folded in); for a key declared in a policy file, only its status
///   (op `status`: id, hash, status, time), which lookups apply to the declared record of the
///   policy being served (``record(from:hash:local:snapshot:warnings:)``)
/// - `tg:keyid:<id>` → `<hex>`, and the set `tg:keyids` of every id (minted keys only)
/// - every change is published on `tg:invalidate` as `<hex>`, so each instance drops its
///   cached copy (and any negative entry) at once.
///
/// Revoked is final: status changes are compare-and-set (WATCH/MULTI/EXEC), so a concurrent
/// `enable` can never overwrite a `revoke`.
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
        if r.status == nil { r.status = KeyStatus.active.rawValue }
        r = try update(h) { current throws(RedisStoreError) in
            var next = r
            if current?.status == KeyStatus.revoked.rawValue { next.status = KeyStatus.revoked.rawValue }
            return next
        }
        try run(["SET", RedisKeys.id(r.id), h.hex])
        try run(["SADD", RedisKeys.idSet, r.id])
        try run(["PUBLISH", RedisKeys.invalidationChannel, h.hex])
    }

    /// Replaces the entry at `tg:{<hex>}:key` with `change(current entry)`, atomically: the
    /// key is WATCHed while it is read, and the write (with the invalidation message) is retried
    /// when another client changed it in between. Returns what was written.
    /// - Parameter overwritingUndecodable: a record that does not decode counts as absent (a
    ///   revocation must always be possible; nothing else may replace what cannot be read).
    private func update(_ h: KeyHash, overwritingUndecodable: Bool = false,
                        _ change: (KeyLogEntry?) throws(RedisStoreError) -> KeyLogEntry)
        throws(RedisStoreError) -> KeyLogEntry {
        let key = RedisKeys.record(h)
        for _ in 0..<32 {
            try run(["WATCH", key])
            let next: KeyLogEntry
            let json: Data
            do throws(RedisStoreError) {
                let current: KeyLogEntry?
                do throws(RedisStoreError) {
                    current = try get(hash: h)
                } catch {
                    guard overwritingUndecodable, case .invalidRecord = error else { throw error }
                    current = nil
                }
                next = try change(current)
                do { json = try RedisKeyDirectory.encoder.encode(next) } catch { throw .invalidRecord("\(error)") }
            } catch {
                _ = try? run(["UNWATCH"])
                throw error
            }
            let committed: RedisReply
            do throws(RedisStoreError) {
                try run(["MULTI"])
                try run([Array("SET".utf8), Array(key.utf8), Array(json)])
                try run(["PUBLISH", RedisKeys.invalidationChannel, h.hex])
                committed = try run(["EXEC"])
            } catch {
                _ = try? run(["DISCARD"])
                throw error
            }
            if case .array = committed { return next }   // nil: the key changed under us; read it again
        }
        throw .command("\(key) kept changing; status not set")
    }

    private static func validStatus(_ status: String) throws(RedisStoreError) {
        guard KeyStatus(rawValue: status) != nil else {
            throw .invalidRecord("status must be active, disabled or revoked, not '\(status)'")
        }
    }

    /// Sets the status (`active` | `disabled` | `revoked`) of a key minted into Redis, rewrites
    /// its record and publishes its hash on `tg:invalidate`. Returns the updated record.
    /// A revoked key stays revoked: anything but `revoked` then throws ``RedisStoreError/revoked(id:)``.
    @discardableResult
    public func setStatus(id: String, status: String, at: Int64 = wallClockSeconds()) throws(RedisStoreError) -> KeyLogEntry {
        try RedisKeyDirectory.validStatus(status)
        guard case .string(let hex) = try run(["GET", RedisKeys.id(id)]),
              let h = KeyHash(hex: String(decoding: hex, as: UTF8.self)) else { throw .notFound(id: id) }
        let isRevocation = status == KeyStatus.revoked.rawValue
        return try update(h, overwritingUndecodable: isRevocation) { current throws(RedisStoreError) in
            guard var r = current else {
                // An undecodable record is revoked all the same (a status-only entry).
                if isRevocation { return KeyLogEntry(op: .status, id: id, hash: "sha256:" + h.hex, status: status, at: at) }
                throw .notFound(id: id)
            }
            if r.status == KeyStatus.revoked.rawValue && status != KeyStatus.revoked.rawValue { throw .revoked(id: id) }
            r.status = status
            r.at = at
            return r
        }
    }

    /// Records a status change of a key declared in a policy file: a status-only entry
    /// (id, hash, status, time) under the key's hash, never a copy of the declared record, so
    /// later edits of the policy (scopes, plan, allow_ips, expiry) still apply. A whole copy
    /// left by an older version is replaced (and its id index removed). A status already
    /// revoked here stays revoked: anything but `revoked` then throws ``RedisStoreError/revoked(id:)``.
    @discardableResult
    public func setDeclaredStatus(id: String, hash h: KeyHash, status: String,
                                  at: Int64 = wallClockSeconds()) throws(RedisStoreError) -> KeyLogEntry {
        try RedisKeyDirectory.validStatus(status)
        let written = try update(h, overwritingUndecodable: status == KeyStatus.revoked.rawValue) { current throws(RedisStoreError) in
            if current?.status == KeyStatus.revoked.rawValue && status != KeyStatus.revoked.rawValue { throw .revoked(id: id) }
            return KeyLogEntry(op: .status, id: id, hash: "sha256:" + h.hex, status: status, at: at)
        }
        if case .string(let indexed) = try run(["GET", RedisKeys.id(id)]), String(decoding: indexed, as: UTF8.self) == h.hex {
            try run(["DEL", RedisKeys.id(id)])
            try run(["SREM", RedisKeys.idSet, id])
        }
        return written
    }

    /// The record a Redis entry stands for, on the lookup path.
    ///
    /// - A status-only entry, or an entry for a hash the policy declares (older versions copied
    ///   declared keys whole): `local` with the entry's status applied, revoked being final
    ///   whichever side says it (``Policy/KeyStatus/applying(_:)``). Nothing else is taken from
    ///   Redis: the policy's current scopes, plan, allow_ips and expiry hold.
    /// - Any other entry: a key minted into Redis, compiled against `snapshot`.
    ///
    /// - Parameters:
    ///   - local: the in-process record of `hash` (``KeyDirectory/lookup(_:in:)``: the declared
    ///     key, with the embedded store's status changes), or nil.
    /// - Returns: nil for a status change of a key the policy no longer declares (an unknown key).
    public static func record(from e: KeyLogEntry, hash: KeyHash, local: KeyRecord?, snapshot: PolicySnapshot,
                              warnings: inout [String]) -> KeyRecord? {
        guard e.op == .status || snapshot.declaredKey(hash) != nil else {
            return KeyDirectory.record(from: e, hash: hash, snapshot: snapshot, warnings: &warnings)
        }
        guard let base = local else { return nil }
        guard let text = e.status else { return base }
        let change: KeyStatus
        if let s = KeyStatus(rawValue: text) {
            change = s
        } else {
            warnings.append("status of key \(e.id) in redis: unknown status '\(text)'; the key is disabled")
            change = .disabled
        }
        let status = base.status.applying(change)
        return status == base.status ? base : base.with(status: status)
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

    /// Every key minted into Redis, oldest first (by `at`, then id).
    public func list() throws(RedisStoreError) -> [KeyLogEntry] {
        guard case .array(let ids) = try run(["SMEMBERS", RedisKeys.idSet]) else { return [] }
        var out: [KeyLogEntry] = []
        for case .string(let id) in ids {
            if let r = try get(id: String(decoding: id, as: UTF8.self)), r.op == .put { out.append(r) }
        }
        return out.sorted { ($0.at, $0.id) < ($1.at, $1.id) }
    }
}
