import Backends
import CSystem
import Foundation
import Glibc
import Policy
import ReferenceBackends
import Runtime
import Synchronization

/// The key API on the admin listener (`/v1/keys…`), described by `docs/openapi.yaml`. The
/// same operations as `tollgate keys …` (``KeyOperations``), called by:
/// - a bootstrap token from `admin.tokens_file` (stored as `sha256:<hex>`): every key;
/// - (with `credentials.jwt`) a JWT whose consumer owns the keys it touches, or one with a
///   `role: admin` claim for every key.
/// Mutations take an `Idempotency-Key` (24 h): a retried request answers what the first did
/// (never the plain key again) and changes nothing. Each caller has its own rate limit.
final class KeyAPI: Sendable {
    let policies: String
    let snapshot: @Sendable () -> PolicySnapshot
    let tokens: AdminTokens
    let idempotency: IdempotencyStore
    let usage: UsageAggregates?
    /// Per caller: 20 requests per second, bursts of 40.
    let callers = AdminRateLimiter(rate: 20, burst: 40)

    init(policies: String, snapshot: @escaping @Sendable () -> PolicySnapshot, tokensFile: String?, usage: UsageAggregates?) {
        self.policies = policies
        self.snapshot = snapshot
        tokens = AdminTokens(path: tokensFile)
        self.usage = usage
        idempotency = IdempotencyStore(directory: EmbeddedKeyLog.defaultDirectory(forPolicies: policies))
    }

    // MARK: routes

    func register(into router: inout ReferenceRouter) {
        router.add("POST", "/v1/keys") { [self] r in handle(r, mutation: true) { ops, body in
            let k = try Self.newKey(body, caller: ops.caller)
            let (view, key) = try ops.create(k)
            var o = view.json()
            o["key"] = key
            return (201, o)
        } }
        router.add("GET", "/v1/keys") { [self] r in handle(r, mutation: false) { ops, _ in
            let limit = min(max(Int(r.query("limit") ?? "") ?? 100, 1), 1000)
            let page = try ops.list(after: r.query("after"), limit: limit)
            return (200, ["keys": page.keys.map { $0.json() }, "next": page.next ?? NSNull()])
        } }
        router.add("GET", "/v1/keys/{id}") { [self] r in handle(r, mutation: false) { ops, _ in
            (200, try ops.get(r.pathParameters["id"] ?? "").json())
        } }
        router.add("PATCH", "/v1/keys/{id}") { [self] r in handle(r, mutation: true) { ops, body in
            (200, try ops.update(r.pathParameters["id"] ?? "", Self.patch(body)).json())
        } }
        router.add("POST", "/v1/keys/{id}/rotate") { [self] r in handle(r, mutation: true) { ops, body in
            var overlap: Int64 = 3600
            if let o = body["overlap"] {
                guard let s = o as? String, let d = parsePolicyDuration(s) else { throw KeyAPIError.bad("overlap: a duration such as \"1h\"") }
                overlap = Int64(d.components.seconds)
            }
            let (view, key, ends) = try ops.rotate(r.pathParameters["id"] ?? "", overlap: overlap)
            var o = view.json()
            o["key"] = key
            o["replaces"] = r.pathParameters["id"] ?? ""
            o["old_key_expires"] = KeyView.rfc3339(ends)
            return (201, o)
        } }
        for (verb, status) in [("revoke", KeyStatus.revoked), ("disable", .disabled), ("enable", .active)] {
            router.add("POST", "/v1/keys/{id}/" + verb) { [self] r in handle(r, mutation: true) { ops, _ in
                (200, try ops.setStatus(r.pathParameters["id"] ?? "", status).json())
            } }
        }
    }

    // MARK: one request

    private func handle(_ r: ReferenceRequest, mutation: Bool,
                        _ body: (KeyOperations, [String: Any]) throws -> (Int, [String: Any])) -> ReferenceResponse {
        let caller: KeyCaller
        switch authenticate(r) {
        case .success(let c): caller = c
        case .failure(let e): return Self.error(e)
        }
        guard admit(caller.name) else {
            return Self.error(KeyAPIError(status: 429, code: "RATE_LIMITED", message: "too many admin requests"), retryAfter: 1)
        }
        var json: [String: Any] = [:]
        if !r.body.isEmpty {
            guard r.body.count <= 64 * 1024,
                  let o = (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] else {
                return Self.error(.bad("the body must be a JSON object (64 KiB at most)"))
            }
            json = o
        }
        let store: KeyStoreAccess
        do { store = try KeyStoreAccess(snapshot: snapshot(), policies: policies) } catch {
            return Self.error(KeyAPIError(status: 503, code: "STORE_UNAVAILABLE", message: "\(error)"))
        }
        var ops = KeyOperations(store: store, caller: caller)
        if let usage { ops.lastUsed = { usage.lastUsedHour(keyID: $0) } }
        // A retried mutation answers what the first did.
        var claim: IdempotencyStore.Claim?
        if mutation, let key = r.header("Idempotency-Key") {
            guard !key.isEmpty, key.utf8.count <= 255 else { return Self.error(.bad("Idempotency-Key: 1 to 255 characters")) }
            let scope = caller.name + " " + r.method + " " + r.path + " " + key
            switch idempotency.claim(scope: scope, request: r.body, redis: store.redisDirectory) {
            case .replay(let status, let stored): return Self.json(status, stored, replayed: true)
            case .mismatch: return Self.error(KeyAPIError(status: 422, code: "IDEMPOTENCY_MISMATCH",
                                                          message: "Idempotency-Key reused with a different request"))
            case .inProgress: return Self.error(KeyAPIError(status: 409, code: "IN_PROGRESS", message: "the first request with this Idempotency-Key is still running"))
            case .claimed(let c): claim = c
            case .unavailable: return Self.error(KeyAPIError(status: 503, code: "STORE_UNAVAILABLE", message: "idempotency records unavailable"))
            }
        }
        do {
            let (status, out) = try body(ops, json)
            if let claim {
                var kept = out
                if kept["key"] != nil { kept["key"] = NSNull() }   // the plain key is shown once, never stored
                idempotency.complete(claim, status: status, body: Self.encode(kept), redis: store.redisDirectory)
            }
            return Self.json(status, Self.encode(out), replayed: false)
        } catch let e as KeyAPIError {
            if let claim { idempotency.release(claim, redis: store.redisDirectory) }
            return Self.error(e)
        } catch {
            if let claim { idempotency.release(claim, redis: store.redisDirectory) }
            return Self.error(KeyAPIError(status: 500, code: "INTERNAL", message: "\(error)"))
        }
    }

    /// For the other `/v1/…` paths: nil when the caller may read every key's data.
    func refusal(_ r: ReferenceRequest) -> ReferenceResponse? {
        switch authenticate(r) {
        case .failure(let e): return Self.error(e)
        case .success(let c):
            if c.owner != nil { return Self.error(KeyAPIError(status: 403, code: "INSUFFICIENT_SCOPE", message: "an admin credential is required")) }
            return nil
        }
    }

    /// The caller of a request with `Authorization: Bearer <token>`.
    func authenticate(_ r: ReferenceRequest) -> Result<KeyCaller, KeyAPIError> {
        guard let h = r.header("Authorization"), h.count > 7, h.prefix(7).lowercased() == "bearer " else {
            return .failure(KeyAPIError(status: 401, code: "MISSING_CREDENTIAL", message: "Authorization: Bearer <admin token> required"))
        }
        return credential(String(h.dropFirst(7)).trimmingCharacters(in: .whitespaces)).map(\.caller)
    }

    /// An admin credential: a bootstrap token from `admin.tokens_file`, or a JWT verified with
    /// `credentials.jwt` (its consumer's own keys, or every key with `role: admin`).
    func credential(_ token: String) -> Result<AdminCredential, KeyAPIError> {
        let hash = KeyHash.sha256(token)
        if let name = tokens.match(hash) {
            return .success(AdminCredential(caller: KeyCaller(kind: .adminToken, name: name), expiresAt: nil, tokenHash: hash))
        }
        if let jwt = snapshot().jwt, token.utf8.count <= 8192 {
            switch jwt.verify(token, now: wallClockSeconds()) {
            case .success(let claims):
                let caller = claims.isAdmin ? KeyCaller(kind: .adminToken, name: "jwt:" + claims.consumer)
                                            : KeyCaller(kind: .consumer, name: claims.consumer)
                return .success(AdminCredential(caller: caller, expiresAt: claims.expiresAt, tokenHash: nil))
            case .failure(let refusal):
                return .failure(KeyAPIError(status: 401, code: refusal.code.rawValue, message: "the token was refused"))
            }
        }
        return .failure(KeyAPIError(status: 401, code: "INVALID_TOKEN", message: "not an admin credential"))
    }

    /// The caller's rate limit (20 requests per second, bursts of 40).
    func admit(_ caller: String) -> Bool { callers.admit(caller) }

    // MARK: bodies

    static func newKey(_ b: [String: Any], caller: KeyCaller) throws -> KeyOperations.NewKey {
        let consumer = (b["consumer"] as? String) ?? caller.owner ?? ""
        guard !consumer.isEmpty else { throw KeyAPIError.bad("consumer is required") }
        guard let scopes = (b["scopes"] ?? [String]()) as? [String] else { throw KeyAPIError.bad("scopes: a list of strings") }
        var k = KeyOperations.NewKey(consumer: consumer, scopes: scopes)
        let p = try patch(b)
        if let plan = p.plan { k.plan = plan }
        if let a = p.allowIPs { k.allowIPs = a }
        if let x = p.expires { k.expires = x }
        if let h = p.requireHTTPS { k.requireHTTPS = h }
        if let m = p.metadata { k.metadata = m }
        if let id = b["id"] { guard let s = id as? String else { throw KeyAPIError.bad("id: a string") }; k.id = s }
        return k
    }

    static func patch(_ b: [String: Any]) throws -> KeyOperations.Patch {
        var p = KeyOperations.Patch()
        let known: Set<String> = ["consumer", "scopes", "plan", "allow_ips", "expires", "require_https", "metadata", "id"]
        if let unknown = b.keys.first(where: { !known.contains($0) }) { throw KeyAPIError.bad("unknown field \(unknown)") }
        if let s = b["scopes"] { guard let v = s as? [String] else { throw KeyAPIError.bad("scopes: a list of strings") }; p.scopes = v }
        if let v = b["plan"] {
            if v is NSNull { p.plan = .some(nil) } else if let s = v as? String { p.plan = .some(s) } else { throw KeyAPIError.bad("plan: a string or null") }
        }
        if let v = b["allow_ips"] {
            if v is NSNull { p.allowIPs = .some(nil) } else if let a = v as? [String] { p.allowIPs = .some(a) } else { throw KeyAPIError.bad("allow_ips: a list of CIDRs or null") }
        }
        if let v = b["expires"] {
            if v is NSNull { p.expires = .some(nil) } else if let s = v as? String, let d = ISO8601DateFormatter().date(from: s) {
                p.expires = .some(Int64(d.timeIntervalSince1970))
            } else { throw KeyAPIError.bad("expires: an RFC 3339 time or null") }
        }
        if let v = b["require_https"] { guard let h = v as? Bool else { throw KeyAPIError.bad("require_https: true or false") }; p.requireHTTPS = h }
        if let v = b["metadata"] { guard let m = v as? [String: String] else { throw KeyAPIError.bad("metadata: an object of strings") }; p.metadata = m }
        return p
    }

    // MARK: answers

    static func encode(_ o: [String: Any]) -> [UInt8] {
        Array((try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data("{}".utf8))
    }

    static func json(_ status: Int, _ body: [UInt8], replayed: Bool) -> ReferenceResponse {
        var h: [(name: String, value: String)] = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        if replayed { h.append(("Idempotent-Replayed", "true")) }
        return ReferenceResponse(status: status, headers: h, body: .bytes(body))
    }

    static func error(_ e: KeyAPIError, retryAfter: Int? = nil) -> ReferenceResponse {
        var h: [(name: String, value: String)] = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        if e.status == 401 { h.append(("WWW-Authenticate", "Bearer realm=\"tollgate-admin\"")) }
        if let retryAfter { h.append(("Retry-After", String(retryAfter))) }
        return ReferenceResponse(status: e.status, headers: h, body: .bytes(encode(["error": ["code": e.code, "message": e.message]])))
    }
}

/// A verified admin credential: who calls, until when.
struct AdminCredential {
    var caller: KeyCaller
    /// Wall-clock seconds at which it stops being valid (a JWT's `exp`); nil for a bootstrap token.
    var expiresAt: Int64?
    /// A bootstrap token's hash (never the token).
    var tokenHash: KeyHash?
}

/// `admin.tokens_file`: `sha256:<hex>` per line (`#` comments, blank lines). Read again when
/// the file changes. A token is matched by its hash in constant time.
final class AdminTokens: Sendable {
    let path: String?
    private let state = Mutex<(mtime: Int, hashes: [KeyHash])>((-1, []))

    init(path: String?) { self.path = path }

    /// The caller's name for the audit trail (`token:` + the first 8 hex of its hash), or nil.
    func match(_ token: String) -> String? { match(KeyHash.sha256(token)) }

    /// As ``match(_:)``, for a token already hashed (a dashboard session keeps only the hash,
    /// and ends when the token leaves the file).
    func match(_ h: KeyHash) -> String? {
        guard let path else { return nil }
        var st = stat()
        let mtime = stat(path, &st) == 0 ? Int(st.st_mtim.tv_sec) &* 1_000_000_000 &+ Int(st.st_mtim.tv_nsec) : -2
        let hashes = state.withLock { s -> [KeyHash] in
            if s.mtime != mtime {
                s.mtime = mtime
                s.hashes = Self.read(path)
            }
            return s.hashes
        }
        var found = false
        for x in hashes { found = found || ((x.w0 ^ h.w0) | (x.w1 ^ h.w1) | (x.w2 ^ h.w2) | (x.w3 ^ h.w3)) == 0 }
        return found ? "token:" + String(h.hex.prefix(8)) : nil
    }

    static func read(_ path: String) -> [KeyHash] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        var out: [KeyHash] = []
        for line in text.split(whereSeparator: \.isNewline) {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.isEmpty || t.hasPrefix("#") { continue }
            guard t.hasPrefix("sha256:"), let h = KeyHash(hex: String(t.dropFirst(7))) else { continue }
            out.append(h)
        }
        return out
    }
}
