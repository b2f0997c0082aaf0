import COpenSSL
import Foundation
import Glibc
import Policy

/// An Ed25519 key of the audit trail (OpenSSL EVP): a private key signs checkpoints, a
/// public one verifies them offline. Its fingerprint, `sha256:<hex>` of the 32-byte raw
/// public key, is written into every signed checkpoint.
final class AuditKey: @unchecked Sendable {
    // SAFETY: the EVP_PKEY is never mutated after init; OpenSSL allows concurrent
    // signing and verifying with one key (each call makes its own EVP_MD_CTX).
    private let pkey: OpaquePointer
    /// True when the key holds its private half (it can sign).
    let canSign: Bool
    /// `sha256:` + 64 hex digits of the raw public key.
    let fingerprint: String

    struct LoadError: Error, CustomStringConvertible {
        var description: String
    }

    private init(pkey: OpaquePointer, canSign: Bool) throws(LoadError) {
        self.pkey = pkey
        self.canSign = canSign
        var raw = [UInt8](repeating: 0, count: 32)
        var len = raw.count
        guard EVP_PKEY_get_raw_public_key(pkey, &raw, &len) == 1, len == 32 else {
            EVP_PKEY_free(pkey)
            throw LoadError(description: "cannot read the Ed25519 public key (\(Self.opensslError()))")
        }
        fingerprint = raw.withUnsafeBytes { "sha256:" + KeyHash.sha256($0).hex }
    }

    deinit { EVP_PKEY_free(pkey) }

    /// The private key in a PEM file (`audit.signing_key`). Errors name the file.
    static func loadPrivate(path: String) throws(LoadError) -> AuditKey {
        let pem = try read(path)
        ERR_clear_error()
        guard let pkey = withBIO(pem, { PEM_read_bio_PrivateKey($0, nil, nil, nil) }) else {
            throw LoadError(description: "\(path): not a PEM private key (\(opensslError()))")
        }
        guard EVP_PKEY_get_base_id(pkey) == EVP_PKEY_ED25519 else {
            EVP_PKEY_free(pkey)
            throw LoadError(description: "\(path): not an Ed25519 key (generate one with `tollgate audit keygen`)")
        }
        do { return try AuditKey(pkey: pkey, canSign: true) } catch { throw LoadError(description: "\(path): \(error)") }
    }

    /// A public key PEM (`-----BEGIN PUBLIC KEY-----`), or a private key PEM (its public half
    /// is used). Errors name the file.
    static func loadPublic(path: String) throws(LoadError) -> AuditKey {
        let pem = try read(path)
        ERR_clear_error()
        var pkey = withBIO(pem, { PEM_read_bio_PUBKEY($0, nil, nil, nil) })
        if pkey == nil {
            ERR_clear_error()
            pkey = withBIO(pem, { PEM_read_bio_PrivateKey($0, nil, nil, nil) })
        }
        guard let pkey else { throw LoadError(description: "\(path): not a PEM public key (\(opensslError()))") }
        guard EVP_PKEY_get_base_id(pkey) == EVP_PKEY_ED25519 else {
            EVP_PKEY_free(pkey)
            throw LoadError(description: "\(path): not an Ed25519 key")
        }
        do { return try AuditKey(pkey: pkey, canSign: false) } catch { throw LoadError(description: "\(path): \(error)") }
    }

    /// A new random key.
    static func generate() throws(LoadError) -> AuditKey {
        guard let ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nil) else {
            throw LoadError(description: "EVP_PKEY_CTX_new_id failed (\(opensslError()))")
        }
        defer { EVP_PKEY_CTX_free(ctx) }
        var made: OpaquePointer?
        guard EVP_PKEY_keygen_init(ctx) == 1, EVP_PKEY_keygen(ctx, &made) == 1, let made else {
            throw LoadError(description: "Ed25519 key generation failed (\(opensslError()))")
        }
        return try AuditKey(pkey: made, canSign: true)
    }

    /// The private key as PKCS#8 PEM.
    func privatePEM() -> String? {
        pemText { PEM_write_bio_PrivateKey($0, pkey, nil, nil, 0, nil, nil) }
    }

    /// The public key as SubjectPublicKeyInfo PEM.
    func publicPEM() -> String? {
        pemText { PEM_write_bio_PUBKEY($0, pkey) }
    }

    /// The 64-byte Ed25519 signature of `message` (pure Ed25519: no digest), or nil.
    func sign(_ message: [UInt8]) -> [UInt8]? {
        guard canSign, let md = EVP_MD_CTX_new() else { return nil }
        defer { EVP_MD_CTX_free(md) }
        guard EVP_DigestSignInit(md, nil, nil, nil, pkey) == 1 else { return nil }
        var sig = [UInt8](repeating: 0, count: 64)
        var len = sig.count
        let ok = message.withUnsafeBufferPointer { m in
            EVP_DigestSign(md, &sig, &len, m.baseAddress, m.count)
        }
        guard ok == 1, len == 64 else { return nil }
        return sig
    }

    /// Whether `signature` is this key's signature of `message`.
    func verify(_ signature: [UInt8], of message: [UInt8]) -> Bool {
        guard signature.count == 64, let md = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(md) }
        guard EVP_DigestVerifyInit(md, nil, nil, nil, pkey) == 1 else { return false }
        let ok = message.withUnsafeBufferPointer { m in
            signature.withUnsafeBufferPointer { s in
                EVP_DigestVerify(md, s.baseAddress, s.count, m.baseAddress, m.count)
            }
        }
        ERR_clear_error()
        return ok == 1
    }

    // MARK: helpers

    private static func read(_ path: String) throws(LoadError) -> [UInt8] {
        guard access(path, R_OK) == 0 else {
            throw LoadError(description: "\(path): cannot read: \(String(cString: strerror(errno)))")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw LoadError(description: "\(path): cannot read")
        }
        guard data.count < 1 << 20 else { throw LoadError(description: "\(path): too large for a key file") }
        return Array(data)
    }

    private static func withBIO<T>(_ bytes: [UInt8], _ body: (OpaquePointer) -> T?) -> T? {
        bytes.withUnsafeBytes { raw -> T? in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return body(bio)
        }
    }

    private func pemText(_ write: (OpaquePointer) -> Int32) -> String? {
        guard let bio = BIO_new(BIO_s_mem()) else { return nil }
        defer { BIO_free(bio) }
        guard write(bio) == 1 else { return nil }
        var out = [UInt8](repeating: 0, count: BIO_ctrl_pending(bio))
        let n = BIO_read(bio, &out, Int32(out.count))
        guard n == out.count else { return nil }
        return String(decoding: out, as: UTF8.self)
    }

    static func opensslError() -> String { TLSContext.opensslError() }
}
