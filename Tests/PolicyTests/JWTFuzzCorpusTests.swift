import Testing
@testable import Policy

/// The committed corpus of the `jwt` fuzz target (`Fuzz/corpus/jwt`, see Fuzz/README.md and
/// Fuzz/Targets/JWTTarget.swift) replayed on every `swift test`, its modes rebuilt the same
/// way: no input traps, each gives the same answer twice, and `isJWT` is false only for what
/// the verifier calls malformed, a bad header or too large.
struct JWTFuzzCorpusTests {
    static let secret = Array("fuzz-secret-0123456789abcdef0123".utf8)

    static func verifier(strict: Bool) -> JWTVerifier {
        var s = JWTSettings(algorithms: JWTAlgorithm.allCases)
        s.leewaySeconds = 30
        if strict {
            s.issuers = ["https://issuer.test"]
            s.audiences = ["aud-a"]
            s.requiredClaims = [.init(name: "type", value: .string("access"))]
        }
        var keys = [JWTKey.secret(secret)]
        keys += (try? JWTKeyFile.jwks(Array(#"{"kty":"EC","kid":"ec-1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#.utf8))) ?? []
        // The target's P-384 (ES384), Ed25519 (EdDSA) and P-521 (ES512) keys: JWTMint's.
        let more = "{\"keys\":[\(JWTMint.p384JWK.dropLast()),\"kid\":\"ec-384\"},\(JWTMint.ed25519JWK.dropLast()),\"kid\":\"ed-1\"},\(JWTMint.p521JWK.dropLast()),\"kid\":\"ec-521\"}]}"
        keys += (try? JWTKeyFile.jwks(Array(more.utf8))) ?? []
        precondition(keys.count == 5, "the corpus keys did not load")
        return JWTVerifier(settings: s, keys: keys)
    }

    @Test func corpusReplays() {
        let files = CreditsFuzzCorpusTests.corpus("jwt")
        #expect(files.count >= 300)
        let lax = Self.verifier(strict: false), strict = Self.verifier(strict: true)
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: JWTVerifier.scratchBytes, alignment: 16)
        defer { scratch.deallocate() }
        var accepted = 0
        for f in files {
            let mode = Int(f.flags & 3)
            let v = f.flags & 0x10 != 0 && mode != 3 ? strict : lax
            var token = f.message
            if mode == 1 || mode == 2 {
                let parts = f.message.split(separator: 0, maxSplits: 2, omittingEmptySubsequences: false).map(Array.init)
                let input = Base64URL.encode(parts[0]) + "." + Base64URL.encode(parts.count > 1 ? parts[1] : [])
                let alg = ["HS256", "HS384", "HS512", "HS256"][Int((f.flags >> 2) & 3)]
                let sig = mode == 1 ? JWTMint.hmac(alg, secret: Self.secret, input) : (parts.count > 2 ? parts[2] : [])
                token = Array((input + "." + Base64URL.encode(sig)).utf8)
            }
            func once() -> JWTRefusal? {
                token.withUnsafeBytes { t in
                    if case .failure(let r) = v.check(t, now: 1_800_000_000, scratch: scratch) { return r }
                    return nil
                }
            }
            let first = once()
            #expect(once() == first, "\(f.name)")
            if first == nil { accepted += 1 }
            let shape = token.withUnsafeBytes { JWTVerifier.isJWT($0, scratch: scratch) }
            if !shape { #expect(first == .malformed || first == .badHeader || first == .tooLarge, "\(f.name): \(String(describing: first))") }
        }
        #expect(accepted >= 20)
    }
}
