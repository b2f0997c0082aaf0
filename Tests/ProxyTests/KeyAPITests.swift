import Foundation
import Glibc
import Policy
import Testing

/// The key API on the admin listener, through the real binary: its OpenAPI description
/// checked against the running server, rotation with an overlap across instances sharing
/// Redis, retried mutations, the same operations from the command line.
@Suite(.serialized) struct KeyAPITests {
    struct Instance {
        let port = freePort()
        let admin = freePort()
    }

    /// A gateway (one or more instances sharing `dir`) with the admin API and a declared key.
    static func policy(dir: String, instance i: Instance, upstream: UInt16, redis: String? = nil) -> String {
        writeFile(dir + "/admin-tokens", "# the tests' bootstrap token\n" + AdminAuth.tokensFileLine + "\n")
        let path = dir + "/gw-\(i.port).yaml"
        writeFile(path, """
        version: 1
        listen:
          - address: 127.0.0.1:\(i.port)
        admin: {address: "127.0.0.1:\(i.admin)", tokens_file: admin-tokens}
        \(redis.map { "store: {redis: \"\($0)\", deadline: 500ms}" } ?? "")
        usage:
          spool: spool-\(i.port)
        audit:
          path: audit.jsonl
        backends:
          up: {url: "http://127.0.0.1:\(upstream)"}
        routes:
          - {name: all, match: {path_prefix: /}, backend: up, scopes: [read]}
        keys:
          - {id: key_declared, hash: \(KeyHash.sha256("declared-key-0123456789").description), consumer: dora, scopes: [read]}

        """)
        return path
    }

    static func serve(_ path: String, _ i: Instance) throws -> TollgateProcess {
        let tg = try TollgateProcess(policies: path, port: i.port)
        #expect(try poll(timeout: 10) { try get(i.admin, "/readyz").status == 200 } != nil)
        return tg
    }

    static func admin(_ port: UInt16, _ method: String, _ path: String, _ body: String? = nil,
                      headers: [String: String] = [:]) throws -> (Int, [String: Any], HTTPResponse) {
        let c = try RawClient(port: port)
        defer { c.close() }
        var raw = "\(method) \(path) HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer \(AdminAuth.token)\r\nConnection: close\r\n"
        for (k, v) in headers { raw += "\(k): \(v)\r\n" }
        if let body { raw += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)" } else { raw += "\r\n" }
        let r = try c.request(raw, method: method)
        let o = (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] ?? [:]
        return (r.status, o, r)
    }

    static func use(_ port: UInt16, _ key: String) -> Int {
        (try? get(port, "/x", headers: ["X-API-Key": key]).status) ?? -1
    }

    /// `docs/openapi.yaml` against the running server: every operation, its documented
    /// statuses and schemas (Tests/tools/openapi_contract.py, Draft 2020-12 validation).
    @Test func theOpenAPIDescriptionMatchesTheServer() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let dir = makeTempDir("tgkapi")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let i = Instance()
        let tg = try Self.serve(Self.policy(dir: dir, instance: i, upstream: up.port), i)
        defer { tg.stop() }
        let (rc, out) = try run("/usr/bin/python3", [packageRoot() + "/Tests/tools/openapi_contract.py",
                                                     packageRoot() + "/docs/openapi.yaml", "http://127.0.0.1:\(i.admin)",
                                                     AdminAuth.token, "key_declared"])
        #expect(rc == 0, "\(out)")
        #expect(out.contains("\"failures\": 0"), "\(out)")
    }

    /// Three instances on one Redis: a key minted on one works on all; rotated on another
    /// with a 2 s overlap, the old and the new key both work everywhere, then only the new
    /// one, the old refused REVOKED (saying it was rotated) from the overlap's end to within
    /// a second on every instance. A retried rotation (same Idempotency-Key) mints nothing.
    @Test func rotationOverlapAcrossThreeInstancesOnRedis() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try echoUpstream()
        defer { up.stop() }
        let dir = makeTempDir("tgkapi3")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let instances = [Instance(), Instance(), Instance()]
        let procs = try instances.map { try Self.serve(Self.policy(dir: dir, instance: $0, upstream: up.port, redis: redis.urlText), $0) }
        defer { for p in procs { p.stop() } }

        let (s1, created, _) = try Self.admin(instances[0].admin, "POST", "/v1/keys", #"{"consumer":"erin","scopes":["read"]}"#)
        #expect(s1 == 201)
        let oldKey = try #require(created["key"] as? String)
        let oldID = try #require(created["id"] as? String)
        for i in instances { #expect(try poll(timeout: 5) { Self.use(i.port, oldKey) == 200 } != nil) }

        let rot = #"{"overlap":"2s"}"#
        let (s2, rotated, _) = try Self.admin(instances[1].admin, "POST", "/v1/keys/\(oldID)/rotate", rot, headers: ["Idempotency-Key": "rot-1"])
        #expect(s2 == 201)
        let newKey = try #require(rotated["key"] as? String)
        let newID = try #require(rotated["id"] as? String)
        #expect(rotated["replaces"] as? String == oldID)
        let ends = try #require((rotated["old_key_expires"] as? String).flatMap { ISO8601DateFormatter().date(from: $0) })
        // Retried (on another instance): the same id, no key, nothing minted.
        let (s3, again, r3) = try Self.admin(instances[2].admin, "POST", "/v1/keys/\(oldID)/rotate", rot, headers: ["Idempotency-Key": "rot-1"])
        #expect(s3 == 201 && again["id"] as? String == newID && again["key"] is NSNull)
        #expect(r3.header("Idempotent-Replayed") == "true")
        let (_, list, _) = try Self.admin(instances[0].admin, "GET", "/v1/keys")
        let ids = ((list["keys"] as? [[String: Any]]) ?? []).compactMap { $0["id"] as? String }
        #expect(ids.filter { $0 != "key_declared" }.sorted() == [oldID, newID].sorted())

        // The overlap: both work on every instance.
        for i in instances {
            #expect(try poll(timeout: 5) { Self.use(i.port, newKey) == 200 } != nil)
            if Date() < ends.addingTimeInterval(-0.5) { #expect(Self.use(i.port, oldKey) == 200) }
        }
        // Its end: the old key refused on every instance, within a second of it.
        for i in instances {
            let waited = try poll(timeout: 10, step: 0.05) { Self.use(i.port, oldKey) == 401 }
            #expect(waited != nil)
            #expect(Date().timeIntervalSince(ends) < 1.5, "refused \(Date().timeIntervalSince(ends)) s after the overlap's end")
            #expect(Self.use(i.port, newKey) == 200)
        }
        let refused = try get(instances[2].port, "/x", headers: ["X-API-Key": oldKey])
        #expect(refused.text.contains("\"code\":\"REVOKED\"") && refused.text.contains("rotated"))
        // Audited: the creation and the rotation, once each.
        let audit = (try? String(contentsOfFile: dir + "/audit.jsonl", encoding: .utf8)) ?? ""
        #expect(audit.components(separatedBy: "\"action\":\"key.rotated\"").count - 1 == 1)
    }

    /// The command line runs the same operations: `keys rotate` on a key minted through the
    /// API, refusals in its words, and the API sees the result.
    @Test func theCommandLineUsesTheSameOperations() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let dir = makeTempDir("tgkapicli")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let i = Instance()
        let path = Self.policy(dir: dir, instance: i, upstream: up.port)
        let tg = try Self.serve(path, i)
        defer { tg.stop() }
        let (_, created, _) = try Self.admin(i.admin, "POST", "/v1/keys", #"{"consumer":"finn","scopes":["read"]}"#)
        let id = try #require(created["id"] as? String)
        let (rc, out) = try runTollgate(["keys", "rotate", id, "--overlap", "0s", "--policies", path])
        #expect(rc == 0, "\(out)")
        let newID = try #require(out.split(separator: "\n").first { $0.hasPrefix("id: ") }.map { String($0.dropFirst(4)) })
        let (s, view, _) = try Self.admin(i.admin, "GET", "/v1/keys/\(id)")
        #expect(s == 200 && view["rotated_to"] as? String == newID)
        let (rc2, out2) = try runTollgate(["keys", "rotate", id, "--policies", path])
        #expect(rc2 != 0 && out2.contains("already rotated"), "\(out2)")
        // Unauthenticated and wrong-token callers get 401 with the JSON error body.
        #expect(try get(i.admin, "/v1/keys").status == 401)
        #expect(try get(i.admin, "/v1/keys", headers: ["Authorization": "Bearer nope"]).text.contains("\"INVALID_TOKEN\""))
    }

    /// JWT callers: a user's token sees and touches only its consumer's keys (another's key is
    /// "not found", a key for another consumer is forbidden); a token with `role: admin` sees
    /// every key.
    @Test func aUsersJWTCannotSeeOrTouchAnotherUsersKeys() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let dir = makeTempDir("tgkapijwt")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let secret = "kapi-jwt-secret-0123456789abcdef"
        let mint = try TokenMint(dir: dir, secret: secret)
        let i = Instance()
        let path = Self.policy(dir: dir, instance: i, upstream: up.port)
        var text = try String(contentsOfFile: path, encoding: .utf8)
        text = text.replacingOccurrences(of: "backends:\n", with: """
        credentials:
          api_key: {headers: [X-API-Key]}
          jwt: {algorithms: [HS256], secret_env: TG_KAPI_JWT, required_claims: {type: access}, consumer_claim: sub, scopes_claim: scope}
        backends:

        """)
        writeFile(path, text)
        let tg = try TollgateProcess(policies: path, port: i.port, environment: ["TG_KAPI_JWT": secret])
        defer { tg.stop() }
        #expect(try poll(timeout: 10) { try get(i.admin, "/readyz").status == 200 } != nil)
        let (_, erinKey, _) = try Self.admin(i.admin, "POST", "/v1/keys", #"{"consumer":"erin","scopes":["read"]}"#)
        let (_, gusKey, _) = try Self.admin(i.admin, "POST", "/v1/keys", #"{"consumer":"gus","scopes":["read"]}"#)
        let erinID = try #require(erinKey["id"] as? String), gusID = try #require(gusKey["id"] as? String)

        func asUser(_ token: String, _ method: String, _ p: String, _ body: String? = nil) throws -> (Int, [String: Any]) {
            let c = try RawClient(port: i.admin)
            defer { c.close() }
            var raw = "\(method) \(p) HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer \(token)\r\nConnection: close\r\n"
            if let body { raw += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)" } else { raw += "\r\n" }
            let r = try c.request(raw, method: method)
            return (r.status, (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] ?? [:])
        }
        let erin = mint.hs(TokenMint.claims("erin"))
        let (ls, list) = try asUser(erin, "GET", "/v1/keys")
        #expect(ls == 200)
        let seen = ((list["keys"] as? [[String: Any]]) ?? []).compactMap { $0["id"] as? String }
        #expect(seen == [erinID], "\(seen)")
        #expect(try asUser(erin, "GET", "/v1/keys/\(gusID)").0 == 404)
        #expect(try asUser(erin, "POST", "/v1/keys/\(gusID)/revoke").0 == 404)
        #expect(try asUser(erin, "POST", "/v1/keys/\(gusID)/rotate", "{}").0 == 404)
        #expect(try asUser(erin, "POST", "/v1/keys", #"{"consumer":"gus","scopes":["read"]}"#).0 == 403)
        let (cs, own) = try asUser(erin, "POST", "/v1/keys", #"{"scopes":["read"]}"#)
        #expect(cs == 201 && own["consumer"] as? String == "erin")
        #expect(try asUser(erin, "POST", "/v1/keys/\(erinID)/disable").0 == 200)
        // A refresh token is not an access token; an expired one is refused too.
        #expect(try asUser(mint.hs(TokenMint.claims("erin", type: "refresh")), "GET", "/v1/keys").0 == 401)
        #expect(try asUser(mint.hs(TokenMint.claims("erin", ttl: -60)), "GET", "/v1/keys").0 == 401)
        // role: admin sees every key.
        let admin = mint.hs(TokenMint.claims("ops", extra: #""role":"admin""#))
        let (as_, all) = try asUser(admin, "GET", "/v1/keys")
        let every = ((all["keys"] as? [[String: Any]]) ?? []).compactMap { $0["id"] as? String }
        #expect(as_ == 200 && every.contains(gusID) && every.contains(erinID) && every.contains("key_declared"))
    }
}
