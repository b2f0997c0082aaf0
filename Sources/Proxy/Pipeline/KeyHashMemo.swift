import Policy

/// Remembers the SHA-256 of keys this loop has seen recently, so a key that comes back does
/// not pay for SHA-256 again (≈2,000 instructions under callgrind) but for SipHash-2-4 (≈300).
///
/// Entries are indexed and verified by a 128-bit SipHash of the key under a random per-process
/// secret: a PRF, so no one who does not know the secret can make a key collide with another
/// one's entry. The plain key is never stored; the table is fixed-size (no allocation after
/// start-up) and direct-mapped, so a flood of random keys only evicts entries.
final class KeyHashMemo {
    private struct Entry {
        var tag0: UInt64 = 0
        var tag1: UInt64 = 0
        var hash = KeyHash(w0: 0, w1: 0, w2: 0, w3: 0)
    }
    private let entries: UnsafeMutablePointer<Entry>
    private let mask: Int
    private let k0: UInt64
    private let k1: UInt64

    init(capacity: Int = 16_384) {
        var n = 1
        while n < capacity { n <<= 1 }
        mask = n - 1
        entries = .allocate(capacity: n)
        entries.initialize(repeating: Entry(), count: n)
        k0 = UInt64.random(in: .min ... .max)
        k1 = UInt64.random(in: .min ... .max) | 1
    }
    deinit { entries.deallocate() }

    /// SHA-256 of `key`, from the memo when the key was seen before.
    @inline(__always)
    func sha256(_ key: UnsafeRawBufferPointer) -> KeyHash {
        let (t0, t1) = SipHash24.hash128(key, k0: k0, k1: k1)
        let slot = entries + Int(truncatingIfNeeded: t0) & mask
        if slot.pointee.tag0 == t0 && slot.pointee.tag1 == t1 && (t0 | t1) != 0 {
            return slot.pointee.hash
        }
        let h = KeyHash.sha256(key)
        slot.pointee = Entry(tag0: t0, tag1: t1, hash: h)
        return h
    }
}

/// SipHash-2-4 with a 128-bit output (Aumasson & Bernstein), over raw bytes.
enum SipHash24 {
    @inline(__always)
    private static func round(_ v0: inout UInt64, _ v1: inout UInt64, _ v2: inout UInt64, _ v3: inout UInt64) {
        v0 &+= v1; v1 = (v1 << 13) | (v1 >> 51); v1 ^= v0; v0 = (v0 << 32) | (v0 >> 32)
        v2 &+= v3; v3 = (v3 << 16) | (v3 >> 48); v3 ^= v2
        v0 &+= v3; v3 = (v3 << 21) | (v3 >> 43); v3 ^= v0
        v2 &+= v1; v1 = (v1 << 17) | (v1 >> 47); v1 ^= v2; v2 = (v2 << 32) | (v2 >> 32)
    }

    static func hash128(_ data: UnsafeRawBufferPointer, k0: UInt64, k1: UInt64) -> (UInt64, UInt64) {
        var v0: UInt64 = 0x736f_6d65_7073_6575 ^ k0
        var v1: UInt64 = 0x646f_7261_6e64_6f6d ^ k1
        var v2: UInt64 = 0x6c79_6765_6e65_7261 ^ k0
        var v3: UInt64 = 0x7465_6462_7974_6573 ^ k1
        v1 ^= 0xEE
        let n = data.count
        var i = 0
        if let p = data.baseAddress {
            while i &+ 8 <= n {
                let m = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: i, as: UInt64.self))
                v3 ^= m
                round(&v0, &v1, &v2, &v3); round(&v0, &v1, &v2, &v3)
                v0 ^= m
                i &+= 8
            }
        }
        var last = UInt64(truncatingIfNeeded: n) << 56
        var shift: UInt64 = 0
        while i < n {
            last |= UInt64(data[i]) << shift
            shift &+= 8
            i &+= 1
        }
        v3 ^= last
        round(&v0, &v1, &v2, &v3); round(&v0, &v1, &v2, &v3)
        v0 ^= last
        v2 ^= 0xEE
        round(&v0, &v1, &v2, &v3); round(&v0, &v1, &v2, &v3)
        round(&v0, &v1, &v2, &v3); round(&v0, &v1, &v2, &v3)
        let a = v0 ^ v1 ^ v2 ^ v3
        v1 ^= 0xDD
        round(&v0, &v1, &v2, &v3); round(&v0, &v1, &v2, &v3)
        round(&v0, &v1, &v2, &v3); round(&v0, &v1, &v2, &v3)
        let b = v0 ^ v1 ^ v2 ^ v3
        return (a, b)
    }
}
