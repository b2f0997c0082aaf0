import Backends
import COpenSSL
import CSystem
import Glibc
import Policy
import Runtime

/// TLS for a `BlockingHTTPClient` (https webhooks): peer verification on against the system's
/// CA store or one CA file, TLS 1.2 at the lowest, the host checked (name or IP address).
final class BlockingTLS: @unchecked Sendable {
    // SAFETY: configured in init, never changed; an SSL_CTX is safe to share for SSL_new.
    let ctx: OpaquePointer

    /// nil (and `error`) when the CA file or the system store cannot be loaded.
    init?(caFile: String?, error: inout String) {
        guard let c = SSL_CTX_new(TLS_client_method()) else { error = "SSL_CTX_new failed"; return nil }
        ERR_clear_error()
        if let caFile {
            if SSL_CTX_load_verify_locations(c, caFile, nil) != 1 {
                error = "cannot load the CA file \(caFile) (\(TLSContext.opensslError()))"
                SSL_CTX_free(c)
                return nil
            }
        } else if SSL_CTX_set_default_verify_paths(c) != 1 {
            error = "no system CA store (\(TLSContext.opensslError()))"
            SSL_CTX_free(c)
            return nil
        }
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nil)
        _ = tollgate_SSL_CTX_set_min_proto_version(c, tollgate_TLS1_2_VERSION)
        _ = SSL_CTX_set_options(c, tollgate_SSL_OP_NO_RENEGOTIATION | tollgate_SSL_OP_NO_COMPRESSION)
        _ = tollgate_SSL_CTX_set_mode(c, tollgate_SSL_MODE_ENABLE_PARTIAL_WRITE | tollgate_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        ctx = c
    }

    deinit { SSL_CTX_free(ctx) }
}

/// A small blocking HTTP/1.1 client for the proxy's own background threads (usage sinks,
/// the accounting ledger): one keep-alive connection, a deadline per wait, answers read by
/// the proxy's strict response parser and chunk decoder, bodies bounded. Never on a loop.
final class BlockingHTTPClient {
    let host: String
    let port: UInt16
    let timeoutMillis: Int32
    private var fd: Int32 = -1
    private var address: UpstreamAddress?
    private let tls: BlockingTLS?
    private var ssl: OpaquePointer?
    /// Why the last request failed, when it was TLS (the certificate, the handshake).
    private(set) var lastTLSError: String?

    /// The most of an answer's body that is kept (the rest is read and dropped, up to
    /// `maxAnswerBytes`, past which the answer is refused).
    static let maxAnswerBytes = 1 << 20

    init(host: String, port: UInt16, timeout: Duration, tls: BlockingTLS? = nil) {
        self.host = host
        self.port = port
        self.tls = tls
        timeoutMillis = Int32(clamping: timeout.nanoseconds / 1_000_000)
    }

    deinit { close() }

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
        if let tls { return handshake(tls) }
        return true
    }

    /// TLS over the connected socket: SNI and the host checked, the handshake within the
    /// time-out (each wait bounded by it).
    private func handshake(_ tls: BlockingTLS) -> Bool {
        guard let s = SSL_new(tls.ctx) else { close(); return false }
        ssl = s
        TLSStream.prepareClient(s, fd: fd, host: host)
        ERR_clear_error()
        while true {
            let rc = SSL_connect(s)
            if rc == 1 { lastTLSError = nil; return true }
            let e = SSL_get_error(s, rc)
            if e == SSL_ERROR_WANT_READ, wait(Int16(POLLIN)) { continue }
            if e == SSL_ERROR_WANT_WRITE, wait(Int16(POLLOUT)) { continue }
            let verify = SSL_get_verify_result(s)
            if verify != X509_V_OK, let reason = X509_verify_cert_error_string(verify) {
                lastTLSError = "TLS: certificate not accepted: " + String(cString: reason)
            } else {
                lastTLSError = "TLS handshake failed: " + TLSContext.opensslError()
            }
            close()
            return false
        }
    }

    func close() {
        if let ssl {
            SSL_free(ssl)
            self.ssl = nil
        }
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    private func wait(_ events: Int16) -> Bool {
        var p = pollfd(fd: fd, events: events, revents: 0)
        return poll(&p, 1, timeoutMillis) == 1
    }

    private func send(_ bytes: [UInt8]) -> Bool {
        if let ssl { return sendTLS(ssl, bytes) }
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

    private func sendTLS(_ ssl: OpaquePointer, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            ERR_clear_error()
            let n = bytes.withUnsafeBytes { SSL_write(ssl, $0.baseAddress! + off, Int32(clamping: $0.count - off)) }
            if n > 0 { off += Int(n); continue }
            let e = SSL_get_error(ssl, n)
            if e == SSL_ERROR_WANT_WRITE, wait(Int16(POLLOUT)) { continue }
            if e == SSL_ERROR_WANT_READ, wait(Int16(POLLIN)) { continue }
            return false
        }
        return true
    }

    private func readTLS(_ ssl: OpaquePointer, into buf: inout [UInt8]) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            ERR_clear_error()
            let n = chunk.withUnsafeMutableBytes { SSL_read(ssl, $0.baseAddress!, Int32($0.count)) }
            if n > 0 { buf.append(contentsOf: chunk[0..<Int(n)]); return true }
            let e = SSL_get_error(ssl, n)
            if e == SSL_ERROR_WANT_READ, wait(Int16(POLLIN)) { continue }
            if e == SSL_ERROR_WANT_WRITE, wait(Int16(POLLOUT)) { continue }
            return false   // close_notify, EOF or an error: the answer ends here
        }
    }

    private func read(into buf: inout [UInt8]) -> Bool {
        if let ssl { return readTLS(ssl, into: &buf) }
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
