#if canImport(Glibc)
import Glibc
#endif
import CSystem

/// A connected, non-blocking TCP socket owned by one worker at a time.
///
/// Reads never block (the server parks a connection that has nothing to read); writes
/// wait for room with `poll(2)`, at most ``writeTimeout`` per wait. ``ReferenceServer``
/// may `shutdown(2)` the socket concurrently (under its lock) to wake a blocked write.
final class ReferenceSocket: Sendable {
    let fd: Int32
    let writeTimeout: Duration

    init(fd: Int32, writeTimeout: Duration = .seconds(30)) {
        self.fd = fd
        self.writeTimeout = writeTimeout
    }

    /// Sends every byte (retrying short writes and EINTR, waiting while the send buffer is
    /// full); never raises SIGPIPE.
    func sendAll(_ bytes: [UInt8]) throws(ReferenceServerError) {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return send(fd, base + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if sent < 0 {
                let code = errno
                if code == EINTR { continue }
                if code == EAGAIN || code == EWOULDBLOCK {
                    try waitWritable()
                    continue
                }
                throw .socketFailed(operation: "send", errno: code)
            }
            offset += sent
        }
    }

    private func waitWritable() throws(ReferenceServerError) {
        let milliseconds = Int32(clamping: writeTimeout.components.seconds * 1000
            + writeTimeout.components.attoseconds / 1_000_000_000_000_000)
        var descriptor = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        while true {
            let ready = poll(&descriptor, 1, milliseconds)
            if ready < 0 && errno == EINTR { continue }
            if ready < 0 { throw .socketFailed(operation: "poll", errno: errno) }
            if ready == 0 { throw .socketFailed(operation: "send (timed out)", errno: ETIMEDOUT) }
            return
        }
    }

    enum ReadOutcome {
        case bytes(Int)
        case wouldBlock
        case endOfStream
        case failed(Int32)
    }

    /// Appends what is available (at most `maximum` bytes) to `buffer` without blocking.
    func receive(into buffer: inout [UInt8], maximum: Int) -> ReadOutcome {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: maximum) { scratch -> ReadOutcome in
            while true {
                let count = recv(fd, scratch.baseAddress, maximum, Int32(MSG_DONTWAIT))
                if count < 0 {
                    let code = errno
                    if code == EINTR { continue }
                    return code == EAGAIN || code == EWOULDBLOCK ? .wouldBlock : .failed(code)
                }
                if count == 0 { return .endOfStream }
                buffer.append(contentsOf: UnsafeBufferPointer(rebasing: scratch[0..<count]))
                return .bytes(count)
            }
        }
    }
}

/// IPv4/IPv6 listen addresses for the reference servers.
enum SocketAddress {
    /// A connected socket's peer as text (no port; an IPv4-mapped IPv6 address as IPv4), or "".
    static func peer(of fd: Int32) -> String {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
        }
        guard named == 0 else { return "" }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let family = Int32(storage.ss_family)
        let ok: Bool = withUnsafePointer(to: &storage) { pointer in
            if family == AF_INET {
                return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { a in
                    var addr = a.pointee.sin_addr
                    return inet_ntop(AF_INET, &addr, &text, socklen_t(text.count)) != nil
                }
            }
            return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a in
                var addr = a.pointee.sin6_addr
                return inet_ntop(AF_INET6, &addr, &text, socklen_t(text.count)) != nil
            }
        }
        guard ok else { return "" }
        let s = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return s.hasPrefix("::ffff:") && s.contains(".") ? String(s.dropFirst(7)) : s
    }

    /// Binds and listens; returns the listening descriptor and the bound port.
    static func listen(host: String, port: UInt16) throws(ReferenceServerError) -> (fd: Int32, port: UInt16) {
        let literal = host == "localhost" ? "127.0.0.1" : host
        var v4 = sockaddr_in()
        var v6 = sockaddr_in6()
        let family: Int32
        if inet_pton(AF_INET, literal, &v4.sin_addr) == 1 {
            family = AF_INET
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = port.bigEndian
        } else if inet_pton(AF_INET6, literal, &v6.sin6_addr) == 1 {
            family = AF_INET6
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = port.bigEndian
        } else {
            throw .invalidAddress(host)
        }
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .socketFailed(operation: "socket", errno: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound: Int32 = family == AF_INET
            ? withUnsafePointer(to: &v4) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            : withUnsafePointer(to: &v6) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        guard bound == 0 else {
            let code = errno
            close(fd)
            throw .socketFailed(operation: "bind \(host):\(port)", errno: code)
        }
        guard Glibc.listen(fd, 512) == 0 else {
            let code = errno
            close(fd)
            throw .socketFailed(operation: "listen", errno: code)
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else {
            let code = errno
            close(fd)
            throw .socketFailed(operation: "getsockname", errno: code)
        }
        let boundPort: UInt16 = withUnsafePointer(to: &storage) { pointer in
            if family == AF_INET {
                pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
            } else {
                pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
            }
        }
        return (fd, boundPort)
    }
}
