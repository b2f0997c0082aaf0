import Runtime

/// Bytes in and out of one socket: the only place above the event loop that reads or writes
/// an fd. TLS is a new case (`tls(TLSStream)`), not a rewrite of the sessions above it.
///
/// With TLS, "read less than asked" will no longer mean the socket is drained (OpenSSL may
/// hold a whole record): sessions ask `mayHoldMore` rather than assume.
enum Transport {
    case plain(Int32)

    var fd: Int32 {
        switch self {
        case .plain(let fd): return fd
        }
    }

    /// Reads up to `count` bytes: `.processed(0)` is the end of the stream.
    @inline(__always)
    func read(into p: UnsafeMutableRawPointer, count: Int) throws(Errno) -> IOResult {
        switch self {
        case .plain(let fd): return try Sys.read(fd, p, count)
        }
    }

    /// Writes two regions (a head and a body) in one call; either may be empty.
    @inline(__always)
    func write(_ p0: UnsafeRawPointer?, _ n0: Int, _ p1: UnsafeRawPointer?, _ n1: Int) throws(Errno) -> IOResult {
        switch self {
        case .plain(let fd): return try Sys.writev(fd, p0, n0, p1, n1)
        }
    }

    /// A short read leaves nothing buffered below us (plain sockets: true once the kernel
    /// said so; a TLS stream may still hold decrypted bytes).
    var mayHoldMore: Bool {
        switch self {
        case .plain: return false
        }
    }
}
