// libFuzzer target: JWTs through JWTVerifier (Policy/JWT), with the token in its own exact-size
// heap block and the scratch buffer exactly JWTVerifier.scratchBytes long (ASan sees any read
// or write past either). Modes (byte 0, bits 0-1):
//
//   0  the message is a token, as a client would send it;
//   1  the message is `header JSON` NUL `claims JSON`: the target encodes both and signs them
//      with the test secret (HS256/384/512 by bits 2-3), so the claim checks are reached;
//   2  the same with `NUL signature bytes` after the claims, as the signature (under the
//      header's alg: RS*, PS*, ES256, ES384, EdDSA: arbitrary R || S, RSA and Ed25519
//      signatures reach OpenSSL);
//   3  mode 0 on the lax verifier.
// Bit 4 picks the strict verifier (issuer, audience, `type: access` required) in modes 0-2.
//
// Invariants:
// - no trap; the same token gives the same result twice (nothing kept between calls);
// - `isJWT` is false only for what the verifier calls malformed, a bad header or too large;
// - a token the verifier accepts, read again by an independent decoder (Foundation's base64
//   and JSONSerialization), has the algorithm pinned, a verifying signature (HMAC recomputed
//   with OpenSSL's one-shot call), `exp` and the other times right, the same consumer and
//   scopes, and (strict) the issuer, audience and type;
// - a signed token (modes 1) whose header and claims are plain (ASCII, no escapes, no key
//   written twice, no number past 2^53 or written with an exponent) and that the independent
//   reading finds valid is accepted.

import COpenSSL
import Foundation

let fuzzNow: Int64 = 1_800_000_000
let fuzzSecret = Array("fuzz-secret-0123456789abcdef0123".utf8)
let fuzzIssuer = "https://issuer.test"
let fuzzAudience = "aud-a"

let rsaPublicPEM = """
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAofgWCuLjybRlzo0tZWJj
NiuSfb4p4fAkd/wWJcyQoTbji9k0l8W26mPddxHmfHQp+Vaw+4qPCJrcS2mJPMEz
P1Pt0Bm4d4QlL+yRT+SFd2lZS+pCgNMsD1W/YpRPEwOWvG6b32690r2jZ47soMZo
9wGzjb/7OMg0LOL+bSf63kpaSHSXndS5z5rexMdbBYUsLA9e+KXBdQOS+UTo7WTB
EMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6/I5IhlJH7aGhyxX
FvUK+DWNmoudF8NAco9/h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXp
oQIDAQAB
-----END PUBLIC KEY-----
"""
let ecJWK = #"{"kty":"EC","kid":"ec-1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#
/// Tests/PolicyTests/JWTMint's P-384 and Ed25519 public keys (ES384, EdDSA).
let moreJWKS = #"{"keys":[{"kty":"EC","kid":"ec-384","crv":"P-384","x":"ulR3Sv8dp1lIWo2SKxf8K2h6bU2M3paA06zbYFjlmtTZJwqPd5PttVrfaUFTpfz2","y":"23J-7Mt_uX1C3SADB2gS-FvA7cT8ZqbG_E3OYDMm4OeProEKTfKky_aA504xFCH5"},{"kty":"OKP","kid":"ed-1","crv":"Ed25519","x":"jDWmvZvy1q2EcXF2aLq1ese4Di4U6ez262N2n6wwGRw"},{"kty":"EC","kid":"ec-521","crv":"P-521","x":"ANzjWhiOAhwlayf_wmkvZJLDIFOAJ2bab5n4a_jqtAySquJTqblXLNfgNoWcdrMdenLNzrvArmtxeBIVq9oLUBfl","y":"ANKuZ-5c1HyMSm7QSr0cDYrJ12iHzi-0eiu8nsqZXd-QZzOkEGrta5P6hDXiN0pgxF46M8xDGYuzXnpyGtz-EkBv"}]}"#

func makeKeys() -> [JWTKey] {
    var keys = [JWTKey.secret(fuzzSecret)]
    if let k = try? JWTKeyFile.pem(Array(rsaPublicPEM.utf8)) { keys.append(k) }
    if let k = try? JWTKeyFile.jwks(Array(ecJWK.utf8)) { keys += k }
    if let k = try? JWTKeyFile.jwks(Array(moreJWKS.utf8)) { keys += k }
    return keys
}

let fuzzKeys = makeKeys()
let laxVerifier = JWTVerifier(settings: {
    var s = JWTSettings(algorithms: JWTAlgorithm.allCases)
    s.leewaySeconds = 30
    return s
}(), keys: fuzzKeys)
let strictVerifier = JWTVerifier(settings: {
    var s = JWTSettings(algorithms: JWTAlgorithm.allCases)
    s.leewaySeconds = 30
    s.issuers = [fuzzIssuer]
    s.audiences = [fuzzAudience]
    s.requiredClaims = [.init(name: "type", value: .string("access"))]
    return s
}(), keys: fuzzKeys)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJWT(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    check(fuzzKeys.count == 6, "test keys did not load")
    let input = FuzzInput(data, size)
    let mode = Int(input.flags & 3)
    let algBits = Int((input.flags >> 2) & 3)
    let strict = input.flags & 0x10 != 0 && mode != 3
    let verifier = strict ? strictVerifier : laxVerifier
    let message = Array(input.message)

    var token: [UInt8]
    var signedHeader: [UInt8]?
    var signedWith = "HS256"
    var signedClaims: [UInt8]?
    switch mode {
    case 1, 2:
        let parts = message.split(separator: 0, maxSplits: 2, omittingEmptySubsequences: false).map(Array.init)
        let header = parts[0]
        let claims = parts.count > 1 ? parts[1] : []
        let input = Base64URL.encode(header) + "." + Base64URL.encode(claims)
        if mode == 1 {
            let alg = ["HS256", "HS384", "HS512", "HS256"][algBits]
            token = Array((input + "." + Base64URL.encode(hmac(alg, Array(input.utf8)))).utf8)
            signedWith = alg
            signedHeader = header
            signedClaims = claims
        } else {
            let sig = parts.count > 2 ? parts[2] : []
            token = Array((input + "." + Base64URL.encode(sig)).utf8)
        }
    default:
        token = message
    }

    let (first, facts) = run(verifier, token)
    let (second, _) = run(verifier, token)
    check(first == second, "not deterministic: \(String(describing: first)) then \(String(describing: second))")

    let shape = token.withUnsafeBytes { t in
        withUnsafeTemporaryAllocation(byteCount: 1024, alignment: 8) { JWTVerifier.isJWT(t, scratch: $0) }
    }
    if !shape {
        check(first == .malformed || first == .badHeader || first == .tooLarge,
              "isJWT false but the verifier got as far as \(String(describing: first))")
    }

    if first == nil, let facts {
        acceptedAgrees(token, facts, strict: strict)
    } else if mode == 1, let h = signedHeader, let c = signedClaims, isPlain(h), isPlain(c),
              token.count <= JWTSettings.maxTokenBytes, oracleAccepts(h, c, signedWith: signedWith, strict: strict) {
        check(false, "a plain, valid, signed token refused (\(String(describing: first))): \(String(decoding: h, as: UTF8.self)) \(String(decoding: c, as: UTF8.self))")
    }
    return 0
}

/// The verifier's refusal (nil: accepted) and, accepted, what it read (as values).
func run(_ v: JWTVerifier, _ token: [UInt8]) -> (JWTRefusal?, JWTClaims?) {
    let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: JWTVerifier.scratchBytes, alignment: 16)
    defer { scratch.deallocate() }
    return withExactCopy(token.withUnsafeBytes { $0 }, count: token.count) { t -> (JWTRefusal?, JWTClaims?) in
        switch v.check(t, now: fuzzNow, scratch: scratch) {
        case .failure(let r): return (r, nil)
        case .success(let f):
            check(f.consumer.upperBound <= scratch.count && f.scopes.upperBound <= scratch.count, "facts out of the scratch buffer")
            return (nil, v.claims(of: f, in: UnsafeRawBufferPointer(scratch)))
        }
    }
}

func hmac(_ alg: String, _ data: [UInt8]) -> [UInt8] {
    let md: OpaquePointer? = alg == "HS384" ? EVP_sha384() : alg == "HS512" ? EVP_sha512() : EVP_sha256()
    var out = [UInt8](repeating: 0, count: 64)
    var n: UInt32 = 0
    _ = fuzzSecret.withUnsafeBufferPointer { k in
        data.withUnsafeBufferPointer { d in HMAC(md, k.baseAddress, Int32(k.count), d.baseAddress, d.count, &out, &n) }
    }
    return Array(out[0..<Int(n)])
}

/// Plain base64url decoding through Foundation (padding added back; `-_` mapped).
func plainDecode(_ s: Substring) -> [UInt8]? {
    var t = s.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
    while t.count % 4 != 0 { t += "=" }
    return Data(base64Encoded: t).map { [UInt8]($0) }
}

func acceptedAgrees(_ token: [UInt8], _ c: JWTClaims, strict: Bool) {
    let text = String(decoding: token, as: UTF8.self)
    let parts = text.split(separator: ".", omittingEmptySubsequences: false)
    check(parts.count == 3, "accepted without three segments")
    guard let h = plainDecode(parts[0]), let p = plainDecode(parts[1]), let s = plainDecode(parts[2]) else {
        check(false, "accepted, but Foundation cannot decode a segment: \(text)")
        return
    }
    // Foundation may refuse what RFC 8259 allows (lone surrogates, numbers past Double):
    // the value checks need its reading.
    guard let header = try? JSONSerialization.jsonObject(with: Data(h)) as? [String: Any],
          let claims = try? JSONSerialization.jsonObject(with: Data(p)) as? [String: Any] else { return }
    let alg = header["alg"] as? String
    check(alg == c.algorithm.rawValue, "accepted under \(c.algorithm), header says \(alg ?? "nil")")
    if alg?.hasPrefix("HS") == true {
        let input = Array(text[..<parts[2].startIndex].dropLast().utf8)
        check(hmac(alg!, input) == s, "accepted an HMAC that does not verify")
    } else {
        check(false, "accepted a public-key signature the fuzzer cannot make: \(text)")
    }
    guard let exp = (claims["exp"] as? NSNumber)?.doubleValue else { check(false, "accepted without a numeric exp"); return }
    check(Double(fuzzNow) < exp.rounded(.up) + 30, "accepted after exp \(exp)")
    if let nbf = (claims["nbf"] as? NSNumber)?.doubleValue { check(Double(fuzzNow + 30) >= nbf.rounded(.up), "accepted before nbf \(nbf)") }
    if let iat = (claims["iat"] as? NSNumber)?.doubleValue { check(iat.rounded(.down) <= Double(fuzzNow + 30), "accepted with iat \(iat) ahead") }
    if let sub = claims["sub"] as? String {
        check(sub == c.consumer, "consumer \(c.consumer), sub \(sub)")
    } else if let n = claims["sub"] as? NSNumber {
        check(n.stringValue == c.consumer || c.consumer.count > 15, "consumer \(c.consumer), sub \(n)")
    } else {
        check(false, "accepted without a string or integer sub")
    }
    let scopes: [String]
    switch claims["scope"] {
    case nil: scopes = []
    case let s as String: scopes = s.split(separator: " ").map(String.init)
    case let a as [String]: scopes = a
    default: check(false, "accepted scopes of another type"); return
    }
    check(scopes == c.scopes, "scopes \(c.scopes), claim \(scopes)")
    if strict {
        check(claims["iss"] as? String == fuzzIssuer, "accepted issuer \(String(describing: claims["iss"]))")
        check(claims["type"] as? String == "access", "accepted type \(String(describing: claims["type"]))")
        let aud = claims["aud"]
        check((aud as? String) == fuzzAudience || ((aud as? [Any])?.contains { ($0 as? String) == fuzzAudience } ?? false),
              "accepted audience \(String(describing: aud))")
    }
}

/// ASCII printable with no backslash, no number with an exponent or over 15 digits, no key
/// written twice (a crude check: any `"name":` seen twice), so Foundation reads what the
/// verifier reads.
func isPlain(_ b: [UInt8]) -> Bool {
    guard b.allSatisfy({ $0 >= 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "\\") }) || b.allSatisfy({ $0 == 0x0A || $0 == 0x20 || ($0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "\\")) }) else { return false }
    let s = String(decoding: b, as: UTF8.self)
    var run = 0
    var previous: UInt8 = 0
    for c in b {
        if c >= 0x30 && c <= 0x39 { run += 1; if run > 15 { return false } } else {
            if (c == UInt8(ascii: "e") || c == UInt8(ascii: "E")) && previous >= 0x30 && previous <= 0x39 { return false }
            run = 0
        }
        previous = c
    }
    var seen = Set<String>()
    var i = s.startIndex
    while let q = s[i...].firstIndex(of: "\"") {
        guard let e = s[s.index(after: q)...].firstIndex(of: "\"") else { break }
        let name = String(s[s.index(after: q)..<e])
        let after = s[s.index(after: e)...].drop { $0 == " " || $0 == "\n" }
        if after.first == ":" { if !seen.insert(name).inserted { return false } }
        i = s.index(after: e)
    }
    return true
}

/// The rules, read plainly over Foundation's objects: would a correct verifier accept?
func oracleAccepts(_ h: [UInt8], _ p: [UInt8], signedWith: String, strict: Bool) -> Bool {
    // true/false read as 1/0 by Foundation: such texts are not compared.
    let text = String(decoding: h + p, as: UTF8.self)
    if text.contains("true") || text.contains("false") { return false }
    guard let header = try? JSONSerialization.jsonObject(with: Data(h)) as? [String: Any],
          let claims = try? JSONSerialization.jsonObject(with: Data(p)) as? [String: Any] else { return false }
    // Foundation takes a few things RFC 8259 does not (a trailing comma, leading zeros): not compared.
    guard !foundationTakesMore(h), !foundationTakesMore(p), depthOK(h), depthOK(p) else { return false }
    guard header["alg"] as? String == signedWith, header["crit"] == nil else { return false }
    if let kid = header["kid"], !(kid is String) { return false }
    guard let exp = number(claims["exp"]), Double(fuzzNow) < exp.rounded(.up) + 30 else { return false }
    if claims["nbf"] != nil { guard let nbf = number(claims["nbf"]), Double(fuzzNow + 30) >= nbf.rounded(.up) else { return false } }
    if claims["iat"] != nil { guard let iat = number(claims["iat"]), iat.rounded(.down) <= Double(fuzzNow + 30) else { return false } }
    // Only string consumers are compared (a number's spelling, `42` or `42.0`, is not
    // visible in Foundation's reading).
    guard let sub = claims["sub"] as? String, !sub.isEmpty, sub.utf8.count <= 256,
          !sub.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { return false }
    switch claims["scope"] {
    case nil: break
    case let s as String: guard s.unicodeScalars.allSatisfy({ isScopeChar($0) || $0 == " " }) else { return false }
    case let a as [Any]:
        guard a.allSatisfy({ ($0 as? String).map { !$0.isEmpty && $0.unicodeScalars.allSatisfy(isScopeChar) } ?? false }) else { return false }
    default: return false
    }
    if strict {
        guard claims["iss"] as? String == fuzzIssuer, claims["type"] as? String == "access" else { return false }
        let aud = claims["aud"]
        guard (aud as? String) == fuzzAudience || ((aud as? [Any])?.contains { ($0 as? String) == fuzzAudience } ?? false) else { return false }
        if let a = aud as? [Any], !a.allSatisfy({ $0 is String }) { return false }
    }
    return true
}

func isScopeChar(_ u: Unicode.Scalar) -> Bool {
    u.value == 0x21 || (u.value >= 0x23 && u.value <= 0x5B) || (u.value >= 0x5D && u.value <= 0x7E)
}

/// A JSON number (the caller has ruled out booleans, which Foundation also reads as numbers).
func number(_ v: Any?) -> Double? {
    (v as? NSNumber)?.doubleValue
}

/// Outside strings: a comma before `}` or `]`, a number with a leading zero, `+` before a number.
func foundationTakesMore(_ b: [UInt8]) -> Bool {
    var inString = false
    var lastSignificant: UInt8 = 0
    var previous: UInt8 = 0
    for (i, c) in b.enumerated() {
        if inString { if c == UInt8(ascii: "\"") { inString = false }; previous = c; continue }
        if c == UInt8(ascii: "\"") { inString = true }
        if (c == UInt8(ascii: "}") || c == UInt8(ascii: "]")) && lastSignificant == UInt8(ascii: ",") { return true }
        if c == UInt8(ascii: "0"), i + 1 < b.count, b[i + 1] >= 0x30 && b[i + 1] <= 0x39,
           !(previous >= 0x30 && previous <= 0x39) && previous != UInt8(ascii: ".") { return true }
        if c == UInt8(ascii: "+") && previous != UInt8(ascii: "e") && previous != UInt8(ascii: "E") { return true }
        if c != 0x20 && c != 0x0A && c != 0x0D && c != 0x09 { lastSignificant = c }
        previous = c
    }
    return false
}

/// At most 32 levels (the verifier's bound).
func depthOK(_ b: [UInt8]) -> Bool {
    var depth = 0, worst = 0
    var inString = false
    for c in b {
        if inString { if c == UInt8(ascii: "\"") { inString = false }; continue }
        switch c {
        case UInt8(ascii: "\""): inString = true
        case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1; worst = max(worst, depth)
        case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
        default: break
        }
    }
    return worst <= 32
}
