import Foundation
import Glibc

struct HTTPResponse {
    var status: Int
    var headers: [(String, String)]
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
    func headers(_ name: String) -> [String] {
        headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1)
    }
    var json: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] }
    var errorCode: String? { (json?["error"] as? [String: Any])?["code"] as? String }
}

/// A blocking loopback HTTP/1.1 client over a raw socket: tests control every byte.
final class RawClient {
    let fd: Int32
    private(set) var buffer: [UInt8] = []

    init(port: UInt16, host: String = "127.0.0.1", timeout: Double = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        sin.sin_addr.s_addr = inet_addr(host)
        let rc = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        if rc != 0 { let e = errno; close(); throw HarnessError("connect \(port): errno \(e)") }
        setTimeout(timeout)
    }

    func setTimeout(_ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ s: String) throws { try send(Array(s.utf8)) }
    func send(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { throw HarnessError("send failed: errno \(errno)") }
            off += n
        }
    }

    /// Reads more bytes; false on EOF, throws on timeout.
    @discardableResult
    func fill() throws -> Bool {
        var tmp = [UInt8](repeating: 0, count: 65536)
        let n = tmp.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n < 0 { throw HarnessError("recv: errno \(errno) (timeout?)") }
        if n == 0 { return false }
        buffer.append(contentsOf: tmp[0..<n])
        return true
    }

    private func readLine() throws -> String {
        while true {
            if let i = findCRLF() {
                let line = String(decoding: buffer[0..<i], as: UTF8.self)
                buffer.removeFirst(i + 2)
                return line
            }
            if try !fill() { throw HarnessError("EOF while reading a line") }
        }
    }
    private func findCRLF() -> Int? {
        if buffer.count < 2 { return nil }
        for i in 0..<(buffer.count - 1) where buffer[i] == 13 && buffer[i + 1] == 10 { return i }
        return nil
    }
    private func readExactly(_ n: Int) throws -> [UInt8] {
        while buffer.count < n { if try !fill() { throw HarnessError("EOF in body") } }
        let out = Array(buffer[0..<n])
        buffer.removeFirst(n)
        return out
    }

    /// Reads one response head (skipping nothing: interim 1xx heads are returned too).
    func readHead() throws -> HTTPResponse {
        let status = try readLine()
        let parts = status.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, let code = Int(parts[1]) else { throw HarnessError("bad status line: \(status)") }
        var headers: [(String, String)] = []
        while true {
            let l = try readLine()
            if l.isEmpty { break }
            if let c = l.firstIndex(of: ":") {
                headers.append((String(l[..<c]), l[l.index(after: c)...].trimmingCharacters(in: .whitespaces)))
            }
        }
        return HTTPResponse(status: code, headers: headers, body: [])
    }

    /// Reads a whole response (final, after any 1xx) to a request of `method`.
    func readResponse(method: String = "GET") throws -> HTTPResponse {
        var r = try readHead()
        while r.status >= 100 && r.status < 200 { r = try readHead() }
        if method == "HEAD" || r.status == 204 || r.status == 304 { return r }
        if let te = r.header("Transfer-Encoding"), te.lowercased().contains("chunked") {
            var body: [UInt8] = []
            while true {
                let sizeLine = try readLine()
                let size = Int(sizeLine.split(separator: ";")[0], radix: 16) ?? 0
                if size == 0 {
                    while try !readLine().isEmpty {}
                    break
                }
                body += try readExactly(size)
                _ = try readLine()
            }
            r.body = body
        } else if let cl = r.header("Content-Length"), let n = Int(cl) {
            r.body = try readExactly(n)
        } else {
            while try fill() {}
            r.body = buffer
            buffer = []
        }
        return r
    }

    /// One request, one response.
    func request(_ raw: String, method: String = "GET") throws -> HTTPResponse {
        try send(raw)
        return try readResponse(method: method)
    }

    /// True when the peer has closed (EOF, or a reset: a close with our bytes unread) within
    /// the timeout.
    func isClosedByPeer(timeout: Double = 5) -> Bool {
        setTimeout(timeout)
        while true {
            let more: Bool
            do { more = try fill() } catch { return errno == ECONNRESET }
            if !more { return true }
        }
    }

    var unreadBytes: [UInt8] { buffer }

    /// Idempotent: `deinit` after `close()` must not close an fd number another thread may reuse.
    private var isClosed = false
    func close() {
        if isClosed { return }
        isClosed = true
        Glibc.close(fd)
    }
    deinit { close() }
}

/// GET helper: one request on a fresh connection.
func get(_ port: UInt16, _ path: String, headers: [String: String] = [:], host: String = "127.0.0.1") throws -> HTTPResponse {
    let c = try RawClient(port: port)
    defer { c.close() }
    var raw = "GET \(path) HTTP/1.1\r\nHost: \(host)\r\n"
    for (k, v) in headers { raw += "\(k): \(v)\r\n" }
    raw += "Connection: close\r\n\r\n"
    return try c.request(raw)
}
