#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import CSystem

/// A small HTTP/1.1 server for the reference backends, with bounded concurrency.
///
/// ```
///  poller thread (epoll) ──accept()──────────────► bounded queue ──► worker pool (≤ 32 threads)
///        ▲     └─ a parked connection turns readable ──┘                 │
///        └──────────── park: nothing more to read (keep-alive idle) ─────┘
/// ```
///
/// A worker serves one connection while it has requests to answer: it reads without
/// blocking, parses with the project's strict HTTP/1.1 codec (`Runtime`), routes, and
/// writes the answer; when the socket has nothing more, the connection is parked with
/// the poller and the worker takes the next one. Idle keep-alive connections therefore
/// hold no thread. Past the bounds (queue full, too many open connections) a connection
/// gets `503` and is closed; no thread is ever started per connection.
///
/// It does keep-alive and pipelining, `Content-Length` and chunked request bodies
/// (bounded), `Expect: 100-continue`, `HEAD`, and complete (`Content-Length`) or streamed
/// (chunked, flushed per write) responses. Requests the strict parser refuses get its
/// status (`400`, or 413/414/431/505) and the connection is closed. Parked connections
/// idle longer than ``Limits/idleTimeout`` are closed. Correctness and clarity over
/// speed: this is test and demo infrastructure.
public final class ReferenceServer: Sendable {
    /// Bounds of one server.
    public struct Limits: Sendable {
        /// Worker threads serving requests (started as needed, never more).
        public var workerThreads = 32
        /// Connections with work waiting for a worker; past it: `503` and close.
        public var queueCapacity = 256
        /// Open connections (busy, queued or parked); past it: `503` and close.
        public var maximumConnections = 4096
        /// A parked connection idle this long is closed.
        public var idleTimeout: Duration = .seconds(120)
        /// One wait for room in the send buffer.
        public var writeTimeout: Duration = .seconds(30)
        /// A request head (request line and fields).
        public var maximumHeadBytes = 64 * 1024
        /// A request body (`413` past it).
        public var maximumBodyBytes = 64 * 1024 * 1024
        public init() {}
    }

    /// The bound port (the real one when asked for port 0).
    public let port: UInt16
    public let host: String
    public let limits: Limits
    /// Requests answered so far (all routes, all connections).
    public var requestCount: Int { requests.load(ordering: .relaxed) }
    /// Connections refused with `503` because a bound was reached.
    public var refusedConnectionCount: Int { refused.load(ordering: .relaxed) }
    /// Worker threads started so far (at most ``Limits/workerThreads``).
    public var workerThreadCount: Int { pool.workerCount }

    private let listenFD: Int32
    private let epollFD: Int32
    private let wakeFD: Int32
    private let router: ReferenceRouter
    private let stopSignal = ReferenceStopSignal()
    private let requests = Atomic(0)
    private let refused = Atomic(0)
    private let registry = Mutex(Registry())
    private let pollerThread = Mutex<ReferenceThread?>(nil)
    private let pool: WorkerPool<ReferenceConnection>

    private struct Registry {
        /// Every open connection by descriptor (busy, queued or parked).
        var open: [Int32: ReferenceConnection] = [:]
        /// Parked connections (owned by the poller) and since when.
        var parked: [Int32: ContinuousClock.Instant] = [:]
        var isStopping = false
    }

    // epoll constants (the Linux values; CSystem does not export EPOLLONESHOT).
    private static let epollIn: UInt32 = 0x001
    private static let epollRDHUP: UInt32 = 0x2000
    private static let epollOneShot: UInt32 = 1 << 30
    private static let wakeKey = UInt64.max
    private static let listenKey = UInt64.max - 1

    /// Binds `host:port` (port 0: an ephemeral port) and starts accepting.
    public init(host: String, port: UInt16, router: ReferenceRouter,
                limits: Limits = Limits()) throws(ReferenceServerError) {
        let (fd, boundPort) = try SocketAddress.listen(host: host, port: port)
        let epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        let wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard epollFD >= 0, wakeFD >= 0 else {
            let code = errno
            close(fd)
            if epollFD >= 0 { close(epollFD) }
            if wakeFD >= 0 { close(wakeFD) }
            throw .socketFailed(operation: "epoll_create1/eventfd", errno: code)
        }
        self.listenFD = fd
        self.epollFD = epollFD
        self.wakeFD = wakeFD
        self.port = boundPort
        self.host = host
        self.router = router
        self.limits = limits
        // The pool holds the server weakly: a dropped server is not kept alive by its workers.
        let serverBox = WeakBox<ReferenceServer>()
        self.pool = WorkerPool(name: "tg-ref-worker", maximumWorkers: limits.workerThreads,
                               queueCapacity: limits.queueCapacity) { connection in
            guard let server = serverBox.object else {
                close(connection.fd)
                return
            }
            server.serve(connection)
        }
        serverBox.object = self
        var event = epoll_event()
        event.events = Self.epollIn
        event.data.u64 = Self.wakeKey
        _ = epoll_ctl(epollFD, EPOLL_CTL_ADD, wakeFD, &event)
        event.events = Self.epollIn
        event.data.u64 = Self.listenKey
        _ = epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event)
        do {
            let thread = try ReferenceThread.spawn { [self] in pollLoop() }
            pollerThread.withLock { $0 = thread }
        } catch {
            close(fd)
            throw error
        }
    }

    deinit {
        close(epollFD)
        close(wakeFD)
    }

    /// Stops accepting, closes idle connections, wakes and closes busy ones, and waits (up
    /// to five seconds) for the workers to finish. Safe to call twice.
    public func stop() {
        let wasStopping = registry.withLock { state in
            let was = state.isStopping
            state.isStopping = true
            return was
        }
        guard !wasStopping else { return }
        stopSignal.raise()
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
        pollerThread.withLock { $0 }?.join()
        close(listenFD)
        // Parked connections are the poller's (now stopped): close them. Busy ones are woken
        // (a blocked write fails) and closed by their workers.
        registry.withLock { state in
            for fd in state.parked.keys {
                state.open[fd] = nil
                close(fd)
            }
            state.parked.removeAll()
            for fd in state.open.keys { shutdown(fd, Int32(SHUT_RDWR)) }
        }
        for connection in pool.shutdown(waitingUpTo: .seconds(5)) { release(connection) }
    }

    // MARK: - Poller

    private func pollLoop() {
        let capacity = 64
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        var lastSweep = ContinuousClock.now
        while true {
            let count = epoll_wait(epollFD, events, Int32(capacity), 1000)
            if count < 0 && errno != EINTR { return }
            for index in 0..<max(0, Int(count)) {
                let key = events[index].data.u64
                if key == Self.wakeKey {
                    if registry.withLock({ $0.isStopping }) { return }
                } else if key == Self.listenKey {
                    acceptAll()
                } else {
                    wake(Int32(truncatingIfNeeded: key))
                }
            }
            if registry.withLock({ $0.isStopping }) { return }
            let now = ContinuousClock.now
            if now - lastSweep >= .seconds(1) {
                lastSweep = now
                closeIdle(now: now)
            }
        }
    }

    private func acceptAll() {
        while true {
            let fd = tollgate_accept4(listenFD, nil, nil, tollgate_SOCK_NONBLOCK | tollgate_SOCK_CLOEXEC)
            if fd < 0 {
                let code = errno
                if code == EINTR || code == ECONNABORTED { continue }
                if code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM {
                    // Out of descriptors or memory: the listener stays readable, so pause
                    // rather than spin; the next readiness retries.
                    ReferenceStopSignal().sleep(for: .milliseconds(10))
                }
                // EAGAIN: all taken.
                return
            }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let connection = ReferenceConnection(fd: fd, maximumHeadBytes: limits.maximumHeadBytes,
                                                 maximumBodyBytes: limits.maximumBodyBytes,
                                                 writeTimeout: limits.writeTimeout)
            let isAdmitted = registry.withLock { state in
                guard !state.isStopping, state.open.count < limits.maximumConnections else { return false }
                state.open[fd] = connection
                return true
            }
            guard isAdmitted else {
                refuse(connection, registered: false)
                continue
            }
            // Straight to the queue, in accept order; a worker parks it if nothing has come yet.
            if !pool.submit(connection) { refuse(connection, registered: true) }
        }
    }

    /// A parked connection turned readable (or hung up): back to the queue.
    private func wake(_ fd: Int32) {
        let connection = registry.withLock { state -> ReferenceConnection? in
            guard state.parked.removeValue(forKey: fd) != nil else { return nil }
            return state.open[fd]
        }
        guard let connection else { return }
        if !pool.submit(connection) { refuse(connection, registered: true) }
    }

    private func closeIdle(now: ContinuousClock.Instant) {
        let idle = registry.withLock { state -> [ReferenceConnection] in
            let expired = state.parked.filter { now - $0.value >= limits.idleTimeout }.map(\.key)
            return expired.compactMap { fd in
                state.parked[fd] = nil
                return state.open[fd]
            }
        }
        for connection in idle { release(connection) }
    }

    /// Answers `503` (best effort, without blocking) and closes.
    private func refuse(_ connection: ReferenceConnection, registered: Bool) {
        refused.add(1, ordering: .relaxed)
        let body = #"{"error":"server busy"}"#
        let response = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            + "Content-Length: \(body.utf8.count)\r\nRetry-After: 1\r\nConnection: close\r\n\r\n\(body)"
        let bytes = Array(response.utf8)
        _ = bytes.withUnsafeBytes { send(connection.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        // Read what the client already sent, so that close() sends FIN rather than RST.
        var sink: [UInt8] = []
        for _ in 0..<4 {
            guard case .bytes = connection.socket.receive(into: &sink, maximum: 16 * 1024) else { break }
            sink.removeAll(keepingCapacity: true)
        }
        if registered {
            release(connection)
        } else {
            close(connection.fd)
        }
    }

    /// After a refusal: stop sending, then read (and drop) what the client is still
    /// sending for a moment, so that the close is a FIN and the client reads the answer
    /// (closing with unread bytes would reset the connection).
    private func lingerAndRelease(_ connection: ReferenceConnection) {
        shutdown(connection.fd, Int32(SHUT_WR))
        let deadline = ContinuousClock.now.advanced(by: .seconds(1))
        var sink: [UInt8] = []
        var drained = 0
        var descriptor = pollfd(fd: connection.fd, events: Int16(POLLIN), revents: 0)
        draining: while drained < 1024 * 1024 && ContinuousClock.now < deadline && !stopSignal.isStopping {
            if poll(&descriptor, 1, 100) < 0 && errno != EINTR { break }
            switch connection.socket.receive(into: &sink, maximum: 64 * 1024) {
            case .bytes(let count):
                drained += count
                sink.removeAll(keepingCapacity: true)
            case .wouldBlock:
                continue
            case .endOfStream, .failed:
                break draining
            }
        }
        release(connection)
    }

    private func release(_ connection: ReferenceConnection) {
        // Deregister under the lock so stop() never shuts down a reused descriptor.
        registry.withLock { state in
            state.open[connection.fd] = nil
            state.parked[connection.fd] = nil
            close(connection.fd)
        }
    }

    /// Hands an idle connection to the poller until it turns readable.
    private func park(_ connection: ReferenceConnection) {
        let fd = connection.fd
        let isParked = registry.withLock { state -> Bool in
            guard !state.isStopping else { return false }
            state.parked[fd] = .now
            var event = epoll_event()
            event.events = Self.epollIn | Self.epollRDHUP | Self.epollOneShot
            event.data.u64 = UInt64(UInt32(bitPattern: fd))
            // Under the lock: the poller may take it back the moment it is armed.
            let operation = connection.isRegistered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD
            connection.isRegistered = true
            if epoll_ctl(epollFD, operation, fd, &event) != 0 {
                state.parked[fd] = nil
                return false
            }
            return true
        }
        if !isParked { release(connection) }
    }

    // MARK: - Serving

    private func serve(_ connection: ReferenceConnection) {
        let socket = connection.socket
        while !stopSignal.isStopping {
            let head: RequestHead
            let body: [UInt8]
            switch connection.step() {
            case .needMore:
                switch connection.fill() {
                case .bytes:
                    continue
                case .wouldBlock:
                    park(connection)
                    return
                case .endOfStream, .failed:
                    if connection.hasPartialRequest {
                        try? write(Self.rejectionResponse(RequestRejection(status: 400, reason: "incomplete request")),
                                   to: socket, for: nil, closing: true)
                    }
                    release(connection)
                    return
                }
            case .sendContinue:
                guard (try? socket.sendAll(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))) != nil else {
                    release(connection)
                    return
                }
                continue
            case .rejected(let rejection):
                try? write(Self.rejectionResponse(rejection), to: socket, for: nil, closing: true)
                lingerAndRelease(connection)
                return
            case .request(let parsed, let bytes):
                head = parsed
                body = bytes
            }
            let request = ReferenceRequest(method: head.method, target: head.target, path: head.path,
                                           rawQuery: head.rawQuery, headers: head.headers, body: body,
                                           version: head.version, stopSignal: stopSignal, peer: connection.peer)
            let response = respond(to: request)
            requests.add(1, ordering: .relaxed)
            let closing = head.wantsClose || stopSignal.isStopping
            do {
                try write(response, to: socket, for: head, closing: closing)
            } catch {
                release(connection)
                return
            }
            if closing {
                release(connection)
                return
            }
        }
        release(connection)
    }

    private func respond(to request: ReferenceRequest) -> ReferenceResponse {
        switch router.match(method: request.method, path: request.path) {
        case .found(let handler, let parameters):
            var request = request
            request.pathParameters = parameters
            do {
                return try handler(request)
            } catch let failure as ReferenceHTTPError {
                return .json(failure.status, failure.body, headers: failure.headers)
            } catch {
                return .json(500, ["error": "internal error", "detail": .string("\(error)")])
            }
        case .methodNotAllowed(let allowed):
            return .json(405, ["error": "method not allowed"], headers: [("Allow", allowed.joined(separator: ", "))])
        case .notFound:
            return .json(404, ["error": "not found", "path": .string(request.path)])
        }
    }

    static func rejectionResponse(_ rejection: RequestRejection) -> ReferenceResponse {
        .json(rejection.status, ["error": .string(rejection.reason)])
    }

    /// Writes the head and body. A streamed body to an HTTP/1.1 client is
    /// chunked; to an HTTP/1.0 client it is raw and the connection closes.
    private func write(_ response: ReferenceResponse, to socket: ReferenceSocket, for head: RequestHead?,
                       closing: Bool) throws(ReferenceServerError) {
        let isHead = head?.method == "HEAD"
        let isHTTP11 = head?.version != "HTTP/1.0"
        let hasNoBody = response.status == 204 || response.status == 304 || response.status < 200
        var lines = "HTTP/1.1 \(response.status) \(HTTPStatus.reason(response.status))\r\n"
        let owned: Set<String> = ["content-length", "transfer-encoding", "connection"]
        for (name, value) in response.headers where !owned.contains(name.lowercased()) {
            lines += "\(name): \(value)\r\n"
        }
        switch response.body {
        case .bytes(let bytes):
            if !hasNoBody { lines += "Content-Length: \(bytes.count)\r\n" }
            if closing { lines += "Connection: close\r\n" }
            lines += "\r\n"
            var out = Array(lines.utf8)
            if !isHead && !hasNoBody { out.append(contentsOf: bytes) }
            try socket.sendAll(out)
        case .stream(let produce):
            let isChunked = isHTTP11
            if isChunked { lines += "Transfer-Encoding: chunked\r\n" }
            lines += closing || !isChunked ? "Connection: close\r\n" : "Connection: keep-alive\r\n"
            lines += "\r\n"
            try socket.sendAll(Array(lines.utf8))
            if isHead { return }
            let writer = ReferenceStreamWriter(socket: socket, isChunked: isChunked)
            do {
                try produce(writer)
            } catch {
                // Mid-stream failure: the client sees a truncated stream (no last chunk).
                throw .connectionClosed
            }
            try writer.finish()
            if !isChunked { throw .connectionClosed }
        }
    }
}

