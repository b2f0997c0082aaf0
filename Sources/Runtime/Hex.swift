/// Lowercase hex without a loop per digit: nibbles spread into bytes, then ASCII in one add.
public enum Hex {
    /// One lowercase hex digit for a nibble (0…15).
    @inlinable @inline(__always)
    public static func digit(_ n: UInt8) -> UInt8 { n < 10 ? 0x30 &+ n : 0x57 &+ n }

    @inlinable @inline(__always)
    public static func eight(_ x: UInt32) -> UInt64 {
        var v = UInt64(x)
        v = (v | (v << 16)) & 0x0000_FFFF_0000_FFFF
        v = (v | (v << 8)) & 0x00FF_00FF_00FF_00FF
        v = (v | (v << 4)) & 0x0F0F_0F0F_0F0F_0F0F
        // Bytes holding 10…15 get 'a'-'0'-10 more.
        let letters = ((v &+ 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101
        v = v &+ 0x3030_3030_3030_3030 &+ letters &* 0x27
        return v.byteSwapped   // most significant nibble first in memory
    }

    @inlinable @inline(__always)
    public static func write16(_ v: UInt64, to p: UnsafeMutableRawPointer) {
        p.storeBytes(of: eight(UInt32(truncatingIfNeeded: v >> 32)), toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: eight(UInt32(truncatingIfNeeded: v)), toByteOffset: 8, as: UInt64.self)
    }
}
