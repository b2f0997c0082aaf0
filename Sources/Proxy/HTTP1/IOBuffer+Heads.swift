import Runtime

/// Head-writing helpers (a write that does not fit sets `isOverflowed`, never traps) compiled into this module, so every call inlines (the generic ones in
/// Runtime are not inlined across the module boundary; measured with callgrind). A constant
/// fragment becomes a fixed-size copy.
extension IOBuffer {
    @inline(__always)
    func put(_ s: StaticString) {
        let n = s.utf8CodeUnitCount
        if n > capacity &- writerIndex { isOverflowed = true; return }
        (base + writerIndex).copyMemory(from: s.utf8Start, byteCount: n)
        writerIndex &+= n
    }

    @inline(__always)
    func put(_ p: UnsafeRawPointer, count n: Int) {
        if n > capacity &- writerIndex { isOverflowed = true; return }
        (base + writerIndex).copyMemory(from: p, byteCount: n)
        writerIndex &+= n
    }

    @inline(__always)
    func put(_ bytes: UnsafeRawBufferPointer) {
        if let p = bytes.baseAddress { put(p, count: bytes.count) }
    }

    @inline(__always)
    func put(byte: UInt8) {
        if writerIndex >= capacity { isOverflowed = true; return }
        base.storeBytes(of: byte, toByteOffset: writerIndex, as: UInt8.self)
        writerIndex &+= 1
    }

    @inline(__always)
    func put(_ array: [UInt8]) { array.withUnsafeBytes { put($0) } }

    @inline(__always)
    func put(string: String) {
        var s = string
        s.withUTF8 { put(UnsafeRawBufferPointer($0)) }
    }

    /// A non-negative decimal (lengths, statuses).
    @inline(__always)
    func put(decimal value: Int) {
        if value < 0 { write(decimal: value); return }
        var v = value
        var digits = 1
        var t = v
        while t >= 10 { t /= 10; digits &+= 1 }
        if digits > capacity &- writerIndex { isOverflowed = true; return }
        var i = writerIndex &+ digits
        repeat {
            i &-= 1
            base.storeBytes(of: UInt8(truncatingIfNeeded: 0x30 &+ v % 10), toByteOffset: i, as: UInt8.self)
            v /= 10
        } while v > 0
        writerIndex &+= digits
    }
}
