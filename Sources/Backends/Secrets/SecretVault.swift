import Foundation
import Glibc
import Policy

/// The secret store opened with the master key: sets, deletes and lists secrets (the
/// command line) and decrypts all of them into a ``SecretTable`` (the proxy). The derived
/// keys of each salt are kept (PBKDF2 costs 100,000 iterations), so a reload costs a
/// derivation only for a scope it has not seen.
public final class SecretVault: @unchecked Sendable {
    // SAFETY: `derived` is behind `lock`; `master` is immutable.
    let master: SecureBytes
    public let location: SecretStoreLocation
    private var derived: [[UInt8]: SecretCipher.ScopeKeys] = [:]
    private let lock = NSLock()

    public init(master: SecureBytes, location: SecretStoreLocation) {
        self.master = master
        self.location = location
    }

    /// The store location a policy uses: Redis when `store.redis` is set, else the state directory.
    public static func location(for snapshot: PolicySnapshot, stateDirectory: String) -> SecretStoreLocation {
        if let s = snapshot.store { return .redis(s.url) }
        return .file(directory: stateDirectory)
    }

    func keys(salt: [UInt8]) -> SecretCipher.ScopeKeys {
        lock.lock()
        defer { lock.unlock() }
        if let k = derived[salt] { return k }
        let k = SecretCipher.ScopeKeys(master: master, salt: salt)
        derived[salt] = k
        return k
    }

    /// Throws `.wrongMasterKey` unless the store's check value was made with this master key.
    /// A store without one (empty) passes.
    public func verify(_ c: SecretStoreContents) throws(SecretStoreError) {
        guard let check = c.check else {
            if !c.secrets.isEmpty { throw .store("secret store \(location): secrets without a check value (damaged)") }
            return
        }
        let mac = keys(salt: check.salt).checkValue()
        guard mac.count == check.mac.count, mac.withUnsafeBytes({ m in check.mac.withUnsafeBytes { timingSafeEqual(m, $0) } }) else {
            throw .wrongMasterKey("the master key does not open the secret store at \(location) (its check value differs): wrong master key, or a store written with another one")
        }
    }

    /// Stores `value` (bytes; never a `String`) as `name` for `scope`; returns its fingerprint.
    public func set(name: String, scope: SecretScope, value: UnsafeRawBufferPointer) throws(SecretStoreError) -> String {
        try Self.validate(name: name, scope: scope)
        try Self.validate(value: value)
        return try SecretStoreAccess.mutate(location) { (c: inout SecretStoreContents) throws(SecretStoreError) -> String in
            if c.check == nil {
                let salt = SecretCipher.random(SecretCipher.saltBytes)
                c.check = .init(salt: salt, mac: keys(salt: salt).checkValue())
            }
            try verify(c)
            let salt: [UInt8]
            if let s = c.salts[scope] { salt = s } else {
                salt = SecretCipher.random(SecretCipher.saltBytes)
                c.salts[scope] = salt
            }
            let k = keys(salt: salt)
            guard let sealed = k.seal(value, name: name, scope: scope) else { throw .store("secret store: encryption failed (OpenSSL)") }
            c.secrets[.init(name: name, scope: scope)] = SealedSecret(
                name: name, scope: scope, nonce: sealed.nonce, ciphertext: sealed.ciphertext, tag: sealed.tag,
                updatedAt: Int64(time(nil)))
            return k.fingerprint(value)
        }
    }

    /// Removes `name` for `scope`; its fingerprint, or nil when there was none. A scope left
    /// without secrets loses its salt.
    public func delete(name: String, scope: SecretScope) throws(SecretStoreError) -> String? {
        try SecretStoreAccess.mutate(location) { (c: inout SecretStoreContents) throws(SecretStoreError) -> String? in
            try verify(c)
            guard let s = c.secrets.removeValue(forKey: .init(name: name, scope: scope)) else { return nil }
            let fingerprint = try? fingerprintOf(s, in: c)
            if !c.secrets.keys.contains(where: { $0.scope == scope }) { c.salts[scope] = nil }
            return fingerprint ?? "????????"
        }
    }

    /// Whether `key` is this vault's master key (compared in constant time).
    public func isMaster(_ key: SecureBytes) -> Bool {
        key.count == master.count && timingSafeEqual(key.prefix(key.count), master.prefix(master.count))
    }

    /// Re-encrypts every secret under `newMaster` (new salts, a new check value), in one
    /// atomic change of the store: `secrets rekey`. Returns how many secrets were moved. The
    /// store then opens with the new key only; a running instance keeps serving the secrets
    /// it holds in memory until its policy names the new key (a reload opens the store with
    /// it first, and is refused if that fails).
    public func rekey(to newMaster: SecureBytes) throws(SecretStoreError) -> Int {
        let next = SecretVault(master: newMaster, location: location)
        return try SecretStoreAccess.mutate(location) { (c: inout SecretStoreContents) throws(SecretStoreError) -> Int in
            try verify(c)
            if c.isEmpty { return 0 }
            var out = SecretStoreContents()
            let checkSalt = SecretCipher.random(SecretCipher.saltBytes)
            out.check = .init(salt: checkSalt, mac: next.keys(salt: checkSalt).checkValue())
            for scope in Set(c.secrets.keys.map(\.scope)) { out.salts[scope] = SecretCipher.random(SecretCipher.saltBytes) }
            for (slot, sealed) in c.secrets {
                guard let oldSalt = c.salts[slot.scope], let newSalt = out.salts[slot.scope] else {
                    throw .store("secret \(slot.name) (\(slot.scope.label)): its scope has no salt (damaged store)")
                }
                let plain = SecureBytes(count: max(1, sealed.ciphertext.count))
                guard keys(salt: oldSalt).open(sealed, into: plain.base) else {
                    throw .store("secret \(slot.name) for \(slot.scope.label) does not decrypt: the store at \(location) was altered")
                }
                let value = UnsafeRawBufferPointer(start: plain.base, count: sealed.ciphertext.count)
                guard let resealed = next.keys(salt: newSalt).seal(value, name: slot.name, scope: slot.scope) else {
                    throw .store("secret store: encryption failed (OpenSSL)")
                }
                out.secrets[slot] = SealedSecret(name: sealed.name, scope: sealed.scope, nonce: resealed.nonce,
                                                 ciphertext: resealed.ciphertext, tag: resealed.tag, updatedAt: sealed.updatedAt)
            }
            let moved = out.secrets.count
            c = out
            return moved
        }
    }

    /// One row of `secrets list`.
    public struct Listing: Sendable {
        public var name: String
        public var scope: SecretScope
        public var fingerprint: String
        public var updatedAt: Int64
    }

    /// Every secret, by name then scope (system first), with its fingerprint (each one is
    /// decrypted to compute it, so a damaged entry is named here).
    public func list() throws(SecretStoreError) -> [Listing] {
        let c = try SecretStoreAccess.load(location)
        try verify(c)
        var out: [Listing] = []
        for s in c.secrets.values.sorted(by: { ($0.name, $0.scope) < ($1.name, $1.scope) }) {
            out.append(Listing(name: s.name, scope: s.scope, fingerprint: try fingerprintOf(s, in: c), updatedAt: s.updatedAt))
        }
        return out
    }

    private func fingerprintOf(_ s: SealedSecret, in c: SecretStoreContents) throws(SecretStoreError) -> String {
        guard let salt = c.salts[s.scope] else { throw .store("secret \(s.name) (\(s.scope.label)): its scope has no salt (damaged store)") }
        let k = keys(salt: salt)
        let plain = SecureBytes(count: max(1, s.ciphertext.count))
        guard k.open(s, into: plain.base) else {
            throw .store("secret \(s.name) for \(s.scope.label) does not decrypt: the store was altered")
        }
        return k.fingerprint(plain.prefix(s.ciphertext.count))
    }

    /// Loads the store and decrypts every secret into memory (the proxy, at start and reload).
    public func decryptAll() throws(SecretStoreError) -> SecretTable {
        let c = try SecretStoreAccess.load(location)
        return try decryptAll(c)
    }

    public func decryptAll(_ c: SecretStoreContents) throws(SecretStoreError) -> SecretTable {
        try verify(c)
        let sealed = c.secrets.values.sorted { ($0.name, $0.scope) < ($1.name, $1.scope) }
        let total = sealed.reduce(0) { $0 + $1.ciphertext.count }
        let storage = SecureBytes(count: max(1, total))
        var builder = SecretTable.Builder()
        var offset = 0
        for s in sealed {
            guard let salt = c.salts[s.scope] else { throw .store("secret \(s.name) (\(s.scope.label)): its scope has no salt (damaged store)") }
            guard keys(salt: salt).open(s, into: storage.base + offset) else {
                throw .store("secret \(s.name) for \(s.scope.label) does not decrypt: the store at \(location) was altered")
            }
            builder.add(name: s.name, scope: s.scope, offset: offset, count: s.ciphertext.count)
            offset += s.ciphertext.count
        }
        return builder.build(storage: storage)
    }

    // MARK: validation

    public static func validate(name: String, scope: SecretScope) throws(SecretStoreError) {
        guard Self.isName(name) else {
            throw .invalid("invalid secret name '\(name)' (letters, digits, '-', '_', '.', ':', at most 128)")
        }
        if let c = scope.consumer, c.isEmpty || c.utf8.count > 256 || c.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) {
            throw .invalid("invalid consumer name (1 to 256 bytes, no control characters)")
        }
    }

    /// The policy's name rule: letters, digits, `-`, `_`, `.`, `:`; 1 to 128 bytes.
    static func isName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 128 && s.utf8.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 || c == 95 || c == 46 || c == 58
        }
    }

    /// A value that can be written into a header field: 1…8192 bytes, no control characters
    /// but tab, no leading or trailing whitespace. The message never shows the value.
    public static func validate(value: UnsafeRawBufferPointer) throws(SecretStoreError) {
        guard !value.isEmpty else { throw .invalid("the secret is empty (it is read from standard input)") }
        guard value.count <= SecretCipher.maximumValueBytes else {
            throw .invalid("the secret is longer than \(SecretCipher.maximumValueBytes) bytes")
        }
        if value.contains(where: { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F }) {
            throw .invalid("the secret contains a control character (CR, LF, NUL, …): it could not be sent in a header field")
        }
        if value.first == 0x20 || value.first == 0x09 || value.last == 0x20 || value.last == 0x09 {
            throw .invalid("the secret starts or ends with whitespace (a header field would lose it)")
        }
    }
}

/// Constant-time comparison of equal-length buffers.
func timingSafeEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
    guard a.count == b.count else { return false }
    var d: UInt8 = 0
    for i in 0..<a.count { d |= a[i] ^ b[i] }
    return d == 0
}
