/// Strict base64url (RFC 4648 §5) as JWS uses it (RFC 7515 §2): the URL-safe alphabet, no
/// padding, no white space, and canonical: the unused low bits of the last character are
/// zero, so every byte string has exactly one encoding (a token cannot be re-spelt).
public enum Base64URL {
    /// Alphabet value of each byte, 0xFF for bytes outside it.
    static let values: [UInt8] = {
        var t = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8.enumerated() { t[Int(c)] = UInt8(i) }
        return t
    }()

    /// Bytes `count` characters decode to, or nil when no encoding has that length (4k + 1).
    @inline(__always)
    public static func decodedCount(_ count: Int) -> Int? {
        switch count & 3 {
        case 0: return count / 4 * 3
        case 2: return count / 4 * 3 + 1
        case 3: return count / 4 * 3 + 2
        default: return nil
        }
    }

    /// True when every byte is in the alphabet (cheap shape check, no decoding).
    public static func isAlphabet(_ text: UnsafeRawBufferPointer) -> Bool {
        values.withUnsafeBufferPointer { t in
            for c in text where t[Int(c)] == 0xFF { return false }
            return true
        }
    }

    /// Decodes `text` into `out` (at least ``decodedCount(_:)`` bytes); the byte count, or nil
    /// for a character outside the alphabet, an impossible length, non-zero unused bits, or
    /// an `out` too small.
    public static func decode(_ text: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Int? {
        let n = text.count
        guard let total = decodedCount(n), total <= out.count else { return nil }
        guard n > 0, let src = text.baseAddress, let dst = out.baseAddress else { return total == 0 ? 0 : nil }
        return values.withUnsafeBufferPointer { t -> Int? in
            var i = 0, o = 0
            while i &+ 4 <= n {
                let a = t[Int(src.load(fromByteOffset: i, as: UInt8.self))]
                let b = t[Int(src.load(fromByteOffset: i &+ 1, as: UInt8.self))]
                let c = t[Int(src.load(fromByteOffset: i &+ 2, as: UInt8.self))]
                let d = t[Int(src.load(fromByteOffset: i &+ 3, as: UInt8.self))]
                if (a | b | c | d) & 0xC0 != 0 { return nil }
                let v = UInt32(a) << 18 | UInt32(b) << 12 | UInt32(c) << 6 | UInt32(d)
                dst.storeBytes(of: UInt8(truncatingIfNeeded: v >> 16), toByteOffset: o, as: UInt8.self)
                dst.storeBytes(of: UInt8(truncatingIfNeeded: v >> 8), toByteOffset: o &+ 1, as: UInt8.self)
                dst.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: o &+ 2, as: UInt8.self)
                i &+= 4
                o &+= 3
            }
            let rest = n &- i
            if rest == 0 { return o }
            let a = t[Int(src.load(fromByteOffset: i, as: UInt8.self))]
            let b = t[Int(src.load(fromByteOffset: i &+ 1, as: UInt8.self))]
            let c = rest == 3 ? t[Int(src.load(fromByteOffset: i &+ 2, as: UInt8.self))] : 0
            if (a | b | c) & 0xC0 != 0 { return nil }
            let v = UInt32(a) << 18 | UInt32(b) << 12 | UInt32(c) << 6
            dst.storeBytes(of: UInt8(truncatingIfNeeded: v >> 16), toByteOffset: o, as: UInt8.self)
            if rest == 3 {
                dst.storeBytes(of: UInt8(truncatingIfNeeded: v >> 8), toByteOffset: o &+ 1, as: UInt8.self)
                // Canonical: the last character's two unused bits are zero.
                if v & 0xFF != 0 { return nil }
                return o &+ 2
            }
            // Four unused bits.
            if v & 0xFFFF != 0 { return nil }
            return o &+ 1
        }
    }

    /// Decodes a whole string (keys files, tests); nil when it is not strict base64url.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        var s = String(text)
        return s.withUTF8 { u -> [UInt8]? in
            guard let count = decodedCount(u.count) else { return nil }
            var out = [UInt8](repeating: 0, count: count)
            let ok = out.withUnsafeMutableBytes { decode(UnsafeRawBufferPointer(u), into: $0) }
            return ok == nil ? nil : out
        }
    }

    /// Encodes without padding.
    public static func encode(_ bytes: some Collection<UInt8>) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var acc: UInt32 = 0
        var bits = 0
        for b in bytes {
            acc = acc << 8 | UInt32(b)
            bits += 8
            while bits >= 6 {
                bits -= 6
                out.append(alphabet[Int((acc >> UInt32(bits)) & 63)])
            }
        }
        if bits > 0 { out.append(alphabet[Int((acc << UInt32(6 - bits)) & 63)]) }
        return String(decoding: out, as: UTF8.self)
    }
}
