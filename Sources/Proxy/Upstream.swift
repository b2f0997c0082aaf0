import COpenSSL
import CSystem
import Glibc
import Policy
import Runtime

/// A resolved backend address, built once per policy snapshot (no DNS on the request path).
struct UpstreamAddress {
    var storage = sockaddr_storage()
    var length: socklen_t = 0
    var family: Int32 = AF_INET

    init?(host: String, port: UInt16) {
        let h = host == "localhost" ? "127.0.0.1" : host
        var a4 = in_addr()
        var a6 = in6_addr()
        if inet_pton(AF_INET, h, &a4) == 1 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            sin.sin_addr = a4
            withUnsafeMutableBytes(of: &storage) { dst in withUnsafeBytes(of: sin) { dst.copyMemory(from: $0) } }
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            family = AF_INET
        } else if inet_pton(AF_INET6, h.trimmingBrackets, &a6) == 1 {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            sin6.sin6_addr = a6
            withUnsafeMutableBytes(of: &storage) { dst in withUnsafeBytes(of: sin6) { dst.copyMemory(from: $0) } }
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            family = AF_INET6
        } else {
            // Resolve a name once, at policy load.
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var res: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(h, String(port), &hints, &res) == 0, let r = res else { return nil }
            defer { freeaddrinfo(res) }
            withUnsafeMutableBytes(of: &storage) { dst in
                dst.copyMemory(from: UnsafeRawBufferPointer(start: r.pointee.ai_addr, count: Int(r.pointee.ai_addrlen)))
            }
            length = r.pointee.ai_addrlen
            family = r.pointee.ai_family
        }
    }
}

extension String {
    var trimmingBrackets: String {
        if hasPrefix("[") && hasSuffix("]") { return String(dropFirst().dropLast()) }
        return self
    }
}

/// One keep-alive connection to a backend. While bound, every event goes to its client's
/// exchange; while idle in the pool, any event (data, close) retires it.
final class UpstreamConnection: EventHandler {
    enum State: UInt8 { case connecting, handshaking, active, idle, closed }

    let fd: Int32
    let transport: Transport
    /// `transport.mayHoldMore`, read once.
    let mayHoldMore: Bool
    /// Strong: a reload replaces the loop's pools while exchanges are in flight; the old pool
    /// must outlive the connections it lent (it closes them on return once retired).
    let pool: UpstreamPool
    let inBuf = IOBuffer(capacity: 20 * 1024)
    let outBuf = IOBuffer(capacity: 20 * 1024)
    let headers = HeaderTable(capacity: 128)
    var parser = HTTP1ResponseParser()
    var head = HTTP1ResponseHead()
    var state: State = .connecting
    /// Came out of the idle pool (so a close under a request may be retried once).
    var isReused = false
    var isReadable = false
    var isWritable = false
    var sawEOF = false
    /// Not reusable whatever its state (an answer cut off for want of credits: closing it
    /// tells the backend to stop generating).
    var mustClose = false
    /// epoll reported the peer's FIN (or an error): read until a read says so.
    var hasHungUp = false
    /// The exchange this connection serves; nil while idle.
    unowned(unsafe) var client: HTTP1Session?
    /// The HTTP/2 stream this connection serves (instead of `client`); nil while idle.
    unowned(unsafe) var stream: H2Stream?
    var deadline = Deadline()

    init(fd: Int32, pool: UpstreamPool, tls: TLSStream? = nil) {
        self.fd = fd
        self.transport = tls.map { .tls($0) } ?? .plain(fd)
        mayHoldMore = transport.mayHoldMore
        self.pool = pool
    }

    /// Drives the TLS handshake to the backend (`handshaking`): active when done.
    private func stepHandshake() {
        guard case .tls(let stream) = transport else { state = .active; notifyConnected(); return }
        switch stream.handshake() {
        case .done:
            state = .active
            isWritable = true
            pool.remember(stream)
            notifyConnected()
        case .wantRead, .wantWrite:
            break
        case .failed:
            notifyFailed(.tls)
        }
    }

    func handleEvent(_ events: EventSet, loop: EventLoop) {
        if events.hasInput { isReadable = true }
        if events.hasOutput { isWritable = true }
        if events.hasHangup { hasHungUp = true }
        switch state {
        case .connecting:
            if events.hasOutputOrFailure {
                let err = Sys.socketError(fd)
                if err != 0 {
                    notifyFailed(.connect(err))
                } else if case .tls = transport {
                    state = .handshaking
                    stepHandshake()
                } else {
                    state = .active
                    notifyConnected()
                }
            }
        case .handshaking:
            stepHandshake()
        case .active:
            if let c = client { c.upstreamEvent(self) } else { stream?.upstreamEvent(self) }
        case .idle:
            // Closed by the backend, or unsolicited bytes: either way it is no longer reusable.
            pool.retire(self)
        case .closed:
            break
        }
    }

    func handleTimer(loop: EventLoop) {
        guard deadline.expired(fd: fd, loop: loop) else { return }
        switch state {
        case .connecting, .handshaking: notifyFailed(.connectTimeout)
        case .active: notifyFailed(.responseTimeout)
        case .idle: pool.retire(self)
        case .closed: break
        }
    }

    private func notifyConnected() {
        if let c = client { c.upstreamConnected(self) } else { stream?.upstreamConnected(self) }
    }

    private func notifyFailed(_ f: UpstreamFailure) {
        if let c = client { c.upstreamFailed(self, f) } else { stream?.upstreamFailed(self, f) }
    }

    func close(loop: EventLoop) {
        if state == .closed { return }
        state = .closed
        client = nil
        stream = nil
        loop.close(fd: fd)
    }
}

enum UpstreamFailure: Error, Equatable {
    case connect(Int32)
    case connectTimeout
    case responseTimeout
    case reset(Int32)
    case closedEarly
    case badResponse
    /// The TLS handshake with an https backend failed (verification included).
    case tls

    /// 502 for refused/reset/garbage, 504 for time-outs.
    var status: Int {
        switch self {
        case .connectTimeout, .responseTimeout: return 504
        case .connect, .reset, .closedEarly, .badResponse, .tls: return 502
        }
    }
}

/// Per-loop, per-backend keep-alive pool (LIFO: the warmest connection first).
final class UpstreamPool {
    let loop: EventLoop
    let backendIndex: Int
    var address: UpstreamAddress?
    var maxIdle: Int
    /// `host:port`, the Host field for a request that came without one (HTTP/1.0).
    let hostField: String
    var connectTimeoutNanos: UInt64
    var responseTimeoutNanos: UInt64
    var idleTimeoutNanos: UInt64
    private(set) var idle: [UpstreamConnection] = []
    /// TLS to the backend (`https://`), and the last session for resumption.
    let tls: BackendTLSContext?
    let tlsHost: String
    private var tlsSession: OpaquePointer?
    /// Replaced by a reload: connections coming back are closed, not pooled.
    var isRetired = false

    /// - Parameter tls: the backend's TLS context (built once per policy, shared by the loops);
    ///   an https backend without one fails every connection with `.tls`.
    init(loop: EventLoop, backendIndex: Int, spec: BackendSpec, tls: BackendTLSContext?) {
        self.loop = loop
        self.backendIndex = backendIndex
        self.address = UpstreamAddress(host: spec.host, port: spec.port)
        self.hostField = spec.isIPv6 ? "[\(spec.host)]:\(spec.port)" : "\(spec.host):\(spec.port)"
        self.maxIdle = spec.maxIdle
        self.connectTimeoutNanos = spec.connectTimeout.nanoseconds
        self.responseTimeoutNanos = spec.responseTimeout.nanoseconds
        self.idleTimeoutNanos = spec.idleTimeout.nanoseconds
        tlsHost = spec.host
        self.tls = tls
        isTLSBackend = spec.tls != nil
        inject = spec.inject
        injects = spec.inject != nil
        idle.reserveCapacity(maxIdle)
    }

    let isTLSBackend: Bool
    /// `inject`: the credential every request to this backend carries (nil: none).
    let inject: InjectSpec?
    /// `inject != nil`, read on every request without copying the spec.
    let injects: Bool

    deinit { if let s = tlsSession { SSL_SESSION_free(s) } }

    /// A finished handshake's session: offered by the next connection (resumption across the pool).
    func remember(_ stream: TLSStream) {
        guard !stream.isResumed, let s = stream.copySession() else { return }
        if let old = tlsSession { SSL_SESSION_free(old) }
        tlsSession = s
    }

    /// An idle connection, or a new one being connected. Throws when no socket could be made.
    func acquire(fresh: Bool = false) -> Result<UpstreamConnection, UpstreamFailure> {
        if !fresh, let c = idle.popLast() {
            c.state = .active
            c.isReused = true
            return .success(c)
        }
        guard var addr = address else { return .failure(.connect(EADDRNOTAVAIL)) }
        let fd = socket(addr.family, Int32(SOCK_STREAM.rawValue) | tollgate_SOCK_NONBLOCK | tollgate_SOCK_CLOEXEC, 0)
        if fd < 0 { return .failure(.connect(errno)) }
        Sys.setNoDelay(fd)
        var stream: TLSStream?
        if isTLSBackend {
            guard let ctx = tls, let s = TLSStream(client: ctx, fd: fd, host: tlsHost, session: tlsSession) else {
                Glibc.close(fd)
                return .failure(.tls)
            }
            stream = s
        }
        let conn = UpstreamConnection(fd: fd, pool: self, tls: stream)
        let rc = withUnsafePointer(to: &addr.storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, addr.length) }
        }
        if rc < 0 && errno != EINPROGRESS {
            let e = errno
            Glibc.close(fd)
            return .failure(.connect(e))
        }
        do {
            try loop.register(fd: fd, handler: conn)
        } catch {
            Glibc.close(fd)
            return .failure(.connect(error.code))
        }
        // Connected at once (loopback): plain is active; TLS waits for the first writable
        // event (epoll reports it on registration) to start its handshake.
        conn.state = rc == 0 && !isTLSBackend ? .active : .connecting
        if rc == 0 && !isTLSBackend { conn.isWritable = true }
        conn.deadline.set(loop.now &+ connectTimeoutNanos, fd: fd, loop: loop)
        return .success(conn)
    }

    /// Returns a connection whose exchange finished cleanly.
    func release(_ c: UpstreamConnection) {
        c.client = nil
        c.stream = nil
        if isRetired || idle.count >= maxIdle || c.state != .active {
            c.close(loop: loop)
            return
        }
        c.state = .idle
        c.inBuf.clear()
        c.outBuf.clear()
        c.parser.reset()
        c.deadline.set(loop.now &+ idleTimeoutNanos, fd: c.fd, loop: loop)
        idle.append(c)
    }

    func retire(_ c: UpstreamConnection) {
        if let i = idle.firstIndex(where: { $0 === c }) { idle.remove(at: i) }
        c.close(loop: loop)
    }

    func closeAll() {
        for c in idle { c.close(loop: loop) }
        idle.removeAll()
    }
}

extension Duration {
    var nanoseconds: UInt64 {
        let c = components
        return UInt64(max(0, c.seconds)) &* 1_000_000_000 &+ UInt64(max(0, c.attoseconds / 1_000_000_000))
    }
}
