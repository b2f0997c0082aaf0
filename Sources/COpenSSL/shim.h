#ifndef TOLLGATE_COPENSSL_SHIM_H
#define TOLLGATE_COPENSSL_SHIM_H
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>
#include <openssl/x509v3.h>

// Function-like macros over SSL_ctrl & co. do not import into Swift.
static inline long tollgate_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
static inline int tollgate_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int v) { return (int)SSL_CTX_set_min_proto_version(ctx, v); }
static inline long tollgate_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long m) { return SSL_CTX_set_session_cache_mode(ctx, m); }
static inline void tollgate_OPENSSL_free(void *p) { OPENSSL_free(p); }
static const uint64_t tollgate_SSL_OP_IGNORE_UNEXPECTED_EOF = SSL_OP_IGNORE_UNEXPECTED_EOF;
static const uint64_t tollgate_SSL_OP_NO_RENEGOTIATION = SSL_OP_NO_RENEGOTIATION;
static const uint64_t tollgate_SSL_OP_NO_COMPRESSION = SSL_OP_NO_COMPRESSION;
static const uint64_t tollgate_SSL_OP_CIPHER_SERVER_PREFERENCE = SSL_OP_CIPHER_SERVER_PREFERENCE;
static const long tollgate_SSL_MODE_ENABLE_PARTIAL_WRITE = SSL_MODE_ENABLE_PARTIAL_WRITE;
static const long tollgate_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER = SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER;
static const long tollgate_SSL_MODE_RELEASE_BUFFERS = SSL_MODE_RELEASE_BUFFERS;
static const uint64_t tollgate_SSL_OP_NO_TICKET = SSL_OP_NO_TICKET;
static const long tollgate_SSL_SESS_CACHE_OFF = SSL_SESS_CACHE_OFF;
static const long tollgate_SSL_SESS_CACHE_SERVER = SSL_SESS_CACHE_SERVER;
static const long tollgate_SSL_SESS_CACHE_CLIENT = SSL_SESS_CACHE_CLIENT;
static const int tollgate_TLS1_2_VERSION = TLS1_2_VERSION;
static const int tollgate_TLS1_3_VERSION = TLS1_3_VERSION;
static const int tollgate_SSL_TLSEXT_ERR_OK = SSL_TLSEXT_ERR_OK;
static const int tollgate_SSL_TLSEXT_ERR_NOACK = SSL_TLSEXT_ERR_NOACK;
static inline long tollgate_SSL_CTX_set_servername_callback(SSL_CTX *ctx, int (*cb)(SSL *, int *, void *)) {
    return SSL_CTX_set_tlsext_servername_callback(ctx, cb);
}
static inline long tollgate_SSL_CTX_set_servername_arg(SSL_CTX *ctx, void *arg) {
    return SSL_CTX_set_tlsext_servername_arg(ctx, arg);
}
static inline long tollgate_SSL_set_tlsext_host_name(SSL *ssl, const char *name) { return SSL_set_tlsext_host_name(ssl, name); }
static inline long tollgate_SSL_CTX_set_session_id_context_default(SSL_CTX *ctx) {
    static const unsigned char sid[] = "tollgate";
    return SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
}

// SHA-256 with the context on the stack: OpenSSL 3's one-shot SHA256() fetches an EVP method,
// allocates a context and takes a lock on every call. The low-level calls are deprecated in
// 3.0 but stay; the pragma keeps their warning out of every build.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static inline void tollgate_sha256(const void *data, size_t n, unsigned char out[32]) {
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    if (n > 0) SHA256_Update(&ctx, data, n);
    SHA256_Final(out, &ctx);
}
#pragma GCC diagnostic pop
#endif
