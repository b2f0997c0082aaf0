#if canImport(Glibc)
import Glibc
#endif
import ReferenceBackends
import Foundation

/// A blocking HTTP/1.1 client over a raw loopback socket, so tests see the
/// exact bytes, chunk boundaries and arrival order.
final class TestHTTPClient {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    struct Response {
        var status: Int
        var headers: [(name: String, value: String)]
        var body: [UInt8]

        func header(_ name: String) -> String? {
            headers.first { $0.name.lowercased() == name.lowercased() }?.value
        }

        var text: String { String(decoding: body, as: UTF8.self) }

        var json: JSONValue {
            get throws { try JSONValue.parse(body) }
        }
    }

    struct Head {
        var status: Int
        var headers: [(name: String, value: String)]

        func header(_ name: String) -> String? {
            headers.first { $0.name.lowercased() == name.lowercased() }?.value
        }
    }

    private let fd: Int32
    private var buffer: [UInt8] = []

    init(port: UInt16, receiveTimeoutSeconds: Int = 15) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket errno \(errno)") }
        var timeout = timeval(tv_sec: receiveTimeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            let code = errno
            // Closed by `deinit` (which runs for a class whose init throws once it is fully
            // initialised): closing here too could close a reused fd of another test.
            throw Failure(description: "connect to \(port) errno \(code)")
        }
    }

    deinit { Glibc.close(fd) }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { throw Failure(description: "send errno \(errno)") }
            offset += sent
        }
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Sends one request with `Host` and (when there is a body) `Content-Length`.
    func sendRequest(_ method: String, _ target: String, headers: [(String, String)] = [],
                     body: [UInt8]? = nil) throws {
        var head = "\(method) \(target) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        if let body { head += "Content-Length: \(body.count)\r\n" }
        head += "\r\n"
        try send(Array(head.utf8) + (body ?? []))
    }

    /// Sends a request and reads the whole response.
    func request(_ method: String, _ target: String, headers: [(String, String)] = [],
                 body: [UInt8]? = nil) throws -> Response {
        try sendRequest(method, target, headers: headers, body: body)
        return try readResponse(method: method)
    }

    func request(_ method: String, _ target: String, headers: [(String, String)] = [],
                 json: JSONValue) throws -> Response {
        try request(method, target, headers: headers + [("Content-Type", "application/json")],
                    body: Array(json.serialized().utf8))
    }

    func readResponse(method: String = "GET") throws -> Response {
        let head = try readHead()
        var body: [UInt8] = []
        if method == "HEAD" || head.status == 204 || head.status == 304 {
            body = []
        } else if head.header("Transfer-Encoding")?.lowercased() == "chunked" {
            while let chunk = try readChunk() { body += chunk }
        } else if let length = head.header("Content-Length").flatMap({ Int($0) }) {
            body = try readExactly(length)
        } else {
            body = try readToEnd()
        }
        return Response(status: head.status, headers: head.headers, body: body)
    }

    func readHead() throws -> Head {
        while true {
            if let end = find([13, 10, 13, 10]) {
                let text = String(decoding: buffer[..<end], as: UTF8.self)
                buffer.removeFirst(end + 4)
                var lines = text.components(separatedBy: "\r\n")
                let statusLine = lines.removeFirst().split(separator: " ")
                guard statusLine.count >= 2, let status = Int(statusLine[1]) else {
                    throw Failure(description: "bad status line in \(text)")
                }
                let headers = lines.map { line -> (name: String, value: String) in
                    let parts = line.split(separator: ":", maxSplits: 1)
                    return (String(parts[0]), parts.count > 1 ? parts[1].trimmingCharacters(in: .whitespaces) : "")
                }
                if status == 100 { continue }
                return Head(status: status, headers: headers)
            }
            try fill()
        }
    }

    /// One chunk's data; `nil` after the last chunk (and its trailers).
    func readChunk() throws -> [UInt8]? {
        let sizeLine = try readLine()
        guard let size = Int(sizeLine.split(separator: ";")[0], radix: 16) else {
            throw Failure(description: "bad chunk size \(sizeLine)")
        }
        if size == 0 {
            while try !readLine().isEmpty {}
            return nil
        }
        let data = try readExactly(size)
        guard try readLine().isEmpty else { throw Failure(description: "missing CRLF after chunk") }
        return data
    }

    /// Whether the server has closed the connection (reads until EOF or error).
    func isClosedByPeer() -> Bool {
        do {
            while true {
                let count = try receive()
                if count == 0 { return true }
            }
        } catch {
            return true
        }
    }

    // MARK: - Bytes

    private func find(_ needle: [UInt8]) -> Int? {
        guard buffer.count >= needle.count else { return nil }
        for index in 0...(buffer.count - needle.count) where Array(buffer[index..<index + needle.count]) == needle {
            return index
        }
        return nil
    }

    private func readLine() throws -> String {
        while true {
            if let end = find([13, 10]) {
                let line = String(decoding: buffer[..<end], as: UTF8.self)
                buffer.removeFirst(end + 2)
                return line
            }
            try fill()
        }
    }

    private func readExactly(_ count: Int) throws -> [UInt8] {
        while buffer.count < count { try fill() }
        let bytes = Array(buffer[..<count])
        buffer.removeFirst(count)
        return bytes
    }

    private func readToEnd() throws -> [UInt8] {
        while try receive() > 0 {}
        defer { buffer.removeAll() }
        return buffer
    }

    private func fill() throws {
        guard try receive() > 0 else { throw Failure(description: "connection closed by server") }
    }

    @discardableResult
    private func receive() throws -> Int {
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
        guard count >= 0 else { throw Failure(description: "recv errno \(errno)") }
        buffer += chunk[..<count]
        return count
    }
}

/// A temporary data directory removed when the test ends.
struct TemporaryDirectory: ~Copyable {
    let path: String

    init() {
        path = FileManager.default.temporaryDirectory
            .appendingPathComponent("tollgate-backends-\(UUID().uuidString)").path
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

let loopbackEphemeral = ReferenceAddress(host: "127.0.0.1", port: 0)

/// Starts the chosen backends on ephemeral loopback ports, runs `body`, and
/// always stops them.
func withBackends<Result>(finance: Bool = false, accounting: Bool = false, flowise: Bool = false,
                          dataDirectory: String, options: ReferenceBackends.Options = fastOptions(),
                          _ body: (ReferenceBackends) throws -> Result) throws -> Result {
    let backends = try ReferenceBackends.start(finance: finance ? loopbackEphemeral : nil,
                                               accounting: accounting ? loopbackEphemeral : nil,
                                               flowise: flowise ? loopbackEphemeral : nil,
                                               dataDirectory: dataDirectory, options: options)
    defer { backends.stop() }
    return try body(backends)
}

func fastOptions() -> ReferenceBackends.Options {
    var options = ReferenceBackends.Options()
    options.flowise.tokenDelay = .milliseconds(5)
    options.finance.importDelay = .milliseconds(5)
    return options
}

extension JSONValue {
    subscript(index: Int) -> JSONValue? {
        guard case .array(let items) = self, items.indices.contains(index) else { return nil }
        return items[index]
    }

    var arrayCount: Int? {
        guard case .array(let items) = self else { return nil }
        return items.count
    }
}
