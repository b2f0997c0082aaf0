import COpenSSL
import Glibc
import Policy

/// A listener's TLS configuration, built from its `listen[].tls` block: one `SSL_CTX` per
/// certificate (the first is the default; the others are chosen by SNI), TLS 1.2 or 1.3 at
/// the lowest, ALPN `http/1.1`, session resumption by tickets unless switched off.
///
/// Built whole or not at all: a missing, unreadable or mismatched file is an error that names
/// it (at start: no serving; at a reload: the running contexts stay).
final class TLSContext: @unchecked Sendable {
    // SAFETY: the SSL_CTXs are fully configured in init and never changed after; OpenSSL's
    // SSL_CTX is safe to share between threads for SSL_new.
    struct Entry {
        let ctx: OpaquePointer
        let certificate: OpaquePointer?   // the leaf, owned by ctx (for SNI matching)
    }
    let entries: [Entry]
    let spec: TLSSpec
    var defaultContext: OpaquePointer { entries[0].ctx }

    struct LoadError: Error, CustomStringConvertible {
        var description: String
    }

    init(spec: TLSSpec) throws(LoadError) {
        self.spec = spec
        var built: [Entry] = []
        for c in spec.certificates {
            do {
                built.append(try Self.makeContext(c, spec: spec))
            } catch {
                for e in built { SSL_CTX_free(e.ctx) }
                throw error
            }
        }
        guard !built.isEmpty else { throw LoadError(description: "\(spec.location): listen.tls: no certificate") }
        entries = built
        // SNI: the default context picks the one whose certificate names the host.
        if entries.count > 1 {
            let me = Unmanaged.passUnretained(self).toOpaque()
            _ = tollgate_SSL_CTX_set_servername_callback(entries[0].ctx) { ssl, _, arg in
                guard let ssl, let arg, let name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) else {
                    return tollgate_SSL_TLSEXT_ERR_OK
                }
                let tls = Unmanaged<TLSContext>.fromOpaque(arg).takeUnretainedValue()
                let n = strlen(name)
                for e in tls.entries.dropFirst() {
                    if let cert = e.certificate, X509_check_host(cert, name, n, 0, nil) == 1 {
                        _ = SSL_set_SSL_CTX(ssl, e.ctx)
                        break
                    }
                }
                return tollgate_SSL_TLSEXT_ERR_OK
            }
            _ = tollgate_SSL_CTX_set_servername_arg(entries[0].ctx, me)
        }
    }

    deinit { for e in entries { SSL_CTX_free(e.ctx) } }

    private static func makeContext(_ c: TLSSpec.Certificate, spec: TLSSpec) throws(LoadError) -> Entry {
        guard let ctx = SSL_CTX_new(TLS_server_method()) else { throw LoadError(description: "TLS: SSL_CTX_new failed: \(opensslError())") }
        func fail(_ what: String) -> LoadError {
            SSL_CTX_free(ctx)
            return LoadError(description: "\(spec.location): listen.tls: \(what)")
        }
        ERR_clear_error()
        for path in [c.certificate, c.privateKey] where access(path, R_OK) != 0 {
            throw fail("cannot read \(path): \(String(cString: strerror(errno)))")
        }
        if SSL_CTX_use_certificate_chain_file(ctx, c.certificate) != 1 {
            throw fail("\(c.certificate): not a PEM certificate chain (\(opensslError()))")
        }
        if SSL_CTX_use_PrivateKey_file(ctx, c.privateKey, SSL_FILETYPE_PEM) != 1 {
            let detail = opensslError()
            if detail.contains("mismatch") { throw fail("\(c.privateKey) does not match the certificate in \(c.certificate)") }
            throw fail("\(c.privateKey): not a PEM private key (\(detail))")
        }
        if SSL_CTX_check_private_key(ctx) != 1 {
            throw fail("\(c.privateKey) does not match the certificate in \(c.certificate)")
        }
        _ = tollgate_SSL_CTX_set_min_proto_version(ctx, spec.minVersion == .tls13 ? tollgate_TLS1_3_VERSION : tollgate_TLS1_2_VERSION)
        var options = tollgate_SSL_OP_IGNORE_UNEXPECTED_EOF | tollgate_SSL_OP_NO_RENEGOTIATION | tollgate_SSL_OP_NO_COMPRESSION
            | tollgate_SSL_OP_CIPHER_SERVER_PREFERENCE
        if !spec.sessionResumption {
            options |= tollgate_SSL_OP_NO_TICKET
            _ = tollgate_SSL_CTX_set_session_cache_mode(ctx, tollgate_SSL_SESS_CACHE_OFF)
        } else {
            _ = tollgate_SSL_CTX_set_session_id_context_default(ctx)
        }
        _ = SSL_CTX_set_options(ctx, options)
        _ = tollgate_SSL_CTX_set_mode(ctx, tollgate_SSL_MODE_ENABLE_PARTIAL_WRITE | tollgate_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                                      | tollgate_SSL_MODE_RELEASE_BUFFERS)
        // ALPN: h2 when the client offers it, else http/1.1; otherwise none (HTTP/1.1 is spoken).
        SSL_CTX_set_alpn_select_cb(ctx, { _, out, outLength, input, inputLength, _ in
            guard let input, let out, let outLength else { return tollgate_SSL_TLSEXT_ERR_NOACK }
            var i = 0
            let n = Int(inputLength)
            var http11: UnsafePointer<UInt8>?
            while i < n {
                let len = Int(input[i])
                if i + 1 + len > n { break }
                if len == 2 && input[i + 1] == 0x68 && input[i + 2] == 0x32 {
                    out.pointee = input + i + 1
                    outLength.pointee = 2
                    return tollgate_SSL_TLSEXT_ERR_OK
                }
                if len == 8 && memcmp(input + i + 1, "http/1.1", 8) == 0 { http11 = input + i + 1 }
                i += 1 + len
            }
            if let h = http11 {
                out.pointee = h
                outLength.pointee = 8
                return tollgate_SSL_TLSEXT_ERR_OK
            }
            return tollgate_SSL_TLSEXT_ERR_NOACK
        }, nil)
        return Entry(ctx: ctx, certificate: SSL_CTX_get0_certificate(ctx))
    }

    static func opensslError() -> String {
        let code = ERR_get_error()
        if code == 0 { return "no detail" }
        var buf = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buf, buf.count)
        ERR_clear_error()
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
