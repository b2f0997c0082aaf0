import COpenSSL
import Foundation

/// The signature algorithms a policy may pin (`credentials.jwt.algorithms`). `none`, the
/// RSA-PSS family and anything else are never accepted.
public enum JWTAlgorithm: String, Sendable, CaseIterable {
    case hs256 = "HS256", hs384 = "HS384", hs512 = "HS512", rs256 = "RS256", es256 = "ES256"

    /// The only kind of key that verifies this algorithm: an HS token is never checked with
    /// an RSA or EC public key (as an HMAC secret), nor an RS/ES token with a secret.
    public var keyType: JWTKeyType {
        switch self {
        case .hs256, .hs384, .hs512: return .oct
        case .rs256: return .rsa
        case .es256: return .ec
        }
    }

    var bit: UInt8 {
        switch self {
        case .hs256: return 1
        case .hs384: return 2
        case .hs512: return 4
        case .rs256: return 8
        case .es256: return 16
        }
    }

    /// The signature's exact length (RS256: the modulus' byte length, checked against the key).
    var signatureBytes: Int {
        switch self {
        case .hs256: return 32
        case .hs384: return 48
        case .hs512: return 64
        case .rs256: return 0
        case .es256: return 64
        }
    }

    /// The algorithm named by the bytes of a header's `alg` (exact, case-sensitive).
    static func named(_ p: UnsafePointer<UInt8>, _ n: Int) -> JWTAlgorithm? {
        guard n == 5 else { return nil }
        let a = p[0], b = p[1], c = p[2], d = p[3], e = p[4]
        switch (a, b) {
        case (0x48, 0x53):   // HS
            if c == 0x32 && d == 0x35 && e == 0x36 { return .hs256 }
            if c == 0x33 && d == 0x38 && e == 0x34 { return .hs384 }
            if c == 0x35 && d == 0x31 && e == 0x32 { return .hs512 }
        case (0x52, 0x53):   // RS
            if c == 0x32 && d == 0x35 && e == 0x36 { return .rs256 }
        case (0x45, 0x53):   // ES
            if c == 0x32 && d == 0x35 && e == 0x36 { return .es256 }
        default:
            break
        }
        return nil
    }
}

/// What a key is: a shared secret (HS*), an RSA public key (RS256) or a P-256 public key (ES256).
public enum JWTKeyType: String, Sendable {
    case oct, rsa = "RSA", ec = "EC"
}

/// An OpenSSL public key, freed with the object.
final class EVPPublicKey: @unchecked Sendable {
    // SAFETY: the key is built once and only read afterwards; each verification takes its
    // own OpenSSL context, and OpenSSL 3 keys may be read from several threads at once.
    let pointer: OpaquePointer
    /// RSA: the modulus' bits; EC: 256.
    let bits: Int

    init(_ pointer: OpaquePointer) {
        self.pointer = pointer
        bits = Int(EVP_PKEY_get_bits(pointer))
    }

    deinit { EVP_PKEY_free(pointer) }
}

/// A shared secret as the HMAC states it starts from (inner and outer pads hashed once, for
/// each HS algorithm): the secret's bytes are not kept, and the states are wiped when freed.
final class HMACKey: @unchecked Sendable {
    // SAFETY: written once in init, only read afterwards (the verification copies the states).
    let sha256: UnsafeMutablePointer<tollgate_hmac256_key>
    let sha384: UnsafeMutablePointer<tollgate_hmac512_key>
    let sha512: UnsafeMutablePointer<tollgate_hmac512_key>

    init(secret: UnsafeRawBufferPointer) {
        sha256 = .allocate(capacity: 1)
        sha384 = .allocate(capacity: 1)
        sha512 = .allocate(capacity: 1)
        tollgate_hmac256_init(sha256, secret.baseAddress, secret.count)
        tollgate_hmac512_init(sha384, 384, secret.baseAddress, secret.count)
        tollgate_hmac512_init(sha512, 512, secret.baseAddress, secret.count)
    }

    deinit {
        OPENSSL_cleanse(sha256, MemoryLayout<tollgate_hmac256_key>.size)
        OPENSSL_cleanse(sha384, MemoryLayout<tollgate_hmac512_key>.size)
        OPENSSL_cleanse(sha512, MemoryLayout<tollgate_hmac512_key>.size)
        sha256.deallocate()
        sha384.deallocate()
        sha512.deallocate()
    }
}

/// One verification key: from `secret_env` (a shared secret), or from `keys_file` (a JWK of a
/// JWKS, or a PEM public key).
public struct JWTKey: Sendable {
    /// The JWK's `kid`; nil for a secret, a PEM key, or a JWK without one.
    public let kid: String?
    let kidBytes: [UInt8]?
    public let type: JWTKeyType
    /// The JWK's `alg`, when it names one: the only algorithm the key verifies.
    public let algorithm: JWTAlgorithm?
    /// Where it came from, for messages (`secret_env`, `keys_file keys[2]`, `keys_file`).
    public let origin: String
    enum Material: Sendable {
        case secret(HMACKey)
        case publicKey(EVPPublicKey)
    }
    let material: Material

    init(kid: String?, type: JWTKeyType, algorithm: JWTAlgorithm?, origin: String, material: Material) {
        self.kid = kid
        kidBytes = kid.map { Array($0.utf8) }
        self.type = type
        self.algorithm = algorithm
        self.origin = origin
        self.material = material
    }

    /// RSA: the modulus' bytes (an RS256 signature's exact length); 0 otherwise.
    var modulusBytes: Int {
        if case .publicKey(let k) = material, type == .rsa { return (k.bits + 7) / 8 }
        return 0
    }

    /// A shared secret (`secret_env`: its bytes as they are, or base64url-decoded).
    public static func secret(_ bytes: [UInt8], origin: String = "secret_env") -> JWTKey {
        let key = bytes.withUnsafeBytes { HMACKey(secret: $0) }
        return JWTKey(kid: nil, type: .oct, algorithm: nil, origin: origin, material: .secret(key))
    }
}

/// Why a keys file (or a secret) cannot be used; the text never holds key material.
public struct JWTKeyError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

/// Reading `keys_file`: a JWKS (`{"keys": [...]}`, or one JWK) or one PEM public key
/// (`PUBLIC KEY`, or a `CERTIFICATE`'s key).
public enum JWTKeyFile {
    /// The smallest RSA modulus accepted.
    public static let minimumRSABits = 2048

    public static func read(_ bytes: [UInt8]) throws(JWTKeyError) -> [JWTKey] {
        let text = bytes.drop { $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 || $0 == 0xEF || $0 == 0xBB || $0 == 0xBF }
        guard let first = text.first else { throw JWTKeyError("empty (expected a JWKS or a PEM public key)") }
        if first == UInt8(ascii: "{") { return try jwks(bytes) }
        if bytes.count >= 10, String(decoding: bytes, as: UTF8.self).contains("-----BEGIN") { return [try pem(bytes)] }
        throw JWTKeyError("not a JWKS (JSON) or a PEM public key")
    }

    /// One PEM public key (`PUBLIC KEY` or `CERTIFICATE`): RSA of at least 2048 bits or EC P-256.
    public static func pem(_ bytes: [UInt8]) throws(JWTKeyError) -> JWTKey {
        let text = String(decoding: bytes, as: UTF8.self)
        let blocks = text.components(separatedBy: "-----BEGIN ").count - 1
        if blocks > 1 { throw JWTKeyError("holds \(blocks) PEM blocks (one public key per PEM file; use a JWKS with kids for several)") }
        if text.contains("PRIVATE KEY-----") { throw JWTKeyError("holds a private key (give the public key only)") }
        guard let pointer = bytes.withUnsafeBytes({ tollgate_pem_public_key($0.baseAddress, $0.count) }) else {
            throw JWTKeyError("no usable PEM public key (expected -----BEGIN PUBLIC KEY----- or a CERTIFICATE)")
        }
        let kind = tollgate_public_key_kind(pointer)
        let key = EVPPublicKey(pointer)
        switch kind {
        case 1:
            guard key.bits >= minimumRSABits else { throw JWTKeyError("RSA key of \(key.bits) bits (at least \(minimumRSABits))") }
            return JWTKey(kid: nil, type: .rsa, algorithm: nil, origin: "keys_file", material: .publicKey(key))
        case 2:
            return JWTKey(kid: nil, type: .ec, algorithm: nil, origin: "keys_file", material: .publicKey(key))
        default:
            throw JWTKeyError("unsupported key type (RSA or EC P-256)")
        }
    }

    /// A JWKS (`{"keys": [...]}`) or a single JWK.
    public static func jwks(_ bytes: [UInt8]) throws(JWTKeyError) -> [JWTKey] {
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: Data(bytes)) } catch {
            throw JWTKeyError("not valid JSON")
        }
        guard let top = object as? [String: Any] else { throw JWTKeyError("expected a JSON object with \"keys\"") }
        let list: [Any]
        let single: Bool
        if let ks = top["keys"] {
            guard let a = ks as? [Any] else { throw JWTKeyError("\"keys\" must be a list") }
            list = a
            single = false
        } else if top["kty"] != nil {
            list = [top]
            single = true
        } else {
            throw JWTKeyError("expected a JWKS ({\"keys\": [...]}) or a JWK")
        }
        guard !list.isEmpty else { throw JWTKeyError("\"keys\" is empty") }
        var out: [JWTKey] = []
        var kids: [String: Int] = [:]
        for (i, item) in list.enumerated() {
            let name = single ? "the JWK" : "keys[\(i)]"
            guard let jwk = item as? [String: Any] else { throw JWTKeyError("\(name): expected an object") }
            let key = try self.jwk(jwk, name: name)
            if let kid = key.kid {
                if let first = kids[kid] { throw JWTKeyError("\(name): kid '\(kid)' already used by keys[\(first)]") }
                kids[kid] = i
            }
            out.append(key)
        }
        return out
    }

    static func jwk(_ jwk: [String: Any], name: String) throws(JWTKeyError) -> JWTKey {
        func string(_ field: String) throws(JWTKeyError) -> String? {
            guard let v = jwk[field] else { return nil }
            guard let s = v as? String else { throw JWTKeyError("\(name): \(field) must be a string") }
            return s
        }
        func bytes(_ field: String) throws(JWTKeyError) -> [UInt8] {
            guard let s = try string(field) else { throw JWTKeyError("\(name): missing \(field)") }
            guard let b = Base64URL.decode(s), !b.isEmpty else { throw JWTKeyError("\(name): \(field) is not base64url") }
            return b
        }
        guard let kty = try string("kty") else { throw JWTKeyError("\(name): missing kty") }
        let kid = try string("kid")
        if let kid, kid.isEmpty { throw JWTKeyError("\(name): kid must not be empty") }
        if let use = try string("use"), use != "sig" { throw JWTKeyError("\(name): use '\(use)' (only 'sig' keys verify tokens)") }
        if let ops = jwk["key_ops"] {
            guard let list = ops as? [String], list.contains("verify") else {
                throw JWTKeyError("\(name): key_ops without 'verify'")
            }
        }
        var algorithm: JWTAlgorithm?
        if let alg = try string("alg") {
            guard let a = JWTAlgorithm(rawValue: alg) else {
                throw JWTKeyError("\(name): alg '\(alg)' is not supported (HS256, HS384, HS512, RS256, ES256)")
            }
            algorithm = a
        }
        let type: JWTKeyType
        let material: JWTKey.Material
        switch kty {
        case "RSA":
            type = .rsa
            if jwk["d"] != nil || jwk["p"] != nil { throw JWTKeyError("\(name): holds a private key (list public keys only)") }
            let n = try bytes("n"), e = try bytes("e")
            guard let p = n.withUnsafeBufferPointer({ nb in e.withUnsafeBufferPointer { eb in
                tollgate_rsa_public_key(nb.baseAddress, nb.count, eb.baseAddress, eb.count) } }) else {
                throw JWTKeyError("\(name): OpenSSL refuses this RSA key")
            }
            let key = EVPPublicKey(p)
            guard key.bits >= minimumRSABits else { throw JWTKeyError("\(name): RSA key of \(key.bits) bits (at least \(minimumRSABits))") }
            material = .publicKey(key)
        case "EC":
            type = .ec
            if jwk["d"] != nil { throw JWTKeyError("\(name): holds a private key (list public keys only)") }
            guard let crv = try string("crv") else { throw JWTKeyError("\(name): missing crv") }
            guard crv == "P-256" else { throw JWTKeyError("\(name): curve '\(crv)' is not supported (P-256)") }
            let x = try bytes("x"), y = try bytes("y")
            guard x.count == 32, y.count == 32 else { throw JWTKeyError("\(name): x and y must be 32 bytes each for P-256") }
            let point = [0x04] + x + y
            guard let p = point.withUnsafeBufferPointer({ tollgate_p256_public_key($0.baseAddress, $0.count) }) else {
                throw JWTKeyError("\(name): the point is not on P-256")
            }
            material = .publicKey(EVPPublicKey(p))
        case "oct":
            type = .oct
            let k = try bytes("k")
            material = .secret(k.withUnsafeBytes { HMACKey(secret: $0) })
        default:
            throw JWTKeyError("\(name): kty '\(kty)' is not supported (RSA, EC or oct)")
        }
        if let algorithm, algorithm.keyType != type {
            throw JWTKeyError("\(name): alg '\(algorithm.rawValue)' does not fit kty '\(kty)'")
        }
        return JWTKey(kid: kid, type: type, algorithm: algorithm, origin: "keys_file " + name, material: material)
    }
}
