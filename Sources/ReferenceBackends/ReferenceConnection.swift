import Runtime

/// A request head as the strict parser (``HTTP1RequestParser``) read it, copied out of the
/// connection's buffer.
struct RequestHead {
    var method: String
    var target: String
    var path: String
    var rawQuery: String
    /// `HTTP/1.1` or `HTTP/1.0`.
    var version: String
    var headers: [(name: String, value: String)]
    var framing: RequestFraming
    /// The client asked to close after this exchange (or spoke HTTP/1.0 without keep-alive).
    var wantsClose: Bool
    var expectsContinue: Bool
}

/// A request the server refuses; answered with `status` and the connection closed.
struct RequestRejection: Error {
    var status: Int
    var reason: String
}

/// One client connection of a ``ReferenceServer``: its socket, the bytes read so far, and
/// where the request in progress stands. Only one thread touches it at a time (the worker
/// serving it, or the poller while it is parked), handed over under the server's locks.
///
/// Requests are read with the project's strict HTTP/1.1 codec (`Runtime`): the head with
/// ``HTTP1RequestParser`` (resumable: more bytes, same message start), a chunked body with
/// ``ChunkedDecoder``, a `Content-Length` body by count; bodies are bounded. Bytes past the
/// current request stay buffered for the next one (pipelining).
final class ReferenceConnection: @unchecked Sendable {
    // SAFETY: owned by one thread at a time (see above); the hand-over goes through the
    // server's mutex-guarded registry or the worker pool's queue.
    static let readSize = 16 * 1024

    let socket: ReferenceSocket
    var fd: Int32 { socket.fd }
    /// Registered with the server's epoll instance (the next park is a re-arm).
    var isRegistered = false
    /// The client's address, read once per connection (on its first request).
    lazy var peer: String = SocketAddress.peer(of: socket.fd)

    private let maximumBodyBytes: Int
    private var buffer: [UInt8] = []
    /// Where the message in progress starts in `buffer`.
    private var start = 0
    private var parser: HTTP1RequestParser
    private let headers = HeaderTable(capacity: 128)
    private var parsedHead = HTTP1RequestHead()
    private var phase = Phase.head
    private var body: [UInt8] = []
    private var chunked = ChunkedDecoder()

    private enum Phase {
        case head
        case body(RequestHead)
    }

    enum Step {
        /// A complete request (head and body).
        case request(RequestHead, body: [UInt8])
        /// Nothing to do until more bytes arrive.
        case needMore
        /// A head that was just read asks for `100 Continue` before its body.
        case sendContinue
        case rejected(RequestRejection)
    }

    init(fd: Int32, maximumHeadBytes: Int, maximumBodyBytes: Int, writeTimeout: Duration) {
        socket = ReferenceSocket(fd: fd, writeTimeout: writeTimeout)
        var limits = HTTP1Limits()
        limits.maxHeadBytes = maximumHeadBytes
        parser = HTTP1RequestParser(limits: limits)
        self.maximumBodyBytes = maximumBodyBytes
    }

    /// Whether bytes of an unfinished request are buffered.
    var hasPartialRequest: Bool {
        if case .body = phase { return true }
        return start < buffer.count
    }

    /// Reads what the socket has without blocking.
    func fill() -> ReferenceSocket.ReadOutcome {
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= 256 * 1024)
            start = 0
        } else if start > 64 * 1024 && start * 2 > buffer.count {
            // Offsets of the parser and decoder count from the message start: safe to move.
            buffer.removeSubrange(0..<start)
            start = 0
        }
        return socket.receive(into: &buffer, maximum: Self.readSize)
    }

    /// Advances the request in progress over the buffered bytes.
    func step() -> Step {
        switch phase {
        case .head:
            return readHead()
        case .body(let head):
            return readBody(head)
        }
    }

    private func readHead() -> Step {
        // Empty lines before a request line are ignored (RFC 9112 §2.2).
        while buffer.count - start >= 2 && buffer[start] == 13 && buffer[start + 1] == 10 {
            start += 2
            parser.reset()
        }
        guard start < buffer.count else { return .needMore }
        if buffer.count - start == 1 && buffer[start] == 13 { return .needMore }
        let result = buffer.withUnsafeBytes { raw in
            parser.parse(UnsafeRawBufferPointer(rebasing: raw[start...]), into: &parsedHead, headers: headers)
        }
        switch result {
        case .incomplete:
            return .needMore
        case .failed(let error):
            return .rejected(RequestRejection(status: error.status, reason: "\(error.kind)"))
        case .complete(let consumed):
            let head = copyHead()
            start += consumed
            switch head.framing {
            case .contentLength(let length):
                guard length <= maximumBodyBytes else {
                    return .rejected(RequestRejection(status: 413, reason: "body too large"))
                }
            case .chunked:
                chunked.reset()
            case .none:
                return .request(head, body: [])
            }
            body = []
            phase = .body(head)
            return head.expectsContinue ? .sendContinue : readBody(head)
        }
    }

    private func readBody(_ head: RequestHead) -> Step {
        switch head.framing {
        case .none:
            phase = .head
            return .request(head, body: [])
        case .contentLength(let length):
            guard buffer.count - start >= length else { return .needMore }
            let bytes = Array(buffer[start..<start + length])
            start += length
            phase = .head
            return .request(head, body: bytes)
        case .chunked:
            while true {
                let step = buffer.withUnsafeBytes { raw in
                    chunked.step(UnsafeRawBufferPointer(rebasing: raw[start...]))
                }
                switch step {
                case .data(let skip, let count):
                    guard body.count + count <= maximumBodyBytes else {
                        return .rejected(RequestRejection(status: 413, reason: "body too large"))
                    }
                    body.append(contentsOf: buffer[(start + skip)..<(start + skip + count)])
                    start += skip + count
                case .needMore(let consumed):
                    start += consumed
                    return .needMore
                case .end(let consumed):
                    start += consumed
                    phase = .head
                    let bytes = body
                    body = []
                    return .request(head, body: bytes)
                case .failed(let error):
                    return .rejected(RequestRejection(status: error.status, reason: "\(error.kind)"))
                }
            }
        }
    }

    /// The parsed head as strings (its ranges count from the message start).
    private func copyHead() -> RequestHead {
        buffer.withUnsafeBytes { raw -> RequestHead in
            let base = start
            func text(_ range: ByteRange) -> String {
                let from = base + Int(range.offset)
                return String(decoding: raw[from..<(from + Int(range.count))], as: UTF8.self)
            }
            var fields: [(name: String, value: String)] = []
            fields.reserveCapacity(headers.count)
            for index in 0..<headers.count {
                fields.append((text(headers[index].name), text(headers[index].value)))
            }
            let path = parsedHead.path.isEmpty ? "/" : text(parsedHead.path)
            let query = parsedHead.hasQuery ? text(parsedHead.query) : ""
            let framing: RequestFraming
            switch parsedHead.framing {
            case .contentLength(let length): framing = length == 0 ? .none : .contentLength(Int(length))
            case .chunked: framing = .chunked
            case .none, .untilClose: framing = .none
            }
            return RequestHead(method: text(parsedHead.methodRange),
                               target: parsedHead.hasQuery ? "\(path)?\(query)" : path,
                               path: path, rawQuery: query,
                               version: parsedHead.version == .http10 ? "HTTP/1.0" : "HTTP/1.1",
                               headers: fields, framing: framing, wantsClose: parsedHead.wantsClose,
                               expectsContinue: parsedHead.expectsContinue)
        }
    }
}

/// How a request body is framed, as the reference server reads it.
enum RequestFraming: Equatable {
    case none
    case contentLength(Int)
    case chunked
}
