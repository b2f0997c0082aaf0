import Backends
import CSystem
import Glibc
import Runtime

/// A small blocking HTTP/1.1 client for the proxy's own background threads (usage sinks,
/// the accounting ledger): one keep-alive connection, a deadline per wait, answers read by
/// the proxy's strict response parser and chunk decoder, bodies bounded. Never on a loop.
final class BlockingHTTPClient {
    let host: String
    let port: UInt16
    let timeoutMillis: Int32
    private var fd: Int32 = -1
    private var address: UpstreamAddress?

    /// The most of an answer's body that is kept (the rest is read and dropped, up to
    /// `maxAnswerBytes`, past which the answer is refused).
    static let maxAnswerBytes = 1 << 20

    init(host: String, port: UInt16, timeout: Duration) {
        self.host = host
        self.port = port
        timeoutMillis = Int32(clamping: timeout.nanoseconds / 1_000_000)
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    struct Answer {
        var status: Int
        var body: [UInt8]
    }

    /// One request and its answer; nil when no answer came (connect, send or read failed,
    /// or the answer made no sense). A kept-alive connection the server had closed is
    /// retried once, fresh.
    func request(_ method: String, _ path: String, headers: [(String, String)] = [], body: [UInt8] = [],
                 keepBody: Int = 64 * 1024) -> Answer? {
        for attempt in 0..<2 {
            let reused = fd >= 0
            if !reused && !connect() { return nil }
            var head = "\(method) \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\n"
            if !body.isEmpty || method == "POST" { head += "Content-Length: \(body.count)\r\n" }
            for (k, v) in headers { head += k + ": " + v + "\r\n" }
            head += "\r\n"
            if send(Array(head.utf8) + body), let a = readResponse(keepBody: keepBody) { return a }
            close()
            if !reused || attempt == 1 { return nil }
        }
        return nil
    }

    private func connect() -> Bool {
        if address == nil { address = UpstreamAddress(host: host, port: port) }
        guard var addr = address else { return false }
        let s = socket(addr.family, Int32(SOCK_STREAM.rawValue) | tollgate_SOCK_NONBLOCK | tollgate_SOCK_CLOEXEC, 0)
        if s < 0 { return false }
        let rc = withUnsafePointer(to: &addr.storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, addr.length) }
        }
        if rc < 0 && errno != EINPROGRESS { Glibc.close(s); return false }
        var p = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
        guard poll(&p, 1, timeoutMillis) == 1, Sys.socketError(s) == 0 else { Glibc.close(s); return false }
        fd = s
        return true
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    private func wait(_ events: Int16) -> Bool {
        var p = pollfd(fd: fd, events: events, revents: 0)
        return poll(&p, 1, timeoutMillis) == 1
    }

    private func send(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n > 0 { off += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { if wait(Int16(POLLOUT)) { continue } }
            return false
        }
        return true
    }

    /// The answer, its body de-chunked and kept up to `keepBody` bytes; nil when it did not
    /// come in time, made no sense, or would not end within `maxAnswerBytes`.
    private func readResponse(keepBody: Int) -> Answer? {
        var buf: [UInt8] = []
        var parser = HTTP1ResponseParser()
        var head = HTTP1ResponseHead()
        let fields = HeaderTable(capacity: 128)
        var consumed = 0
        while true {
            guard read(into: &buf) else { return nil }
            let r = buf.withUnsafeBytes { parser.parse($0, requestMethod: .post, into: &head, headers: fields) }
            if case .complete(let n) = r { consumed = n; break }
            if case .failed = r { return nil }
            if buf.count > 64 * 1024 { return nil }
        }
        var kept: [UInt8] = []
        func keep(_ b: ArraySlice<UInt8>) {
            if kept.count < keepBody { kept.append(contentsOf: b.prefix(keepBody - kept.count)) }
        }
        var body = Array(buf[consumed...])
        var seen = body.count
        switch head.framing {
        case .none:
            break
        case .contentLength(let n):
            keep(body[...].prefix(Int(min(n, Int64(Int.max)))))
            while Int64(seen) < n {
                body.removeAll(keepingCapacity: true)
                guard seen <= Self.maxAnswerBytes, read(into: &body) else { return nil }
                seen += body.count
                keep(body[...])
            }
        case .chunked:
            var chunks = ChunkedDecoder()
            decode: while true {
                var at = 0
                var starved = false
                while at < body.count && !starved {
                    switch body.withUnsafeBytes({ chunks.step(UnsafeRawBufferPointer(rebasing: $0[at...])) }) {
                    case .data(let skip, let count):
                        keep(body[(at + skip)..<(at + skip + count)])
                        at += skip + count
                    case .needMore(let n): at += n; starved = n == 0
                    case .end: break decode
                    case .failed: return nil
                    }
                }
                body.removeFirst(at)
                guard seen <= Self.maxAnswerBytes, read(into: &body) else { return nil }
                seen += body.count
            }
        case .untilClose:
            keep(body[...])
            while seen <= Self.maxAnswerBytes {
                body.removeAll(keepingCapacity: true)
                guard read(into: &body) else { break }
                seen += body.count
                keep(body[...])
            }
            close()
            return seen <= Self.maxAnswerBytes ? Answer(status: head.status, body: kept) : nil
        }
        if head.wantsClose { close() }
        return Answer(status: head.status, body: kept)
    }

    private func read(into buf: inout [UInt8]) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 { buf.append(contentsOf: chunk[0..<n]); return true }
            if n == 0 { return false }
            if errno == EAGAIN || errno == EINTR { if wait(Int16(POLLIN)) { continue } }
            return false
        }
    }
}
