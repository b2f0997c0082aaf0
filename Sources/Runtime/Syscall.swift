import CSystem
import Glibc

/// An errno value, thrown or returned by the syscall helpers.
public struct Errno: Error, Equatable, CustomStringConvertible {
    public var code: Int32
    public init(_ code: Int32) { self.code = code }
    public var description: String { String(cString: strerror(code)) + " (errno \(code))" }
    public static var current: Errno { Errno(errno) }
}

/// Result of a non-blocking call: bytes processed, or "try again when the fd is ready".
public enum IOResult: Equatable {
    case processed(Int)
    case wouldBlock
}

/// Runs a syscall that returns -1 on failure, retrying EINTR; EAGAIN becomes `.wouldBlock`.
@inline(__always)
public func retrying(_ body: () -> Int) throws(Errno) -> IOResult {
    while true {
        let r = body()
        if r >= 0 { return .processed(r) }
        let e = errno
        if e == EINTR { continue }
        if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
        throw Errno(e)
    }
}

public enum Sys {
    @inline(__always)
    public static func read(_ fd: Int32, _ p: UnsafeMutableRawPointer, _ n: Int) throws(Errno) -> IOResult {
        try retrying { Glibc.read(fd, p, n) }
    }
    @inline(__always)
    public static func write(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) throws(Errno) -> IOResult {
        try retrying { Glibc.send(fd, p, n, Int32(MSG_NOSIGNAL)) }
    }
    @inline(__always)
    public static func writev(_ fd: Int32, _ iov: UnsafePointer<iovec>, _ n: Int32) throws(Errno) -> IOResult {
        try retrying { Glibc.writev(fd, iov, n) }
    }
    /// writev of up to two regions (a head and a body), skipping an empty second one.
    @inline(__always)
    public static func writev(_ fd: Int32, _ p0: UnsafeRawPointer?, _ n0: Int, _ p1: UnsafeRawPointer?, _ n1: Int) throws(Errno) -> IOResult {
        if n1 == 0 { return try write(fd, p0!, n0) }
        if n0 == 0 { return try write(fd, p1!, n1) }
        var iov = (iovec(iov_base: UnsafeMutableRawPointer(mutating: p0), iov_len: n0),
                   iovec(iov_base: UnsafeMutableRawPointer(mutating: p1), iov_len: n1))
        return try retrying {
            withUnsafePointer(to: &iov) { $0.withMemoryRebound(to: iovec.self, capacity: 2) { Glibc.writev(fd, $0, 2) } }
        }
    }
    public static func close(_ fd: Int32) { _ = Glibc.close(fd) }

    public static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }
    public static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }
    public static func socketError(_ fd: Int32) -> Int32 {
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        _ = getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
        return err
    }
}

/// Monotonic clock in nanoseconds.
@inline(__always)
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Wall clock in seconds since the epoch (for expiry checks, logs, Date headers).
public func wallClockSeconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec)
}
