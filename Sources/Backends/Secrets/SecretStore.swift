import Foundation
import Glibc
import Policy
import Runtime

/// Whose secret: a consumer's own, or the system one (used for anyone without their own).
public enum SecretScope: Hashable, Sendable, Comparable {
    case system
    case consumer(String)

    public var consumer: String? {
        if case .consumer(let c) = self { return c }
        return nil
    }

    /// `-` for the system, else the consumer (for `secrets list`).
    public var label: String { consumer ?? "-" }

    public static func < (a: SecretScope, b: SecretScope) -> Bool {
        switch (a, b) {
        case (.system, .consumer): return true
        case (.consumer(let x), .consumer(let y)): return x < y
        default: return false
        }
    }
}

/// One encrypted secret as stored (no plaintext, no plain hash of it).
public struct SealedSecret: Sendable, Equatable {
    public var name: String
    public var scope: SecretScope
    public var nonce: [UInt8]
    public var ciphertext: [UInt8]
    public var tag: [UInt8]
    /// Unix seconds of the last `set`.
    public var updatedAt: Int64
}

/// Everything the store holds: the master key's check value, a salt per scope, the sealed
/// secrets. Both backings (a file in the state directory, a Redis hash) hold exactly this.
public struct SecretStoreContents: Sendable, Equatable {
    public struct Check: Sendable, Equatable {
        public var salt: [UInt8]
        public var mac: [UInt8]
    }
    public struct Slot: Hashable, Sendable {
        public var name: String
        public var scope: SecretScope
    }
    public var check: Check?
    public var salts: [SecretScope: [UInt8]] = [:]
    public var secrets: [Slot: SealedSecret] = [:]

    public init() {}

    public var isEmpty: Bool { check == nil && salts.isEmpty && secrets.isEmpty }
}

/// Where the sealed secrets are kept: `secrets.json` in the state directory (written whole:
/// temp file, fsync, rename, fsync of the directory; changes serialised with `flock`), or the
/// hash `tg:secrets` in the policy's Redis (changes compare-and-set on `tg:secrets:version`).
public enum SecretStoreLocation: Sendable, Equatable, CustomStringConvertible {
    case file(directory: String)
    case redis(RedisURL)

    public var description: String {
        switch self {
        case .file(let d): return d + "/" + SecretFileStore.fileName
        case .redis(let u): return "\(u) (hash \(SecretRedisStore.hashKey))"
        }
    }
}

/// Reads one store again and again (the proxy's secrets thread), keeping its Redis
/// connection between reads (dropped after a failure, made again at the next read).
public final class SecretStoreReader {
    public let location: SecretStoreLocation
    private var redis: SecretRedisStore?

    public init(location: SecretStoreLocation) { self.location = location }

    private func connection(_ url: RedisURL) throws(SecretStoreError) -> SecretRedisStore {
        if let r = redis { return r }
        let r = try SecretRedisStore(url: url)
        redis = r
        return r
    }

    /// A token that changes whenever the store does.
    public func version() throws(SecretStoreError) -> String {
        switch location {
        case .file(let dir): return SecretFileStore(directory: dir).version()
        case .redis(let url):
            do { return try connection(url).version() } catch { redis = nil; throw error }
        }
    }

    public func load() throws(SecretStoreError) -> SecretStoreContents {
        switch location {
        case .file(let dir): return try SecretFileStore(directory: dir).load()
        case .redis(let url):
            do { return try connection(url).load() } catch { redis = nil; throw error }
        }
    }
}

/// Reads and changes the store at a location (blocking: the command line and the proxy's
/// secrets thread, never a loop).
public enum SecretStoreAccess {
    /// The whole store, and a version that changes with every write (file: size, inode and
    /// modification time; Redis: `tg:secrets:version`).
    public static func load(_ at: SecretStoreLocation) throws(SecretStoreError) -> SecretStoreContents {
        switch at {
        case .file(let dir): return try SecretFileStore(directory: dir).load()
        case .redis(let url): return try SecretRedisStore(url: url).load()
        }
    }

    /// A cheap token that changes whenever the store does (polled by the proxy).
    public static func version(_ at: SecretStoreLocation) throws(SecretStoreError) -> String {
        switch at {
        case .file(let dir): return SecretFileStore(directory: dir).version()
        case .redis(let url): return try SecretRedisStore(url: url).version()
        }
    }

    /// Runs `change` on the current contents and writes the result, atomically with respect
    /// to every other writer.
    public static func mutate<R>(_ at: SecretStoreLocation,
                                 _ change: (inout SecretStoreContents) throws(SecretStoreError) -> R) throws(SecretStoreError) -> R {
        switch at {
        case .file(let dir): return try SecretFileStore(directory: dir).mutate(change)
        case .redis(let url): return try SecretRedisStore(url: url).mutate(change)
        }
    }
}

// MARK: - The file

/// `secrets.json`: `{"format": "tollgate-secrets/1", "check": {...}, "salts": [...],
/// "secrets": [...]}`, byte strings as hex.
struct SecretFileStore {
    static let fileName = "secrets.json"
    let directory: String
    var path: String { directory + "/" + Self.fileName }
    var lockPath: String { directory + "/secrets.lock" }

    func version() -> String {
        var st = stat()
        guard stat(path, &st) == 0 else { return "absent" }
        return "\(st.st_ino):\(st.st_size):\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
    }

    func load() throws(SecretStoreError) -> SecretStoreContents {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return SecretStoreContents() }
            throw .store("secret store \(path): cannot be read (\(String(cString: strerror(errno))))")
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw .store("secret store \(path): read error") }
            if n == 0 { break }
            bytes += buf[0..<n]
        }
        if bytes.isEmpty { return SecretStoreContents() }
        return try SecretDocument.decode(bytes, from: path)
    }

    func mutate<R>(_ change: (inout SecretStoreContents) throws(SecretStoreError) -> R) throws(SecretStoreError) -> R {
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw .store("state directory \(directory): cannot be created (\(String(cString: strerror(errno))))")
        }
        let lock = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw .store("secret store lock \(lockPath): cannot be opened") }
        defer { close(lock) }
        while flock(lock, LOCK_EX) != 0 {
            if errno != EINTR { throw .store("secret store lock \(lockPath): flock failed") }
        }
        var contents = try load()
        let result = try change(&contents)
        try replace(with: SecretDocument.encode(contents))
        return result
    }

    /// Temp file, fsync, rename over the store, fsync of the directory.
    private func replace(with bytes: [UInt8]) throws(SecretStoreError) {
        let tmp = path + ".tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .store("secret store \(tmp): cannot be created (\(String(cString: strerror(errno))))") }
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, bytes.count - off) }
            if n < 0 { if errno == EINTR { continue }; close(fd); unlink(tmp); throw .store("secret store \(tmp): write failed") }
            off += n
        }
        if fsync(fd) != 0 { close(fd); unlink(tmp); throw .store("secret store \(tmp): fsync failed") }
        close(fd)
        if rename(tmp, path) != 0 { unlink(tmp); throw .store("secret store \(path): rename failed") }
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
    }
}

/// The JSON of the file store and of Redis's fields.
enum SecretDocument {
    static let format = "tollgate-secrets/1"

    static func hex(_ b: [UInt8]) -> String { b.map { String($0, radix: 16).leftPadded(2) }.joined() }

    static func unhex(_ s: Any?) -> [UInt8]? {
        guard let s = s as? String, s.utf8.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count / 2)
        var hi: UInt8?
        for c in s.utf8 {
            guard let v = MasterKey.nibble(c) else { return nil }
            if let h = hi { out.append(h << 4 | v); hi = nil } else { hi = v }
        }
        return out
    }

    static func scopeObject(_ s: SecretScope) -> Any { s.consumer ?? NSNull() }

    static func scope(_ o: Any?) -> SecretScope? {
        if o == nil || o is NSNull { return .system }
        if let c = o as? String, !c.isEmpty { return .consumer(c) }
        return nil
    }

    static func sealedObject(_ s: SealedSecret) -> [String: Any] {
        ["name": s.name, "consumer": scopeObject(s.scope), "nonce": hex(s.nonce), "ciphertext": hex(s.ciphertext),
         "tag": hex(s.tag), "updated": s.updatedAt]
    }

    static func sealed(_ o: [String: Any]) -> SealedSecret? {
        guard let name = o["name"] as? String, let scope = scope(o["consumer"]), let nonce = unhex(o["nonce"]),
              let ct = unhex(o["ciphertext"]), let tag = unhex(o["tag"]) else { return nil }
        return SealedSecret(name: name, scope: scope, nonce: nonce, ciphertext: ct, tag: tag,
                            updatedAt: (o["updated"] as? NSNumber)?.int64Value ?? 0)
    }

    static func encode(_ c: SecretStoreContents) throws(SecretStoreError) -> [UInt8] {
        var o: [String: Any] = ["format": format]
        if let check = c.check { o["check"] = ["salt": hex(check.salt), "mac": hex(check.mac)] }
        o["salts"] = c.salts.keys.sorted().map { ["consumer": scopeObject($0), "salt": hex(c.salts[$0]!)] as [String: Any] }
        o["secrets"] = c.secrets.values.sorted { ($0.name, $0.scope) < ($1.name, $1.scope) }.map(sealedObject)
        do {
            return Array(try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys, .prettyPrinted])) + [0x0A]
        } catch {
            throw .store("secret store: cannot encode (\(error))")
        }
    }

    static func decode(_ bytes: [UInt8], from path: String) throws(SecretStoreError) -> SecretStoreContents {
        guard let o = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any] else {
            throw .store("secret store \(path): not a JSON object (damaged?)")
        }
        guard o["format"] as? String == format else { throw .store("secret store \(path): unknown format (expected \(format))") }
        var c = SecretStoreContents()
        if let check = o["check"] as? [String: Any] {
            guard let salt = unhex(check["salt"]), let mac = unhex(check["mac"]) else { throw .store("secret store \(path): damaged check value") }
            c.check = .init(salt: salt, mac: mac)
        }
        for (i, s) in ((o["salts"] as? [[String: Any]]) ?? []).enumerated() {
            guard let scope = scope(s["consumer"]), let salt = unhex(s["salt"]) else { throw .store("secret store \(path): damaged salt #\(i + 1)") }
            c.salts[scope] = salt
        }
        for (i, s) in ((o["secrets"] as? [[String: Any]]) ?? []).enumerated() {
            guard let sealed = sealed(s) else { throw .store("secret store \(path): damaged entry #\(i + 1)") }
            c.secrets[.init(name: sealed.name, scope: sealed.scope)] = sealed
        }
        return c
    }

    static func json(_ o: [String: Any]) -> [UInt8] {
        Array((try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data())
    }
}

// MARK: - Redis

/// The hash `tg:secrets`: field `check` (JSON), `salt|-` and `salt|c|CONSUMER` (hex),
/// `secret|NAME|-` and `secret|NAME|c|CONSUMER` (JSON of the sealed entry); every change bumps
/// `tg:secrets:version` in the same transaction (WATCHed: concurrent writers retry) and is
/// published on `tg:secrets`.
struct SecretRedisStore {
    static let hashKey = "tg:secrets"
    static let versionKey = "tg:secrets:version"
    let client: RedisKeyDirectory

    init(url: RedisURL) throws(SecretStoreError) {
        do { client = try RedisKeyDirectory(url: url) } catch { throw .unreachable("secret store: redis \(url): \(error)") }
    }

    func run(_ args: [[UInt8]]) throws(SecretStoreError) -> RedisReply {
        do { return try client.run(args) } catch { throw .unreachable("secret store: redis: \(error)") }
    }

    func version() throws(SecretStoreError) -> String {
        switch try run([Array("GET".utf8), Array(Self.versionKey.utf8)]) {
        case .string(let b): return String(decoding: b, as: UTF8.self)
        default: return "0"
        }
    }

    static func scopeSuffix(_ s: SecretScope) -> [UInt8] {
        switch s {
        case .system: return Array("-".utf8)
        case .consumer(let c): return Array("c|".utf8) + Array(c.utf8)
        }
    }

    static func scope(fromSuffix b: ArraySlice<UInt8>) -> SecretScope? {
        if Array(b) == [0x2D] { return .system }
        guard b.count > 2, b.first == 0x63, b[b.startIndex + 1] == 0x7C else { return nil }
        return .consumer(String(decoding: b.dropFirst(2), as: UTF8.self))
    }

    /// Field → value of the contents.
    static func fields(_ c: SecretStoreContents) -> [[UInt8]: [UInt8]] {
        var f: [[UInt8]: [UInt8]] = [:]
        if let check = c.check {
            f[Array("check".utf8)] = SecretDocument.json(["salt": SecretDocument.hex(check.salt), "mac": SecretDocument.hex(check.mac)])
        }
        for (scope, salt) in c.salts { f[Array("salt|".utf8) + scopeSuffix(scope)] = Array(SecretDocument.hex(salt).utf8) }
        for (slot, s) in c.secrets {
            var o = SecretDocument.sealedObject(s)
            o["name"] = nil
            o["consumer"] = nil
            f[Array("secret|".utf8) + Array(slot.name.utf8) + [0x7C] + scopeSuffix(slot.scope)] = SecretDocument.json(o)
        }
        return f
    }

    func load() throws(SecretStoreError) -> SecretStoreContents {
        guard case .array(let items) = try run([Array("HGETALL".utf8), Array(Self.hashKey.utf8)]) else {
            throw .store("secret store: redis: unexpected HGETALL answer")
        }
        var c = SecretStoreContents()
        var i = 0
        while i + 1 < items.count {
            guard case .string(let field) = items[i], case .string(let value) = items[i + 1] else { i += 2; continue }
            i += 2
            let text = String(decoding: field, as: UTF8.self)
            if text == "check" {
                guard let o = (try? JSONSerialization.jsonObject(with: Data(value))) as? [String: Any],
                      let salt = SecretDocument.unhex(o["salt"]), let mac = SecretDocument.unhex(o["mac"]) else {
                    throw .store("secret store: redis: damaged check value")
                }
                c.check = .init(salt: salt, mac: mac)
            } else if text.hasPrefix("salt|") {
                guard let scope = Self.scope(fromSuffix: field.dropFirst(5)),
                      let salt = SecretDocument.unhex(String(decoding: value, as: UTF8.self)) else {
                    throw .store("secret store: redis: damaged salt field")
                }
                c.salts[scope] = salt
            } else if text.hasPrefix("secret|") {
                let rest = field.dropFirst(7)
                guard let bar = rest.firstIndex(of: 0x7C), let scope = Self.scope(fromSuffix: rest[(bar + 1)...]),
                      var o = (try? JSONSerialization.jsonObject(with: Data(value))) as? [String: Any] else {
                    throw .store("secret store: redis: damaged secret field")
                }
                let name = String(decoding: rest[..<bar], as: UTF8.self)
                o["name"] = name
                o["consumer"] = SecretDocument.scopeObject(scope)
                guard let s = SecretDocument.sealed(o) else { throw .store("secret store: redis: damaged secret \(name)") }
                c.secrets[.init(name: name, scope: scope)] = s
            }
        }
        return c
    }

    func mutate<R>(_ change: (inout SecretStoreContents) throws(SecretStoreError) -> R) throws(SecretStoreError) -> R {
        let hash = Array(Self.hashKey.utf8)
        for _ in 0..<50 {
            _ = try run([Array("WATCH".utf8), Array(Self.versionKey.utf8)])
            let before = try load()
            var after = before
            let result: R
            do { result = try change(&after) } catch {
                _ = try? run([Array("UNWATCH".utf8)])
                throw error
            }
            let old = Self.fields(before), new = Self.fields(after)
            _ = try run([Array("MULTI".utf8)])
            var set: [[UInt8]] = [Array("HSET".utf8), hash]
            for (f, v) in new where old[f] != v { set += [f, v] }
            if set.count > 2 { _ = try run(set) }
            let gone = old.keys.filter { new[$0] == nil }
            if !gone.isEmpty { _ = try run([Array("HDEL".utf8), hash] + gone) }
            _ = try run([Array("INCR".utf8), Array(Self.versionKey.utf8)])
            _ = try run([Array("PUBLISH".utf8), Array("tg:secrets".utf8), Array("changed".utf8)])
            switch try run([Array("EXEC".utf8)]) {
            case .array: return result
            case .nil: continue   // another writer came first: read again
            case let other: throw .store("secret store: redis: transaction failed (\(other.text ?? "?"))")
            }
        }
        throw .store("secret store: redis: too many concurrent writers")
    }
}
