import Runtime

/// Bytes in and out of one socket: the only place above the event loop that reads or writes
/// a client's bytes. Plain sockets, or TLS (OpenSSL on the same non-blocking fd).
///
/// With TLS, "read less than asked" does not mean the socket is drained (a read returns at
/// most one record, and OpenSSL may hold decrypted bytes): sessions ask `mayHoldMore`.
enum Transport {
    case plain(Int32)
    case tls(TLSStream)

    /// Reads up to `count` bytes: `.processed(0)` is the end of the stream.
    @inline(__always)
    func read(into p: UnsafeMutableRawPointer, count: Int) throws(Errno) -> IOResult {
        switch self {
        case .plain(let fd): return try Sys.read(fd, p, count)
        case .tls(let s): return try s.read(into: p, count: count)
        }
    }

    /// Writes two regions (a head and a body) in one call; either may be empty.
    @inline(__always)
    func write(_ p0: UnsafeRawPointer?, _ n0: Int, _ p1: UnsafeRawPointer?, _ n1: Int) throws(Errno) -> IOResult {
        switch self {
        case .plain(let fd): return try Sys.writev(fd, p0, n0, p1, n1)
        case .tls(let s): return try s.write(p0, n0, p1, n1)
        }
    }

    /// A short read may leave bytes below us: plain sockets no (the kernel said so), TLS yes.
    var mayHoldMore: Bool {
        switch self {
        case .plain: return false
        case .tls: return true
        }
    }
}
