import Glibc

/// Memory whose last readable byte sits right before a `PROT_NONE` page (picohttpparser's
/// test.c): bytes copied in with `place` end exactly at the guard, so a parser that reads
/// one byte past its input crashes the test instead of passing by luck. The page before
/// the readable pages is `PROT_NONE` too.
final class GuardedBytes {
    private let mapping: UnsafeMutableRawPointer
    private let mappingSize: Int
    /// First byte of the trailing `PROT_NONE` page.
    private let guardStart: UnsafeMutableRawPointer
    let capacity: Int

    init(capacity: Int) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let pages = max(1, (capacity + page - 1) / page)
        mappingSize = (pages + 2) * page
        guard let m = mmap(nil, mappingSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              m != UnsafeMutableRawPointer(bitPattern: -1) else {
            fatalError("mmap failed: errno \(errno)")
        }
        mapping = m
        guard mprotect(m + page, pages * page, PROT_READ | PROT_WRITE) == 0 else {
            fatalError("mprotect failed: errno \(errno)")
        }
        guardStart = m + page * (pages + 1)
        self.capacity = pages * page
    }

    deinit { munmap(mapping, mappingSize) }

    /// Copies `bytes[range]` so that it ends at the guard page and returns the view.
    /// The view is valid until the next `place` (or until this object goes away).
    func place(_ bytes: [UInt8], _ range: Range<Int>) -> UnsafeRawBufferPointer {
        precondition(range.count <= capacity)
        let start = guardStart - range.count
        bytes.withUnsafeBytes { src in
            if range.count > 0 { start.copyMemory(from: src.baseAddress! + range.lowerBound, byteCount: range.count) }
        }
        return UnsafeRawBufferPointer(start: start, count: range.count)
    }

    func place(_ bytes: [UInt8]) -> UnsafeRawBufferPointer { place(bytes, 0..<bytes.count) }
}
