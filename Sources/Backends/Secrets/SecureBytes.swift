import COpenSSL
import Glibc

/// Bytes that must not outlive their use (master key, derived keys, decrypted secrets): a
/// private anonymous mapping of whole pages, kept out of core dumps (`MADV_DONTDUMP`),
/// locked in RAM where the limits allow (`mlock`: never swapped), and zeroed
/// (`OPENSSL_cleanse`) before it is unmapped. Never copied into a `String` or an array.
public final class SecureBytes: @unchecked Sendable {
    // SAFETY: the bytes are written only by the creator, before the object is shared; after
    // that they are read only, and freed once (deinit).
    public let count: Int
    public let base: UnsafeMutableRawPointer
    private let mappedBytes: Int
    private let isMapped: Bool

    /// `count` zero bytes (at least one page is mapped).
    public init(count: Int) {
        self.count = count
        let page = max(4096, Int(sysconf(Int32(_SC_PAGESIZE))))
        let size = max(page, (count + page - 1) / page * page)
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if let p, p != MAP_FAILED {
            _ = madvise(p, size, MADV_DONTDUMP)
            _ = mlock(p, size)     // best effort: RLIMIT_MEMLOCK may refuse it
            base = p
            mappedBytes = size
            isMapped = true
        } else {
            // No mapping to be had: ordinary memory, still zeroed on release.
            base = UnsafeMutableRawPointer.allocate(byteCount: max(1, count), alignment: 16)
            base.initializeMemory(as: UInt8.self, repeating: 0, count: max(1, count))
            mappedBytes = max(1, count)
            isMapped = false
        }
    }

    /// A copy of `bytes` (the caller zeroes its own buffer).
    public convenience init(copying bytes: UnsafeRawBufferPointer) {
        self.init(count: bytes.count)
        if let b = bytes.baseAddress, bytes.count > 0 { base.copyMemory(from: b, byteCount: bytes.count) }
    }

    deinit {
        OPENSSL_cleanse(base, mappedBytes)
        if isMapped {
            _ = munlock(base, mappedBytes)
            _ = munmap(base, mappedBytes)
        } else {
            base.deallocate()
        }
    }

    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    /// The first `n` bytes (n ≤ count).
    public func prefix(_ n: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: min(n, count)) }

    /// Constant-time equality with `other`.
    public func equals(_ other: UnsafeRawBufferPointer) -> Bool {
        guard other.count == count, let o = other.baseAddress else { return false }
        return CRYPTO_memcmp(base, o, count) == 0
    }
}

/// Zeroes a buffer that held secret bytes.
@inline(__always)
func cleanse(_ p: UnsafeMutableRawPointer?, _ n: Int) {
    guard let p, n > 0 else { return }
    OPENSSL_cleanse(p, n)
}
