/// One parsed HTTP/1.1 request as a reference backend handler sees it.
///
/// Strings are fine here: this is test and demo infrastructure, not the
/// proxy's hot path.
public struct ReferenceRequest: Sendable {
    /// The method as sent (`GET`, `POST`, …).
    public var method: String
    /// The request target as sent (origin form, `/path?query`).
    public var target: String
    /// The path part of the target, still percent-encoded.
    public var path: String
    /// The raw query string (without `?`), empty when absent.
    public var rawQuery: String
    /// Header fields in arrival order; names as sent.
    public var headers: [(name: String, value: String)]
    /// The decoded body (chunked framing removed).
    public var body: [UInt8]
    /// `{param}` captures of the matched route, percent-decoded.
    public var pathParameters: [String: String] = [:]
    /// `HTTP/1.0` or `HTTP/1.1`.
    public var version: String
    /// Raised when the server is stopping.
    public var stopSignal: ReferenceStopSignal
    /// The client's address (IPv4 dotted or IPv6 text, no port); empty when unknown.
    public var peer: String = ""

    /// The first header named `name` (ASCII case-insensitive).
    public func header(_ name: String) -> String? {
        let wanted = name.lowercased()
        return headers.first { $0.name.lowercased() == wanted }?.value
    }

    /// Whether any header named `name` was present.
    public func hasHeader(_ name: String) -> Bool { header(name) != nil }

    /// Decoded query items in order (`+` is a space).
    public var queryItems: [(name: String, value: String)] {
        guard !rawQuery.isEmpty else { return [] }
        return rawQuery.split(separator: "&", omittingEmptySubsequences: true).map { pair in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = PercentCoding.decode(String(parts[0]), plusIsSpace: true)
            let value = parts.count > 1 ? PercentCoding.decode(String(parts[1]), plusIsSpace: true) : ""
            return (name, value)
        }
    }

    /// The first query item named `name`.
    public func query(_ name: String) -> String? {
        queryItems.first { $0.name == name }?.value
    }
}

/// What a handler answers: a status, headers and a body that is either
/// complete (sent with `Content-Length`) or streamed (sent chunked, each
/// write flushed to the socket at once).
public struct ReferenceResponse: Sendable {
    public enum Body: Sendable {
        case bytes([UInt8])
        /// Called once with a writer; every `write` goes out as one chunk.
        case stream(@Sendable (ReferenceStreamWriter) throws -> Void)
    }

    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: Body

    public init(status: Int, headers: [(name: String, value: String)] = [], body: Body = .bytes([])) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A JSON response (`application/json; charset=utf-8`).
    public static func json(_ status: Int, _ value: JSONValue, headers: [(name: String, value: String)] = []) -> ReferenceResponse {
        ReferenceResponse(status: status,
                          headers: [("Content-Type", "application/json; charset=utf-8")] + headers,
                          body: .bytes(Array(value.serialized().utf8)))
    }

    /// A plain-text response.
    public static func text(_ status: Int, _ text: String) -> ReferenceResponse {
        ReferenceResponse(status: status, headers: [("Content-Type", "text/plain; charset=utf-8")],
                          body: .bytes(Array(text.utf8)))
    }

    /// A `text/event-stream` response; the server frames it with chunked
    /// transfer encoding and flushes every write.
    public static func eventStream(headers: [(name: String, value: String)] = [],
                                    _ produce: @escaping @Sendable (ReferenceStreamWriter) throws -> Void) -> ReferenceResponse {
        ReferenceResponse(status: 200,
                          headers: [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")] + headers,
                          body: .stream(produce))
    }
}

/// Writes one streamed response body. Each ``write(_:)`` is sent to the socket
/// before it returns (as one HTTP/1.1 chunk, or raw for HTTP/1.0 clients).
public final class ReferenceStreamWriter: Sendable {
    private let socket: ReferenceSocket
    private let isChunked: Bool

    init(socket: ReferenceSocket, isChunked: Bool) {
        self.socket = socket
        self.isChunked = isChunked
    }

    public func write(_ bytes: [UInt8]) throws(ReferenceServerError) {
        guard !bytes.isEmpty else { return }
        if isChunked {
            var frame = Array(String(bytes.count, radix: 16).utf8)
            frame.reserveCapacity(frame.count + bytes.count + 4)
            frame.append(contentsOf: [13, 10])
            frame.append(contentsOf: bytes)
            frame.append(contentsOf: [13, 10])
            try socket.sendAll(frame)
        } else {
            try socket.sendAll(bytes)
        }
    }

    public func write(_ text: String) throws(ReferenceServerError) {
        try write(Array(text.utf8))
    }

    func finish() throws(ReferenceServerError) {
        if isChunked { try socket.sendAll(Array("0\r\n\r\n".utf8)) }
    }
}

/// Errors of the reference server itself (not HTTP answers).
public enum ReferenceServerError: Error, Equatable, CustomStringConvertible {
    case invalidAddress(String)
    case socketFailed(operation: String, errno: Int32)
    case threadStartFailed(errno: Int32)
    case connectionClosed
    case persistenceFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case .invalidAddress(let address): "invalid listen address: \(address)"
        case .socketFailed(let operation, let code): "\(operation) failed: errno \(code)"
        case .threadStartFailed(let code): "pthread_create failed: \(code)"
        case .connectionClosed: "connection closed by peer"
        case .persistenceFailed(let path, let reason): "cannot persist \(path): \(reason)"
        }
    }
}

enum HTTPStatus {
    static func reason(_ status: Int) -> String {
        switch status {
        case 100: "Continue"
        case 200: "OK"
        case 201: "Created"
        case 202: "Accepted"
        case 204: "No Content"
        case 303: "See Other"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 402: "Payment Required"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 409: "Conflict"
        case 413: "Content Too Large"
        case 415: "Unsupported Media Type"
        case 422: "Unprocessable Content"
        case 429: "Too Many Requests"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 501: "Not Implemented"
        case 503: "Service Unavailable"
        case 505: "HTTP Version Not Supported"
        default: "Status \(status)"
        }
    }
}

enum PercentCoding {
    static func decode(_ text: String, plusIsSpace: Bool) -> String {
        var out: [UInt8] = []
        let bytes = Array(text.utf8)
        out.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "%"), index + 2 < bytes.count,
               let high = hexValue(bytes[index + 1]), let low = hexValue(bytes[index + 2]) {
                out.append(high << 4 | low)
                index += 3
            } else if byte == UInt8(ascii: "+") && plusIsSpace {
                out.append(UInt8(ascii: " "))
                index += 1
            } else {
                out.append(byte)
                index += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
