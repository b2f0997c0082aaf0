import Foundation
import Glibc
import Policy
import Testing

/// JWTs as a client credential, through the real binary: tokens minted here (HS256 with the
/// policy's secret, RS256 and ES256 with keys the `openssl` CLI made, listed in a JWKS), every
/// classic attack refused with its code and `WWW-Authenticate: Bearer error="invalid_token"`,
/// valid tokens reaching the backend as their consumer (identity headers, limits, credits,
/// usage), the token itself nowhere but in the client's request.
@Suite(.serialized) struct JWTTests {
    static let secret = "jwt-test-secret-0123456789abcdef"
    static let environment = ["TG_TEST_JWT_SECRET": secret]
    static let aliceKey = "jwt-suite-alice-plain-key"
    static let challenge = "Bearer error=\"invalid_token\""

    final class Fixture {
        let dir = makeTempDir("tgjwt")
        let port = freePort()
        let admin = freePort()
        let log = HeadLog()
        let recorder: ScriptedUpstream
        let mint: TokenMint
        private(set) var tg: TollgateProcess!
        var policy: String { dir + "/gateway.yaml" }

        init(issuer: String = "https://login.test") throws {
            recorder = try recordingUpstream(log)
            mint = try TokenMint(dir: dir, secret: JWTTests.secret)
            writePolicy(issuer: issuer)
            do {
                tg = try TollgateProcess(policies: policy, port: port, environment: JWTTests.environment)
                #expect(try poll(timeout: 10) { try ProxyTests.get(admin, "/readyz").status == 200 } != nil)
            } catch {
                recorder.stop()
                throw error
            }
        }

        func writePolicy(issuer: String) {
            writeFile(policy, """
            version: 1
            listen:
              - address: 127.0.0.1:\(port)
            admin:
              address: 127.0.0.1:\(admin)
            access_log: {path: access.jsonl}
            usage:
              spool: spool
              durability: 0ms
              sinks:
                - {kind: file, path: usage.jsonl}
            credits: {ledger: local}
            credentials:
              api_key: {headers: [X-API-Key]}
              jwt:
                algorithms: [HS256, RS256, ES256]
                secret_env: TG_TEST_JWT_SECRET
                keys_file: jwks.json
                issuer: \(issuer)
                audience: tollgate
                required_claims: {type: access}
                leeway: 1s
                consumer_claim: sub
                scopes_claim: scope
                plan: members
            backends:
              up: {url: "http://127.0.0.1:\(recorder.port)"}
            plans:
              members:
                rate_limits:
                  - {requests: 8, per: 1h, burst: 8}
            routes:
              - name: both
                match: {path_prefix: /both/}
                backend: up
                scopes: [chat]
              - name: jwt-only
                match: {path_prefix: /jwt/}
                backend: up
                credentials: [jwt]
              - name: keys-only
                match: {path_prefix: /keys/}
                backend: up
                credentials: [api_key]
              - name: admin
                match: {path_prefix: /admin/}
                backend: up
                scopes: [admin]
              - name: paid
                match: {path_prefix: /paid/}
                backend: up
                credentials: [jwt]
                credits: {per_request: 1}
            keys:
              - {id: key_alice, hash: "\(KeyHash.sha256(JWTTests.aliceKey).description)", consumer: alice, scopes: [chat, admin]}

            """)
        }

        func stop() {
            tg?.stop()
            recorder.stop()
            try? FileManager.default.removeItem(atPath: dir)
        }

        func get(_ path: String, bearer: String? = nil, headers: [String: String] = [:]) throws -> HTTPResponse {
            var h = headers
            if let bearer { h["Authorization"] = "Bearer " + bearer }
            return try ProxyTests.get(port, path, headers: h)
        }

        var accessLog: String { (try? String(contentsOfFile: dir + "/access.jsonl", encoding: .utf8)) ?? "" }
        var usage: String { (try? String(contentsOfFile: dir + "/usage.jsonl", encoding: .utf8)) ?? "" }
    }

    /// A refusal of a token: the code, 401, and the RFC 6750 challenge.
    static func expectTokenRefusal(_ r: HTTPResponse, _ code: String, sourceLocation: SourceLocation = #_sourceLocation) {
        expectDenial(r, code, 401, sourceLocation: sourceLocation)
        #expect(r.header("WWW-Authenticate") == challenge, "WWW-Authenticate: \(r.header("WWW-Authenticate") ?? "nil")",
                sourceLocation: sourceLocation)
    }

    // MARK: attacks

    @Test func classicAttacksAreRefusedWithTheRightCode() throws {
        let g = try Fixture()
        defer { g.stop() }
        let m = g.mint
        let valid = TokenMint.claims("mallory")
        func segment(_ s: String) -> String { TokenMint.segment(s) }
        let good = try m.es(valid)
        let parts = good.split(separator: ".").map(String.init)
        let rsaPEM = try #require(FileManager.default.contents(atPath: m.rsaPublic))

        var attacks: [(String, String, String)] = [
            ("alg none, no signature", segment("{\"alg\":\"none\",\"typ\":\"JWT\"}") + "." + segment(valid) + ".", "INVALID_TOKEN"),
            ("alg none, junk signature", segment("{\"alg\":\"none\"}") + "." + segment(valid) + ".AAAA", "INVALID_TOKEN"),
            ("alg NONE", segment("{\"alg\":\"NONE\"}") + "." + segment(valid) + ".AAAA", "INVALID_TOKEN"),
            ("RS→HS: HS256 keyed with the RSA public key", m.hs(valid, header: "{\"alg\":\"HS256\",\"kid\":\"rsa-1\"}", secret: [UInt8](rsaPEM)), "INVALID_TOKEN"),
            ("RS→HS without kid", m.hs(valid, secret: [UInt8](rsaPEM)), "INVALID_TOKEN"),
            ("kid injection (path), empty HMAC key", m.hs(valid, header: "{\"alg\":\"HS256\",\"kid\":\"../../../../../../dev/null\"}", secret: []), "INVALID_TOKEN"),
            ("kid injection (SQL)", try m.es(valid, header: "{\"alg\":\"ES256\",\"kid\":\"x' UNION SELECT 'key\"}"), "INVALID_TOKEN"),
            ("unknown kid", try m.rs(valid, header: "{\"alg\":\"RS256\",\"kid\":\"rsa-2\"}"), "INVALID_TOKEN"),
            ("ES256 under the RSA key's kid", try m.es(valid, header: "{\"alg\":\"ES256\",\"kid\":\"rsa-1\"}"), "INVALID_TOKEN"),
            ("expired", try m.es(TokenMint.claims("mallory", ttl: -3600)), "EXPIRED"),
            ("expired (HS256)", m.hs(TokenMint.claims("mallory", ttl: -60)), "EXPIRED"),
            ("not yet valid", try m.es(TokenMint.claims("mallory", extra: "\"nbf\":\(Int(Date().timeIntervalSince1970) + 3600)")), "INVALID_TOKEN"),
            ("issued in the future", m.hs(TokenMint.claims("mallory").replacingOccurrences(of: "\"iat\":", with: "\"iat\":1") ), "INVALID_TOKEN"),
            ("refresh token used as access", try m.rs(TokenMint.claims("mallory", type: "refresh")), "INVALID_TOKEN"),
            ("no type at all", m.hs("{\"sub\":\"mallory\",\"iss\":\"https://login.test\",\"aud\":\"tollgate\",\"exp\":9999999999}"), "INVALID_TOKEN"),
            ("wrong issuer", m.hs(TokenMint.claims("mallory", issuer: "https://evil.test")), "INVALID_TOKEN"),
            ("wrong audience", m.hs(TokenMint.claims("mallory", audience: "someone-else")), "INVALID_TOKEN"),
            ("no consumer", m.hs("{\"type\":\"access\",\"iss\":\"https://login.test\",\"aud\":\"tollgate\",\"exp\":9999999999}"), "INVALID_TOKEN"),
            ("no exp", m.hs("{\"sub\":\"mallory\",\"type\":\"access\",\"iss\":\"https://login.test\",\"aud\":\"tollgate\"}"), "INVALID_TOKEN"),
            ("tampered signature", parts[0] + "." + parts[1] + "." + String(parts[2].reversed()), "INVALID_TOKEN"),
            ("tampered payload", parts[0] + "." + segment(TokenMint.claims("root", scope: "admin")) + "." + parts[2], "INVALID_TOKEN"),
            ("another key's signature", try m.es(valid, keyFile: m.otherECPrivate), "INVALID_TOKEN"),
            ("embedded jwk / jku / x5u",
             try m.es(valid, header: "{\"alg\":\"ES256\",\"jku\":\"http://127.0.0.1:1/jwks\",\"x5u\":\"http://127.0.0.1:1/c\",\"jwk\":{\"kty\":\"EC\"}}",
                      keyFile: m.otherECPrivate), "INVALID_TOKEN"),
            ("crit header", m.hs(valid, header: "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}"), "INVALID_TOKEN"),
            ("huge (9 KB)", m.hs(TokenMint.claims("mallory", extra: "\"pad\":\"" + String(repeating: "a", count: 6800) + "\"")), "INVALID_TOKEN"),
            ("four segments", good + ".AAAA", "INVALID_TOKEN"),
            ("padding", good + "==", "INVALID_TOKEN"),
            ("header is not JSON", segment("alg=HS256") + "." + parts[1] + "." + parts[2], "INVALID_TOKEN"),
            ("claims are not JSON", parts[0] + "." + segment("{\"sub\":") + "." + parts[2], "INVALID_TOKEN"),
            ("garbage with two dots", "a.b.c", "INVALID_TOKEN"),
        ]
        // A JWT-only route takes any Bearer value as a token.
        attacks.append(("an API key on a JWT-only route", JWTTests.aliceKey, "INVALID_TOKEN"))
        #expect(attacks[24].1.utf8.count > JWTSettings.maxTokenBytes)

        for (name, token, code) in attacks {
            for path in ["/jwt/x", "/both/x"] where !(path == "/both/x" && name == "an API key on a JWT-only route") {
                let r = try g.get(path, bearer: token)
                // On a route taking both, a Bearer value that does not look like a JWT is an API key.
                if path == "/both/x" && !g.mint.looksLikeJWT(token) {
                    expectDenial(r, "INVALID_KEY", 401)
                } else {
                    Self.expectTokenRefusal(r, code)
                    if r.errorCode != code { Issue.record("\(name) on \(path)") }
                    #expect(r.errorCode == code, "\(name) on \(path): \(r.status) \(r.text)")
                }
            }
        }
        #expect(g.log.count == 0, "a refused token reached the backend: \(g.log.targets)")
        // The good token itself works (the refusals above were not about the fixture).
        #expect(try g.get("/jwt/ok", bearer: good).status == 200)

        // Counted by code; the token never appears in the metrics, logs or records.
        let metrics = try scrapeMetrics(g.admin)
        let codes = requestsByCode(metrics)
        #expect((codes["INVALID_TOKEN"] ?? 0) >= 40 && (codes["EXPIRED"] ?? 0) >= 4, "\(codes)")
        let scrape = try get(g.admin, "/metrics").text
        _ = try poll(timeout: 5) { g.usage.split(separator: "\n").count >= attacks.count * 2 - 1 }
        for (_, token, _) in attacks {
            let sig = String(token.split(separator: ".").last ?? "")
            for (what, text) in [("metrics", scrape), ("access log", g.accessLog), ("usage", g.usage), ("stderr", g.tg.log)] {
                #expect(!text.contains(token) && (sig.count < 16 || !text.contains(sig)), "token in the \(what)")
            }
        }
    }

    // MARK: valid tokens

    @Test func aValidTokenReachesTheBackendAsItsConsumer() throws {
        let g = try Fixture()
        defer { g.stop() }
        let m = g.mint
        // Credits for gina, granted first: the running proxy reads the grant within a second,
        // and every request that finds no credit yet would still spend her rate limit.
        let (rc, out) = try runTollgate(["credits", "grant", "gina", "2", "--policies", g.policy], environment: JWTTests.environment)
        #expect(rc == 0, "\(out)")
        let tokens = [
            ("HS256", m.hs(TokenMint.claims("carol"))),
            ("RS256", try m.rs(TokenMint.claims("carol"))),
            ("ES256", try m.es(TokenMint.claims("carol"))),
        ]
        for (alg, token) in tokens {
            let r = try g.get("/both/hello", bearer: token, headers: ["X-Tollgate-Consumer": "mallory", "X-Tollgate-Key-Id": "key_alice"])
            #expect(r.status == 200, "\(alg): \(r.status) \(r.text)")
            let head = try #require(g.log.heads.last)
            #expect(head.components(separatedBy: "\r\n").filter { $0.lowercased().hasPrefix("x-tollgate-") }.sorted()
                == ["X-Tollgate-Consumer: carol", "X-Tollgate-Key-Id: jwt:carol", "X-Tollgate-Scopes: chat,finance:read"], "\(alg): \(head)")
            #expect(headerValue(head, "Authorization") == nil, "\(alg): the token reached the backend")
            #expect(!head.contains(token.split(separator: ".")[2]), "\(alg)")
            // Limits apply to the consumer: the plan's window counts down across algorithms.
            #expect(r.header("RateLimit-Policy") != nil && r.header("RateLimit") != nil, "\(r.headers)")
        }
        // Scope checks use the token's scopes: `admin` is not among them.
        expectDenial(try g.get("/admin/x", bearer: m.hs(TokenMint.claims("carol"))), "INSUFFICIENT_SCOPE", 403)
        #expect(try g.get("/admin/x", bearer: m.hs(TokenMint.claims("root", scope: "admin"))).status == 200)
        // A scope list works as well as a string.
        let listed = m.hs(TokenMint.claims("dora").replacingOccurrences(of: "\"scope\":\"chat finance:read\"", with: "\"scope\":[\"chat\"]"))
        #expect(try g.get("/both/list", bearer: listed).status == 200)
        #expect(headerValue(try #require(g.log.heads.last), "X-Tollgate-Scopes") == "chat")

        // Rate limits per consumer: eight requests an hour, whatever token (fresh ones, all
        // three algorithms); the ninth is refused; another consumer is unaffected.
        var erin: [String] = []
        for k in 0..<8 {
            let c = TokenMint.claims("erin", extra: "\"jti\":\"\(k)\"")
            erin.append(k % 3 == 0 ? m.hs(c) : k % 3 == 1 ? try m.es(c) : try m.rs(c))
        }
        for (i, t) in erin.enumerated() {
            let r = try g.get("/jwt/e\(i)", bearer: t)
            #expect(r.status == 200 && r.header("RateLimit")?.contains("r=\(7 - i)") == true, "\(i): \(r.status) \(r.headers)")
        }
        expectDenial(try g.get("/jwt/e8", bearer: m.hs(TokenMint.claims("erin", extra: "\"jti\":\"9\""))), "RATE_LIMITED", 429)
        expectDenial(try g.get("/jwt/e9", bearer: erin[0]), "RATE_LIMITED", 429)
        #expect(try g.get("/jwt/f", bearer: m.hs(TokenMint.claims("frank"))).status == 200)
        // The API key of another consumer is limited on its own (no plan: no limit at all).
        #expect(try g.get("/both/k", headers: ["X-API-Key": JWTTests.aliceKey]).status == 200)

        // Credits follow the consumer: two granted (above), two requests served, the third is 402.
        let gina = try m.es(TokenMint.claims("gina"))
        #expect(try poll(timeout: 5) { try g.get("/paid/1", bearer: gina).status == 200 } != nil)
        let second = try g.get("/paid/2", bearer: gina)
        #expect(second.status == 200 && second.header("X-Tollgate-Credits-Remaining") == "0", "\(second.headers)")
        expectDenial(try g.get("/paid/3", bearer: gina), "INSUFFICIENT_CREDITS", 402)

        // Usage records and the access log name the JWT consumer, never the token.
        #expect(try poll(timeout: 5) { g.usage.contains("\"key_id\":\"jwt:gina\"") } != nil, "\(g.usage)")
        #expect(try poll(timeout: 5) { g.accessLog.contains("\"key_id\":\"jwt:carol\",\"consumer\":\"carol\"") } != nil, "\(g.accessLog)")
        for (_, t) in tokens {
            #expect(!g.usage.contains(t) && !g.accessLog.contains(t) && !g.tg.log.contains(t))
        }
    }

    @Test func credentialsAreChosenByRoute() throws {
        let g = try Fixture()
        defer { g.stop() }
        let token = g.mint.hs(TokenMint.claims("hank"))
        // Both: the API key (header or Bearer) and the JWT.
        #expect(try g.get("/both/a", headers: ["X-API-Key": JWTTests.aliceKey]).status == 200)
        #expect(headerValue(try #require(g.log.heads.last), "X-Tollgate-Key-Id") == "key_alice")
        #expect(try g.get("/both/b", bearer: JWTTests.aliceKey).status == 200)
        #expect(headerValue(try #require(g.log.heads.last), "X-Tollgate-Key-Id") == "key_alice")
        #expect(try g.get("/both/c", bearer: token).status == 200)
        #expect(headerValue(try #require(g.log.heads.last), "X-Tollgate-Key-Id") == "jwt:hank")
        // A key header wins over a Bearer token; both are stripped.
        #expect(try g.get("/both/d", bearer: token, headers: ["X-API-Key": JWTTests.aliceKey]).status == 200)
        let head = try #require(g.log.heads.last)
        #expect(headerValue(head, "X-Tollgate-Key-Id") == "key_alice" && headerValue(head, "Authorization") == nil
                && headerValue(head, "X-API-Key") == nil, "\(head)")
        // JWT only: an API key is not read (missing), or not a token (Bearer).
        expectDenial(try g.get("/jwt/a", headers: ["X-API-Key": JWTTests.aliceKey]), "MISSING_CREDENTIAL", 401)
        Self.expectTokenRefusal(try g.get("/jwt/b", bearer: JWTTests.aliceKey), "INVALID_TOKEN")
        #expect(try g.get("/jwt/c", bearer: token).status == 200)
        // Keys only: a JWT is just an unknown key.
        expectDenial(try g.get("/keys/a", bearer: token), "INVALID_KEY", 401)
        #expect(try g.get("/keys/b", headers: ["X-API-Key": JWTTests.aliceKey]).status == 200)
        // No credential: the usual challenge.
        let none = try g.get("/jwt/none")
        expectDenial(none, "MISSING_CREDENTIAL", 401)
        #expect(none.header("WWW-Authenticate")?.contains("Bearer") == true)
    }

    /// A verified token is remembered until its exp (plus leeway): then it is EXPIRED, and a
    /// reload forgets every remembered token (a new issuer refuses the old ones).
    @Test func rememberedTokensExpireAndAReloadForgetsThem() throws {
        let g = try Fixture()
        defer { g.stop() }
        let shortLived = g.mint.hs(TokenMint.claims("ivan", ttl: 3))
        #expect(try g.get("/jwt/1", bearer: shortLived).status == 200)
        // exp is three seconds away and the leeway one second: refused within about four.
        #expect(try poll(timeout: 15, step: 0.5) { try g.get("/jwt/2", bearer: shortLived).errorCode == "EXPIRED" } != nil)
        Self.expectTokenRefusal(try g.get("/jwt/3", bearer: shortLived), "EXPIRED")

        let token = try g.mint.es(TokenMint.claims("judy"))
        #expect(try g.get("/jwt/4", bearer: token).status == 200)
        g.writePolicy(issuer: "https://other-login.test")
        g.tg.signal(SIGHUP)
        #expect(try poll(timeout: 10) { try g.get("/jwt/5", bearer: token).errorCode == "INVALID_TOKEN" } != nil)
        let newer = try g.mint.es(TokenMint.claims("judy", issuer: "https://other-login.test"))
        #expect(try g.get("/jwt/6", bearer: newer).status == 200)
    }

    @Test func http2CarriesJWTs() throws {
        let g = try Fixture()
        defer { g.stop() }
        let token = try g.mint.rs(TokenMint.claims("kate"))
        let (rc, out) = try run("/usr/bin/curl", ["-sS", "-v", "--http2-prior-knowledge", "-H", "Authorization: Bearer \(token)",
                                                  "http://127.0.0.1:\(g.port)/both/h2"])
        #expect(rc == 0 && out.contains("< HTTP/2 200"), "\(out)")
        let head = try #require(g.log.heads.last)
        #expect(headerValue(head, "X-Tollgate-Consumer") == "kate" && headerValue(head, "Authorization") == nil, "\(head)")
        let expired = g.mint.hs(TokenMint.claims("kate", ttl: -600))
        let (rc2, out2) = try run("/usr/bin/curl", ["-sS", "-v", "--http2-prior-knowledge", "-H", "Authorization: Bearer \(expired)",
                                                    "http://127.0.0.1:\(g.port)/both/h2"])
        #expect(rc2 == 0 && out2.contains("< HTTP/2 401") && out2.contains("\"code\":\"EXPIRED\""), "\(out2)")
        #expect(out2.lowercased().contains("< www-authenticate: bearer error=\"invalid_token\""), "\(out2)")
        let (rc3, out3) = try run("/usr/bin/curl", ["-sS", "-v", "--http2-prior-knowledge", "-H", "Authorization: Bearer \(token)x",
                                                    "http://127.0.0.1:\(g.port)/jwt/h2"])
        #expect(rc3 == 0 && out3.contains("< HTTP/2 401") && out3.contains("\"code\":\"INVALID_TOKEN\""), "\(out3)")
    }

    @Test func theSecretIsReadAtStartAndNeverShown() throws {
        let g = try Fixture()
        defer { g.stop() }
        // Without the variable: check and serve name it and stop.
        if ProcessInfo.processInfo.environment["TG_TEST_JWT_SECRET"] == nil {
            let (rc, out) = try runTollgate(["check", g.policy])
            #expect(rc == 1 && out.contains("gateway.yaml:17: credentials.jwt.secret_env: environment variable TG_TEST_JWT_SECRET is not set"), "\(out)")
            let port = freePort()
            let serve = try TollgateProcess(arguments: ["serve", "--policies", g.policy], port: port, waitForPort: false)
            #expect(serve.waitForExit(timeout: 15) != 0)
            #expect(serve.log.contains("environment variable TG_TEST_JWT_SECRET is not set"), "\(serve.log)")
        }
        let (ok, okOut) = try runTollgate(["check", g.policy], environment: JWTTests.environment)
        #expect(ok == 0, "\(okOut)")
        // A malformed base64url secret: the error names the variable, never its value.
        let leaked = "this-value-must-never-be-printed"
        let p2 = g.dir + "/b64.yaml"
        writeFile(p2, (try String(contentsOfFile: g.policy, encoding: .utf8))
            .replacingOccurrences(of: "secret_env: TG_TEST_JWT_SECRET", with: "secret_env: TG_TEST_JWT_SECRET\n    secret_encoding: base64url"))
        let (bad, badOut) = try runTollgate(["check", p2], environment: ["TG_TEST_JWT_SECRET": leaked + "!"])
        #expect(bad == 1 && badOut.contains("environment variable TG_TEST_JWT_SECRET is not base64url") && !badOut.contains(leaked), "\(badOut)")
        #expect(!g.tg.log.contains(JWTTests.secret))
    }
}

extension TokenMint {
    /// The POLICY.md shape rule, as the proxy applies it on routes taking both credentials.
    func looksLikeJWT(_ s: String) -> Bool {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts.allSatisfy({ !$0.isEmpty }), let h = Base64URL.decode(parts[0]),
              let o = try? JSONSerialization.jsonObject(with: Data(h)) as? [String: Any] else { return false }
        let alphabet = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        return o["alg"] is String && parts.allSatisfy { $0.utf8.allSatisfy { alphabet.contains($0) } }
    }
}
