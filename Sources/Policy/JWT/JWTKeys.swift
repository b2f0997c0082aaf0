import COpenSSL
import Foundation

/// The signature algorithms a policy may pin (`credentials.jwt.algorithms`). `none` and
/// anything else are never accepted.
public enum JWTAlgorithm: String, Sendable, CaseIterable {
    case hs256 = "HS256", hs384 = "HS384", hs512 = "HS512"
    case rs256 = "RS256", rs384 = "RS384", rs512 = "RS512"
    case ps256 = "PS256", ps384 = "PS384", ps512 = "PS512"
    case es256 = "ES256", es384 = "ES384", es512 = "ES512"
    case edDSA = "EdDSA"

    /// The only kind of key that verifies this algorithm: an HS token is never checked with
    /// an RSA, EC or OKP public key (as an HMAC secret), nor an RS/PS/ES/EdDSA token with a
    /// secret. ES256 and ES384 further need their own curve (``JWTKey/verifies``).
    public var keyType: JWTKeyType {
        switch self {
        case .hs256, .hs384, .hs512: return .oct
        case .rs256, .rs384, .rs512, .ps256, .ps384, .ps512: return .rsa
        case .es256, .es384, .es512: return .ec
        case .edDSA: return .okp
        }
    }

    var bit: UInt16 {
        switch self {
        case .hs256: return 1
        case .hs384: return 2
        case .hs512: return 4
        case .rs256: return 8
        case .es256: return 16
        case .rs384: return 32
        case .rs512: return 64
        case .ps256: return 128
        case .ps384: return 256
        case .ps512: return 512
        case .es384: return 1024
        case .edDSA: return 2048
        case .es512: return 4096
        }
    }

    /// The algorithms (bits) a key of each kind may verify.
    static let secretBits: UInt16 = 1 | 2 | 4
    static let rsaBits: UInt16 = 8 | 32 | 64 | 128 | 256 | 512
    static let p256Bits: UInt16 = 16
    static let p384Bits: UInt16 = 1024
    static let ed25519Bits: UInt16 = 2048
    static let p521Bits: UInt16 = 4096

    /// The signature's exact length (RS*, PS*: the modulus' byte length, checked against the key).
    var signatureBytes: Int {
        switch self {
        case .hs256: return 32
        case .hs384: return 48
        case .hs512: return 64
        case .rs256, .rs384, .rs512, .ps256, .ps384, .ps512: return 0
        case .es256: return 64
        case .es384: return 96
        case .es512: return 132
        case .edDSA: return 64
        }
    }

    /// What verifies it, for messages.
    var keyDescription: String {
        switch self {
        case .hs256, .hs384, .hs512: return "secret_env (or an oct key in keys_file)"
        case .rs256, .rs384, .rs512, .ps256, .ps384, .ps512: return "an RSA public key in keys_file"
        case .es256: return "an EC P-256 public key in keys_file"
        case .es384: return "an EC P-384 public key in keys_file"
        case .es512: return "an EC P-521 public key in keys_file"
        case .edDSA: return "an Ed25519 (OKP) public key in keys_file"
        }
    }

    /// The names a policy may pin, for messages.
    public static let supportedNames = "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512 or EdDSA"

    /// Why a known algorithm Tollgate does not implement is refused (nil: not one of those).
    public static func notImplemented(_ name: String) -> String? { nil }

    /// The algorithm named by the bytes of a header's `alg` (exact, case-sensitive).
    static func named(_ p: UnsafePointer<UInt8>, _ n: Int) -> JWTAlgorithm? {
        guard n == 5 else { return nil }
        let a = p[0], b = p[1], c = p[2], d = p[3], e = p[4]
        // 256, 384, 512 → 0, 1, 2.
        let size: Int
        if c == 0x32 && d == 0x35 && e == 0x36 { size = 0 }
        else if c == 0x33 && d == 0x38 && e == 0x34 { size = 1 }
        else if c == 0x35 && d == 0x31 && e == 0x32 { size = 2 }
        else { size = -1 }
        switch (a, b) {
        case (0x48, 0x53):   // HS
            switch size { case 0: return .hs256; case 1: return .hs384; case 2: return .hs512; default: return nil }
        case (0x52, 0x53):   // RS
            switch size { case 0: return .rs256; case 1: return .rs384; case 2: return .rs512; default: return nil }
        case (0x50, 0x53):   // PS
            switch size { case 0: return .ps256; case 1: return .ps384; case 2: return .ps512; default: return nil }
        case (0x45, 0x53):   // ES
            switch size { case 0: return .es256; case 1: return .es384; case 2: return .es512; default: return nil }
        case (0x45, 0x64):   // Ed
            if c == 0x44 && d == 0x53 && e == 0x41 { return .edDSA }   // DSA
        default:
            break
        }
        return nil
    }
}

/// What a key is (its JWK `kty`): a shared secret (HS*), an RSA public key (RS*, PS*), an EC
/// public key (ES256 on P-256, ES384 on P-384) or an OKP Ed25519 public key (EdDSA).
public enum JWTKeyType: String, Sendable {
    case oct, rsa = "RSA", ec = "EC", okp = "OKP"
}

/// An OpenSSL public key, freed with the object.
final class EVPPublicKey: @unchecked Sendable {
    // SAFETY: the key is built once and only read afterwards; each verification takes its
    // own OpenSSL context, and OpenSSL 3 keys may be read from several threads at once.
    let pointer: OpaquePointer
    /// RSA: the modulus' bits; EC: 256 or 384 (the curve's); Ed25519: 253.
    let bits: Int
    /// What OpenSSL says the key is (`tollgate_public_key_kind`): 1 RSA, 2 P-256, 3 P-384,
    /// 4 Ed25519 (anything else is refused at load). Checked again at each verification.
    let kind: Int32

    static let rsa: Int32 = 1, p256: Int32 = 2, p384: Int32 = 3, ed25519: Int32 = 4, p521: Int32 = 5

    init(_ pointer: OpaquePointer) {
        self.pointer = pointer
        bits = Int(EVP_PKEY_get_bits(pointer))
        kind = tollgate_public_key_kind(pointer)
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
    /// The algorithms (``JWTAlgorithm/bit``) it may verify: those of its type and curve,
    /// only its `alg` when it has one.
    let algorithmBits: UInt16
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
        var bits: UInt16
        switch material {
        case .secret: bits = type == .oct ? JWTAlgorithm.secretBits : 0
        case .publicKey(let k):
            switch (type, k.kind) {
            case (.rsa, EVPPublicKey.rsa): bits = JWTAlgorithm.rsaBits
            case (.ec, EVPPublicKey.p256): bits = JWTAlgorithm.p256Bits
            case (.ec, EVPPublicKey.p384): bits = JWTAlgorithm.p384Bits
            case (.ec, EVPPublicKey.p521): bits = JWTAlgorithm.p521Bits
            case (.okp, EVPPublicKey.ed25519): bits = JWTAlgorithm.ed25519Bits
            default: bits = 0
            }
        }
        if let algorithm { bits &= algorithm.bit }
        algorithmBits = bits
    }

    /// Whether this key may verify `alg` (its type, its curve, its JWK `alg`).
    public func verifies(_ alg: JWTAlgorithm) -> Bool { algorithmBits & alg.bit != 0 }

    /// RSA: the modulus' bytes (an RS*/PS* signature's exact length); 0 otherwise.
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

    /// One PEM public key (`PUBLIC KEY` or `CERTIFICATE`): RSA of at least 2048 bits, EC P-256
    /// or P-384, or Ed25519.
    public static func pem(_ bytes: [UInt8]) throws(JWTKeyError) -> JWTKey {
        let text = String(decoding: bytes, as: UTF8.self)
        let blocks = text.components(separatedBy: "-----BEGIN ").count - 1
        if blocks > 1 { throw JWTKeyError("holds \(blocks) PEM blocks (one public key per PEM file; use a JWKS with kids for several)") }
        if text.contains("PRIVATE KEY-----") { throw JWTKeyError("holds a private key (give the public key only)") }
        guard let pointer = bytes.withUnsafeBytes({ tollgate_pem_public_key($0.baseAddress, $0.count) }) else {
            throw JWTKeyError("no usable PEM public key (expected -----BEGIN PUBLIC KEY----- or a CERTIFICATE)")
        }
        let key = EVPPublicKey(pointer)
        let type: JWTKeyType
        switch key.kind {
        case EVPPublicKey.rsa:
            guard key.bits >= minimumRSABits else { throw JWTKeyError("RSA key of \(key.bits) bits (at least \(minimumRSABits))") }
            type = .rsa
        case EVPPublicKey.p256, EVPPublicKey.p384, EVPPublicKey.p521:
            type = .ec
        case EVPPublicKey.ed25519:
            type = .okp
        default:
            throw JWTKeyError("unsupported key type (RSA, EC P-256, P-384 or P-521, or Ed25519)")
        }
        return JWTKey(kid: nil, type: type, algorithm: nil, origin: "keys_file", material: .publicKey(key))
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
                if let why = JWTAlgorithm.notImplemented(alg) { throw JWTKeyError("\(name): alg '\(alg)' is not supported: \(why)") }
                throw JWTKeyError("\(name): alg '\(alg)' is not supported (\(JWTAlgorithm.supportedNames))")
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
            let size: Int, group: String, kind: Int32, fits: JWTAlgorithm
            switch crv {
            case "P-256": (size, group, kind, fits) = (32, "prime256v1", EVPPublicKey.p256, .es256)
            case "P-384": (size, group, kind, fits) = (48, "secp384r1", EVPPublicKey.p384, .es384)
            case "P-521": (size, group, kind, fits) = (66, "secp521r1", EVPPublicKey.p521, .es512)
            default: throw JWTKeyError("\(name): curve '\(crv)' is not supported (P-256, P-384 or P-521)")
            }
            if let algorithm, algorithm.keyType == .ec, algorithm != fits {
                throw JWTKeyError("\(name): alg '\(algorithm.rawValue)' does not fit crv '\(crv)' (\(fits.rawValue))")
            }
            let x = try bytes("x"), y = try bytes("y")
            guard x.count == size, y.count == size else { throw JWTKeyError("\(name): x and y must be \(size) bytes each for \(crv)") }
            let point = [0x04] + x + y
            guard let p = point.withUnsafeBufferPointer({ tollgate_ec_public_key(group, $0.baseAddress, $0.count) }) else {
                throw JWTKeyError("\(name): the point is not on \(crv)")
            }
            let key = EVPPublicKey(p)
            guard key.kind == kind else { throw JWTKeyError("\(name): OpenSSL does not read this key as \(crv)") }
            material = .publicKey(key)
        case "OKP":
            type = .okp
            if jwk["d"] != nil { throw JWTKeyError("\(name): holds a private key (list public keys only)") }
            guard let crv = try string("crv") else { throw JWTKeyError("\(name): missing crv") }
            guard crv == "Ed25519" else { throw JWTKeyError("\(name): curve '\(crv)' is not supported (Ed25519)") }
            let x = try bytes("x")
            guard x.count == 32 else { throw JWTKeyError("\(name): x must be 32 bytes for Ed25519") }
            guard let p = x.withUnsafeBufferPointer({ tollgate_ed25519_public_key($0.baseAddress, $0.count) }) else {
                throw JWTKeyError("\(name): OpenSSL refuses this Ed25519 key")
            }
            material = .publicKey(EVPPublicKey(p))
        case "oct":
            type = .oct
            let k = try bytes("k")
            material = .secret(k.withUnsafeBytes { HMACKey(secret: $0) })
        default:
            throw JWTKeyError("\(name): kty '\(kty)' is not supported (RSA, EC, OKP or oct)")
        }
        if let algorithm, algorithm.keyType != type {
            throw JWTKeyError("\(name): alg '\(algorithm.rawValue)' does not fit kty '\(kty)'")
        }
        return JWTKey(kid: kid, type: type, algorithm: algorithm, origin: "keys_file " + name, material: material)
    }
}
