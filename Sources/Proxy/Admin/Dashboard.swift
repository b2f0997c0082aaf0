import CSystem
import Foundation
import Glibc
import Policy
import Runtime
import ReferenceBackends
import Synchronization

/// The dashboard on the admin listener (`/`): one server-rendered page, no script, behind
/// the admin credential (POLICY.md, "Admin credentials"). Keys with their status, usage over
/// time per key, recent security events, store and sink health (``DashboardPage``). It reads
/// the usage aggregates, the key store and the audit trail; it never shows a key, a hash or
/// a secret.
///
/// Signing in:
/// - `GET /login` is a form; `POST /login` (`token=`, form-encoded) with an admin token or
///   admin JWT opens a session (``DashboardSessions``): an `HttpOnly`, `SameSite=Strict`
///   cookie, then 303 to `/`. A wrong token answers 401; failed sign-ins are limited per
///   client address (`failures`), 429 past that.
/// - `POST /v1/dashboard/links` (Bearer, like the key API) answers a one-time link
///   `/login/<name>` valid 60 s, for a browser that cannot post a form (a screenshot, an
///   operator's `tollgate dashboard link`): opening it opens a session for the same caller.
/// - `POST /logout` ends the session.
/// - API clients may also read `/` with `Authorization: Bearer`. With neither, `/` answers
///   303 to `/login`.
///
/// A consumer's JWT sees that consumer's keys, their usage and their events only (no
/// lock-outs of networks, no health).
final class Dashboard: Sendable {
    let keys: KeyAPI
    let usage: UsageAggregates?
    let readiness: AdminServer.Readiness
    let sessions = DashboardSessions()
    /// Failed sign-ins per client address: bursts of 10, then one every 6 s.
    let failures = AdminRateLimiter(rate: 1.0 / 6, burst: 10)

    init(keys: KeyAPI, usage: UsageAggregates?, readiness: AdminServer.Readiness) {
        self.keys = keys
        self.usage = usage
        self.readiness = readiness
    }

    func register(into router: inout ReferenceRouter) {
        router.add("GET", "/") { [self] r in page(r) }
        router.add("GET", "/login") { [self] r in
            if signedIn(r) != nil { return Self.redirect("/") }
            return Self.html(200, DashboardPage.login(message: nil))
        }
        router.add("POST", "/login") { [self] r in login(r) }
        router.add("GET", "/login/{name}") { [self] r in redeem(r) }
        router.add("POST", "/logout") { [self] r in
            guard Self.isSameOrigin(r) else { return Self.html(403, DashboardPage.message("Forbidden", "Cross-site request refused.")) }
            if let c = Self.cookie(r) { sessions.close(c) }
            return Self.redirect("/login", cookie: Self.expiredCookie)
        }
        router.add("POST", "/v1/dashboard/links") { [self] r in link(r) }
    }

    static func now() -> Int64 { wallClockSeconds() }

    // MARK: who is asking

    /// The caller of a request: a valid `Authorization: Bearer` credential or a live session
    /// (a bootstrap token's session ends when the token leaves `admin.tokens_file`).
    private func signedIn(_ r: ReferenceRequest) -> KeyCaller? {
        if r.header("Authorization") != nil {
            if case .success(let c) = keys.authenticate(r) { return c }
            return nil
        }
        guard let cookie = Self.cookie(r), let credential = sessions.session(cookie, now: Self.now()) else { return nil }
        if let h = credential.tokenHash, keys.tokens.match(h) == nil {
            sessions.close(cookie)
            return nil
        }
        return credential.caller
    }

    // MARK: the page

    private func page(_ r: ReferenceRequest) -> ReferenceResponse {
        if r.header("Authorization") != nil, case .failure(let e) = keys.authenticate(r) {
            return Self.html(e.status, DashboardPage.message("Not signed in", "The Authorization header does not carry an admin credential."),
                             extra: [("WWW-Authenticate", "Bearer realm=\"tollgate-admin\"")])
        }
        guard let caller = signedIn(r) else { return Self.redirect("/login") }
        guard keys.admit(caller.name) else {
            return Self.html(429, DashboardPage.message("Too many requests", "Wait a second and reload."), extra: [("Retry-After", "1")])
        }
        let window = DashboardWindow(rawValue: r.query("window") ?? "") ?? .day
        let focus = r.query("key").flatMap { $0.isEmpty ? nil : $0 }
        let model = gather(caller: caller, window: window, focus: focus)
        return Self.html(200, DashboardPage(model: model).render())
    }

    /// Everything the page shows, read once per request.
    func gather(caller: KeyCaller, window: DashboardWindow, focus: String?) -> DashboardModel {
        let now = Self.now()
        var m = DashboardModel(caller: caller, now: now, window: window, focus: focus)
        let snapshot = keys.snapshot()
        do {
            let store = try KeyStoreAccess(snapshot: snapshot, policies: keys.policies)
            var ops = KeyOperations(store: store, caller: caller)
            if let usage { ops.lastUsed = { usage.lastUsedHour(keyID: $0) } }
            m.keys = try ops.list(after: nil, limit: DashboardModel.maximumKeys + 1).keys
            if m.keys.count > DashboardModel.maximumKeys {
                m.keys.removeLast()
                m.isKeyListCut = true
            }
        } catch {
            m.keysError = "\(error)"
        }
        if let focus, !m.keys.contains(where: { $0.id == focus }) { m.focusMissing = true }
        m.hasUsage = usage != nil
        if let usage {
            for k in m.keys {
                m.series[k.id] = series(usage, key: k.id, window: window, now: now)
                if let last = usage.recentMinutes(key: k.id).last(where: { $0.bucket.requests > 0 }) { m.lastMinute[k.id] = last.start }
            }
        }
        let visible = Set(m.keys.map(\.id))
        if let audit = snapshot.audit {
            m.auditPath = audit.path
            let owner = caller.owner
            let focused = m.focusMissing ? nil : focus
            m.events = DashboardEvents.recent(path: audit.path, limit: DashboardModel.maximumEvents) { e in
                if let focused, !e.keyIDs.contains(focused) { return false }
                guard let owner else { return true }
                return e.consumer == owner || e.keyIDs.contains(where: visible.contains)
            }
        }
        if caller.owner == nil { m.health = health(auditPath: snapshot.audit?.path) }
        return m
    }

    /// One key's buckets over the window's slots (oldest first; empty slots are zero).
    func series(_ usage: UsageAggregates, key: String, window: DashboardWindow, now: Int64) -> [UsageAggregates.Bucket] {
        let starts = window.slotStarts(now: now)
        guard let first = starts.first else { return [] }
        var out = [UsageAggregates.Bucket](repeating: UsageAggregates.Bucket(), count: starts.count)
        let rows: [(start: Int64, bucket: UsageAggregates.Bucket)]
        switch window {
        case .hour: rows = usage.recentMinutes(key: key)
        case .day, .week, .month: rows = usage.query(key: key, from: first, to: now + 3600, byDay: false)
        }
        for (start, b) in rows where start >= first {
            let i = Int((start - first) / window.slotSeconds)
            guard i < out.count else { continue }
            out[i].add(b)
        }
        return out
    }

    func health(auditPath: String?) -> DashboardModel.Health {
        let metrics = MetricsRegistry.shared
        var h = DashboardModel.Health()
        let (ready, why) = AdminServer.ready(readiness)
        h.isReady = ready
        h.readiness = why
        h.store = metrics.storeState()
        h.degradedOpen = metrics.gaugeSum(.degradedOpen)
        h.degradedLocal = metrics.gaugeSum(.degradedLocal)
        h.connections = metrics.gaugeSum(.http1Connections) &+ metrics.gaugeSum(.h2Connections)
        h.reloadsOK = metrics.reloadsOK.load(ordering: .relaxed)
        h.reloadsRejected = metrics.reloadsRejected.load(ordering: .relaxed)
        for spool in metrics.usageSpoolList() {
            let c = spool.counters
            h.spool = .init(written: c.written.load(ordering: .relaxed), dropped: c.dropped.load(ordering: .relaxed),
                            spilled: c.spilled.load(ordering: .relaxed), bytes: c.spoolBytes.load(ordering: .relaxed))
            for s in spool.sinks {
                h.sinks.append(.init(label: s.spec.label, delivered: s.delivered.load(ordering: .relaxed),
                                     failed: s.failed.load(ordering: .relaxed), lagBytes: spool.lag(of: s)))
            }
        }
        let monitors = metrics.securityMonitorList()
        if !monitors.isEmpty {
            func total(_ f: (SecurityMonitor) -> UInt64) -> UInt64 { monitors.reduce(0) { $0 &+ f($1) } }
            h.security = .init(bans: total { UInt64($0.bansInForce) }, tracked: total { UInt64($0.trackedNetworks) },
                               lockouts: total { $0.lockoutsAnnounced.load(ordering: .relaxed) },
                               autoDisabled: total { $0.disabledForRefusals.load(ordering: .relaxed) &+ $0.disabledForNetworks.load(ordering: .relaxed) })
        }
        if let auditPath {
            var st = stat()
            h.audit = stat(auditPath, &st) == 0 ? .init(path: auditPath, bytes: UInt64(st.st_size), modified: Int64(st.st_mtim.tv_sec))
                                                  : .init(path: auditPath, bytes: nil, modified: nil)
        }
        return h
    }

    // MARK: signing in

    private func login(_ r: ReferenceRequest) -> ReferenceResponse {
        guard Self.isSameOrigin(r) else { return Self.html(403, DashboardPage.message("Forbidden", "Cross-site sign-in refused.")) }
        if let limited = throttled(r) { return limited }
        guard r.body.count <= 16 * 1024, let token = Self.form(r.body)["token"], !token.isEmpty else {
            return Self.html(400, DashboardPage.login(message: "Enter an admin token."))
        }
        switch keys.credential(token.trimmingCharacters(in: .whitespacesAndNewlines)) {
        case .success(let credential):
            return start(credential, at: "/", r)
        case .failure:
            _ = failures.admit(r.peer)
            return Self.html(401, DashboardPage.login(message: "That token is not an admin credential."))
        }
    }

    private func redeem(_ r: ReferenceRequest) -> ReferenceResponse {
        if let limited = throttled(r) { return limited }
        guard let link = sessions.redeem(r.pathParameters["name"] ?? "", now: Self.now()),
              link.credential.tokenHash.map({ keys.tokens.match($0) != nil }) ?? true else {
            _ = failures.admit(r.peer)
            return Self.html(401, DashboardPage.message("Sign-in link not valid",
                                                        "This link was used already, has expired (links last 60 seconds), or never existed.",
                                                        link: ("/login", "Sign in with a token")))
        }
        return start(link.credential, at: link.path, r)
    }

    /// 429 while the client's address has spent its failed sign-ins.
    private func throttled(_ r: ReferenceRequest) -> ReferenceResponse? {
        let wait = failures.wait(r.peer)
        guard wait > 0 else { return nil }
        return Self.html(429, DashboardPage.message("Too many failed sign-ins", "Try again in \(wait) s."),
                         extra: [("Retry-After", String(wait))])
    }

    private func start(_ credential: AdminCredential, at path: String, _ r: ReferenceRequest) -> ReferenceResponse {
        let (cookie, maxAge) = sessions.open(credential, now: Self.now())
        Log.info("dashboard: session opened for \(credential.caller.name)")
        var value = "\(DashboardSessions.cookieName)=\(cookie); Path=/; Max-Age=\(maxAge); HttpOnly; SameSite=Strict"
        if r.header("X-Forwarded-Proto")?.lowercased() == "https" { value += "; Secure" }
        return Self.redirect(path, cookie: value)
    }

    /// `POST /v1/dashboard/links {path?}` → 201 `{url, path, expires}`.
    private func link(_ r: ReferenceRequest) -> ReferenceResponse {
        let header = r.header("Authorization") ?? ""
        guard header.count > 7, header.prefix(7).lowercased() == "bearer " else {
            return KeyAPI.error(KeyAPIError(status: 401, code: "MISSING_CREDENTIAL", message: "Authorization: Bearer <admin token> required"))
        }
        let credential: AdminCredential
        switch keys.credential(String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)) {
        case .success(let c): credential = c
        case .failure(let e): return KeyAPI.error(e)
        }
        guard keys.admit(credential.caller.name) else {
            return KeyAPI.error(KeyAPIError(status: 429, code: "RATE_LIMITED", message: "too many admin requests"), retryAfter: 1)
        }
        var path = "/"
        if !r.body.isEmpty {
            guard r.body.count <= 4096, let o = (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any],
                  o.keys.allSatisfy({ $0 == "path" }) else {
                return KeyAPI.error(.bad("the body must be a JSON object with at most a \"path\""))
            }
            if let p = o["path"] {
                guard let s = p as? String, Self.isDashboardPath(s) else {
                    return KeyAPI.error(.bad("path: the dashboard, \"/\" or \"/?…\" (such as \"/?window=1h\")"))
                }
                path = s
            }
        }
        let (name, expires) = sessions.mintLink(credential, path: path, now: Self.now())
        let o = ["url": "/login/" + name, "path": path, "expires": KeyView.rfc3339(expires)]
        let body = (try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return KeyAPI.json(201, Array(body), replayed: false)
    }

    /// Where a link may lead: the dashboard itself, with a query of printable ASCII.
    static func isDashboardPath(_ s: String) -> Bool {
        guard s == "/" || s.hasPrefix("/?"), s.utf8.count <= 512 else { return false }
        return s.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "\\") }
    }

    // MARK: HTTP details

    static let pageHeaders: [(name: String, value: String)] = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "no-store"),
    ]

    static let expiredCookie = "\(DashboardSessions.cookieName)=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"

    static func html(_ status: Int, _ body: String, extra: [(name: String, value: String)] = []) -> ReferenceResponse {
        ReferenceResponse(status: status, headers: pageHeaders + extra, body: .bytes(Array(body.utf8)))
    }

    static func redirect(_ location: String, cookie: String? = nil) -> ReferenceResponse {
        var h: [(name: String, value: String)] = [("Location", location), ("Cache-Control", "no-store"), ("Referrer-Policy", "no-referrer"),
                                                  ("Content-Type", "text/plain; charset=utf-8")]
        if let cookie { h.append(("Set-Cookie", cookie)) }
        return ReferenceResponse(status: 303, headers: h, body: .bytes(Array("see \(location)\n".utf8)))
    }

    /// The session cookie's value, if the request has one.
    static func cookie(_ r: ReferenceRequest) -> String? {
        for (name, value) in r.headers where name.lowercased() == "cookie" {
            for part in value.split(separator: ";") {
                let t = part.trimmingCharacters(in: .whitespaces)
                if t.hasPrefix(DashboardSessions.cookieName + "=") { return String(t.dropFirst(DashboardSessions.cookieName.count + 1)) }
            }
        }
        return nil
    }

    /// No `Origin`, or one naming this host (a form posted from another site is refused even
    /// before `SameSite` would keep its cookie away).
    static func isSameOrigin(_ r: ReferenceRequest) -> Bool {
        guard let origin = r.header("Origin") else { return true }
        guard let host = r.header("Host")?.lowercased() else { return false }
        let o = origin.lowercased()
        return o == "http://" + host || o == "https://" + host
    }

    /// `application/x-www-form-urlencoded` fields (the first of each name).
    static func form(_ body: [UInt8]) -> [String: String] {
        var out: [String: String] = [:]
        for pair in body.split(separator: UInt8(ascii: "&")) {
            let parts = pair.split(separator: UInt8(ascii: "="), maxSplits: 1, omittingEmptySubsequences: false)
            let name = percentDecode(parts[0])
            if out[name] == nil { out[name] = parts.count > 1 ? percentDecode(parts[1]) : "" }
        }
        return out
    }

    static func percentDecode(_ s: ArraySlice<UInt8>) -> String {
        func hex(_ b: UInt8) -> UInt8? {
            switch b {
            case 0x30...0x39: return b - 0x30
            case 0x41...0x46: return b - 0x41 + 10
            case 0x61...0x66: return b - 0x61 + 10
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(s.count)
        var i = s.startIndex
        while i < s.endIndex {
            let b = s[i]
            if b == UInt8(ascii: "+") {
                out.append(0x20)
            } else if b == UInt8(ascii: "%"), i + 2 < s.endIndex,
                      let h = hex(s[i + 1]), let l = hex(s[i + 2]) {
                out.append(h << 4 | l)
                i += 2
            } else {
                out.append(b)
            }
            i += 1
        }
        return String(decoding: out, as: UTF8.self)
    }
}
