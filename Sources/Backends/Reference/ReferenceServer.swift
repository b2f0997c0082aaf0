#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import CSystem

/// A small, blocking HTTP/1.1 server for the reference backends.
///
/// ```
///  accept thread ──accept()──► connection thread (one per connection)
///                                 loop: read head → read body → route → write response
///                                 until close / error / stop()
/// ```
///
/// It does keep-alive and pipelining, `Content-Length` and chunked request
/// bodies, `Expect: 100-continue`, `HEAD`, and complete (`Content-Length`) or
/// streamed (chunked, flushed per write) responses. Malformed or ambiguous
/// requests get `400` (or 431/501/505) and the connection is closed.
/// Correctness and clarity over speed: this is test and demo infrastructure.
public final class ReferenceServer: Sendable {
    /// The bound port (the real one when asked for port 0).
    public let port: UInt16
    public let host: String
    /// Requests answered so far (all routes, all connections).
    public var requestCount: Int { requests.load(ordering: .relaxed) }

    private let listenFD: Int32
    private let router: ReferenceRouter
    private let stopSignal = ReferenceStopSignal()
    private let requests = Atomic(0)
    private let connections = Mutex(Connections())
    private let acceptThread = Mutex<ReferenceThread?>(nil)

    private struct Connections {
        var open: Set<Int32> = []
        var isStopping = false
    }

    /// Seconds a connection may sit idle between requests before it is closed.
    static let idleTimeoutSeconds = 120

    /// Binds `host:port` (port 0: an ephemeral port) and starts accepting.
    public init(host: String, port: UInt16, router: ReferenceRouter) throws(ReferenceServerError) {
        let (fd, boundPort) = try SocketAddress.listen(host: host, port: port)
        self.listenFD = fd
        self.port = boundPort
        self.host = host
        self.router = router
        do {
            let thread = try ReferenceThread.spawn { [self] in acceptLoop() }
            acceptThread.withLock { $0 = thread }
        } catch {
            close(fd)
            throw error
        }
    }

    /// Stops accepting, wakes and closes every connection, and waits (up to
    /// five seconds) for connection threads to finish. Safe to call twice.
    public func stop() {
        let wasStopping = connections.withLock { state in
            let was = state.isStopping
            state.isStopping = true
            return was
        }
        guard !wasStopping else { return }
        stopSignal.raise()
        // Linux: shutdown wakes a thread blocked in accept() (EINVAL).
        shutdown(listenFD, Int32(SHUT_RDWR))
        acceptThread.withLock { $0 }?.join()
        close(listenFD)
        connections.withLock { state in
            for fd in state.open { shutdown(fd, Int32(SHUT_RDWR)) }
        }
        let deadline = ContinuousClock.now.advanced(by: .seconds(5))
        while ContinuousClock.now < deadline {
            if connections.withLock({ $0.open.isEmpty }) { return }
            ReferenceStopSignal().sleep(for: .milliseconds(5))
        }
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                let code = errno
                if code == EINTR || code == ECONNABORTED { continue }
                if connections.withLock({ $0.isStopping }) { return }
                if code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM {
                    ReferenceStopSignal().sleep(for: .milliseconds(10))
                    continue
                }
                return
            }
            let isAccepted = connections.withLock { state in
                if state.isStopping { return false }
                state.open.insert(fd)
                return true
            }
            guard isAccepted else {
                close(fd)
                return
            }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            // In C: `struct timeval` resolves through whichever imported module declares it
            // first, which made incremental builds flaky.
            _ = tollgate_set_rcvtimeo(fd, Self.idleTimeoutSeconds)
            do {
                try ReferenceThread.detach { [self] in serve(ReferenceSocket(fd: fd)) }
            } catch {
                release(fd)
            }
        }
    }

    private func release(_ fd: Int32) {
        // Deregister under the lock so stop() never shuts down a reused descriptor.
        connections.withLock { state in
            state.open.remove(fd)
            close(fd)
        }
    }

    private func serve(_ socket: ReferenceSocket) {
        defer { release(socket.fd) }
        var reader = RequestReader(socket: socket)
        while !stopSignal.isStopping {
            let head: RequestHead
            switch reader.readHead() {
            case .endOfStream:
                return
            case .rejected(let rejection):
                try? write(Self.rejectionResponse(rejection), to: socket, for: nil, closing: true)
                return
            case .head(let parsed):
                head = parsed
            }
            if head.expectsContinue && head.framing != .none {
                guard (try? socket.sendAll(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))) != nil else { return }
            }
            let body: [UInt8]
            do {
                body = try reader.readBody(head.framing)
            } catch {
                try? write(Self.rejectionResponse(error), to: socket, for: head, closing: true)
                return
            }
            let request = ReferenceRequest(method: head.method, target: head.target, path: head.path,
                                           rawQuery: head.rawQuery, headers: head.headers, body: body,
                                           version: head.version, stopSignal: stopSignal)
            let response = respond(to: request)
            requests.add(1, ordering: .relaxed)
            let closing = head.wantsClose || stopSignal.isStopping
            do {
                try write(response, to: socket, for: head, closing: closing)
            } catch {
                return
            }
            if closing { return }
        }
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
