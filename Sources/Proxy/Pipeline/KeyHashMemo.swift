import Policy

/// Remembers the SHA-256 of keys this loop has seen recently, so a key that comes back does
/// not pay for SHA-256 again (≈2,000 instructions under callgrind) but for SipHash-2-4 (≈350).
///
/// Entries are indexed and verified by a 128-bit SipHash of the key under a random per-process
/// secret: a PRF, so no one who does not know the secret can make a key collide with another
/// one's entry. The plain key is never stored; the table is fixed-size (no allocation after
/// start-up) and two-way set-associative (a hit moves to the front of its set, a new key
/// takes the front and pushes the older one back), so a flood of random keys only evicts
/// entries, and 10,000 live keys fit in the default 32,768 entries (1.5 MB per loop) with
/// few conflicts (direct-mapped, a third of them missed on their second visit).
final class KeyHashMemo {
    private struct Entry {
        var tag0: UInt64 = 0
        var tag1: UInt64 = 0
        var hash = KeyHash(w0: 0, w1: 0, w2: 0, w3: 0)
    }
    private let entries: UnsafeMutablePointer<Entry>
    /// Mask of the set index (sets of two entries).
    private let setMask: Int
    private let k0: UInt64
    private let k1: UInt64

    init(capacity: Int = 32_768) {
        var n = 2
        while n < capacity { n <<= 1 }
        setMask = n / 2 - 1
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
        let first = entries + (Int(truncatingIfNeeded: t0) & setMask) << 1
        let second = first + 1
        if (t0 | t1) != 0 {
            if first.pointee.tag0 == t0 && first.pointee.tag1 == t1 { return first.pointee.hash }
            if second.pointee.tag0 == t0 && second.pointee.tag1 == t1 {
                let hit = second.pointee
                second.pointee = first.pointee
                first.pointee = hit
                return hit.hash
            }
        }
        let h = KeyHash.sha256(key)
        second.pointee = first.pointee
        first.pointee = Entry(tag0: t0, tag1: t1, hash: h)
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
