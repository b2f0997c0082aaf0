import CSystem
import Glibc
import Policy
import Runtime

/// A listening socket of one loop (SO_REUSEPORT: every loop has its own, the kernel spreads
/// connections across them).
final class Listener: EventHandler {
    let fd: Int32
    // Strong: calls through an unowned(unsafe) reference retain and release it around
    // every call (measured); the context outlives every connection anyway.
    let context: LoopContext
    let isTLS: Bool
    /// Index of this listener in the policy's `listen` list (its TLS context's index).
    let index: Int
    private var isClosed = false

    init(spec: ListenerSpec, index: Int, context: LoopContext) throws(Errno) {
        self.context = context
        self.index = index
        self.isTLS = spec.tls != nil
        let family = spec.isIPv6 ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | tollgate_SOCK_NONBLOCK | tollgate_SOCK_CLOEXEC, 0)
        if fd < 0 { throw Errno.current }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(4))
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(4))
        var rc: Int32
        if spec.isIPv6 {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = spec.port.bigEndian
            _ = inet_pton(AF_INET6, spec.host, &sin6.sin6_addr)
            rc = withUnsafePointer(to: &sin6) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        } else {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = spec.port.bigEndian
            _ = inet_pton(AF_INET, spec.host == "localhost" ? "127.0.0.1" : spec.host, &sin.sin_addr)
            rc = withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        if rc < 0 { let e = Errno.current; Glibc.close(fd); throw e }
        if listen(fd, 4096) < 0 { let e = Errno.current; Glibc.close(fd); throw e }
        self.fd = fd
        try context.loop.register(fd: fd, handler: self, events: .readable)
    }

    func handleEvent(_ events: EventSet, loop: EventLoop) {
        var storage = sockaddr_storage()
        for _ in 0..<64 {
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let cfd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    tollgate_accept4(fd, $0, &len, tollgate_SOCK_NONBLOCK | tollgate_SOCK_CLOEXEC)
                }
            }
            if cfd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return   // EAGAIN, or EMFILE & co: try again on the next event
            }
            if context.connectionCount >= context.settings.maxConnectionsPerLoop || context.isDraining {
                Glibc.close(cfd)
                continue
            }
            Sys.setNoDelay(cfd)
            let peer = PeerAddress(storage)
            var tls: TLSStream?
            if isTLS {
                guard index < context.tlsContexts.count, let ctx = context.tlsContexts[index],
                      let stream = TLSStream(context: ctx, fd: cfd) else {
                    Glibc.close(cfd)
                    continue
                }
                tls = stream
            }
            let conn = HTTP1Session(fd: cfd, peer: peer, tls: tls, context: context)
            do {
                try loop.register(fd: cfd, handler: conn)
            } catch {
                Glibc.close(cfd)
                continue
            }
            context.add(conn)
            conn.start()
        }
    }

    func close() {
        if isClosed { return }
        isClosed = true
        context.loop.close(fd: fd)
    }
}

/// The peer's address: bytes for policy checks, text for X-Forwarded-For and logs.
struct PeerAddress {
    /// 16 bytes; IPv4 as ::ffff:a.b.c.d.
    var bytes: (UInt64, UInt64) = (0, 0)
    var isIPv4 = true
    var text: [UInt8] = []

    init(_ storage: sockaddr_storage) {
        var s = storage
        var buf = [CChar](repeating: 0, count: 64)
        if Int32(s.ss_family) == AF_INET6 {
            withUnsafePointer(to: &s) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                    var a = p.pointee.sin6_addr
                    withUnsafeBytes(of: &a) { raw in
                        bytes = (raw.load(fromByteOffset: 0, as: UInt64.self), raw.load(fromByteOffset: 8, as: UInt64.self))
                    }
                    _ = inet_ntop(AF_INET6, &a, &buf, 64)
                }
            }
            isIPv4 = false
            // An IPv4-mapped peer on a dual-stack socket is an IPv4 client.
            if bytes.0 == 0 && (bytes.1 & 0xFFFF_FFFF) == 0xFFFF_0000 {
                isIPv4 = true
                var a4 = in_addr(s_addr: UInt32(truncatingIfNeeded: bytes.1 >> 32))
                _ = inet_ntop(AF_INET, &a4, &buf, 64)
            }
        } else {
            withUnsafePointer(to: &s) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in
                    var a = p.pointee.sin_addr
                    bytes = (0, 0xFFFF_0000 | UInt64(a.s_addr) << 32)
                    _ = inet_ntop(AF_INET, &a, &buf, 64)
                }
            }
        }
        text = buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }
    }
}
