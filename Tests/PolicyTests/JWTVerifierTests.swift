import Foundation
import Testing
@testable import Policy

/// The JWT verifier (Policy/JWT) with no process or socket: RFC 7515's vectors with the time
/// given, and every classic attack refused with its reason.
struct JWTVerifierTests {
    static let secret = "test-secret-of-thirty-two-bytes!!"
    static let now: Int64 = 1_800_000_000

    /// A policy of one `credentials.jwt` block (its fields as YAML, indented under it) with
    /// the given environment and files (`keys_file` paths resolve against /p/).
    static func verifier(_ fields: String, env: [String: String] = ["JWT_SECRET": secret],
                         files: [String: String] = [:]) throws -> JWTVerifier {
        let body = fields.split(separator: "\n", omittingEmptySubsequences: false).map { "    " + $0 }.joined(separator: "\n")
        let yaml = "version: 1\ncredentials:\n  jwt:\n" + body + "\n"
        let s = try PolicyLoader.load(yaml: yaml, file: "/p/policy.yaml",
                                      environment: .fixed(variables: env, files: files.mapValues { Array($0.utf8) }))
        return try #require(s.jwt)
    }

    static func loadErrors(_ fields: String, env: [String: String] = ["JWT_SECRET": secret], files: [String: String] = [:]) -> [String] {
        do {
            _ = try verifier(fields, env: env, files: files)
            return []
        } catch let e as PolicyLoadError {
            return e.errors.map(\.description)
        } catch {
            return ["\(error)"]
        }
    }

    static let hs = "algorithms: [HS256]\nsecret_env: JWT_SECRET"

    static func claims(_ extra: String = "", sub: String = "\"alice\"", exp: Int64 = now + 600) -> String {
        "{\"sub\":\(sub),\"exp\":\(exp)\(extra.isEmpty ? "" : "," + extra)}"
    }

    func refusal(_ v: JWTVerifier, _ token: String, now: Int64 = JWTVerifierTests.now) -> JWTRefusal? {
        if case .failure(let r) = v.verify(token, now: now) { return r }
        return nil
    }

    // MARK: RFC 7515 appendix A (the signature step, at a time before their exp of 2011)

    static let rfcPayloadTime: Int64 = 1_300_819_370   // exp is 1300819380

    @Test func rfc7515A1HS256() throws {
        let jwks = #"{"keys":[{"kty":"oct","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}]}"#
        let v = try Self.verifier("algorithms: [HS256]\nkeys_file: keys.json\nconsumer_claim: iss", files: ["/p/keys.json": jwks])
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
            + ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
            + ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        let c = try v.verify(token, now: Self.rfcPayloadTime).get()
        #expect(c.consumer == "joe" && c.expiresAt == 1_300_819_380 && c.algorithm == .hs256 && c.scopes.isEmpty)
        // The same token today: expired (its exp is in 2011).
        #expect(refusal(v, token, now: 1_300_819_380) == .expired)
        #expect(refusal(v, token) == .expired)
        // One character of the MAC changed.
        #expect(refusal(v, token.replacingOccurrences(of: "dBjftJeZ4", with: "dBjftJeZ5"), now: Self.rfcPayloadTime) == .badSignature)
    }

    static let rfcRSA = #"{"kty":"RSA","n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ","e":"AQAB"}"#
    static let rfcRSAToken = "eyJhbGciOiJSUzI1NiJ9"
        + ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
        + ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"

    @Test func rfc7515A2RS256() throws {
        let v = try Self.verifier("algorithms: [RS256]\nkeys_file: keys.json\nconsumer_claim: iss",
                                  files: ["/p/keys.json": "{\"keys\":[\(Self.rfcRSA)]}"])
        let c = try v.verify(Self.rfcRSAToken, now: Self.rfcPayloadTime).get()
        #expect(c.consumer == "joe" && c.algorithm == .rs256)
        #expect(refusal(v, Self.rfcRSAToken) == .expired)
        // Tampered: a signature byte, and the payload (exp pushed to 2030) with the old signature.
        var sig = Array(Self.rfcRSAToken.utf8)
        sig[sig.count - 5] = sig[sig.count - 5] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        #expect(refusal(v, String(decoding: sig, as: UTF8.self), now: Self.rfcPayloadTime) == .badSignature)
        let parts = Self.rfcRSAToken.split(separator: ".")
        let forged = parts[0] + "." + JWTMint.segment("{\"iss\":\"joe\",\"exp\":1900000000}") + "." + parts[2]
        #expect(refusal(v, String(forged)) == .badSignature)
    }

    static let rfcEC = #"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#

    @Test func rfc7515A3ES256() throws {
        let v = try Self.verifier("algorithms: [ES256]\nkeys_file: keys.json\nconsumer_claim: iss",
                                  files: ["/p/keys.json": Self.rfcEC])
        let token = "eyJhbGciOiJFUzI1NiJ9"
            + ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
            + ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
        let c = try v.verify(token, now: Self.rfcPayloadTime).get()
        #expect(c.consumer == "joe" && c.algorithm == .es256)
        #expect(refusal(v, token) == .expired)
        // The signature in DER (what OpenSSL would take directly) is not a JWS signature.
        let parts = token.split(separator: ".")
        let rs = try #require(Base64URL.decode(parts[2]))
        var der: [UInt8] = [0x30, 0x44, 0x02, 0x20] + rs[0..<32] + [0x02, 0x20] + rs[32..<64]
        #expect(refusal(v, parts[0] + "." + parts[1] + "." + Base64URL.encode(der), now: Self.rfcPayloadTime) == .badSignature)
        // R || S with S replaced by n − S (the other valid-looking half) does not verify either
        // (OpenSSL checks it like any other value); and all zeros never verifies.
        der = [UInt8](repeating: 0, count: 64)
        #expect(refusal(v, parts[0] + "." + parts[1] + "." + Base64URL.encode(der), now: Self.rfcPayloadTime) == .badSignature)
    }

    // MARK: minted tokens

    @Test func aValidHS256TokenGivesConsumerScopesAndRole() throws {
        let v = try Self.verifier(Self.hs + "\nrequired_claims: {type: access}")
        let t = JWTMint.hs(Self.claims("\"type\":\"access\",\"scope\":\"finance:read  chat \",\"role\":\"admin\",\"iat\":\(Self.now - 5)"),
                           secret: Self.secret)
        let c = try v.verify(t, now: Self.now).get()
        #expect(c.consumer == "alice")
        #expect(c.scopes == ["finance:read", "chat"])
        #expect(c.role == "admin" && c.isAdmin)
        #expect(c.issuedAt == Self.now - 5 && c.expiresAt == Self.now + 600 && c.keyID == nil)
    }

    @Test func hs384AndHS512() throws {
        let v = try Self.verifier("algorithms: [HS384, HS512]\nsecret_env: JWT_SECRET")
        for alg in ["HS384", "HS512"] {
            let t = JWTMint.hs(Self.claims(), secret: Self.secret, alg: alg)
            #expect(try v.verify(t, now: Self.now).get().consumer == "alice", "\(alg)")
        }
        // HS256 is not pinned here, even with the right secret.
        #expect(refusal(v, JWTMint.hs(Self.claims(), secret: Self.secret)) == .algorithmNotAllowed)
        // A 384-bit MAC under HS512's name.
        let mixed = JWTMint.hs("{\"alg\":\"HS512\"}", Self.claims(), secret: Array(Self.secret.utf8), alg: "HS384")
        #expect(refusal(v, mixed) == .badSignature)
    }

    @Test func secretEncodingBase64URL() throws {
        let raw: [UInt8] = (0..<48).map { UInt8(($0 * 37 + 11) & 0xFF) }
        let v = try Self.verifier("algorithms: [HS256]\nsecret_env: BIN\nsecret_encoding: base64url",
                                  env: ["BIN": Base64URL.encode(raw) + "\n"])
        let t = JWTMint.hs("{\"alg\":\"HS256\"}", Self.claims(), secret: raw)
        #expect(try v.verify(t, now: Self.now).get().consumer == "alice")
        #expect(Self.loadErrors("algorithms: [HS256]\nsecret_env: BIN\nsecret_encoding: base64url", env: ["BIN": "not base64!"])
            == ["/p/policy.yaml:5: credentials.jwt.secret_env: environment variable BIN is not base64url (secret_encoding: base64url: no padding, no spaces)"])
    }

    @Test func rs256AndES256FromPEM() throws {
        let rs = try Self.verifier("algorithms: [RS256]\nkeys_file: rsa.pem", files: ["/p/rsa.pem": JWTMint.rsaPublic])
        let rt = JWTMint.sign("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", Self.claims(), privateKeyPEM: JWTMint.rsaPrivate)
        #expect(try rs.verify(rt, now: Self.now).get().algorithm == .rs256)
        let es = try Self.verifier("algorithms: [ES256]\nkeys_file: ec.pem", files: ["/p/ec.pem": JWTMint.ecPublic])
        let et = JWTMint.sign("{\"alg\":\"ES256\"}", Self.claims(), privateKeyPEM: JWTMint.ecPrivate)
        #expect(try es.verify(et, now: Self.now).get().algorithm == .es256)
        // Another key's signature.
        let other = JWTMint.sign("{\"alg\":\"ES256\"}", Self.claims(), privateKeyPEM: JWTMint.ecOtherPrivate)
        #expect(refusal(es, other) == .badSignature)
        // An ES256 signature under RS256's name (and the reverse) is refused by the pin.
        #expect(refusal(rs, et) == .algorithmNotAllowed)
        #expect(refusal(es, rt) == .algorithmNotAllowed)
    }

    // MARK: the classic attacks

    @Test func algNoneIsRefusedWhateverItsSpelling() throws {
        let v = try Self.verifier(Self.hs)
        for alg in ["none", "None", "NONE", "nOnE"] {
            let unsigned = JWTMint.segment("{\"alg\":\"\(alg)\",\"typ\":\"JWT\"}") + "." + JWTMint.segment(Self.claims()) + "."
            // No signature segment at all: not a JWS.
            #expect(refusal(v, unsigned) == .malformed)
            // With something in it: the algorithm is refused before any key is looked at.
            #expect(refusal(v, unsigned + "AAAA") == .algorithmNotAllowed)
        }
        // A policy can never pin it.
        #expect(Self.loadErrors("algorithms: [none]\nsecret_env: JWT_SECRET") == [
            "/p/policy.yaml:4: credentials.jwt.algorithms[0]: 'none' is never accepted (a token must be signed)"])
    }

    @Test func rsToHSConfusionIsRefused() throws {
        let pem = Array(JWTMint.rsaPublic.utf8)
        // The public key's PEM bytes as an HMAC secret, under HS256.
        let forged = JWTMint.hs("{\"alg\":\"HS256\"}", Self.claims(), secret: pem)
        // Only RS256 pinned: refused by the pin.
        let rsOnly = try Self.verifier("algorithms: [RS256]\nkeys_file: rsa.pem", files: ["/p/rsa.pem": JWTMint.rsaPublic])
        #expect(refusal(rsOnly, forged) == .algorithmNotAllowed)
        // Both pinned: HS256 is checked with the secret only, never with the RSA key.
        let both = try Self.verifier("algorithms: [RS256, HS256]\nsecret_env: JWT_SECRET\nkeys_file: rsa.pem",
                                     files: ["/p/rsa.pem": JWTMint.rsaPublic])
        #expect(refusal(both, forged) == .badSignature)
        #expect(try both.verify(JWTMint.hs(Self.claims(), secret: Self.secret), now: Self.now).get().consumer == "alice")
        // HS256 pinned without a secret: the policy does not load (an RSA key is no HMAC key).
        #expect(Self.loadErrors("algorithms: [RS256, HS256]\nkeys_file: rsa.pem", files: ["/p/rsa.pem": JWTMint.rsaPublic]) == [
            "/p/policy.yaml:4: credentials.jwt.algorithms: HS256 is pinned but no key verifies it (it needs secret_env (or an oct key in keys_file))"])
        // A JWK whose alg says HS384 is never used for another algorithm.
        let jwk = #"{"keys":[{"kty":"oct","kid":"k384","k":"c2VjcmV0","alg":"HS384"}]}"#
        let v = try Self.verifier("algorithms: [HS256, HS384]\nsecret_env: JWT_SECRET\nkeys_file: k.json", files: ["/p/k.json": jwk])
        #expect(refusal(v, JWTMint.hs("{\"alg\":\"HS256\"}", Self.claims(), secret: Array("secret".utf8))) == .badSignature)
        #expect(refusal(v, JWTMint.hs("{\"alg\":\"HS256\",\"kid\":\"k384\"}", Self.claims(), secret: Array("secret".utf8))) == .badSignature)
        #expect(try v.verify(JWTMint.hs("{\"alg\":\"HS384\",\"kid\":\"k384\"}", Self.claims(), secret: Array("secret".utf8), alg: "HS384"),
                             now: Self.now).get().consumer == "alice")
    }

    static let twoKids = #"{"keys":[{"kty":"oct","kid":"k1","k":"b25lLXNlY3JldA"},{"kty":"oct","kid":"k2","k":"dHdvLXNlY3JldA"}]}"#

    @Test func kidSelectsTheKeyAndNothingElse() throws {
        let v = try Self.verifier("algorithms: [HS256]\nkeys_file: k.json", files: ["/p/k.json": Self.twoKids])
        #expect(try v.verify(JWTMint.hs(Self.claims(), secret: "one-secret", kid: "k1"), now: Self.now).get().keyID == "k1")
        #expect(try v.verify(JWTMint.hs(Self.claims(), secret: "two-secret", kid: "k2"), now: Self.now).get().keyID == "k2")
        // The right secret under the other kid.
        #expect(refusal(v, JWTMint.hs(Self.claims(), secret: "one-secret", kid: "k2")) == .badSignature)
        // Unknown kid; kid injection (paths, SQL, URLs: a kid is only ever compared).
        for kid in ["k3", "../../../../dev/null", "' OR '1'='1", "http://attacker.example/key", "k1\\u0000", "", "K1"] {
            #expect(refusal(v, JWTMint.hs(Self.claims(), secret: "one-secret", kid: kid)) == .unknownKey, "kid \(kid)")
        }
        // No kid, two keys: ambiguous.
        #expect(refusal(v, JWTMint.hs(Self.claims(), secret: "one-secret")) == .ambiguousKey)
        // A kid that is not a string.
        #expect(refusal(v, JWTMint.hs("{\"alg\":\"HS256\",\"kid\":1}", Self.claims(), secret: Array("one-secret".utf8))) == .badHeader)
    }

    @Test func aKidIsNotNeededWithOneKeyAndIgnoredForAKeyWithoutOne() throws {
        let v = try Self.verifier(Self.hs)
        #expect(try v.verify(JWTMint.hs(Self.claims(), secret: Self.secret, kid: "anything"), now: Self.now).get().consumer == "alice")
        #expect(try v.verify(JWTMint.hs(Self.claims(), secret: Self.secret), now: Self.now).get().consumer == "alice")
    }

    @Test func headerKeysAreNeverTrusted() throws {
        let v = try Self.verifier("algorithms: [ES256]\nkeys_file: ec.pem", files: ["/p/ec.pem": JWTMint.ecPublic])
        // The attacker signs with their own key and puts it (or where to fetch it) in the header.
        let embedded = #"{"alg":"ES256","jwk":{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},"jku":"http://127.0.0.1:1/jwks","x5u":"http://127.0.0.1:1/x5u"}"#
        let t = JWTMint.sign(embedded, Self.claims(), privateKeyPEM: JWTMint.ecOtherPrivate)
        #expect(refusal(v, t) == .badSignature)
        // The same header on a token the real key signed is fine: those members are ignored.
        let good = JWTMint.sign(embedded, Self.claims(), privateKeyPEM: JWTMint.ecPrivate)
        #expect(try v.verify(good, now: Self.now).get().consumer == "alice")
    }

    @Test func critIsRefused() throws {
        let v = try Self.verifier(Self.hs)
        let t = JWTMint.hs("{\"alg\":\"HS256\",\"crit\":[\"b64\"],\"b64\":false}", Self.claims(), secret: Array(Self.secret.utf8))
        #expect(refusal(v, t) == .criticalHeader)
    }

    @Test func timeClaims() throws {
        let v = try Self.verifier(Self.hs + "\nleeway: 30s")
        func t(_ c: String) -> String { JWTMint.hs(c, secret: Self.secret) }
        let n = Self.now
        // exp is required.
        #expect(refusal(v, t("{\"sub\":\"alice\"}")) == .missingExpiry)
        #expect(refusal(v, t("{\"sub\":\"alice\",\"exp\":\"\(n + 60)\"}")) == .badClaims)
        // exp with leeway: valid until exp + 30 (exclusive).
        #expect(refusal(v, t(Self.claims(exp: n - 29))) == nil)
        #expect(refusal(v, t(Self.claims(exp: n - 30))) == .expired)
        #expect(refusal(v, t(Self.claims(exp: n - 3600))) == .expired)
        // Fractions: exp 1.5 s past now − 30 rounds up.
        #expect(refusal(v, t("{\"sub\":\"alice\",\"exp\":\(n - 30).5}")) == nil)
        #expect(refusal(v, t("{\"sub\":\"alice\",\"exp\":1.8e9}"), now: 1_800_000_029) == nil)
        #expect(refusal(v, t("{\"sub\":\"alice\",\"exp\":1.8e9}"), now: 1_800_000_030) == .expired)
        // nbf: not before nbf − 30.
        #expect(refusal(v, t(Self.claims("\"nbf\":\(n + 30)"))) == nil)
        #expect(refusal(v, t(Self.claims("\"nbf\":\(n + 31)"))) == .notYetValid)
        #expect(refusal(v, t(Self.claims("\"nbf\":\(n + 86_400)"))) == .notYetValid)
        // iat in the future.
        #expect(refusal(v, t(Self.claims("\"iat\":\(n + 30)"))) == nil)
        #expect(refusal(v, t(Self.claims("\"iat\":\(n + 31)"))) == .issuedInFuture)
        // An expired token that is also wrong otherwise is INVALID_TOKEN, not EXPIRED.
        let both = try Self.verifier(Self.hs + "\nrequired_claims: {type: access}")
        #expect(refusal(both, t(Self.claims("\"type\":\"refresh\"", exp: n - 3600))) == .claimMismatch)
        #expect(JWTRefusal.expired.code == .expired && JWTRefusal.claimMismatch.code == .invalidToken)
        // Leeway 0 is valid and exact.
        let exact = try Self.verifier(Self.hs + "\nleeway: 0s")
        #expect(refusal(exact, t(Self.claims(exp: n + 1))) == nil)
        #expect(refusal(exact, t(Self.claims(exp: n))) == .expired)
    }

    @Test func refreshTokenIsNeverAnAccessToken() throws {
        let v = try Self.verifier(Self.hs + "\nrequired_claims: {type: access, v: 2, admin: false}")
        func t(_ extra: String) -> String { JWTMint.hs(Self.claims(extra), secret: Self.secret) }
        #expect(refusal(v, t("\"type\":\"access\",\"v\":2,\"admin\":false")) == nil)
        #expect(refusal(v, t("\"type\":\"access\",\"v\":2.0,\"admin\":false")) == nil)
        #expect(refusal(v, t("\"type\":\"refresh\",\"v\":2,\"admin\":false")) == .claimMismatch)
        #expect(refusal(v, t("\"v\":2,\"admin\":false")) == .claimMismatch)
        #expect(refusal(v, t("\"type\":\"access\",\"v\":\"2\",\"admin\":false")) == .claimMismatch)
        #expect(refusal(v, t("\"type\":\"access\",\"v\":2,\"admin\":\"false\"")) == .claimMismatch)
        #expect(refusal(v, t("\"type\":[\"access\"],\"v\":2,\"admin\":false")) == .claimMismatch)
        // Twice: refused whatever the second says.
        #expect(refusal(v, t("\"type\":\"access\",\"v\":2,\"admin\":false,\"type\":\"refresh\"")) == .badClaims)
        // A quoted value stays a string.
        let q = try Self.verifier(Self.hs + "\nrequired_claims: {v: \"2\"}")
        #expect(refusal(q, t("\"v\":\"2\"")) == nil)
        #expect(refusal(q, t("\"v\":2")) == .claimMismatch)
    }

    @Test func issuerAndAudience() throws {
        let v = try Self.verifier(Self.hs + "\nissuer: https://login.example\naudience: [tollgate, finance]")
        func t(_ extra: String) -> String { JWTMint.hs(Self.claims(extra), secret: Self.secret) }
        #expect(refusal(v, t("\"iss\":\"https://login.example\",\"aud\":\"finance\"")) == nil)
        #expect(refusal(v, t("\"iss\":\"https://login.example\",\"aud\":[\"other\",\"tollgate\"]")) == nil)
        #expect(refusal(v, t("\"iss\":\"https://evil.example\",\"aud\":\"finance\"")) == .wrongIssuer)
        #expect(refusal(v, t("\"aud\":\"finance\"")) == .wrongIssuer)
        #expect(refusal(v, t("\"iss\":\"https://login.example\",\"aud\":\"other\"")) == .wrongAudience)
        #expect(refusal(v, t("\"iss\":\"https://login.example\",\"aud\":[]")) == .wrongAudience)
        #expect(refusal(v, t("\"iss\":\"https://login.example\"")) == .wrongAudience)
        #expect(refusal(v, t("\"iss\":\"https://login.example\",\"aud\":[\"fin\\u0000ance\"]")) == .wrongAudience)
        // Unchecked when not configured.
        let open = try Self.verifier(Self.hs)
        #expect(refusal(open, t("\"iss\":\"anyone\",\"aud\":42")) == nil)
    }

    @Test func consumerAndScopesClaims() throws {
        let v = try Self.verifier(Self.hs + "\nconsumer_claim: user_id\nscopes_claim: permissions")
        func t(_ c: String) -> String { JWTMint.hs("{\"exp\":\(Self.now + 60),\(c)}", secret: Self.secret) }
        #expect(try v.verify(t("\"user_id\":42"), now: Self.now).get().consumer == "42")
        #expect(try v.verify(t("\"user_id\":\"\\u00e9l\\u00e8ve\\ud83d\\ude00\""), now: Self.now).get().consumer == "élève😀")
        #expect(refusal(v, t("\"sub\":\"alice\"")) == .badConsumer)
        for bad in ["\"\"", "-1", "4.2", "1e3", "true", "null", "[\"a\"]", "{}", "\"a\\nb\"", "\"" + String(repeating: "x", count: 257) + "\""] {
            #expect(refusal(v, t("\"user_id\":\(bad)")) == .badConsumer, "\(bad)")
        }
        let ok = try v.verify(t("\"user_id\":\"u\",\"permissions\":[\"finance:read\",\"chat\"]"), now: Self.now).get()
        #expect(ok.scopes == ["finance:read", "chat"])
        #expect(try v.verify(t("\"user_id\":\"u\",\"permissions\":\" a   b \""), now: Self.now).get().scopes == ["a", "b"])
        #expect(try v.verify(t("\"user_id\":\"u\",\"permissions\":[]"), now: Self.now).get().scopes == [])
        #expect(try v.verify(t("\"user_id\":\"u\",\"permissions\":\"\""), now: Self.now).get().scopes == [])
        for bad in ["[\"a b\"]", "[\"\"]", "[\"a\",\"\"]", "[1]", "42", "{\"a\":1}", "\"a\\\"b\"", "\"caf\\u00e9\"", "[\"a\\u0000b\"]"] {
            #expect(refusal(v, t("\"user_id\":\"u\",\"permissions\":\(bad)")) == .badScopes, "\(bad)")
        }
    }

    @Test func malformedAndHugeTokensAreRefusedWithoutTrapping() throws {
        let v = try Self.verifier(Self.hs)
        let good = JWTMint.hs(Self.claims(), secret: Self.secret)
        let parts = good.split(separator: ".").map(String.init)
        #expect(refusal(v, good) == nil)
        for bad in ["", ".", "..", "a.b", "a.b.c.d", parts[0] + "." + parts[1], parts[0] + ".." + parts[2],
                    "." + parts[1] + "." + parts[2], good + "=", parts[0] + "=." + parts[1] + "." + parts[2],
                    parts[0] + ".+" + parts[1].dropFirst() + "." + parts[2], good + " ", " " + good, good + ".", "\u{00e9}" + good] {
            #expect(refusal(v, bad) == .malformed, "\(bad)")
        }
        // Non-canonical base64url: the signature's last character with unused bits set.
        var sig = Array(parts[2].utf8)
        let last = sig[sig.count - 1]
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        let value = alphabet.firstIndex(of: last)!
        sig[sig.count - 1] = alphabet[value | 1]
        if value & 1 == 0 {
            #expect(refusal(v, parts[0] + "." + parts[1] + "." + String(decoding: sig, as: UTF8.self)) == .malformed)
        }
        // Over 8 KiB: refused unparsed.
        let huge = JWTMint.hs(Self.claims("\"pad\":\"" + String(repeating: "x", count: 7000) + "\""), secret: Self.secret)
        #expect(huge.utf8.count > JWTSettings.maxTokenBytes)
        #expect(refusal(v, huge) == .tooLarge)
        // Just under it works.
        let big = JWTMint.hs(Self.claims("\"pad\":\"" + String(repeating: "x", count: 5500) + "\""), secret: Self.secret)
        #expect(big.utf8.count <= JWTSettings.maxTokenBytes && refusal(v, big) == nil)
        // Headers that are not objects with a string alg.
        for h in ["[]", "\"HS256\"", "{}", "{\"alg\":null}", "{\"alg\":\"HS256\",\"alg\":\"HS256\"}", "{\"alg\":\"HS256\"", "{\"alg\":\"HS256\"} x", "null", ""] {
            let token = JWTMint.segment(h) + "." + parts[1] + "." + parts[2]
            #expect(refusal(v, token) == .badHeader || (h.isEmpty && refusal(v, token) == .malformed), "header \(h)")
        }
        // Claim sets that are not one JSON object.
        for c in ["[]", "{\"sub\":\"alice\",\"exp\":1}x", "{\"sub\":\"alice\" \"exp\":1}", "{\"sub\":\"a\\ud800\",\"exp\":1}",
                  "{\"sub\":\"a\u{01}\",\"exp\":1}", "{\"exp\":01}", "{\"exp\":1.}", "{\"exp\":-}", "{\"exp\":1e}",
                  "{\"x\":" + String(repeating: "[", count: 40) + String(repeating: "]", count: 40) + ",\"sub\":\"a\",\"exp\":9999999999}",
                  "{\"x\":tru,\"sub\":\"a\",\"exp\":9999999999}", "{\"sub\":\"alice\",\"exp\":9999999999,}"] {
            #expect(refusal(v, JWTMint.hs(c, secret: Self.secret)) == .badClaims, "claims \(c)")
        }
        // Deep but within bounds, unknown claims of every type: fine.
        let deep = "{\"x\":" + String(repeating: "[", count: 30) + String(repeating: "]", count: 30)
            + ",\"y\":{\"z\":[1,2.5e-3,true,false,null,\"s\\t\"]},\"sub\":\"a\",\"exp\":9999999999}"
        #expect(refusal(v, JWTMint.hs(deep, secret: Self.secret)) == nil)
        // Huge numbers saturate rather than trap.
        #expect(refusal(v, JWTMint.hs("{\"sub\":\"a\",\"exp\":1e999999999}", secret: Self.secret)) == nil)
        #expect(refusal(v, JWTMint.hs("{\"sub\":\"a\",\"exp\":123456789012345678901234567890}", secret: Self.secret)) == nil)
        #expect(refusal(v, JWTMint.hs("{\"sub\":\"a\",\"exp\":-123456789012345678901234567890}", secret: Self.secret)) == .expired)
    }

    @Test func isJWTShape() throws {
        func check(_ s: String) -> Bool {
            var t = s
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 8)
            defer { scratch.deallocate() }
            return t.withUTF8 { JWTVerifier.isJWT(UnsafeRawBufferPointer($0), scratch: scratch) }
        }
        #expect(check(JWTMint.hs(Self.claims(), secret: Self.secret)))
        #expect(check(JWTMint.segment("{\"alg\":\"whatever\"}") + ".e30.AAAA"))
        #expect(!check("tg_" + String(repeating: "a", count: 38)))
        #expect(!check("alice-plain-key-0001"))
        #expect(!check("a.b.c"))
        #expect(!check(JWTMint.segment("{\"typ\":\"JWT\"}") + ".e30.AAAA"))   // no alg
        #expect(!check(JWTMint.segment("[1]") + ".e30.AAAA"))
        #expect(!check("key.with.dots"))
        // A header with crit is still a JOSE header (refused as a token, not taken for a key).
        #expect(check(JWTMint.segment("{\"alg\":\"HS256\",\"crit\":[\"x\"]}") + ".e30.AAAA"))
    }

    // MARK: the policy block

    @Test func jwtBlockErrorsNameTheirLines() {
        #expect(Self.loadErrors("algorithms: [HS256]\nsecret_env: NOPE", env: [:]) == [
            "/p/policy.yaml:5: credentials.jwt.secret_env: environment variable NOPE is not set"])
        #expect(Self.loadErrors("algorithms: [HS256]\nsecret_env: E", env: ["E": ""]) == [
            "/p/policy.yaml:5: credentials.jwt.secret_env: environment variable E is empty"])
        #expect(Self.loadErrors("algorithms: [RS256]\nkeys_file: missing.json") == [
            "/p/policy.yaml:5: credentials.jwt.keys_file: cannot read keys file '/p/missing.json'"])
        #expect(Self.loadErrors("algorithms: [RS256, PS256, RS384]\nkeys_file: k.pem", files: ["/p/k.pem": JWTMint.rsaPublic]) == [])
        #expect(Self.loadErrors("algorithms: [RS256, PS257, ES521, ps256]\nkeys_file: k.pem", files: ["/p/k.pem": JWTMint.rsaPublic]) == [
            "/p/policy.yaml:4: credentials.jwt.algorithms[1]: unsupported algorithm 'PS257' (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512 or EdDSA)",
            "/p/policy.yaml:4: credentials.jwt.algorithms[2]: unsupported algorithm 'ES521' (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512 or EdDSA)",
            "/p/policy.yaml:4: credentials.jwt.algorithms[3]: unsupported algorithm 'ps256' (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512 or EdDSA)"])
        #expect(Self.loadErrors("algorithms: [ES256]\nkeys_file: k.pem", files: ["/p/k.pem": JWTMint.rsaPublic]) == [
            "/p/policy.yaml:4: credentials.jwt.algorithms: ES256 is pinned but no key verifies it (it needs an EC P-256 public key in keys_file)"])
        #expect(Self.loadErrors("algorithms: [RS256]\nkeys_file: k.pem", files: ["/p/k.pem": JWTMint.rsa1024Public]) == [
            "/p/policy.yaml:5: credentials.jwt.keys_file: keys file '/p/k.pem': RSA key of 1024 bits (at least 2048)"])
        #expect(Self.loadErrors("algorithms: [RS256]\nkeys_file: k.pem", files: ["/p/k.pem": JWTMint.rsaPrivate]) == [
            "/p/policy.yaml:5: credentials.jwt.keys_file: keys file '/p/k.pem': holds a private key (give the public key only)"])
        #expect(Self.loadErrors("algorithms: [RS256]\nsecret_env: JWT_SECRET\nkeys_file: k.pem", files: ["/p/k.pem": JWTMint.rsaPublic]) == [
            "/p/policy.yaml:5: credentials.jwt.secret_env: a secret verifies HS256, HS384 or HS512 only, and none is pinned in algorithms"])
        #expect(Self.loadErrors("algorithms: [HS256]") == [
            "/p/policy.yaml:3: credentials.jwt: needs secret_env (HS*) or keys_file (RS*, PS*, ES256, ES384, EdDSA; JWKS or PEM)"])
        #expect(Self.loadErrors("secret_env: JWT_SECRET") == ["/p/policy.yaml:3: credentials.jwt.algorithms: missing required field"])
        #expect(Self.loadErrors(Self.hs + "\nleeway: 10m") == [
            "/p/policy.yaml:6: credentials.jwt.leeway: at most 5m (clock skew, not a grace period)"])
        #expect(Self.loadErrors(Self.hs + "\nconsumer_claim: sub\nscopes_claim: sub") == [
            "/p/policy.yaml:3: credentials.jwt.scopes_claim: must differ from consumer_claim"])
        #expect(Self.loadErrors(Self.hs + "\nsecret_encoding: hex") == [
            "/p/policy.yaml:6: credentials.jwt.secret_encoding: invalid value 'hex' (expected raw or base64url)"])
        #expect(Self.loadErrors(Self.hs + "\nplan: gold") == ["/p/policy.yaml:6: credentials.jwt.plan: unknown plan 'gold'"])
        #expect(Self.loadErrors(Self.hs + "\nrequired_claims: {type: [a]}") == [
            "/p/policy.yaml:6: credentials.jwt.required_claims.type: expected a string, an integer, true or false, found a list"])
        #expect(Self.loadErrors(Self.hs + "\nissuer: []") == [
            "/p/policy.yaml:6: credentials.jwt.issuer: must not be empty (omit it, or null, not to check)"])
        #expect(Self.loadErrors(Self.hs + "\njwks_url: http://x") == ["/p/policy.yaml:6: credentials.jwt.jwks_url: unknown field"])
    }

    @Test func jwksErrors() {
        func err(_ jwks: String) -> [String] {
            Self.loadErrors("algorithms: [RS256, ES256, HS256]\nkeys_file: k.json", files: ["/p/k.json": jwks])
        }
        let at = "/p/policy.yaml:5: credentials.jwt.keys_file: keys file '/p/k.json': "
        #expect(err("{") == [at + "not valid JSON"])
        #expect(err(#"{"keys":[]}"#) == [at + "\"keys\" is empty"])
        #expect(err(#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AA"}]}"#) == [at + "keys[0]: x must be 32 bytes for Ed25519"])
        #expect(err(#"{"keys":[{"kty":"OKP","crv":"Ed448","x":"AA"}]}"#) == [at + "keys[0]: curve 'Ed448' is not supported (Ed25519)"])
        #expect(err(#"{"keys":[{"kty":"OKP","crv":"X25519","x":"AA"}]}"#) == [at + "keys[0]: curve 'X25519' is not supported (Ed25519)"])
        #expect(err(#"{"keys":[{"kty":"okp","crv":"Ed25519","x":"AA"}]}"#) == [at + "keys[0]: kty 'okp' is not supported (RSA, EC, OKP or oct)"])
        #expect(err(#"{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}]}"#) == [at + "keys[0]: x and y must be 48 bytes each for P-384"])
        #expect(err(#"{"keys":[{"kty":"EC","crv":"P-521","x":"AA","y":"AA"}]}"#)
            == [at + "keys[0]: x and y must be 66 bytes each for P-521"])
        #expect(err(#"{"keys":[{"kty":"EC","crv":"secp256k1","x":"AA","y":"AA"}]}"#) == [at + "keys[0]: curve 'secp256k1' is not supported (P-256, P-384 or P-521)"])
        #expect(err(#"{"keys":[{"kty":"EC","crv":"P-256","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#)
            == [at + "keys[0]: the point is not on P-256"])
        #expect(err("{\"keys\":[\(Self.rfcRSA.dropLast()),\"use\":\"enc\"}]}") == [at + "keys[0]: use 'enc' (only 'sig' keys verify tokens)"])
        #expect(err("{\"keys\":[\(Self.rfcRSA.dropLast()),\"alg\":\"ES256\"}]}") == [at + "keys[0]: alg 'ES256' does not fit kty 'RSA'"])
        #expect(err("{\"keys\":[\(Self.rfcRSA.dropLast()),\"d\":\"AQAB\"}]}") == [at + "keys[0]: holds a private key (list public keys only)"])
        #expect(err("{\"keys\":[\(Self.rfcRSA.dropLast()),\"kid\":\"a\"},\(Self.rfcEC.dropLast()),\"kid\":\"a\"}]}")
            == [at + "keys[1]: kid 'a' already used by keys[0]"])
        #expect(err(#"{"keys":[{"kty":"oct","k":"not base64!"}]}"#) == [at + "keys[0]: k is not base64url"])
        // A good mixed set loads: every pinned algorithm has a key.
        #expect(err("{\"keys\":[\(Self.rfcRSA),\(Self.rfcEC),{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}") == [])
    }

    // MARK: RS384/RS512, PS256/384/512, ES384, EdDSA

    /// A token's signature with one byte changed (the first: every bit of it counts for RSA,
    /// ECDSA and Ed25519 alike).
    static func flipped(_ token: String) -> String {
        let parts = token.split(separator: ".")
        var sig = Base64URL.decode(parts[2])!
        sig[0] ^= 0x01
        return parts[0] + "." + parts[1] + "." + Base64URL.encode(sig)
    }

    static let rsaFamily = ["RS384", "RS512", "PS256", "PS384", "PS512"]

    @Test func rsaFamilyVerifiesFromPEMAndJWK() throws {
        let pem = try Self.verifier("algorithms: [RS384, RS512, PS256, PS384, PS512]\nkeys_file: rsa.pem",
                                    files: ["/p/rsa.pem": JWTMint.rsaPublic])
        // Another RSA key (RFC 7515's, as a JWK): the same tokens do not verify with it.
        let other = try Self.verifier("algorithms: [RS384, RS512, PS256, PS384, PS512]\nkeys_file: k.json",
                                      files: ["/p/k.json": "{\"keys\":[\(Self.rfcRSA)]}"])
        for alg in Self.rsaFamily {
            let t = JWTMint.sign("{\"alg\":\"\(alg)\",\"typ\":\"JWT\"}", Self.claims(), privateKeyPEM: JWTMint.rsaPrivate)
            let c = try pem.verify(t, now: Self.now).get()
            #expect(c.algorithm.rawValue == alg && c.consumer == "alice", "\(alg)")
            #expect(refusal(pem, Self.flipped(t)) == .badSignature, "\(alg) flipped")
            #expect(refusal(other, t) == .badSignature, "\(alg) other key")
            // A signature one byte short (the modulus' length is exact).
            let parts = t.split(separator: ".")
            let short = parts[0] + "." + parts[1] + "." + Base64URL.encode(Array(Base64URL.decode(parts[2])!.dropLast()))
            #expect(refusal(pem, short) == .badSignature, "\(alg) short")
        }
        // RS256 is not pinned here.
        #expect(refusal(pem, JWTMint.sign("{\"alg\":\"RS256\"}", Self.claims(), privateKeyPEM: JWTMint.rsaPrivate)) == .algorithmNotAllowed)
        // The same key as a JWK (RFC 7515's own with its alg PS384): only PS384 uses it.
        let n = try JWTKeyFile.pem(Array(JWTMint.rsaPublic.utf8))
        #expect(n.type == .rsa && n.verifies(.ps512) && n.verifies(.rs384) && !n.verifies(.es256) && !n.verifies(.hs256))
        let jwk = "{\"keys\":[\(Self.rfcRSA.dropLast()),\"alg\":\"PS384\",\"kid\":\"r\"}]}"
        let keys = try JWTKeyFile.read(Array(jwk.utf8))
        #expect(keys.count == 1 && keys[0].algorithm == .ps384 && keys[0].verifies(.ps384) && !keys[0].verifies(.ps256) && !keys[0].verifies(.rs384))
    }

    @Test func pssAndPKCS1AreNeverTakenForEachOther() throws {
        let v = try Self.verifier("algorithms: [RS256, RS384, PS256, PS384, PS512]\nkeys_file: rsa.pem",
                                  files: ["/p/rsa.pem": JWTMint.rsaPublic])
        // An RS256 (PKCS #1 v1.5) signature under PS256's name, and the reverse.
        let rsAsPS = JWTMint.sign("{\"alg\":\"PS256\"}", Self.claims(), privateKeyPEM: JWTMint.rsaPrivate, alg: "RS256")
        #expect(refusal(v, rsAsPS) == .badSignature)
        let psAsRS = JWTMint.sign("{\"alg\":\"RS256\"}", Self.claims(), privateKeyPEM: JWTMint.rsaPrivate, alg: "PS256")
        #expect(refusal(v, psAsRS) == .badSignature)
        // Another hash: PS384's signature under PS256, RS384's under RS256.
        #expect(refusal(v, JWTMint.sign("{\"alg\":\"PS256\"}", Self.claims(), privateKeyPEM: JWTMint.rsaPrivate, alg: "PS384")) == .badSignature)
        #expect(refusal(v, JWTMint.sign("{\"alg\":\"RS256\"}", Self.claims(), privateKeyPEM: JWTMint.rsaPrivate, alg: "RS384")) == .badSignature)
        // PSS with a salt of another length than the hash's (RFC 7518 §3.5: equal): refused;
        // the hash's length verifies.
        for salt: Int32 in [0, 20, 64, 190] {
            let t = JWTMint.sign("{\"alg\":\"PS256\"}", Self.claims(), privateKeyPEM: JWTMint.rsaPrivate, pssSalt: salt)
            #expect(refusal(v, t) == .badSignature, "salt \(salt)")
        }
        #expect(refusal(v, JWTMint.sign("{\"alg\":\"PS256\"}", Self.claims(), privateKeyPEM: JWTMint.rsaPrivate, pssSalt: 32)) == nil)
        #expect(refusal(v, JWTMint.sign("{\"alg\":\"PS512\"}", Self.claims(), privateKeyPEM: JWTMint.rsaPrivate, pssSalt: 32)) == .badSignature)
        // PSS is randomised: two signatures of the same input differ, both verify.
        let a = JWTMint.sign("{\"alg\":\"PS384\"}", Self.claims(), privateKeyPEM: JWTMint.rsaPrivate)
        let b = JWTMint.sign("{\"alg\":\"PS384\"}", Self.claims(), privateKeyPEM: JWTMint.rsaPrivate)
        #expect(a != b && refusal(v, a) == nil && refusal(v, b) == nil)
        // Under 2048 bits: refused at load, whatever the algorithm.
        #expect(Self.loadErrors("algorithms: [PS256]\nkeys_file: k.pem", files: ["/p/k.pem": JWTMint.rsa1024Public]) == [
            "/p/policy.yaml:5: credentials.jwt.keys_file: keys file '/p/k.pem': RSA key of 1024 bits (at least 2048)"])
    }

    @Test func es384FromPEMAndJWK() throws {
        for (name, file) in [("ec.pem", JWTMint.p384Public), ("ec.json", "{\"keys\":[\(JWTMint.p384JWK)]}")] {
            let v = try Self.verifier("algorithms: [ES384]\nkeys_file: \(name)", files: ["/p/\(name)": file])
            let t = JWTMint.sign("{\"alg\":\"ES384\"}", Self.claims(), privateKeyPEM: JWTMint.p384Private)
            #expect(Base64URL.decode(t.split(separator: ".")[2])?.count == 96)
            #expect(try v.verify(t, now: Self.now).get().algorithm == .es384, "\(name)")
            #expect(refusal(v, Self.flipped(t)) == .badSignature, "\(name)")
            #expect(refusal(v, JWTMint.sign("{\"alg\":\"ES384\"}", Self.claims(), privateKeyPEM: JWTMint.p384OtherPrivate)) == .badSignature)
            // A P-256 signature (64 bytes) under ES384's name, and ES384's DER form.
            #expect(refusal(v, JWTMint.sign("{\"alg\":\"ES384\"}", Self.claims(), privateKeyPEM: JWTMint.ecPrivate, alg: "ES256")) == .badSignature)
            // SHA-256 with the P-384 key (R || S of 96 bytes) is not ES384.
            #expect(refusal(v, JWTMint.sign("{\"alg\":\"ES384\"}", Self.claims(), privateKeyPEM: JWTMint.p384Private, alg: "ES256")) == .badSignature)
            // ES256 is not pinned.
            #expect(refusal(v, JWTMint.sign("{\"alg\":\"ES256\"}", Self.claims(), privateKeyPEM: JWTMint.ecPrivate)) == .algorithmNotAllowed)
        }
    }

    /// ES512: ECDSA P-521 with SHA-512 (its DER signature takes the long-form length).
    @Test func es512FromPEMAndJWK() throws {
        for (name, file) in [("ec.pem", JWTMint.p521SignPublic), ("ec.json", "{\"keys\":[\(JWTMint.p521JWK)]}")] {
            let v = try Self.verifier("algorithms: [ES512]\nkeys_file: \(name)", files: ["/p/\(name)": file])
            for _ in 0..<8 {   // several signatures: R and S of every length the DER must carry
                let t = JWTMint.sign("{\"alg\":\"ES512\"}", Self.claims(), privateKeyPEM: JWTMint.p521SignPrivate, alg: "ES512")
                #expect(Base64URL.decode(t.split(separator: ".")[2])?.count == 132)
                #expect(try v.verify(t, now: Self.now).get().algorithm == .es512, "\(name)")
                #expect(refusal(v, Self.flipped(t)) == .badSignature, "\(name)")
            }
            #expect(refusal(v, JWTMint.sign("{\"alg\":\"ES512\"}", Self.claims(), privateKeyPEM: JWTMint.p521OtherPrivate, alg: "ES512")) == .badSignature)
            // SHA-256 with the P-521 key is not ES512; a P-384 signature under its name neither.
            #expect(refusal(v, JWTMint.sign("{\"alg\":\"ES512\"}", Self.claims(), privateKeyPEM: JWTMint.p521SignPrivate, alg: "ES256")) == .badSignature)
            #expect(refusal(v, JWTMint.sign("{\"alg\":\"ES512\"}", Self.claims(), privateKeyPEM: JWTMint.p384Private, alg: "ES384")) == .badSignature)
            #expect(refusal(v, JWTMint.sign("{\"alg\":\"ES384\"}", Self.claims(), privateKeyPEM: JWTMint.p384Private)) == .algorithmNotAllowed)
        }
        let k = try JWTKeyFile.pem(Array(JWTMint.p521SignPublic.utf8))
        #expect(k.verifies(.es512) && !k.verifies(.es384) && !k.verifies(.es256))
        #expect(JWTAlgorithm.es512.signatureBytes == 132)
    }

    @Test func eachCurveVerifiesItsOwnAlgorithmOnly() throws {
        // A P-256 and a P-384 key without kids: each algorithm has one key, none is ambiguous.
        let jwks = "{\"keys\":[\(Self.rfcEC),\(JWTMint.p384JWK)]}"
        let v = try Self.verifier("algorithms: [ES256, ES384]\nkeys_file: k.json", files: ["/p/k.json": jwks])
        #expect(try v.verify(JWTMint.sign("{\"alg\":\"ES384\"}", Self.claims(), privateKeyPEM: JWTMint.p384Private), now: Self.now).get().algorithm == .es384)
        #expect(refusal(v, JWTMint.sign("{\"alg\":\"ES256\"}", Self.claims(), privateKeyPEM: JWTMint.ecOtherPrivate)) == .badSignature)
        // ES256 pinned with a P-384 key only (and ES384 with a P-256 one): the policy does not load.
        #expect(Self.loadErrors("algorithms: [ES256]\nkeys_file: k.pem", files: ["/p/k.pem": JWTMint.p384Public]) == [
            "/p/policy.yaml:4: credentials.jwt.algorithms: ES256 is pinned but no key verifies it (it needs an EC P-256 public key in keys_file)"])
        #expect(Self.loadErrors("algorithms: [ES384]\nkeys_file: k.pem", files: ["/p/k.pem": JWTMint.ecPublic]) == [
            "/p/policy.yaml:4: credentials.jwt.algorithms: ES384 is pinned but no key verifies it (it needs an EC P-384 public key in keys_file)"])
        // A JWK's alg must fit its curve.
        let at = "/p/policy.yaml:5: credentials.jwt.keys_file: keys file '/p/k.json': "
        func err(_ jwks: String) -> [String] {
            Self.loadErrors("algorithms: [ES256, ES384]\nkeys_file: k.json", files: ["/p/k.json": jwks])
        }
        #expect(err("{\"keys\":[\(Self.rfcEC.dropLast()),\"alg\":\"ES384\"}]}") == [at + "keys[0]: alg 'ES384' does not fit crv 'P-256' (ES256)"])
        #expect(err("{\"keys\":[\(JWTMint.p384JWK.dropLast()),\"alg\":\"ES256\"}]}") == [at + "keys[0]: alg 'ES256' does not fit crv 'P-384' (ES384)"])
        #expect(err("{\"keys\":[\(JWTMint.p384JWK.dropLast()),\"alg\":\"ES512\"}]}")
            == [at + "keys[0]: alg 'ES512' does not fit crv 'P-384' (ES384)"])
        #expect(err("{\"keys\":[\(JWTMint.p384JWK.dropLast()),\"alg\":\"PS384\"}]}") == [at + "keys[0]: alg 'PS384' does not fit kty 'EC'"])
        #expect(err("{\"keys\":[\(Self.rfcEC.dropLast()),\"alg\":\"ES256\"},\(JWTMint.p384JWK.dropLast()),\"alg\":\"ES384\"}]}") == [])
        // The P-256 point given as P-384 coordinates (and the reverse) is refused.
        #expect(err(#"{"keys":[{"kty":"EC","crv":"P-384","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#)
            == [at + "keys[0]: x and y must be 48 bytes each for P-384"])
        // A P-521 key verifies ES512 only.
        #expect(Self.loadErrors("algorithms: [ES384]\nkeys_file: k.pem", files: ["/p/k.pem": JWTMint.p521Public]) == [
            "/p/policy.yaml:4: credentials.jwt.algorithms: ES384 is pinned but no key verifies it (it needs an EC P-384 public key in keys_file)"])
        // The second lock, at verification: a key of the other curve is never used, whatever
        // the caller hands in.
        let p256 = try JWTKeyFile.pem(Array(JWTMint.ecPublic.utf8)), p384 = try JWTKeyFile.pem(Array(JWTMint.p384Public.utf8))
        #expect(p256.verifies(.es256) && !p256.verifies(.es384) && p384.verifies(.es384) && !p384.verifies(.es256))
        let t = JWTMint.sign("{\"alg\":\"ES384\"}", Self.claims(), privateKeyPEM: JWTMint.p384Private)
        let parts = t.split(separator: ".")
        let sig = try #require(Base64URL.decode(parts[2]))
        let signed = Array((parts[0] + "." + parts[1]).utf8)
        sig.withUnsafeBytes { s in
            signed.withUnsafeBytes { d in
                #expect(JWTVerifier.verify(s, over: d, alg: .es384, key: p384))
                #expect(!JWTVerifier.verify(s, over: d, alg: .es384, key: p256))
                #expect(!JWTVerifier.verify(UnsafeRawBufferPointer(rebasing: s[0..<64]), over: d, alg: .es256, key: p384))
            }
        }
    }

    /// RFC 8037 A.4: Ed25519 over "Example of Ed25519 signing" with the A.2 key. The payload
    /// is not a claim set, so the signature verifying shows as `badClaims` (checked after it).
    @Test func rfc8037A4EdDSA() throws {
        let v = try Self.verifier("algorithms: [EdDSA]\nkeys_file: k.json",
                                  files: ["/p/k.json": #"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#])
        let token = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
            + ".hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        #expect(refusal(v, token) == .badClaims)
        #expect(refusal(v, Self.flipped(token)) == .badSignature)
        // The same signature over another payload.
        let parts = token.split(separator: ".")
        #expect(refusal(v, parts[0] + "." + JWTMint.segment("Example of Ed25519 signinG") + "." + parts[2]) == .badSignature)
    }

    @Test func edDSAFromPEMAndOKPJWK() throws {
        for (name, file) in [("ed.pem", JWTMint.ed25519Public), ("ed.json", JWTMint.ed25519JWK),
                             ("ed2.json", "{\"keys\":[\(JWTMint.ed25519JWK.dropLast()),\"alg\":\"EdDSA\",\"kid\":\"ed-1\",\"use\":\"sig\"}]}")] {
            let v = try Self.verifier("algorithms: [EdDSA]\nkeys_file: \(name)", files: ["/p/\(name)": file])
            let t = JWTMint.sign("{\"alg\":\"EdDSA\",\"kid\":\"ed-1\"}", Self.claims(), privateKeyPEM: JWTMint.ed25519Private)
            #expect(Base64URL.decode(t.split(separator: ".")[2])?.count == 64)
            #expect(try v.verify(t, now: Self.now).get().algorithm == .edDSA, "\(name)")
            #expect(refusal(v, Self.flipped(t)) == .badSignature, "\(name)")
            #expect(refusal(v, JWTMint.sign("{\"alg\":\"EdDSA\"}", Self.claims(), privateKeyPEM: JWTMint.ed25519OtherPrivate)) == .badSignature)
            // The payload changed under the old signature.
            let parts = t.split(separator: ".")
            #expect(refusal(v, parts[0] + "." + JWTMint.segment(Self.claims(sub: "\"mallory\"")) + "." + parts[2]) == .badSignature)
            // The name is exact: RFC 8037's "EdDSA", not the curve's, nor another spelling.
            for alg in ["EDDSA", "eddsa", "Ed25519", "EdDSA ", "Ed448", "EdDSa"] {
                let wrong = JWTMint.segment("{\"alg\":\"\(alg)\"}") + "." + parts[1] + "." + parts[2]
                #expect(refusal(v, wrong) == .algorithmNotAllowed, "\(alg)")
            }
        }
        let at = "/p/policy.yaml:5: credentials.jwt.keys_file: keys file '/p/k.json': "
        func err(_ jwks: String) -> [String] {
            Self.loadErrors("algorithms: [EdDSA]\nkeys_file: k.json", files: ["/p/k.json": jwks])
        }
        #expect(err("{\"keys\":[\(JWTMint.ed25519JWK.dropLast()),\"alg\":\"ES256\"}]}") == [at + "keys[0]: alg 'ES256' does not fit kty 'OKP'"])
        #expect(err("{\"keys\":[\(JWTMint.ed25519JWK.dropLast()),\"alg\":\"HS256\"}]}") == [at + "keys[0]: alg 'HS256' does not fit kty 'OKP'"])
        #expect(err("{\"keys\":[\(JWTMint.ed25519JWK.dropLast()),\"d\":\"AAAA\"}]}") == [at + "keys[0]: holds a private key (list public keys only)"])
        #expect(err(#"{"keys":[{"kty":"OKP","x":"jDWmvZvy1q2EcXF2aLq1ese4Di4U6ez262N2n6wwGRw"}]}"#) == [at + "keys[0]: missing crv"])
        #expect(err(#"{"keys":[{"kty":"OKP","crv":"Ed25519"}]}"#) == [at + "keys[0]: missing x"])
        // An RSA key with alg EdDSA; an Ed448 PEM; EdDSA pinned with only an EC key.
        #expect(err("{\"keys\":[\(Self.rfcRSA.dropLast()),\"alg\":\"EdDSA\"}]}") == [at + "keys[0]: alg 'EdDSA' does not fit kty 'RSA'"])
        #expect(Self.loadErrors("algorithms: [EdDSA]\nkeys_file: k.pem", files: ["/p/k.pem": JWTMint.ed448Public]) == [
            "/p/policy.yaml:5: credentials.jwt.keys_file: keys file '/p/k.pem': unsupported key type (RSA, EC P-256, P-384 or P-521, or Ed25519)"])
        #expect(Self.loadErrors("algorithms: [EdDSA]\nkeys_file: k.pem", files: ["/p/k.pem": JWTMint.ecPublic]) == [
            "/p/policy.yaml:4: credentials.jwt.algorithms: EdDSA is pinned but no key verifies it (it needs an Ed25519 (OKP) public key in keys_file)"])
        let k = try JWTKeyFile.pem(Array(JWTMint.ed25519Public.utf8))
        #expect(k.type == .okp && k.verifies(.edDSA) && !k.verifies(.es256) && !k.verifies(.hs256) && !k.verifies(.rs256))
    }

    @Test func hsAndPublicKeysAreNeverConfusedForTheNewAlgorithms() throws {
        let files = ["/p/k.json": "{\"keys\":[\(Self.rfcRSA.dropLast()),\"kid\":\"rsa\"},\(JWTMint.p384JWK.dropLast()),\"kid\":\"p384\"},\(JWTMint.ed25519JWK.dropLast()),\"kid\":\"ed\"}]}"]
        let all = "algorithms: [HS256, HS384, HS512, RS384, PS256, ES384, EdDSA]\nsecret_env: JWT_SECRET\nkeys_file: k.json"
        let v = try Self.verifier(all, files: files)
        // Each public key's PEM (and its JWK text) as an HMAC secret, under each HS algorithm
        // and each key's kid: checked with the secret only.
        for (kid, material) in [("p384", JWTMint.p384Public), ("ed", JWTMint.ed25519Public), ("p384", JWTMint.p384JWK), ("ed", JWTMint.ed25519JWK),
                                ("rsa", Self.rfcRSA)] {
            for alg in ["HS256", "HS384", "HS512"] {
                let forged = JWTMint.hs("{\"alg\":\"\(alg)\",\"kid\":\"\(kid)\"}", Self.claims(), secret: Array(material.utf8), alg: alg)
                #expect(refusal(v, forged) == .badSignature, "\(alg) keyed with \(kid)")
            }
        }
        // The reverse: a public-key algorithm "signed" with the HMAC secret (the MAC's bytes,
        // padded to the signature's length) never meets the secret.
        for (alg, size) in [("EdDSA", 64), ("ES384", 96), ("PS256", 256), ("RS384", 256)] {
            let input = JWTMint.segment("{\"alg\":\"\(alg)\"}") + "." + JWTMint.segment(Self.claims())
            let mac = JWTMint.hmac("HS512", secret: Array(Self.secret.utf8), input)
            let sig = Array((mac + [UInt8](repeating: 0, count: size)).prefix(size))
            #expect(refusal(v, input + "." + Base64URL.encode(sig)) == .badSignature, "\(alg)")
        }
        // The genuine tokens verify, each with its own key.
        #expect(try v.verify(JWTMint.sign("{\"alg\":\"EdDSA\",\"kid\":\"ed\"}", Self.claims(), privateKeyPEM: JWTMint.ed25519Private), now: Self.now).get().keyID == "ed")
        #expect(try v.verify(JWTMint.sign("{\"alg\":\"ES384\",\"kid\":\"p384\"}", Self.claims(), privateKeyPEM: JWTMint.p384Private), now: Self.now).get().keyID == "p384")
        #expect(try v.verify(JWTMint.hs(Self.claims(), secret: Self.secret, alg: "HS384"), now: Self.now).get().keyID == nil)
        // A kid naming a key of another type: unknown for this algorithm.
        #expect(refusal(v, JWTMint.sign("{\"alg\":\"EdDSA\",\"kid\":\"p384\"}", Self.claims(), privateKeyPEM: JWTMint.ed25519Private)) == .unknownKey)
        #expect(refusal(v, JWTMint.sign("{\"alg\":\"ES384\",\"kid\":\"ed\"}", Self.claims(), privateKeyPEM: JWTMint.p384Private)) == .unknownKey)
        // HS pinned with public keys only: no secret, no load; a secret with no HS pinned either.
        #expect(Self.loadErrors("algorithms: [EdDSA, HS384]\nkeys_file: k.json", files: files) == [
            "/p/policy.yaml:4: credentials.jwt.algorithms: HS384 is pinned but no key verifies it (it needs secret_env (or an oct key in keys_file))"])
        #expect(Self.loadErrors("algorithms: [EdDSA, PS256]\nsecret_env: JWT_SECRET\nkeys_file: k.json", files: files) == [
            "/p/policy.yaml:5: credentials.jwt.secret_env: a secret verifies HS256, HS384 or HS512 only, and none is pinned in algorithms"])
        // And no secret ever verifies a public-key algorithm at the signature step.
        let secret = JWTKey.secret(Array(Self.secret.utf8))
        #expect(!secret.verifies(.edDSA) && !secret.verifies(.es384) && !secret.verifies(.ps256) && !secret.verifies(.rs512))
        let empty = [UInt8](repeating: 0, count: 64)
        empty.withUnsafeBytes { s in
            #expect(!JWTVerifier.verify(s, over: s, alg: .edDSA, key: secret))
            #expect(!JWTVerifier.verify(s, over: s, alg: .ps256, key: secret))
        }
    }

    @Test func headerAlgorithmNamesAreExact() {
        func named(_ s: String) -> JWTAlgorithm? {
            let b = Array(s.utf8)
            return b.withUnsafeBufferPointer { $0.baseAddress.flatMap { JWTAlgorithm.named($0, b.count) } }
        }
        for a in JWTAlgorithm.allCases { #expect(named(a.rawValue) == a, "\(a)") }
        #expect(JWTAlgorithm.allCases.count == 13)
        #expect(Set(JWTAlgorithm.allCases.map(\.bit)).count == 13 && JWTAlgorithm.allCases.allSatisfy { $0.bit.nonzeroBitCount == 1 })
        for bad in ["ES521", "PS128", "RS257", "HS255", "ps256", "Rs256", "EDDSA", "eddsa", "EdDSB", "EdDS", "EdDSAA", "ES38", "ES3844",
                    "ED255", "XS256", "none", "", "PS2", "RS", "ES384\u{0}"] {
            #expect(named(bad) == nil, "\(bad)")
        }
        #expect(JWTAlgorithm.es384.signatureBytes == 96 && JWTAlgorithm.edDSA.signatureBytes == 64 && JWTAlgorithm.ps256.signatureBytes == 0)
    }

    @Test func base64URLIsStrictAndCanonical() {
        #expect(Base64URL.decode("") == [])
        #expect(Base64URL.decode("Zg") == [0x66])
        #expect(Base64URL.decode("Zh") == nil)          // unused bits set
        #expect(Base64URL.decode("Zm8") == [0x66, 0x6F])
        #expect(Base64URL.decode("Zm9") == nil)
        #expect(Base64URL.decode("Zm9v") == [0x66, 0x6F, 0x6F])
        #expect(Base64URL.decode("Z") == nil)
        #expect(Base64URL.decode("Zg==") == nil)
        #expect(Base64URL.decode("Zm+v") == nil)
        #expect(Base64URL.decode("-_-_") == [0xFB, 0xFF, 0xBF])
        for n in 0..<40 {
            let bytes = (0..<n).map { UInt8(($0 * 73 + n) & 0xFF) }
            #expect(Base64URL.decode(Base64URL.encode(bytes)) == bytes)
        }
    }
}
