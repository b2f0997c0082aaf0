import COpenSSL
import Glibc
import Policy

/// The client side of TLS to an `https://` backend: peer verification on (the system's CA
/// store, or the backend's `tls.ca` file), TLS 1.2 at the lowest, ALPN `http/1.1`.
final class BackendTLSContext: @unchecked Sendable {
    // SAFETY: configured in init, never changed; SSL_CTX is safe to share for SSL_new.
    let ctx: OpaquePointer

    init(backend: BackendSpec, tls: BackendTLS) throws(TLSContext.LoadError) {
        guard let c = SSL_CTX_new(TLS_client_method()) else {
            throw TLSContext.LoadError(description: "TLS: SSL_CTX_new failed: \(TLSContext.opensslError())")
        }
        ERR_clear_error()
        if let ca = tls.caFile {
            if access(ca, R_OK) != 0 || SSL_CTX_load_verify_locations(c, ca, nil) != 1 {
                SSL_CTX_free(c)
                throw TLSContext.LoadError(description: "backends.\(backend.name).tls.ca: cannot load \(ca) (\(TLSContext.opensslError()))")
            }
        } else if SSL_CTX_set_default_verify_paths(c) != 1 {
            SSL_CTX_free(c)
            throw TLSContext.LoadError(description: "backends.\(backend.name): no system CA store (\(TLSContext.opensslError()))")
        }
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nil)
        _ = tollgate_SSL_CTX_set_min_proto_version(c, tollgate_TLS1_2_VERSION)
        _ = SSL_CTX_set_options(c, tollgate_SSL_OP_NO_RENEGOTIATION | tollgate_SSL_OP_NO_COMPRESSION)
        _ = tollgate_SSL_CTX_set_mode(c, tollgate_SSL_MODE_ENABLE_PARTIAL_WRITE | tollgate_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        let alpn: [UInt8] = [8] + Array("http/1.1".utf8)
        _ = alpn.withUnsafeBufferPointer { SSL_CTX_set_alpn_protos(c, $0.baseAddress, UInt32($0.count)) }
        _ = tollgate_SSL_CTX_set_session_cache_mode(c, tollgate_SSL_SESS_CACHE_CLIENT)
        ctx = c
    }

    deinit { SSL_CTX_free(ctx) }
}
