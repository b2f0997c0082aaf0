import COpenSSL
import Glibc
import Policy
import Runtime

/// One server-side TLS connection over a non-blocking socket: OpenSSL reads and writes the fd
/// itself; `SSL_get_error` says which readiness to wait for.
///
/// With TLS a short read does not mean the socket is drained (a read returns at most one
/// record, and OpenSSL may hold decrypted bytes epoll cannot see): sessions read until
/// `wouldBlock`. A read can want a write (TLS 1.3 tickets, key updates): `readWantsWrite`
/// tells the session to retry the read when the socket becomes writable.
final class TLSStream {
    let ssl: OpaquePointer
    /// Kept alive while the connection is (a server context's SNI callback points at it),
    /// even after a reload replaced it for new connections.
    let owner: AnyObject
    private(set) var readWantsWrite = false
    private(set) var writeWantsRead = false

    enum Handshake { case done, wantRead, wantWrite, failed(String) }

    init?(context: TLSContext, fd: Int32) {
        guard let s = SSL_new(context.defaultContext) else { return nil }
        ssl = s
        owner = context
        SSL_set_fd(s, fd)
        SSL_set_accept_state(s)
    }

    /// The client side, to a backend: SNI for a host name, the certificate checked for
    /// `host` (a name or an IP address), a session of an earlier connection offered.
    init?(client context: BackendTLSContext, fd: Int32, host: String, session: OpaquePointer?) {
        guard let s = SSL_new(context.ctx) else { return nil }
        ssl = s
        owner = context
        TLSStream.prepareClient(s, fd: fd, host: host)
        if let session { _ = SSL_set_session(s, session) }
    }

    /// The client side of a connection to `host`: the socket, connect state, SNI for a host
    /// name, and the certificate checked for the name or the IP address (the proxy's
    /// upstreams and its blocking client alike).
    static func prepareClient(_ s: OpaquePointer, fd: Int32, host: String) {
        SSL_set_fd(s, fd)
        SSL_set_connect_state(s)
        if IPAddress(host) != nil {
            _ = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), host)
        } else {
            _ = tollgate_SSL_set_tlsext_host_name(s, host)
            _ = SSL_set1_host(s, host)
        }
    }

    /// This connection's session, for the next one to the same backend (caller frees it).
    func copySession() -> OpaquePointer? { SSL_get1_session(ssl) }
    var isResumed: Bool { SSL_session_reused(ssl) == 1 }

    deinit { SSL_free(ssl) }

    func handshake() -> Handshake {
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 { return .done }
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_WANT_WRITE: return .wantWrite
        case SSL_ERROR_SYSCALL: ERR_clear_error(); return .failed(errno == 0 ? "closed" : "io")
        case SSL_ERROR_ZERO_RETURN: return .failed("closed")
        default:
            ERR_clear_error()
            return .failed("protocol")
        }
    }

    /// ALPN chose `h2`.
    var isH2: Bool {
        var p: UnsafePointer<UInt8>?
        var n: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &p, &n)
        guard let p, n == 2 else { return false }
        return p[0] == 0x68 && p[1] == 0x32
    }

    /// The ALPN protocol chosen, if any.
    var alpn: String? {
        var p: UnsafePointer<UInt8>?
        var n: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &p, &n)
        guard let p, n > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: p, count: Int(n)), as: UTF8.self)
    }

    func read(into p: UnsafeMutableRawPointer, count: Int) throws(Errno) -> IOResult {
        readWantsWrite = false
        // The error queue is emptied on every failure path below, so it is empty here; clearing
        // it anyway costs ~800 instructions per call in OpenSSL 3 (measured): look first.
        if ERR_peek_error() != 0 { ERR_clear_error() }
        let n = SSL_read(ssl, p, Int32(min(count, Int(Int32.max))))
        if n > 0 { return .processed(Int(n)) }
        switch SSL_get_error(ssl, n) {
        case SSL_ERROR_WANT_READ: return .wouldBlock
        case SSL_ERROR_WANT_WRITE: readWantsWrite = true; return .wouldBlock
        case SSL_ERROR_ZERO_RETURN: return .processed(0)
        case SSL_ERROR_SYSCALL:
            let e = errno
            ERR_clear_error()
            if e == 0 { return .processed(0) }   // EOF without close_notify (IGNORE_UNEXPECTED_EOF)
            throw Errno(e)
        default:
            ERR_clear_error()
            throw Errno(EPROTO)
        }
    }

    /// Writes the first region, then the second (partial writes allowed). Two small regions
    /// (a response head and its body) go out as one record and one syscall: they are copied
    /// into the loop's scratch first (OpenSSL encrypts at once and, with a moving write
    /// buffer, never needs the same address again; a retry passes the same bytes).
    func write(_ p0: UnsafeRawPointer?, _ n0: Int, _ p1: UnsafeRawPointer?, _ n1: Int) throws(Errno) -> IOResult {
        if n0 > 0 && n1 > 0 && n0 + n1 <= TLSStream.scratchBytes, let p0, let p1 {
            let scratch = TLSStream.scratch
            scratch.copyMemory(from: p0, byteCount: n0)
            (scratch + n0).copyMemory(from: p1, byteCount: n1)
            return try writeOne(UnsafeRawPointer(scratch), n0 + n1)
        }
        var done = 0
        for (p, n) in [(p0, n0), (p1, n1)] where n > 0 {
            guard let p else { continue }
            switch try writeOne(p, n) {
            case .processed(let k):
                done += k
                if k < n { return .processed(done) }
            case .wouldBlock:
                return done > 0 ? .processed(done) : .wouldBlock
            }
        }
        return .processed(done)
    }

    private func writeOne(_ p: UnsafeRawPointer, _ n: Int) throws(Errno) -> IOResult {
        writeWantsRead = false
        if ERR_peek_error() != 0 { ERR_clear_error() }
        let k = SSL_write(ssl, p, Int32(min(n, Int(Int32.max))))
        if k > 0 { return .processed(Int(k)) }
        switch SSL_get_error(ssl, k) {
        case SSL_ERROR_WANT_WRITE: return .wouldBlock
        case SSL_ERROR_WANT_READ: writeWantsRead = true; return .wouldBlock
        case SSL_ERROR_SYSCALL:
            let e = errno
            ERR_clear_error()
            throw Errno(e == 0 ? EPIPE : e)
        default:
            ERR_clear_error()
            throw Errno(EPROTO)
        }
    }

    /// One TLS record's worth: what a head and a small body are joined in.
    static let scratchBytes = 16 * 1024
    /// Per thread (each loop has its own): used only inside one `write` call.
    static var scratch: UnsafeMutableRawPointer {
        if let p = scratchKey.get() { return p }
        let p = UnsafeMutableRawPointer.allocate(byteCount: scratchBytes, alignment: 16)
        scratchKey.set(p)
        return p
    }
    private static let scratchKey = ThreadScratch()

    /// A best-effort close_notify (non-blocking: never waits for the peer's).
    func shutdown() {
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
    }
}

/// A pthread key holding one pointer per thread (never freed: loop threads live as long as
/// the process).
final class ThreadScratch: Sendable {
    private let key: pthread_key_t
    init() {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        key = k
    }
    func get() -> UnsafeMutableRawPointer? { pthread_getspecific(key) }
    func set(_ p: UnsafeMutableRawPointer) { pthread_setspecific(key, p) }
}
