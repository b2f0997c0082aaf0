import COpenSSL

/// Keys that Tollgate mints: `tg_` + 32 base62 characters of randomness + 6 base62
/// characters of checksum (41 characters, ~190 bits of entropy).
///
/// The checksum is the first 8 bytes of SHA-256 over the first 35 characters
/// (`tg_` + random), read big-endian, reduced mod 62⁶ and written as 6 base62 digits
/// (most significant first). A mistyped or made-up key of the minted shape therefore
/// fails the checksum and is refused without a store lookup; any other shape is
/// ``Kind/foreign`` and is looked up by hash like every declared key.
///
/// Alphabet: `0-9A-Za-z` (index order).
public enum KeyFormat {
    public enum Kind: Sendable, Equatable { case minted, mintedBadChecksum, foreign }

    public static let prefix: [UInt8] = Array("tg_".utf8)
    public static let randomCount = 32
    public static let checksumCount = 6
    public static let length = 3 + 32 + 6

    static let alphabet: [UInt8] = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)

    /// A fresh key from OpenSSL's CSPRNG. Show it once; store only its hash.
    public static func mint() -> String {
        var out = prefix
        out.reserveCapacity(length)
        var pool = [UInt8](repeating: 0, count: 64)
        var used = pool.count
        while out.count < 3 + randomCount {
            if used == pool.count {
                let rc = pool.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32($0.count)) }
                precondition(rc == 1, "RAND_bytes failed: no entropy")
                used = 0
            }
            let b = pool[used]; used += 1
            if b < 248 { out.append(alphabet[Int(b % 62)]) }  // 248 = 4×62: no modulo bias
        }
        appendChecksum(of: out, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    static func appendChecksum(of body: [UInt8], to out: inout [UInt8]) {
        let h = body.withUnsafeBytes { KeyHash.sha256($0) }
        var v = h.w0 % 56_800_235_584  // 62^6
        var digits = [UInt8](repeating: 0, count: checksumCount)
        for i in stride(from: checksumCount - 1, through: 0, by: -1) {
            digits[i] = alphabet[Int(v % 62)]
            v /= 62
        }
        out.append(contentsOf: digits)
    }

    @inline(__always) static func isBase62(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
            || (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z"))
    }

    @inline(__always) static func digit(_ c: UInt8) -> UInt64 {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt64(c - UInt8(ascii: "0"))
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return UInt64(c - UInt8(ascii: "A") + 10)
        default: return UInt64(c - UInt8(ascii: "a") + 36)
        }
    }

    /// Classifies a presented key without allocating.
    public static func classify(_ b: UnsafeRawBufferPointer) -> Kind {
        guard b.count == length, b[0] == UInt8(ascii: "t"), b[1] == UInt8(ascii: "g"), b[2] == UInt8(ascii: "_")
        else { return .foreign }
        for i in 3..<length where !isBase62(b[i]) { return .foreign }
        let h = KeyHash.sha256(UnsafeRawBufferPointer(rebasing: b[0..<(3 + randomCount)]))
        var expected = h.w0 % 56_800_235_584
        var i = length - 1
        while i >= 3 + randomCount {
            if digit(b[i]) != expected % 62 { return .mintedBadChecksum }
            expected /= 62
            i -= 1
        }
        return .minted
    }

    public static func classify(_ key: String) -> Kind {
        var s = key
        return s.withUTF8 { classify(UnsafeRawBufferPointer($0)) }
    }

    /// What logs and `keys list` show: `tg_` + the first 5 random characters for minted
    /// keys (30 bits of the 190); for other keys the first 4 characters when the key has
    /// at least 16, else nothing.
    public static func displayPrefix(of key: String) -> String {
        if classify(key) != .foreign { return String(key.prefix(8)) }
        return key.utf8.count >= 16 ? String(key.prefix(4)) : ""
    }
}
