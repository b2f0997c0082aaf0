import Foundation
import Glibc
import Policy

/// The master key of the secret store (`secrets.master_key_file` or `master_key_env`): 32
/// bytes written as 64 hex characters, a trailing newline ignored. Read straight into
/// ``SecureBytes``; no `String` of it is ever made, and no message shows it.
public enum MasterKey {
    /// Loads the key the policy names.
    public static func load(_ spec: SecretsSpec) throws(SecretStoreError) -> SecureBytes {
        switch spec.masterKey {
        case .file(let path): return try fromFile(path)
        case .env(let name): return try fromEnvironment(name)
        }
    }

    static func fromFile(_ path: String) throws(SecretStoreError) -> SecureBytes {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw .masterKey("master_key_file \(path): cannot be read (\(String(cString: strerror(errno))))")
        }
        defer { close(fd) }
        let raw = SecureBytes(count: 130)
        var n = 0
        while n < raw.count {
            let r = read(fd, raw.base + n, raw.count - n)
            if r < 0 { if errno == EINTR { continue }; throw .masterKey("master_key_file \(path): read error") }
            if r == 0 { break }
            n += r
        }
        guard let key = parse(UnsafeRawBufferPointer(start: raw.base, count: n)) else {
            throw .masterKey("master_key_file \(path): expected 64 hex characters (32 bytes), optionally followed by a newline")
        }
        return key
    }

    static func fromEnvironment(_ name: String) throws(SecretStoreError) -> SecureBytes {
        guard let p = getenv(name) else { throw .masterKey("master_key_env: the environment variable \(name) is not set") }
        let n = strlen(p)
        guard let key = parse(UnsafeRawBufferPointer(start: p, count: n)) else {
            throw .masterKey("master_key_env: \(name) must hold 64 hex characters (32 bytes)")
        }
        return key
    }

    /// 64 hex digits and at most one trailing newline → 32 bytes; nil for anything else.
    public static func parse(_ text: UnsafeRawBufferPointer) -> SecureBytes? {
        var n = text.count
        if n == 65 && text[64] == 0x0A { n = 64 }
        guard n == 64 else { return nil }
        let out = SecureBytes(count: 32)
        let o = out.base.assumingMemoryBound(to: UInt8.self)
        for i in 0..<32 {
            guard let hi = nibble(text[2 * i]), let lo = nibble(text[2 * i + 1]) else { return nil }
            o[i] = hi << 4 | lo
        }
        return out
    }

    @inline(__always)
    static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x57
        case 0x41...0x46: return c - 0x37
        default: return nil
        }
    }
}

/// Why the secret store could not be used. Never carries a key or a secret value.
public enum SecretStoreError: Error, CustomStringConvertible, Equatable {
    /// The master key is missing or malformed.
    case masterKey(String)
    /// The master key does not match the store's check value.
    case wrongMasterKey(String)
    /// The store is unreadable, malformed, or an entry does not decrypt.
    case store(String)
    /// A value or name that cannot be stored.
    case invalid(String)
    /// The store (Redis) did not answer.
    case unreachable(String)

    public var description: String {
        switch self {
        case .masterKey(let s), .store(let s), .invalid(let s), .unreachable(let s): return s
        case .wrongMasterKey(let s): return s
        }
    }
}
