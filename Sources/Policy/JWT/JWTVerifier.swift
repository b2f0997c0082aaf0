import COpenSSL

/// `credentials.jwt` as compiled: what a token must be to stand for a consumer.
public struct JWTSettings: Sendable {
    /// Pinned algorithms: a token whose header names another (`none` included) is refused.
    public var algorithms: [JWTAlgorithm]
    /// Accepted `iss` values; empty: not checked.
    public var issuers: [String] = []
    /// Accepted audiences (the token's `aud`, a string or a list, must name one); empty: not checked.
    public var audiences: [String] = []
    /// Claims that must be present with exactly this value (`{type: access}`).
    public var requiredClaims: [RequiredClaim] = []
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    public var leewaySeconds: Int64 = 0
    /// The claim naming the consumer (limits, credits, usage): a non-empty string or a
    /// non-negative integer. A token without it is refused.
    public var consumerClaim = "sub"
    /// The claim holding scopes: a space-separated string or a list of strings (optional).
    public var scopesClaim = "scope"

    public struct RequiredClaim: Sendable, Equatable {
        public var name: String
        public var value: JWTClaimValue
        public init(name: String, value: JWTClaimValue) { self.name = name; self.value = value }
    }

    public init(algorithms: [JWTAlgorithm]) { self.algorithms = algorithms }

    /// Tokens longer than this are refused without being parsed.
    public static let maxTokenBytes = 8192
    /// At most this many required claims.
    public static let maxRequiredClaims = 16
    /// The longest leeway a policy may set.
    public static let maxLeewaySeconds: Int64 = 300
    /// Consumers longer than this are refused (they become header values and ledger accounts).
    public static let maxConsumerBytes = 256
}

/// A value a required claim must have.
public enum JWTClaimValue: Sendable, Equatable, CustomStringConvertible {
    case string(String)
    case integer(Int64)
    case bool(Bool)

    public var description: String {
        switch self {
        case .string(let s): return "'\(s)'"
        case .integer(let i): return String(i)
        case .bool(let b): return b ? "true" : "false"
        }
    }
}

/// Why a token is refused. ``code`` is what the client is told (`EXPIRED` or
/// `INVALID_TOKEN`); the case itself is for tests and diagnostics and never carries any of
/// the token's bytes.
public enum JWTRefusal: String, Error, Sendable, CaseIterable {
    /// Longer than ``JWTSettings/maxTokenBytes``: not parsed at all.
    case tooLarge
    /// Not three base64url segments, or a segment that does not decode.
    case malformed
    /// The header is not a JSON object with a string `alg`, or has a member twice.
    case badHeader
    /// `alg` is not one the policy pins (`none`, `RS256` where only `HS256` is pinned, …).
    case algorithmNotAllowed
    /// The header has `crit`: no extension is understood, so none may be required.
    case criticalHeader
    /// No key of the algorithm's type has the token's `kid` (or there is no such key at all).
    case unknownKey
    /// No `kid`, and several keys could verify the algorithm.
    case ambiguousKey
    /// The signature does not verify (or has the wrong length for the algorithm or key).
    case badSignature
    /// The claim set is not a JSON object, has a claim twice, or a claim of the wrong type.
    case badClaims
    /// No `exp`.
    case missingExpiry
    /// `exp` (plus leeway) has passed.
    case expired
    /// `nbf` (minus leeway) is still ahead.
    case notYetValid
    /// `iat` is ahead of now (plus leeway).
    case issuedInFuture
    case wrongIssuer
    case wrongAudience
    /// A `required_claims` entry is missing or has another value.
    case claimMismatch
    /// The consumer claim is missing, empty, too long, not a string or plain integer, or holds
    /// control characters.
    case badConsumer
    /// The scopes claim is neither a space-separated string nor a list of scope tokens.
    case badScopes

    public var code: DenialCode { self == .expired ? .expired : .invalidToken }
}

/// What a verified token says, as ranges of the caller's scratch buffer (valid until it is
/// reused): see ``JWTVerifier/check(_:now:scratch:)``.
public struct JWTFacts: Sendable {
    /// The consumer claim's decoded bytes.
    public var consumer: Range<Int>
    /// The scopes, each a scope token, separated by one space (empty when there are none).
    public var scopes: Range<Int>
    /// The `role` claim, when it is a string (the admin API's `role: admin`).
    public var role: Range<Int>?
    /// `exp` rounded up: the token is refused from `expiresAt + leeway` on.
    public var expiresAt: Int64
    public var notBefore: Int64?
    public var issuedAt: Int64?
    public var algorithm: JWTAlgorithm
    /// The key that verified it (position in ``JWTVerifier/keys``).
    public var keyIndex: Int
}

/// A verified token's claims as values (the admin API, tools, tests).
public struct JWTClaims: Sendable, Equatable {
    public var consumer: String
    public var scopes: [String]
    public var role: String?
    public var expiresAt: Int64
    public var notBefore: Int64?
    public var issuedAt: Int64?
    public var algorithm: JWTAlgorithm
    /// The `kid` of the key that verified it, if it has one.
    public var keyID: String?

    /// `role: admin` (POLICY.md, "Admin credentials").
    public var isAdmin: Bool { role == "admin" }
}

/// Verifies JWS compact tokens (RFC 7515/7519) against the policy's keys and settings. Pure:
/// no I/O, no clock of its own (`now` is given), nothing allocated on the path of
/// ``check(_:now:scratch:)`` (the caller lends the scratch buffer), and no input traps.
///
/// In order: size (≤ 8 KiB), shape (three base64url segments, canonical), header (a JSON
/// object: `alg` pinned, no `crit`; `jwk`, `jku`, `x5u`, `x5c` are never used), key (by
/// `kid`, of the algorithm's type and curve), signature (HMAC compared in constant time;
/// through OpenSSL: RSASSA-PKCS1-v1_5 or RSASSA-PSS over SHA-256/384/512, ECDSA P-256/SHA-256
/// or P-384/SHA-384 with the JWS `R || S` given as DER, Ed25519), then the claims:
/// `iss`, `aud`, `required_claims`, the consumer and scopes claims, `nbf`, `iat`, and `exp`
/// (required) last, so an expired token is `EXPIRED` only when nothing else is wrong with it.
public final class JWTVerifier: Sendable {
    public let settings: JWTSettings
    public let keys: [JWTKey]
    private let algorithmBits: UInt16
    private let issuers: [[UInt8]]
    private let audiences: [[UInt8]]
    private let consumerName: [UInt8]
    private let scopesName: [UInt8]
    private let requiredNames: [[UInt8]]
    private let requiredValues: [RequiredValue]

    private enum RequiredValue: Sendable {
        case string([UInt8]), integer(Int64), bool(Bool)
    }

    /// Bytes a scratch buffer needs (every decoded segment of the largest token, and room to spare).
    public static let scratchBytes = JWTSettings.maxTokenBytes + 256

    public init(settings: JWTSettings, keys: [JWTKey]) {
        self.settings = settings
        self.keys = keys
        algorithmBits = settings.algorithms.reduce(0) { $0 | $1.bit }
        issuers = settings.issuers.map { Array($0.utf8) }
        audiences = settings.audiences.map { Array($0.utf8) }
        consumerName = Array(settings.consumerClaim.utf8)
        scopesName = Array(settings.scopesClaim.utf8)
        requiredNames = settings.requiredClaims.map { Array($0.name.utf8) }
        requiredValues = settings.requiredClaims.map {
            switch $0.value {
            case .string(let s): return .string(Array(s.utf8))
            case .integer(let i): return .integer(i)
            case .bool(let b): return .bool(b)
            }
        }
    }

    // MARK: shape

    /// "With both credentials on a route, a Bearer value made of three base64url parts whose
    /// first decodes to a JOSE header is a JWT" (POLICY.md): three non-empty segments of the
    /// base64url alphabet, the first decoding to a JSON object with a string `alg` (whatever
    /// the length: an oversized token is still a token, refused as one). Cheap for an API key
    /// (no dot: one pass over its bytes). `scratch`: at least 1 KiB.
    public static func isJWT(_ value: UnsafeRawBufferPointer, scratch: UnsafeMutableRawBufferPointer) -> Bool {
        guard let dots = Self.dots(value) else { return false }
        let header = UnsafeRawBufferPointer(rebasing: value[0..<dots.0])
        guard let n = Base64URL.decodedCount(header.count), n <= scratch.count,
              let h = Base64URL.decode(header, into: scratch), let base = scratch.baseAddress else { return false }
        switch Self.readHeader(base.assumingMemoryBound(to: UInt8.self), h) {
        case .header, .critical: return true
        case .invalid: return false
        }
    }

    /// The positions of the two dots of three non-empty base64url segments, or nil.
    @inline(__always)
    static func dots(_ t: UnsafeRawBufferPointer) -> (Int, Int)? {
        var first = -1, second = -1
        let table = Base64URL.values
        return table.withUnsafeBufferPointer { v -> (Int, Int)? in
            for k in 0..<t.count {
                let c = t[k]
                if c == 0x2E {
                    if first < 0 { first = k } else if second < 0 { second = k } else { return nil }
                } else if v[Int(c)] == 0xFF {
                    return nil
                }
            }
            guard first > 0, second > first + 1, second < t.count - 1 else { return nil }
            return (first, second)
        }
    }

    // MARK: verification

    /// Verifies `token` at `now` (Unix seconds) using `scratch` (≥ ``scratchBytes``) for the
    /// decoded segments; the facts point into `scratch`.
    public func check(_ token: UnsafeRawBufferPointer, now: Int64, scratch: UnsafeMutableRawBufferPointer) -> Result<JWTFacts, JWTRefusal> {
        guard token.count <= JWTSettings.maxTokenBytes else { return .failure(.tooLarge) }
        guard scratch.count >= Self.scratchBytes, let base = scratch.baseAddress?.assumingMemoryBound(to: UInt8.self),
              let dots = Self.dots(token) else { return .failure(.malformed) }
        let (d1, d2) = dots
        let headerText = UnsafeRawBufferPointer(rebasing: token[0..<d1])
        let payloadText = UnsafeRawBufferPointer(rebasing: token[(d1 + 1)..<d2])
        let signatureText = UnsafeRawBufferPointer(rebasing: token[(d2 + 1)...])

        // Header.
        guard let h = Base64URL.decode(headerText, into: scratch) else { return .failure(.malformed) }
        let header: (JWTAlgorithm, Range<Int>?)
        switch Self.readHeader(base, h) {
        case .header(let alg, let kid):
            guard let alg, alg.bit & algorithmBits != 0 else { return .failure(.algorithmNotAllowed) }
            header = (alg, kid)
        case .critical: return .failure(.criticalHeader)
        case .invalid: return .failure(.badHeader)
        }
        let alg = header.0

        // Key.
        let keyIndex: Int
        switch key(for: alg, kid: header.1.map { UnsafeRawBufferPointer(start: base + $0.lowerBound, count: $0.count) }) {
        case .success(let i): keyIndex = i
        case .failure(let r): return .failure(r)
        }
        let key = keys[keyIndex]

        // Signature, over the segments as sent.
        let sigAt = h
        let sigRoom = UnsafeMutableRawBufferPointer(rebasing: scratch[sigAt...])
        guard let s = Base64URL.decode(signatureText, into: sigRoom) else { return .failure(.malformed) }
        let signature = UnsafeRawBufferPointer(start: base + sigAt, count: s)
        let signed = UnsafeRawBufferPointer(rebasing: token[0..<d2])
        guard Self.verify(signature, over: signed, alg: alg, key: key) else { return .failure(.badSignature) }

        // Claims.
        let payloadAt = sigAt + s
        let payloadRoom = UnsafeMutableRawBufferPointer(rebasing: scratch[payloadAt...])
        guard let p = Base64URL.decode(payloadText, into: payloadRoom) else { return .failure(.malformed) }
        return claims(base + payloadAt, p, offset: payloadAt, now: now, alg: alg, keyIndex: keyIndex)
    }

    /// The allocating form: the claims as values (the admin API, tools, tests).
    public func verify(_ token: some StringProtocol, now: Int64) -> Result<JWTClaims, JWTRefusal> {
        var t = String(token)
        if t.utf8.count > JWTSettings.maxTokenBytes { return .failure(.tooLarge) }
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.scratchBytes, alignment: 8)
        defer { scratch.deallocate() }
        return t.withUTF8 { u -> Result<JWTClaims, JWTRefusal> in
            switch check(UnsafeRawBufferPointer(u), now: now, scratch: scratch) {
            case .failure(let r): return .failure(r)
            case .success(let f): return .success(claims(of: f, in: UnsafeRawBufferPointer(scratch)))
            }
        }
    }

    /// ``JWTFacts`` as values, read from the scratch buffer they point into.
    public func claims(of f: JWTFacts, in scratch: UnsafeRawBufferPointer) -> JWTClaims {
        func text(_ r: Range<Int>) -> String { String(decoding: scratch[r], as: UTF8.self) }
        let scopes = f.scopes.isEmpty ? [] : text(f.scopes).split(separator: " ").map(String.init)
        return JWTClaims(consumer: text(f.consumer), scopes: scopes, role: f.role.map(text), expiresAt: f.expiresAt,
                         notBefore: f.notBefore, issuedAt: f.issuedAt, algorithm: f.algorithm, keyID: keys[f.keyIndex].kid)
    }

    // MARK: header

    enum Header {
        /// `alg` is a string (nil: not one Tollgate implements); `kid`, a string, if present.
        case header(alg: JWTAlgorithm?, kid: Range<Int>?)
        case critical
        case invalid
    }

    static func readHeader(_ base: UnsafeMutablePointer<UInt8>, _ count: Int) -> Header {
        var j = JWTJSON(base, count: count)
        guard j.take(0x7B) else { return .invalid }
        var alg: JWTAlgorithm?
        var sawAlg = false
        var kid: Range<Int>?
        var sawKid = false
        var critical = false
        if !j.take(0x7D) {
            repeat {
                j.ws()
                guard let name = j.string(), j.take(0x3A) else { return .invalid }
                let p = base + name.lowerBound
                let n = name.count
                if n == 3 && p[0] == 0x61 && p[1] == 0x6C && p[2] == 0x67 {            // alg
                    guard !sawAlg, case .string(let r)? = j.value() else { return .invalid }
                    sawAlg = true
                    alg = JWTAlgorithm.named(base + r.lowerBound, r.count)
                } else if n == 3 && p[0] == 0x6B && p[1] == 0x69 && p[2] == 0x64 {     // kid
                    guard !sawKid, case .string(let r)? = j.value() else { return .invalid }
                    sawKid = true
                    kid = r
                } else if n == 4 && p[0] == 0x63 && p[1] == 0x72 && p[2] == 0x69 && p[3] == 0x74 {   // crit
                    critical = true
                    guard j.skipValue(depth: 1) else { return .invalid }
                } else {
                    // typ, cty, jwk, jku, x5u, x5c, x5t… : never used (no header is trusted to
                    // name or carry a key).
                    guard j.skipValue(depth: 1) else { return .invalid }
                }
            } while j.take(0x2C)
            guard j.take(0x7D) else { return .invalid }
        }
        j.ws()
        guard j.atEnd, sawAlg else { return .invalid }
        return critical ? .critical : .header(alg: alg, kid: kid)
    }

    // MARK: keys

    /// The key for `alg`: of its type, by `kid`. A token without `kid` is checked against the
    /// only such key (refused when there are several); a `kid` must name one, unless none of
    /// these keys has a kid (a secret, a PEM key) and there is exactly one.
    func key(for alg: JWTAlgorithm, kid: UnsafeRawBufferPointer?) -> Result<Int, JWTRefusal> {
        var only = -1
        var candidates = 0
        var anyKid = false
        let bit = alg.bit
        for (i, k) in keys.enumerated() where k.algorithmBits & bit != 0 {
            candidates += 1
            only = i
            if let kb = k.kidBytes {
                anyKid = true
                if let kid, Self.same(kid, kb) { return .success(i) }
            }
        }
        if candidates == 0 { return .failure(.unknownKey) }
        if kid != nil {
            return !anyKid && candidates == 1 ? .success(only) : .failure(.unknownKey)
        }
        return candidates == 1 ? .success(only) : .failure(.ambiguousKey)
    }

    private static func same(_ a: UnsafeRawBufferPointer, _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        for k in 0..<a.count where a[k] != b[k] { return false }
        return true
    }

    // MARK: signatures

    static func verify(_ sig: UnsafeRawBufferPointer, over data: UnsafeRawBufferPointer, alg: JWTAlgorithm, key: JWTKey) -> Bool {
        switch (alg, key.material) {
        case (.hs256, .secret(let k)):
            guard sig.count == 32 else { return false }
            return withUnsafeTemporaryAllocation(byteCount: 64, alignment: 8) { mac in
                let out = mac.baseAddress!.assumingMemoryBound(to: UInt8.self)
                tollgate_hmac256(k.sha256, data.baseAddress, data.count, out)
                return tollgate_memeq(out, sig.baseAddress, 32) == 1
            }
        case (.hs384, .secret(let k)), (.hs512, .secret(let k)):
            let n = alg == .hs384 ? 48 : 64
            guard sig.count == n else { return false }
            return withUnsafeTemporaryAllocation(byteCount: 64, alignment: 8) { mac in
                let out = mac.baseAddress!.assumingMemoryBound(to: UInt8.self)
                tollgate_hmac512(alg == .hs384 ? k.sha384 : k.sha512, data.baseAddress, data.count, out)
                return tollgate_memeq(out, sig.baseAddress, n) == 1
            }
        case (.rs256, .publicKey(let k)), (.rs384, .publicKey(let k)), (.rs512, .publicKey(let k)),
             (.ps256, .publicKey(let k)), (.ps384, .publicKey(let k)), (.ps512, .publicKey(let k)):
            guard key.type == .rsa, k.kind == EVPPublicKey.rsa, sig.count == key.modulusBytes, let s = sig.baseAddress else { return false }
            let bits: Int32 = alg == .rs256 || alg == .ps256 ? 256 : alg == .rs384 || alg == .ps384 ? 384 : 512
            let pss: Int32 = alg == .ps256 || alg == .ps384 || alg == .ps512 ? 1 : 0
            return tollgate_verify(k.pointer, bits, pss, s.assumingMemoryBound(to: UInt8.self), sig.count,
                                   data.baseAddress, data.count) == 1
        case (.es256, .publicKey(let k)):
            guard key.type == .ec, k.kind == EVPPublicKey.p256, k.bits == 256, sig.count == 64, let s = sig.baseAddress else { return false }
            return withUnsafeTemporaryAllocation(byteCount: 80, alignment: 8) { der in
                let out = der.baseAddress!.assumingMemoryBound(to: UInt8.self)
                let n = tollgate_ecdsa_der(s.assumingMemoryBound(to: UInt8.self), 32, out)
                return tollgate_verify(k.pointer, 256, 0, out, n, data.baseAddress, data.count) == 1
            }
        case (.es384, .publicKey(let k)):
            guard key.type == .ec, k.kind == EVPPublicKey.p384, k.bits == 384, sig.count == 96, let s = sig.baseAddress else { return false }
            return withUnsafeTemporaryAllocation(byteCount: 112, alignment: 8) { der in
                let out = der.baseAddress!.assumingMemoryBound(to: UInt8.self)
                let n = tollgate_ecdsa_der(s.assumingMemoryBound(to: UInt8.self), 48, out)
                return tollgate_verify(k.pointer, 384, 0, out, n, data.baseAddress, data.count) == 1
            }
        case (.es512, .publicKey(let k)):
            guard key.type == .ec, k.kind == EVPPublicKey.p521, k.bits == 521, sig.count == 132, let s = sig.baseAddress else { return false }
            return withUnsafeTemporaryAllocation(byteCount: 160, alignment: 8) { der in
                let out = der.baseAddress!.assumingMemoryBound(to: UInt8.self)
                let n = tollgate_ecdsa_der(s.assumingMemoryBound(to: UInt8.self), 66, out)
                return n > 0 && tollgate_verify(k.pointer, 512, 0, out, n, data.baseAddress, data.count) == 1
            }
        case (.edDSA, .publicKey(let k)):
            guard key.type == .okp, k.kind == EVPPublicKey.ed25519, sig.count == 64, let s = sig.baseAddress else { return false }
            return tollgate_verify(k.pointer, 0, 0, s.assumingMemoryBound(to: UInt8.self), sig.count,
                                   data.baseAddress, data.count) == 1
        default:
            // A key of another type: never used for this algorithm (key selection already
            // filters by type; this is the second lock).
            return false
        }
    }

    // MARK: claims

    /// Claim roles, one bit each (a member may play several: the consumer claim may also be
    /// a required one).
    private struct Roles: OptionSet {
        let rawValue: UInt32
        static let exp = Roles(rawValue: 1), nbf = Roles(rawValue: 2), iat = Roles(rawValue: 4)
        static let iss = Roles(rawValue: 8), aud = Roles(rawValue: 16), consumer = Roles(rawValue: 32)
        static let scopes = Roles(rawValue: 64), role = Roles(rawValue: 128)
        static let firstRequired: UInt32 = 256
    }

    @inline(__always)
    private static func equals(_ p: UnsafePointer<UInt8>, _ n: Int, _ name: [UInt8]) -> Bool {
        n == name.count && name.withUnsafeBufferPointer { memcmp(p, $0.baseAddress!, n) == 0 }
    }

    @inline(__always)
    private static func equals(_ p: UnsafePointer<UInt8>, _ n: Int, _ s: StaticString) -> Bool {
        n == s.utf8CodeUnitCount && memcmp(p, s.utf8Start, n) == 0
    }

    private func claims(_ base: UnsafeMutablePointer<UInt8>, _ count: Int, offset: Int, now: Int64,
                        alg: JWTAlgorithm, keyIndex: Int) -> Result<JWTFacts, JWTRefusal> {
        var j = JWTJSON(base, count: count)
        guard j.take(0x7B) else { return .failure(.badClaims) }
        var seen: UInt32 = 0
        var exp: JWTNumber?, nbf: JWTNumber?, iat: JWTNumber?
        var consumer: Range<Int>?
        var scopes = 0..<0
        var role: Range<Int>?
        var issuerOK = issuers.isEmpty
        var audienceOK = audiences.isEmpty
        var required: UInt32 = 0
        var mismatch = false
        var badConsumer = false, badScopes = false
        if !j.take(0x7D) {
            repeat {
                j.ws()
                guard let name = j.string(), j.take(0x3A) else { return .failure(.badClaims) }
                let p = UnsafePointer(base + name.lowerBound)
                let n = name.count
                var roles: UInt32 = 0
                if Self.equals(p, n, "exp") { roles |= Roles.exp.rawValue }
                if Self.equals(p, n, "nbf") { roles |= Roles.nbf.rawValue }
                if Self.equals(p, n, "iat") { roles |= Roles.iat.rawValue }
                if Self.equals(p, n, "iss") { roles |= Roles.iss.rawValue }
                if Self.equals(p, n, "aud") { roles |= Roles.aud.rawValue }
                if Self.equals(p, n, "role") { roles |= Roles.role.rawValue }
                if Self.equals(p, n, consumerName) { roles |= Roles.consumer.rawValue }
                if Self.equals(p, n, scopesName) { roles |= Roles.scopes.rawValue }
                for (k, rn) in requiredNames.enumerated() where Self.equals(p, n, rn) { roles |= Roles.firstRequired << UInt32(k) }
                if roles == 0 {
                    guard j.skipValue(depth: 1) else { return .failure(.badClaims) }
                    continue
                }
                // A claim that decides anything may appear once.
                if seen & roles != 0 { return .failure(.badClaims) }
                seen |= roles
                guard let v = j.value() else { return .failure(.badClaims) }
                if roles & (Roles.exp.rawValue | Roles.nbf.rawValue | Roles.iat.rawValue) != 0 {
                    guard case .number(let num, _) = v else { return .failure(.badClaims) }
                    if roles & Roles.exp.rawValue != 0 { exp = num }
                    if roles & Roles.nbf.rawValue != 0 { nbf = num }
                    if roles & Roles.iat.rawValue != 0 { iat = num }
                }
                if roles & Roles.iss.rawValue != 0, !issuers.isEmpty {
                    if case .string(let r) = v { issuerOK = Self.matches(base, r, issuers) }
                }
                if roles & Roles.aud.rawValue != 0, !audiences.isEmpty {
                    switch v {
                    case .string(let r): audienceOK = Self.matches(base, r, audiences)
                    case .strings(let r, _):
                        var s = r.lowerBound
                        for k in r.lowerBound...r.upperBound where k == r.upperBound || base[k] == 0 {
                            if Self.matches(base, s..<k, audiences) { audienceOK = true }
                            s = k + 1
                        }
                    default: break
                    }
                }
                if roles & Roles.role.rawValue != 0, case .string(let r) = v { role = r }
                if roles & Roles.consumer.rawValue != 0 {
                    switch v {
                    case .string(let r): consumer = r
                    case .number(let num, let raw) where num.isPlainInteger: consumer = raw
                    default: badConsumer = true
                    }
                    if let r = consumer, !Self.isConsumer(base, r) { badConsumer = true }
                }
                if roles & Roles.scopes.rawValue != 0 {
                    switch v {
                    case .string(let r):
                        if let normalised = Self.normaliseScopes(base, r, isList: false, count: 1) { scopes = normalised } else { badScopes = true }
                    case .strings(let r, let count):
                        if let normalised = Self.normaliseScopes(base, r, isList: true, count: count) { scopes = normalised } else { badScopes = true }
                    default:
                        badScopes = true
                    }
                }
                if roles >= Roles.firstRequired {
                    for (k, want) in requiredValues.enumerated() where roles & (Roles.firstRequired << UInt32(k)) != 0 {
                        required |= Roles.firstRequired << UInt32(k)
                        if !Self.matches(v, want, base) { mismatch = true }
                    }
                }
            } while j.take(0x2C)
            guard j.take(0x7D) else { return .failure(.badClaims) }
        }
        j.ws()
        guard j.atEnd else { return .failure(.badClaims) }

        if !issuerOK { return .failure(.wrongIssuer) }
        if !audienceOK { return .failure(.wrongAudience) }
        let allRequired: UInt32 = requiredValues.isEmpty ? 0 : ((1 << UInt32(requiredValues.count)) - 1) << 8
        if mismatch || required != allRequired { return .failure(.claimMismatch) }
        if badConsumer || consumer == nil { return .failure(.badConsumer) }
        if badScopes { return .failure(.badScopes) }
        let leeway = settings.leewaySeconds
        if let nbf, now &+ leeway < nbf.ceiling { return .failure(.notYetValid) }
        if let iat, iat.floor > now &+ leeway { return .failure(.issuedInFuture) }
        guard let exp else { return .failure(.missingExpiry) }
        if now >= exp.ceiling &+ leeway { return .failure(.expired) }
        func shifted(_ r: Range<Int>) -> Range<Int> { (r.lowerBound + offset)..<(r.upperBound + offset) }
        return .success(JWTFacts(consumer: shifted(consumer!), scopes: shifted(scopes), role: role.map(shifted),
                                 expiresAt: exp.ceiling, notBefore: nbf?.ceiling, issuedAt: iat?.floor,
                                 algorithm: alg, keyIndex: keyIndex))
    }

    private static func matches(_ base: UnsafeMutablePointer<UInt8>, _ r: Range<Int>, _ accepted: [[UInt8]]) -> Bool {
        for a in accepted where equals(base + r.lowerBound, r.count, a) { return true }
        return false
    }

    private static func matches(_ v: JWTJSON.Value, _ want: RequiredValue, _ base: UnsafeMutablePointer<UInt8>) -> Bool {
        switch (v, want) {
        case (.string(let r), .string(let s)): return equals(base + r.lowerBound, r.count, s)
        case (.number(let n, _), .integer(let i)): return !n.hasFraction && n.floor == i
        case (.bool(let b), .bool(let w)): return b == w
        default: return false
        }
    }

    /// A consumer: 1…256 bytes, no control characters (it becomes a header value and an account).
    private static func isConsumer(_ base: UnsafeMutablePointer<UInt8>, _ r: Range<Int>) -> Bool {
        guard !r.isEmpty, r.count <= JWTSettings.maxConsumerBytes else { return false }
        for k in r {
            let c = base[k]
            if c < 0x20 || c == 0x7F { return false }
        }
        return true
    }

    /// Rewrites the scopes in place as scope tokens (RFC 6749 §3.3: 0x21, 0x23–0x5B, 0x5D–0x7E)
    /// separated by one space: a string's runs of spaces, and a list's separators (0x00, see
    /// ``JWTJSON/Value/strings(_:count:)``), each become one space. nil when a list element is
    /// empty or anything holds another byte.
    private static func normaliseScopes(_ base: UnsafeMutablePointer<UInt8>, _ r: Range<Int>, isList: Bool, count: Int) -> Range<Int>? {
        if isList && count == 0 { return r.lowerBound..<r.lowerBound }
        var w = r.lowerBound
        var tokenBytes = 0
        for k in r {
            let c = base[k]
            if isList && c == 0x00 {
                if tokenBytes == 0 { return nil }
                base[w] = 0x20
                w += 1
                tokenBytes = 0
                continue
            }
            if !isList && c == 0x20 {
                if tokenBytes > 0 { base[w] = 0x20; w += 1 }
                tokenBytes = 0
                continue
            }
            guard c == 0x21 || (c >= 0x23 && c <= 0x5B) || (c >= 0x5D && c <= 0x7E) else { return nil }
            base[w] = c
            w += 1
            tokenBytes += 1
        }
        if isList && tokenBytes == 0 { return nil }
        if w > r.lowerBound && base[w - 1] == 0x20 { w -= 1 }
        return r.lowerBound..<w
    }
}
