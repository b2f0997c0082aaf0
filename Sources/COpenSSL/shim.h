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

// JWT signatures (Policy/JWT). HMAC with the inner and outer hash states computed once per
// key: a verification copies two contexts instead of hashing the padded key twice. The
// low-level SHA calls are deprecated in 3.0 but stay (see tollgate_sha256).
#include <string.h>
#include <openssl/pem.h>
#include <openssl/bn.h>
#include <openssl/param_build.h>
#include <openssl/core_names.h>
#include <openssl/rsa.h>

typedef struct { SHA256_CTX inner; SHA256_CTX outer; } tollgate_hmac256_key;
/// SHA-384 and SHA-512 share SHA512_CTX (and a 128-byte block).
typedef struct { SHA512_CTX inner; SHA512_CTX outer; int bits; } tollgate_hmac512_key;

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static inline void tollgate_hmac256_init(tollgate_hmac256_key *k, const void *key, size_t n) {
    unsigned char block[64], pad[64];
    memset(block, 0, sizeof block);
    if (n > 64) {
        SHA256_CTX c;
        SHA256_Init(&c); SHA256_Update(&c, key, n); SHA256_Final(block, &c);
        OPENSSL_cleanse(&c, sizeof c);
    } else if (n > 0) {
        memcpy(block, key, n);
    }
    for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x36;
    SHA256_Init(&k->inner); SHA256_Update(&k->inner, pad, 64);
    for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x5c;
    SHA256_Init(&k->outer); SHA256_Update(&k->outer, pad, 64);
    OPENSSL_cleanse(block, sizeof block); OPENSSL_cleanse(pad, sizeof pad);
}

static inline void tollgate_hmac256(const tollgate_hmac256_key *k, const void *data, size_t n, unsigned char out[32]) {
    SHA256_CTX c = k->inner;
    unsigned char inner[32];
    if (n > 0) SHA256_Update(&c, data, n);
    SHA256_Final(inner, &c);
    c = k->outer;
    SHA256_Update(&c, inner, 32);
    SHA256_Final(out, &c);
}

/// `bits`: 384 or 512.
static inline void tollgate_hmac512_init(tollgate_hmac512_key *k, int bits, const void *key, size_t n) {
    unsigned char block[128], pad[128];
    memset(block, 0, sizeof block);
    k->bits = bits;
    if (n > 128) {
        SHA512_CTX c;
        if (bits == 384) { SHA384_Init(&c); SHA384_Update(&c, key, n); SHA384_Final(block, &c); }
        else { SHA512_Init(&c); SHA512_Update(&c, key, n); SHA512_Final(block, &c); }
        OPENSSL_cleanse(&c, sizeof c);
    } else if (n > 0) {
        memcpy(block, key, n);
    }
    for (int i = 0; i < 128; i++) pad[i] = block[i] ^ 0x36;
    if (bits == 384) SHA384_Init(&k->inner); else SHA512_Init(&k->inner);
    SHA512_Update(&k->inner, pad, 128);
    for (int i = 0; i < 128; i++) pad[i] = block[i] ^ 0x5c;
    if (bits == 384) SHA384_Init(&k->outer); else SHA512_Init(&k->outer);
    SHA512_Update(&k->outer, pad, 128);
    OPENSSL_cleanse(block, sizeof block); OPENSSL_cleanse(pad, sizeof pad);
}

/// Writes 48 (HS384) or 64 (HS512) bytes.
static inline void tollgate_hmac512(const tollgate_hmac512_key *k, const void *data, size_t n, unsigned char *out) {
    SHA512_CTX c = k->inner;
    unsigned char inner[64];
    size_t len = k->bits == 384 ? 48 : 64;
    if (n > 0) SHA512_Update(&c, data, n);
    if (k->bits == 384) SHA384_Final(inner, &c); else SHA512_Final(inner, &c);
    c = k->outer;
    SHA512_Update(&c, inner, len);
    if (k->bits == 384) SHA384_Final(out, &c); else SHA512_Final(out, &c);
}
#pragma GCC diagnostic pop

/// A public key checked by OpenSSL (RSA: n and e sane; EC: the point on the curve).
static inline int tollgate_public_check(EVP_PKEY *key) {
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
    int ok = c != NULL && EVP_PKEY_public_check(c) == 1;
    EVP_PKEY_CTX_free(c);
    ERR_clear_error();
    return ok;
}

/// An RSA public key from its big-endian modulus and exponent (a JWK's `n`, `e`); NULL if
/// OpenSSL refuses them.
static inline EVP_PKEY *tollgate_rsa_public_key(const unsigned char *n, size_t nlen, const unsigned char *e, size_t elen) {
    EVP_PKEY *pkey = NULL;
    BIGNUM *bn = BN_bin2bn(n, (int)nlen, NULL), *be = BN_bin2bn(e, (int)elen, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    if (bn && be && bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn)
        && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be)
        && (params = OSSL_PARAM_BLD_to_param(bld)) != NULL
        && (ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) != NULL
        && EVP_PKEY_fromdata_init(ctx) == 1) {
        if (EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) pkey = NULL;
    }
    EVP_PKEY_CTX_free(ctx); OSSL_PARAM_free(params); OSSL_PARAM_BLD_free(bld); BN_free(bn); BN_free(be);
    if (pkey && !tollgate_public_check(pkey)) { EVP_PKEY_free(pkey); pkey = NULL; }
    ERR_clear_error();
    return pkey;
}

/// An EC public key on `group` ("prime256v1", "secp384r1") from its uncompressed point
/// (0x04 || x || y); NULL when the point is not on the curve.
static inline EVP_PKEY *tollgate_ec_public_key(const char *group, const unsigned char *point, size_t len) {
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    if (bld && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0)
        && OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, len)
        && (params = OSSL_PARAM_BLD_to_param(bld)) != NULL
        && (ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) != NULL
        && EVP_PKEY_fromdata_init(ctx) == 1) {
        if (EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) pkey = NULL;
    }
    EVP_PKEY_CTX_free(ctx); OSSL_PARAM_free(params); OSSL_PARAM_BLD_free(bld);
    if (pkey && !tollgate_public_check(pkey)) { EVP_PKEY_free(pkey); pkey = NULL; }
    ERR_clear_error();
    return pkey;
}

/// A P-256 public key from its uncompressed point (0x04 || x || y, 65 bytes); NULL when the
/// point is not on the curve.
static inline EVP_PKEY *tollgate_p256_public_key(const unsigned char *point, size_t len) {
    return tollgate_ec_public_key("prime256v1", point, len);
}

/// An Ed25519 public key from its 32 bytes (RFC 8037: a JWK's `x`); NULL if OpenSSL refuses it.
static inline EVP_PKEY *tollgate_ed25519_public_key(const unsigned char *x, size_t len) {
    EVP_PKEY *pkey = len == 32 ? EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, len) : NULL;
    ERR_clear_error();
    return pkey;
}

/// The public key of a PEM text: `PUBLIC KEY` (SubjectPublicKeyInfo) or a `CERTIFICATE`'s.
static inline EVP_PKEY *tollgate_pem_public_key(const void *pem, size_t len) {
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *key = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!key) {
        bio = BIO_new_mem_buf(pem, (int)len);
        X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
        if (cert) { key = X509_get_pubkey(cert); X509_free(cert); }
        BIO_free(bio);
    }
    if (key && !tollgate_public_check(key)) { EVP_PKEY_free(key); key = NULL; }
    ERR_clear_error();
    return key;
}

/// 1: RSA, 2: EC on P-256, 3: EC on P-384, 4: Ed25519, 5: EC on P-521 (not verified: ES512's
/// DER needs a long-form length), 0: anything else (RSA-PSS-only keys, Ed448, other curves).
static inline int tollgate_public_key_kind(EVP_PKEY *key) {
    int id = EVP_PKEY_get_base_id(key);
    if (id == EVP_PKEY_RSA) return 1;
    if (id == EVP_PKEY_ED25519) return 4;
    if (id == EVP_PKEY_EC) {
        char name[32];
        size_t n = 0;
        if (EVP_PKEY_get_group_name(key, name, sizeof name, &n) == 1) {
            if (strcmp(name, "prime256v1") == 0) return 2;
            if (strcmp(name, "secp384r1") == 0) return 3;
            if (strcmp(name, "secp521r1") == 0) return 5;
        }
    }
    ERR_clear_error();
    return 0;
}

/// A JWS `R || S` (two big-endian halves) as the DER `ECDSA-Sig-Value` OpenSSL verifies;
/// `out` holds 2 * half + 9 bytes. Returns the DER length, 0 for a half over 66 bytes. The
/// integers' lengths always fit DER's short form; the SEQUENCE's takes the long form (0x81)
/// past 127 bytes, as P-521's (66-byte halves, ES512) can.
static inline size_t tollgate_ecdsa_der(const unsigned char *rs, size_t half, unsigned char *out) {
    unsigned char ints[2 * 66 + 8];
    size_t at = 0;
    if (half == 0 || half > 66) return 0;
    for (int k = 0; k < 2; k++) {
        const unsigned char *v = rs + k * half;
        size_t n = half;
        while (n > 1 && v[0] == 0) { v++; n--; }
        size_t pad = (v[0] & 0x80) ? 1 : 0;
        ints[at++] = 0x02;
        ints[at++] = (unsigned char)(n + pad);
        if (pad) ints[at++] = 0;
        memcpy(ints + at, v, n);
        at += n;
    }
    out[0] = 0x30;
    if (at < 128) {
        out[1] = (unsigned char)at;
        memcpy(out + 2, ints, at);
        return at + 2;
    }
    // P-521: the SEQUENCE is longer than 127 bytes (long-form length, one byte).
    out[1] = 0x81;
    out[2] = (unsigned char)at;
    memcpy(out + 3, ints, at);
    return at + 3;
}

/// `sig` over `data` with `key`: `bits` 256, 384 or 512 picks SHA-2 (RSASSA-PKCS1-v1_5,
/// RSASSA-PSS when `pss`, or ECDSA with a DER signature), 0 no digest (Ed25519). PSS is
/// RFC 7518 §3.5's: MGF1 with the same hash, a salt as long as the hash (anything else
/// fails). 1 when it verifies; nothing is left on OpenSSL's error queue.
static inline int tollgate_verify(EVP_PKEY *key, int bits, int pss, const unsigned char *sig, size_t siglen,
                                  const void *data, size_t n) {
    const EVP_MD *md = bits == 256 ? EVP_sha256() : bits == 384 ? EVP_sha384() : bits == 512 ? EVP_sha512() : NULL;
    if (bits != 0 && md == NULL) return 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int ok = ctx != NULL && EVP_DigestVerifyInit(ctx, &pctx, md, NULL, key) == 1;
    if (ok && pss) {
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0
            && EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) > 0
            && EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0;
    }
    ok = ok && EVP_DigestVerify(ctx, sig, siglen, data, n) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

/// RSASSA-PKCS1-v1_5 or ECDSA over SHA-256 of `data`; 1 when `sig` verifies.
static inline int tollgate_verify_sha256(EVP_PKEY *key, const unsigned char *sig, size_t siglen,
                                         const void *data, size_t n) {
    return tollgate_verify(key, 256, 0, sig, siglen, data, n);
}

static inline int tollgate_memeq(const void *a, const void *b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }
#endif
