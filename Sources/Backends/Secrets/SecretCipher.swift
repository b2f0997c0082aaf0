import COpenSSL
import Foundation
import Glibc
import Policy

/// The secret store's cryptography (seed 004), over OpenSSL's libcrypto:
///
/// - master key: 32 random bytes, written as 64 hex characters (a trailing newline ignored);
/// - per scope (each consumer, and the system) a random 16-byte salt; the scope key is
///   PBKDF2-HMAC-SHA256(master, salt, 100,000 iterations, 32 bytes);
/// - from it, by HMAC-SHA256 with fixed labels, two subkeys: one for AES-256-GCM, one for
///   fingerprints (a key is never used for two algorithms);
/// - each secret: AES-256-GCM, a random 96-bit nonce, the associated data binding it to its
///   name and scope (a ciphertext moved to another name or consumer does not open);
/// - fingerprint: the first 8 hex digits of HMAC-SHA256(fingerprint key, value), never a
///   plain hash of the value;
/// - a check value: a store-wide salt and HMAC-SHA256(its fingerprint key, label), so a wrong
///   master key is named as such before anything is decrypted.
public enum SecretCipher {
    public static let iterations: Int32 = 100_000
    public static let saltBytes = 16
    public static let nonceBytes = 12
    public static let tagBytes = 16
    /// The longest secret value accepted (bytes).
    public static let maximumValueBytes = 8192

    static let encryptionLabel = Array("tollgate/secrets/v1/aes-256-gcm".utf8)
    static let fingerprintLabel = Array("tollgate/secrets/v1/fingerprint".utf8)
    static let checkLabel = Array("tollgate/secrets/v1/master-key-check".utf8)
    static let adLabel = Array("tollgate/secrets/v1\u{0}".utf8)

    /// Random bytes from OpenSSL's CSPRNG.
    public static func random(_ n: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        let rc = out.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32(n)) }
        precondition(rc == 1, "RAND_bytes failed: no entropy")
        return out
    }

    /// The keys of one scope (or of the check value), derived from the master key and a salt.
    public final class ScopeKeys: Sendable {
        /// AES-256-GCM key, then the fingerprint key (32 bytes each).
        let keys: SecureBytes

        init(master: SecureBytes, salt: [UInt8]) {
            let derived = SecureBytes(count: 32)
            _ = master.bytes.withMemoryRebound(to: CChar.self) { pass in
                salt.withUnsafeBufferPointer { s in
                    PKCS5_PBKDF2_HMAC(pass.baseAddress, Int32(pass.count), s.baseAddress, Int32(s.count), SecretCipher.iterations,
                                      EVP_sha256(), 32, derived.base.assumingMemoryBound(to: UInt8.self))
                }
            }
            keys = SecureBytes(count: 64)
            SecretCipher.hmac(key: derived.bytes, SecretCipher.encryptionLabel, into: keys.base)
            SecretCipher.hmac(key: derived.bytes, SecretCipher.fingerprintLabel, into: keys.base + 32)
        }

        var encryptionKey: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: keys.base, count: 32) }
        var fingerprintKey: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: keys.base + 32, count: 32) }

        /// `HMAC-SHA256(fingerprint key, value)`, first 4 bytes as 8 hex digits.
        public func fingerprint(_ value: UnsafeRawBufferPointer) -> String {
            var mac = [UInt8](repeating: 0, count: 32)
            mac.withUnsafeMutableBytes { SecretCipher.hmac(key: fingerprintKey, value, into: $0.baseAddress!) }
            return mac.prefix(4).map { String($0, radix: 16).leftPadded(2) }.joined()
        }

        /// The check value of this key set (for the store-wide check salt).
        func checkValue() -> [UInt8] {
            var mac = [UInt8](repeating: 0, count: 32)
            mac.withUnsafeMutableBytes { out in
                SecretCipher.checkLabel.withUnsafeBytes { SecretCipher.hmac(key: fingerprintKey, $0, into: out.baseAddress!) }
            }
            return mac
        }

        /// Seals `value` for `name` in `scope`: (nonce, ciphertext, tag).
        func seal(_ value: UnsafeRawBufferPointer, name: String, scope: SecretScope) -> (nonce: [UInt8], ciphertext: [UInt8], tag: [UInt8])? {
            let nonce = SecretCipher.random(SecretCipher.nonceBytes)
            let ad = SecretCipher.associatedData(name: name, scope: scope)
            guard let ctx = EVP_CIPHER_CTX_new() else { return nil }
            defer { EVP_CIPHER_CTX_free(ctx) }
            var out = [UInt8](repeating: 0, count: value.count + 16)
            var tag = [UInt8](repeating: 0, count: SecretCipher.tagBytes)
            var n: Int32 = 0, total = 0
            guard EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nil, nil, nil) == 1,
                  EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, Int32(SecretCipher.nonceBytes), nil) == 1,
                  nonce.withUnsafeBufferPointer({ iv in
                      EVP_EncryptInit_ex(ctx, nil, nil, encryptionKey.baseAddress!.assumingMemoryBound(to: UInt8.self), iv.baseAddress)
                  }) == 1,
                  ad.withUnsafeBufferPointer({ EVP_EncryptUpdate(ctx, nil, &n, $0.baseAddress, Int32($0.count)) }) == 1
            else { return nil }
            let ok = out.withUnsafeMutableBufferPointer { o -> Bool in
                if value.count > 0 {
                    guard EVP_EncryptUpdate(ctx, o.baseAddress, &n, value.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                            Int32(value.count)) == 1 else { return false }
                    total = Int(n)
                }
                guard EVP_EncryptFinal_ex(ctx, o.baseAddress! + total, &n) == 1 else { return false }
                total += Int(n)
                return tag.withUnsafeMutableBytes {
                    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, Int32(SecretCipher.tagBytes), $0.baseAddress) == 1
                }
            }
            guard ok else { return nil }
            out.removeLast(out.count - total)
            return (nonce, out, tag)
        }

        /// Opens a sealed value into `into` (at least `ciphertext.count` bytes); false when the
        /// tag does not verify (wrong key, or the entry was altered or moved).
        func open(_ s: SealedSecret, into: UnsafeMutableRawPointer) -> Bool {
            guard s.nonce.count == SecretCipher.nonceBytes, s.tag.count == SecretCipher.tagBytes,
                  let ctx = EVP_CIPHER_CTX_new() else { return false }
            defer { EVP_CIPHER_CTX_free(ctx) }
            let ad = SecretCipher.associatedData(name: s.name, scope: s.scope)
            var n: Int32 = 0, total = 0
            guard EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nil, nil, nil) == 1,
                  EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, Int32(SecretCipher.nonceBytes), nil) == 1,
                  s.nonce.withUnsafeBufferPointer({ iv in
                      EVP_DecryptInit_ex(ctx, nil, nil, encryptionKey.baseAddress!.assumingMemoryBound(to: UInt8.self), iv.baseAddress)
                  }) == 1,
                  ad.withUnsafeBufferPointer({ EVP_DecryptUpdate(ctx, nil, &n, $0.baseAddress, Int32($0.count)) }) == 1
            else { return false }
            let out = into.assumingMemoryBound(to: UInt8.self)
            if !s.ciphertext.isEmpty {
                guard s.ciphertext.withUnsafeBufferPointer({ EVP_DecryptUpdate(ctx, out, &n, $0.baseAddress, Int32($0.count)) }) == 1
                else { return false }
                total = Int(n)
            }
            var tag = s.tag
            guard tag.withUnsafeMutableBytes({ EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, Int32(SecretCipher.tagBytes), $0.baseAddress) }) == 1
            else { return false }
            guard EVP_DecryptFinal_ex(ctx, out + total, &n) == 1 else {
                cleanse(into, s.ciphertext.count)
                return false
            }
            return true
        }
    }

    /// Name and scope, bound to a ciphertext: `label, name, 0, "s"` or `label, name, 0, "c", consumer`.
    static func associatedData(name: String, scope: SecretScope) -> [UInt8] {
        var ad = adLabel + Array(name.utf8) + [0]
        switch scope {
        case .system: ad.append(0x73)
        case .consumer(let c): ad.append(0x63); ad += Array(c.utf8)
        }
        return ad
    }

    static func hmac(key: UnsafeRawBufferPointer, _ message: [UInt8], into out: UnsafeMutableRawPointer) {
        message.withUnsafeBytes { hmac(key: key, $0, into: out) }
    }

    static func hmac(key: UnsafeRawBufferPointer, _ message: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) {
        var len: UInt32 = 32
        let empty: [UInt8] = [0]
        empty.withUnsafeBufferPointer { e in
            _ = HMAC(EVP_sha256(), key.baseAddress, Int32(key.count),
                     message.count > 0 ? message.baseAddress!.assumingMemoryBound(to: UInt8.self) : e.baseAddress, message.count,
                     out.assumingMemoryBound(to: UInt8.self), &len)
        }
    }
}

extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
