/// A fixed-capacity byte buffer with a reader and a writer index: one allocation for
/// the life of its owner, compacted (never reallocated) as it is reused.
///
/// ```
/// 0 ........ readerIndex ........ writerIndex ........ capacity
///   consumed      readable bytes        writable space
/// ```
public final class IOBuffer {
    public private(set) var base: UnsafeMutableRawPointer
    public private(set) var capacity: Int
    /// The storage was allocated here (freed in deinit); lent storage is given back by whoever
    /// lent it (`detachStorage`).
    private var ownsStorage: Bool
    public var readerIndex = 0
    public var writerIndex = 0
    /// Set by a write that did not fit (the write is dropped, never a trap): whoever builds a
    /// message checks it once at the end and fails that exchange (431/502), not the process.
    public var isOverflowed = false

    public init(capacity: Int) {
        self.capacity = capacity
        self.base = UnsafeMutableRawPointer.allocate(byteCount: max(1, capacity), alignment: 16)
        ownsStorage = true
    }

    /// No storage yet: capacity 0 until `attachStorage` (an idle connection's buffer).
    public init() {
        capacity = 0
        base = IOBuffer.noStorage
        ownsStorage = false
    }

    deinit { if ownsStorage { base.deallocate() } }

    /// What a buffer without storage points at (never read or written: capacity is 0).
    nonisolated(unsafe) private static let noStorage = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16)

    public var hasStorage: Bool { capacity > 0 }

    /// Lends `capacity` bytes at `p` to this (empty, storage-less) buffer.
    public func attachStorage(_ p: UnsafeMutableRawPointer, capacity: Int) {
        if ownsStorage { base.deallocate(); ownsStorage = false }
        base = p
        self.capacity = capacity
        clear()
    }

    /// Takes the lent storage back: the buffer is empty and storage-less again.
    public func detachStorage() {
        if ownsStorage { return }
        base = IOBuffer.noStorage
        capacity = 0
        clear()
    }

    @inlinable @inline(__always) public var readableBytes: Int { writerIndex &- readerIndex }
    @inlinable @inline(__always) public var writableBytes: Int { capacity &- writerIndex }
    @inlinable @inline(__always) public var isEmpty: Bool { readerIndex == writerIndex }
    @inlinable @inline(__always) public var readPointer: UnsafeMutableRawPointer { base + readerIndex }
    @inlinable @inline(__always) public var writePointer: UnsafeMutableRawPointer { base + writerIndex }

    /// The readable bytes, as a raw buffer valid until the next mutation.
    @inlinable @inline(__always) public var readable: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + readerIndex, count: writerIndex &- readerIndex)
    }

    @inlinable @inline(__always) public func clear() { readerIndex = 0; writerIndex = 0; isOverflowed = false }

    /// Moves the readable bytes to the start of the buffer. Returns how far they moved
    /// (offsets into the readable region stay valid relative to `readerIndex`).
    @discardableResult
    public func compact() -> Int {
        let shift = readerIndex
        if shift == 0 { return 0 }
        let n = writerIndex &- readerIndex
        if n > 0 { (base).copyMemory(from: base + readerIndex, byteCount: n) }
        readerIndex = 0
        writerIndex = n
        return shift
    }

    /// Appends bytes; a write that does not fit is dropped and sets `isOverflowed`.
    @inlinable @inline(__always)
    public func write(_ p: UnsafeRawPointer, count: Int) {
        if count > capacity &- writerIndex { isOverflowed = true; return }
        let dst = base + writerIndex
        if count <= 16 {
            // Header fragments are short: a byte loop beats a memcpy call.
            var i = 0
            while i < count {
                dst.storeBytes(of: p.load(fromByteOffset: i, as: UInt8.self), toByteOffset: i, as: UInt8.self)
                i &+= 1
            }
        } else {
            dst.copyMemory(from: p, byteCount: count)
        }
        writerIndex &+= count
    }
    /// Constant text (static data in the binary: no allocation, no lazy global).
    @inlinable @inline(__always)
    public func write(_ s: StaticString) { write(UnsafeRawPointer(s.utf8Start), count: s.utf8CodeUnitCount) }
    @inlinable @inline(__always)
    public func write(_ bytes: UnsafeRawBufferPointer) {
        if let p = bytes.baseAddress { write(p, count: bytes.count) }
    }
    @inline(__always)
    public func write(_ bytes: StaticBytes) { write(bytes.pointer, count: bytes.count) }
    @inlinable @inline(__always)
    public func write(byte: UInt8) {
        if writerIndex >= capacity { isOverflowed = true; return }
        base.storeBytes(of: byte, toByteOffset: writerIndex, as: UInt8.self)
        writerIndex &+= 1
    }
    public func write(_ array: [UInt8]) { array.withUnsafeBytes { write($0) } }
    public func write(string: String) {
        var s = string
        s.withUTF8 { write(UnsafeRawBufferPointer($0)) }
    }
    /// Writes a decimal number.
    public func write(decimal value: Int) {
        var v = value
        if v < 0 { write(byte: 0x2D); v = -v }
        var tmp: (UInt64, UInt64, UInt64) = (0, 0, 0)
        withUnsafeMutableBytes(of: &tmp) { t in
            var i = 24
            repeat { i -= 1; t[i] = UInt8(truncatingIfNeeded: 0x30 + v % 10); v /= 10 } while v > 0
            write(UnsafeRawBufferPointer(rebasing: t[i..<24]))
        }
    }
    /// Writes a lowercase hexadecimal number (chunk sizes).
    public func write(hex value: Int) {
        var v = UInt64(value)
        var tmp: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &tmp) { t in
            var i = 16
            repeat {
                i -= 1
                let d = UInt8(truncatingIfNeeded: v & 0xF)
                t[i] = d < 10 ? 0x30 + d : 0x57 + d
                v >>= 4
            } while v > 0
            write(UnsafeRawBufferPointer(rebasing: t[i..<16]))
        }
    }
}

/// Bytes with static lifetime (built once, never freed): header names, fixed replies.
public struct StaticBytes: @unchecked Sendable {
    // SAFETY: the storage is allocated once, never mutated after init and never freed.
    public let pointer: UnsafeRawPointer
    public let count: Int
    public init(_ s: String) {
        let u = Array(s.utf8)
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(u.count, 1), alignment: 1)
        u.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: u.count) }
        pointer = UnsafeRawPointer(p)
        count = u.count
    }
    public init(bytes u: [UInt8]) {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(u.count, 1), alignment: 1)
        u.withUnsafeBytes { if u.count > 0 { p.copyMemory(from: $0.baseAddress!, byteCount: u.count) } }
        pointer = UnsafeRawPointer(p)
        count = u.count
    }
    public var buffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: pointer, count: count) }
}
