import Foundation
import Glibc
import Policy
import Testing
@testable import Proxy

/// The dashboard on the admin listener, through the real binary over real sockets: signing
/// in (form, session cookie, one-time links, sign-out), who sees what (a consumer's JWT sees
/// its own keys), and what it never shows (a key, its hash). The last test drives headless
/// Chromium through a scripted session and writes the screenshot.
@Suite(.serialized) struct DashboardTests {
    struct Gateway {
        let dir: String
        let port = freePort()
        let admin = freePort()
        var policy: String { dir + "/gateway.yaml" }
    }

    static let jwtSecret = "dashboard-jwt-secret-0123456789abcdef"

    /// A gateway with the admin listener, usage records, an audit trail, local credits, a
    /// rate-limited plan and three routes (one needs another scope, one costs credits).
    static func gateway(_ tag: String, upstream: UInt16, jwt: Bool = false, security: String = "") -> Gateway {
        let g = Gateway(dir: makeTempDir(tag))
        writeFile(g.dir + "/admin-tokens", "# the tests' bootstrap token\n" + AdminAuth.tokensFileLine + "\n")
        let credentials = jwt ? """
        credentials:
          api_key: {headers: [X-API-Key]}
          jwt: {algorithms: [HS256], secret_env: TG_DASH_JWT, required_claims: {type: access}, consumer_claim: sub, scopes_claim: scope}
        """ : ""
        writeFile(g.policy, """
        version: 1
        listen:
          - address: 127.0.0.1:\(g.port)
        admin: {address: "127.0.0.1:\(g.admin)", tokens_file: admin-tokens}
        usage:
          spool: spool
          durability: 0ms
        audit:
          path: audit.jsonl
        credits:
          ledger: local
          account: consumer
        plans:
          starter:
            rate_limits:
              - {requests: 5, per: 1s, burst: 5}
        clients:
          trusted_proxies: [127.0.0.1/32]
        \(security)
        \(credentials)
        backends:
          up: {url: "http://127.0.0.1:\(upstream)"}
        routes:
          - {name: reports, match: {path_prefix: /reports/}, backend: up, scopes: ["reports:read"]}
          - {name: paid, match: {path_prefix: /paid/}, backend: up, scopes: [read], credits: {per_request: 2}}
          - {name: all, match: {path_prefix: /}, backend: up, scopes: [read]}

        """)
        return g
    }

    static func serve(_ g: Gateway, jwt: Bool = false) throws -> TollgateProcess {
        let tg = try TollgateProcess(policies: g.policy, port: g.port, environment: jwt ? ["TG_DASH_JWT": jwtSecret] : [:])
        #expect(try poll(timeout: 10) { try get(g.admin, "/readyz").status == 200 } != nil)
        return tg
    }

    /// One request on a fresh connection, every byte ours.
    static func send(_ port: UInt16, _ method: String, _ path: String, headers: [String: String] = [:],
                     form: String? = nil, json: String? = nil) throws -> HTTPResponse {
        let c = try RawClient(port: port)
        defer { c.close() }
        var raw = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
        for (k, v) in headers { raw += "\(k): \(v)\r\n" }
        if let form {
            raw += "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: \(form.utf8.count)\r\n\r\n\(form)"
        } else if let json {
            raw += "Content-Type: application/json\r\nContent-Length: \(json.utf8.count)\r\n\r\n\(json)"
        } else {
            raw += method == "POST" ? "Content-Length: 0\r\n\r\n" : "\r\n"
        }
        return try c.request(raw, method: method)
    }

    /// Mints a key through the key API: (id, plain key).
    static func mint(_ g: Gateway, _ body: String) throws -> (id: String, key: String) {
        let r = try send(g.admin, "POST", "/v1/keys", headers: AdminAuth.header, json: body)
        #expect(r.status == 201, "\(r.text)")
        let o = r.json ?? [:]
        return (try #require(o["id"] as? String), try #require(o["key"] as? String))
    }

    static func use(_ g: Gateway, _ key: String, _ path: String = "/x") -> Int {
        (try? get(g.port, path, headers: ["X-API-Key": key]).status) ?? -1
    }

    /// Requests the usage aggregates have counted for `id` (the spool writer adds them just
    /// after the answers).
    static func counted(_ g: Gateway, _ id: String) -> Int {
        guard let r = try? adminGet(g.admin, "/v1/usage?key_id=\(id)&by=hour"), r.status == 200,
              let buckets = r.json?["buckets"] as? [[String: Any]] else { return -1 }
        return buckets.reduce(0) { $0 + ($1["requests"] as? Int ?? 0) }
    }

    static func sessionCookie(_ r: HTTPResponse) -> String? {
        for v in r.headers("Set-Cookie") where v.hasPrefix(DashboardSessions.cookieName + "=") {
            let value = v.split(separator: ";")[0].dropFirst(DashboardSessions.cookieName.count + 1)
            return value.isEmpty ? nil : String(value)
        }
        return nil
    }

    static func pageHeadersAreStrict(_ r: HTTPResponse) {
        #expect(r.header("Content-Security-Policy")?.hasPrefix("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'") == true)
        #expect(r.header("X-Frame-Options") == "DENY")
        #expect(r.header("Cache-Control") == "no-store")
        #expect(r.header("Content-Type") == "text/html; charset=utf-8")
    }

    // MARK: signing in

    /// No credential: 303 to `/login`. The form signs in with the admin token: an HttpOnly,
    /// SameSite=Strict session cookie for `/`, then 303 to `/`; a wrong token is a 401 page;
    /// a form posted from another origin is refused; signing out ends the session.
    @Test func signingInWithTheFormOpensAStrictSession() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let g = Self.gateway("tgdash-login", upstream: up.port)
        defer { try? FileManager.default.removeItem(atPath: g.dir) }
        let tg = try Self.serve(g)
        defer { tg.stop() }

        let anonymous = try get(g.admin, "/")
        #expect(anonymous.status == 303 && anonymous.header("Location") == "/login")
        let form = try get(g.admin, "/login")
        #expect(form.status == 200 && form.text.contains("<form method=\"post\" action=\"/login\">"))
        Self.pageHeadersAreStrict(form)

        let wrong = try Self.send(g.admin, "POST", "/login", form: "token=not-the-token")
        #expect(wrong.status == 401 && wrong.text.contains("not an admin credential"))
        #expect(Self.sessionCookie(wrong) == nil)
        let crossSite = try Self.send(g.admin, "POST", "/login", headers: ["Origin": "http://evil.example"],
                                      form: "token=" + AdminAuth.token)
        #expect(crossSite.status == 403 && Self.sessionCookie(crossSite) == nil)

        let ok = try Self.send(g.admin, "POST", "/login", headers: ["Origin": "http://127.0.0.1:\(g.admin)"],
                               form: "token=" + AdminAuth.token)
        #expect(ok.status == 303 && ok.header("Location") == "/")
        let setCookie = try #require(ok.header("Set-Cookie"))
        let attributes = Set(setCookie.split(separator: ";").dropFirst().map { $0.trimmingCharacters(in: .whitespaces) })
        #expect(attributes.contains("HttpOnly") && attributes.contains("SameSite=Strict") && attributes.contains("Path=/"), "\(setCookie)")
        #expect(attributes.contains("Max-Age=\(DashboardSessions.sessionLifetime)"), "\(setCookie)")
        let cookie = try #require(Self.sessionCookie(ok))
        #expect(cookie.utf8.count == 43)   // 256 random bits, base64url
        #expect(!tg.log.contains(cookie))

        let page = try get(g.admin, "/", headers: ["Cookie": "other=1; \(DashboardSessions.cookieName)=\(cookie)"])
        #expect(page.status == 200)
        Self.pageHeadersAreStrict(page)
        for id in ["id=\"keys\"", "id=\"usage-chart\"", "id=\"events\"", "id=\"health\"", "token:"] { #expect(page.text.contains(id), "\(id)") }
        #expect(!page.text.contains("<script"))

        // API clients: Bearer works, a wrong one is a 401 (not a redirect).
        #expect(try get(g.admin, "/", headers: AdminAuth.header).status == 200)
        #expect(try get(g.admin, "/", headers: ["Authorization": "Bearer nope"]).status == 401)
        // The session is not an API credential.
        #expect(try get(g.admin, "/v1/keys", headers: ["Cookie": "\(DashboardSessions.cookieName)=\(cookie)"]).status == 401)

        let out = try Self.send(g.admin, "POST", "/logout", headers: ["Cookie": "\(DashboardSessions.cookieName)=\(cookie)"])
        #expect(out.status == 303 && out.header("Location") == "/login")
        #expect(out.header("Set-Cookie")?.contains("Max-Age=0") == true)
        let after = try get(g.admin, "/", headers: ["Cookie": "\(DashboardSessions.cookieName)=\(cookie)"])
        #expect(after.status == 303 && after.header("Location") == "/login")
    }

    /// Failed sign-ins from one address: ten, then 429 with Retry-After, for a right token
    /// too; a session opened before keeps working, and so does a Bearer caller.
    @Test func failedSignInsAreRateLimited() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let g = Self.gateway("tgdash-limit", upstream: up.port)
        defer { try? FileManager.default.removeItem(atPath: g.dir) }
        let tg = try Self.serve(g)
        defer { tg.stop() }
        let cookie = try #require(Self.sessionCookie(try Self.send(g.admin, "POST", "/login", form: "token=" + AdminAuth.token)))
        var statuses: [Int] = []
        for i in 0..<12 { statuses.append(try Self.send(g.admin, "POST", "/login", form: "token=wrong-\(i)").status) }
        #expect(statuses.prefix(10).allSatisfy { $0 == 401 } && statuses.suffix(2).allSatisfy { $0 == 429 }, "\(statuses)")
        let limited = try Self.send(g.admin, "POST", "/login", form: "token=" + AdminAuth.token)
        #expect(limited.status == 429 && Int(limited.header("Retry-After") ?? "") ?? 0 > 0)
        #expect(Self.sessionCookie(limited) == nil)
        // Guessing links counts the same.
        #expect(try get(g.admin, "/login/" + String(repeating: "A", count: 43)).status == 429)
        #expect(try get(g.admin, "/", headers: ["Cookie": "\(DashboardSessions.cookieName)=\(cookie)"]).status == 200)
        #expect(try get(g.admin, "/", headers: AdminAuth.header).status == 200)
    }

    /// `POST /v1/dashboard/links` (Bearer): a link that signs a browser in once, within 60 s,
    /// and leads to the dashboard path it was made for; only dashboard paths. The command
    /// line asks for one the same way.
    @Test func aOneTimeLinkSignsInOnce() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let g = Self.gateway("tgdash-link", upstream: up.port)
        defer { try? FileManager.default.removeItem(atPath: g.dir) }
        let tg = try Self.serve(g)
        defer { tg.stop() }

        #expect(try Self.send(g.admin, "POST", "/v1/dashboard/links", json: "{}").status == 401)
        #expect(try Self.send(g.admin, "POST", "/v1/dashboard/links", headers: AdminAuth.header,
                              json: #"{"path":"//evil.example/"}"#).status == 400)
        #expect(try Self.send(g.admin, "POST", "/v1/dashboard/links", headers: AdminAuth.header,
                              json: #"{"path":"/v1/keys"}"#).status == 400)
        let minted = try Self.send(g.admin, "POST", "/v1/dashboard/links", headers: AdminAuth.header, json: #"{"path":"/?window=1h"}"#)
        #expect(minted.status == 201 && minted.header("Cache-Control") == "no-store")
        let url = try #require(minted.json?["url"] as? String)
        #expect(url.hasPrefix("/login/") && url.utf8.count == 7 + 43)
        let expires = try #require((minted.json?["expires"] as? String).flatMap { ISO8601DateFormatter().date(from: $0) })
        #expect(expires.timeIntervalSinceNow <= 61 && expires.timeIntervalSinceNow > 50)

        let first = try get(g.admin, url)
        #expect(first.status == 303 && first.header("Location") == "/?window=1h")
        let cookie = try #require(Self.sessionCookie(first))
        let page = try get(g.admin, "/?window=1h", headers: ["Cookie": "\(DashboardSessions.cookieName)=\(cookie)"])
        #expect(page.status == 200 && page.text.contains("last hour, by minute"))
        let again = try get(g.admin, url)
        #expect(again.status == 401 && Self.sessionCookie(again) == nil)

        let (rc, out) = try runTollgate(["dashboard", "link", "--policies", g.policy, "--path", "/?window=7d"],
                                        environment: ["TOLLGATE_ADMIN_TOKEN": AdminAuth.token])
        #expect(rc == 0, "\(out)")
        let printed = try #require(out.split(separator: "\n").first.map(String.init))
        #expect(printed.hasPrefix("http://127.0.0.1:\(g.admin)/login/"), "\(out)")
        let viaCLI = try get(g.admin, String(printed.dropFirst("http://127.0.0.1:\(g.admin)".count)))
        #expect(viaCLI.status == 303 && viaCLI.header("Location") == "/?window=7d")
        #expect(!out.contains(AdminAuth.token))
    }

    /// A consumer's JWT (Bearer, or signed in with the form) sees its consumer's keys and
    /// their events only, and no health; an admin JWT sees every key.
    @Test func aConsumersJWTSeesOnlyItsOwnKeys() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let g = Self.gateway("tgdash-jwt", upstream: up.port, jwt: true)
        defer { try? FileManager.default.removeItem(atPath: g.dir) }
        let mint = try TokenMint(dir: g.dir, secret: Self.jwtSecret)
        let tg = try Self.serve(g, jwt: true)
        defer { tg.stop() }
        let erin = try Self.mint(g, #"{"consumer":"erin","scopes":["read"],"id":"key_erin_1"}"#)
        let gus = try Self.mint(g, #"{"consumer":"gus","scopes":["read"],"id":"key_gus_1"}"#)
        #expect(try Self.send(g.admin, "POST", "/v1/keys/\(gus.id)/disable", headers: AdminAuth.header).status == 200)

        let erinToken = mint.hs(TokenMint.claims("erin"))
        let page = try get(g.admin, "/", headers: ["Authorization": "Bearer " + erinToken])
        #expect(page.status == 200)
        #expect(page.text.contains("key_erin_1") && !page.text.contains("key_gus_1"))
        #expect(!page.text.contains("id=\"health\""))
        #expect(page.text.contains("consumer erin"))
        // Another consumer's key cannot be focused either.
        let focused = try get(g.admin, "/?key=key_gus_1", headers: ["Authorization": "Bearer " + erinToken])
        #expect(!focused.text.contains("key_gus_1\"") && !focused.text.contains("key.disabled"))

        let signIn = try Self.send(g.admin, "POST", "/login", form: "token=" + erinToken)
        let cookie = try #require(Self.sessionCookie(signIn))
        // The session ends with the token (exp in 600 s), not later.
        let setCookie = signIn.header("Set-Cookie") ?? ""
        let maxAge = Int(String((setCookie.components(separatedBy: "Max-Age=").last ?? "").prefix { $0.isNumber })) ?? 0
        #expect(maxAge > 0 && maxAge <= 600)
        let viaCookie = try get(g.admin, "/", headers: ["Cookie": "\(DashboardSessions.cookieName)=\(cookie)"])
        #expect(viaCookie.text.contains("key_erin_1") && !viaCookie.text.contains("key_gus_1"))

        let admin = mint.hs(TokenMint.claims("ops", extra: #""role":"admin""#))
        let all = try get(g.admin, "/", headers: ["Authorization": "Bearer " + admin])
        #expect(all.text.contains("key_erin_1") && all.text.contains("key_gus_1") && all.text.contains("id=\"health\""))
        #expect(all.text.contains("key.disabled"))
        _ = erin
    }

    /// A key minted through the API and used: the page (every window, the key focused) shows
    /// its id, prefix and usage, never the key itself nor its SHA-256 (which the audit
    /// trail's `key.created` entry holds). Data is escaped.
    @Test func thePageNeverShowsAKeyOrItsHash() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let g = Self.gateway("tgdash-secret", upstream: up.port)
        defer { try? FileManager.default.removeItem(atPath: g.dir) }
        let tg = try Self.serve(g)
        defer { tg.stop() }
        let k = try Self.mint(g, #"{"consumer":"<script>alert(1)</script>","scopes":["read"],"metadata":{"team":"\"><img src=x>"}}"#)
        #expect(try poll(timeout: 5) { Self.use(g, k.key) == 200 } != nil)   // minted keys reach the instance within a second
        for _ in 0..<2 { #expect(Self.use(g, k.key) == 200) }
        #expect(Self.use(g, k.key, "/reports/q") == 403)
        #expect(try poll(timeout: 10) { Self.counted(g, k.id) == 4 } != nil)
        let hash = KeyHash.sha256(k.key).hex
        let audit = (try? String(contentsOfFile: g.dir + "/audit.jsonl", encoding: .utf8)) ?? ""
        #expect(audit.contains(hash))   // the trail has it; the page must not

        for path in ["/", "/?window=1h", "/?window=7d", "/?window=30d", "/?key=\(k.id)", "/?key=\(k.id)&window=1h"] {
            let page = try get(g.admin, path, headers: AdminAuth.header)
            #expect(page.status == 200, "\(path)")
            #expect(!page.text.contains(k.key), "\(path) shows the key")
            #expect(!page.text.contains(String(k.key.dropFirst(3))), "\(path) shows the key's body")
            #expect(!page.text.lowercased().contains(hash), "\(path) shows the key's hash")
            #expect(!page.text.contains("sha256:"), "\(path)")
            #expect(!page.text.contains("<script>") && page.text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "\(path)")
            #expect(page.text.contains(k.id) && page.text.contains("key.created"), "\(path)")
        }
        let minute = try get(g.admin, "/?window=1h&key=\(k.id)", headers: AdminAuth.header).text
        #expect(minute.contains("data-code=\"INSUFFICIENT_SCOPE\"") && minute.contains("data-code=\"OK\""))
    }

    // MARK: Chromium

    /// A scripted session: three keys minted through the API; forwarded, rate-limited,
    /// scope-refused, credit-refused and revoked requests; one key revoked, one auto-disabled
    /// for its scope refusals, and a network locked out for guessing keys (clients told apart
    /// by `X-Forwarded-For` from 127.0.0.1, a trusted proxy). Then headless Chromium signs in
    /// with a one-time link and loads the page: the key list, the chart and the events are in
    /// the rendered DOM. A second link takes the screenshot (to a temp dir;
    /// `TOLLGATE_UPDATE_SCREENSHOT=1` also writes `docs/dashboard.png`).
    @Test func chromiumFindsTheKeysTheChartAndTheEvents() throws {
        let chromium = ProcessInfo.processInfo.environment["TOLLGATE_CHROMIUM"] ?? "/usr/bin/chromium"
        try #require(FileManager.default.isExecutableFile(atPath: chromium), "headless Chromium is needed (scripts/deps.sh installs it)")
        let up = try echoUpstream()
        defer { up.stop() }
        let g = Self.gateway("tgdash-chromium", upstream: up.port, security: """
        security:
          lockout: {invalid_keys: 30, per: 1m, for: 10m}
          auto_disable:
            - {refusals: 6, per: 10m}
        """)
        defer { try? FileManager.default.removeItem(atPath: g.dir) }
        let tg = try Self.serve(g)
        defer { tg.stop() }

        let web = try Self.mint(g, #"{"consumer":"acme","scopes":["read","reports:read"],"plan":"starter","id":"key_acme_web"}"#)
        let batch = try Self.mint(g, #"{"consumer":"globex","scopes":["read"],"id":"key_globex_batch"}"#)
        let old = try Self.mint(g, #"{"consumer":"initech","scopes":["read"],"id":"key_initech_old"}"#)
        let (rc, out) = try runTollgate(["credits", "grant", "globex", "16", "--policies", g.policy])
        #expect(rc == 0, "\(out)")

        // Requests each key made that the usage aggregates count (a key not yet known to the
        // instance is refused without a key id, and counted nowhere).
        var sent: [String: Int] = [:]
        var known: Set<String> = []
        func call(_ k: (id: String, key: String), _ path: String) -> HTTPResponse? {
            let r = try? get(g.port, path, headers: ["X-API-Key": k.key])
            let status = r?.status ?? -1
            if status != 401 || known.contains(k.id) { sent[k.id, default: 0] += 1 }
            if status == 200 { known.insert(k.id) }
            return r
        }
        func use(_ k: (id: String, key: String), _ path: String) -> Int { call(k, path)?.status ?? -1 }
        for k in [web, batch, old] { #expect(try poll(timeout: 5) { use(k, "/") == 200 } != nil) }
        // acme: a burst past its plan's 5 per second.
        let burst = (0..<12).map { _ in use(web, "/x") }
        #expect(burst.contains(200) && burst.contains(429), "\(burst)")
        // globex: paid calls until the credits run out, then its reports, out of its scope,
        // until it is disabled for them.
        for _ in 0..<4 { #expect(use(batch, "/") == 200) }
        #expect(try poll(timeout: 10) { use(batch, "/paid/x") == 200 } != nil)   // the grant reaches the instance
        let paid = (0..<10).map { _ in use(batch, "/paid/x") }
        #expect(paid.contains(402), "\(paid)")
        var codes: [String] = []
        for _ in 0..<12 where codes.last != "DISABLED" { codes.append(call(batch, "/reports/q")?.errorCode ?? "?") }
        #expect(codes.first == "INSUFFICIENT_SCOPE" && codes.last == "DISABLED", "\(codes)")
        let auditPath = g.dir + "/audit.jsonl"
        func audited(_ action: String) -> Bool {
            ((try? String(contentsOfFile: auditPath, encoding: .utf8)) ?? "").contains("\"action\":\"\(action)\"")
        }
        #expect(try poll(timeout: 5) { audited("security.auto_disable") } != nil)
        // initech: used, then revoked (and refused so).
        for _ in 0..<5 { #expect(use(old, "/") == 200) }
        #expect(try Self.send(g.admin, "POST", "/v1/keys/\(old.id)/revoke", headers: AdminAuth.header).status == 200)
        #expect(try poll(timeout: 5) { use(old, "/") == 401 } != nil)
        // Someone guessing keys from 203.0.113.9 until that network is locked out.
        var guesses: [String] = []
        for i in 0..<40 where guesses.last != "LOCKED_OUT" {
            let r = try get(g.port, "/x", headers: ["X-API-Key": "tg_guess\(i)", "X-Forwarded-For": "203.0.113.9"])
            guesses.append(r.errorCode ?? "\(r.status)")
        }
        #expect(guesses.first == "INVALID_KEY" && guesses.last == "LOCKED_OUT", "\(guesses)")
        #expect(try poll(timeout: 5) { audited("security.lockout") } != nil)
        for k in [web, batch, old] {
            let n = sent[k.id] ?? 0
            #expect(try poll(timeout: 10) { Self.counted(g, k.id) == n } != nil, "\(k.id): \(Self.counted(g, k.id)) of \(n) counted")
        }

        let shots = makeTempDir("tgdash-shot")
        defer { try? FileManager.default.removeItem(atPath: shots) }
        func link() throws -> String {
            let r = try Self.send(g.admin, "POST", "/v1/dashboard/links", headers: AdminAuth.header, json: #"{"path":"/?window=1h"}"#)
            return "http://127.0.0.1:\(g.admin)" + (try #require(r.json?["url"] as? String))
        }
        let dom = try Self.chromium(chromium, ["--dump-dom", try link()], profile: shots + "/profile-dom")
        // The key list, with each key's status.
        let keys = try #require(Self.section(dom, "keys"))
        for (id, status) in [(web.id, "active"), (batch.id, "disabled"), (old.id, "revoked")] {
            #expect(keys.contains("id=\"key-\(id)\" data-status=\"\(status)\""), "\(id) \(status)")
        }
        // The chart: an SVG with forwarded and refused bars.
        let chart = try #require(Self.section(dom, "usage"))
        #expect(chart.contains("<svg id=\"usage-chart\""))
        for code in ["OK", "RATE_LIMITED", "INSUFFICIENT_SCOPE", "INSUFFICIENT_CREDITS", "DISABLED", "REVOKED"] {
            #expect(chart.contains("data-code=\"\(code)\""), "\(code) not charted")
        }
        #expect(chart.contains("<circle"))   // credits
        // The events, newest first.
        let events = try #require(Self.section(dom, "events"))
        let actions = events.components(separatedBy: "data-action=\"").dropFirst().map { $0.prefix { $0 != "\"" } }
        #expect(Array(actions.prefix(2)) == ["security.lockout", "key.revoked"], "\(actions)")
        #expect(Array(actions.dropFirst(2).prefix(2)) == ["security.auto_disable", "key.disabled"], "\(actions)")
        #expect(events.contains("203.0.113.9"))
        let health = try #require(Self.section(dom, "health"))
        #expect(health.contains("Ready") && health.contains("1 network locked out") && health.contains("1 key auto-disabled"), "\(health)")
        for k in [web, batch, old] {
            #expect(!dom.contains(k.key) && !dom.lowercased().contains(KeyHash.sha256(k.key).hex))
        }

        let png = shots + "/dashboard.png"
        _ = try Self.chromium(chromium, ["--screenshot=" + png, "--window-size=1280,1600", "--hide-scrollbars", try link()],
                              profile: shots + "/profile-shot")
        let image = try #require(FileManager.default.contents(atPath: png))
        #expect(image.count > 20_000)
        #expect(Array(image.prefix(8)) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        func be32(_ at: Int) -> Int { image[at..<(at + 4)].reduce(0) { $0 << 8 | Int($1) } }
        #expect(be32(16) == 1280 && be32(20) == 1600)
        if ProcessInfo.processInfo.environment["TOLLGATE_UPDATE_SCREENSHOT"] == "1" {
            let docs = packageRoot() + "/docs/dashboard.png"
            try? FileManager.default.removeItem(atPath: docs)
            try FileManager.default.copyItem(atPath: png, toPath: docs)
        }
    }

    /// The inside of `<section id="NAME" …>…</section>` in a DOM dump.
    static func section(_ dom: String, _ name: String) -> String? {
        guard let start = dom.range(of: "<section id=\"\(name)\"") else { return nil }
        guard let end = dom.range(of: "</section>", range: start.upperBound..<dom.endIndex) else { return nil }
        return String(dom[start.lowerBound..<end.upperBound])
    }

    /// Runs headless Chromium (as root it needs `--no-sandbox`) with its own profile; its
    /// standard output, or a failure after 40 s.
    static func chromium(_ path: String, _ args: [String], profile: String) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                       "--disable-dev-shm-usage", "--user-data-dir=" + profile] + args
        let outPath = profile + ".out", errPath = profile + ".err"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: outPath)
        p.standardError = FileHandle(forWritingAtPath: errPath)
        try p.run()
        let deadline = Date().addingTimeInterval(40)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        if p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            throw HarnessError("chromium did not finish in 40 s: \((try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")")
        }
        let out = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        if p.terminationStatus != 0 {
            throw HarnessError("chromium exited \(p.terminationStatus): \((try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")")
        }
        return out
    }
}

/// The dashboard's parts without a server: sessions and links, the audit reader, the page's
/// escaping, the chart's axis.
@Suite struct DashboardPartsTests {
    static let admin = AdminCredential(caller: KeyCaller(kind: .adminToken, name: "token:12345678"), expiresAt: nil, tokenHash: nil)

    @Test func aLinkWorksOnceAndNotAfterItsMinute() {
        let s = DashboardSessions()
        let (name, expires) = s.mintLink(Self.admin, path: "/?window=1h", now: 1000)
        #expect(expires == 1060)
        #expect(s.redeem(name, now: 1030)?.path == "/?window=1h")
        #expect(s.redeem(name, now: 1031) == nil)
        let (late, _) = s.mintLink(Self.admin, path: "/", now: 1000)
        #expect(s.redeem(late, now: 1060) == nil)
        #expect(s.redeem("not a name", now: 1000) == nil)
    }

    @Test func sessionsEndWithTheirCredentialAndAreBounded() {
        let s = DashboardSessions()
        var jwt = Self.admin
        jwt.expiresAt = 1300
        let (cookie, maxAge) = s.open(jwt, now: 1000)
        #expect(maxAge == 300)
        #expect(s.session(cookie, now: 1299) != nil && s.session(cookie, now: 1300) == nil)
        let (long, age) = s.open(Self.admin, now: 1000)
        #expect(age == DashboardSessions.sessionLifetime)
        for i in 0..<DashboardSessions.maximumSessions { _ = s.open(Self.admin, now: 2000 + Int64(i)) }
        #expect(s.sessionCount == DashboardSessions.maximumSessions)
        #expect(s.session(long, now: 2000) == nil)   // the one closest to its end made room
        s.close(long)
    }

    /// Security entries are shown from their details, whatever they hold; members that could
    /// carry a key, a hash or a secret never are.
    @Test func auditEntriesAreReadNewestFirstWithoutSecrets() throws {
        let dir = makeTempDir("tgdash-audit")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try AuditLog(spec: AuditSpec(path: dir + "/audit.jsonl"), instance: "t", redis: nil)
        try log.prepare()
        try log.record(AuditEvent(.keyCreated, actor: .admin, subject: "key_a", details: [
            ("id", .string("key_a")), ("hash", .string("sha256:" + String(repeating: "ab", count: 32))), ("consumer", .string("acme")),
        ]))
        try log.record(AuditEvent(.policyReloaded, actor: .reload, subject: "p"))
        try log.record(AuditEvent(.securityAutoDisable, actor: .server, subject: "key_a", details: [
            ("key_id", .string("key_a")), ("consumer", .string("acme")), ("reason", .string("invalid_keys")),
            ("counts", .object([("refusals", .int(40)), ("networks", .int(3))])), ("networks", .strings(["198.51.100.0/24", "192.0.2.7"])),
            ("webhook_secret", .string("whsec_do-not-show")), ("token", .string("do-not-show")),
        ]))
        try log.record(AuditEvent(.securityLockout, actor: .server, subject: "192.0.2.0/24", details: [
            ("network", .string("192.0.2.0/24")), ("refusals", .int(12)), ("until", .string("2030-01-01T00:00:00.000Z")),
        ]))
        let events = DashboardEvents.recent(path: dir + "/audit.jsonl", limit: 10) { _ in true }
        #expect(events.map(\.action) == ["security.lockout", "security.auto_disable", "key.created"])
        #expect(events[0].details.map(\.name) == ["network", "refusals", "until"])
        #expect(events[1].keyIDs.contains("key_a") && events[1].consumer == "acme")
        #expect(events[1].details.first { $0.name == "counts" }?.value == "networks=3 refusals=40")
        #expect(events[1].details.first { $0.name == "networks" }?.value == "198.51.100.0/24, 192.0.2.7")
        let shown = events.flatMap { $0.details.map { $0.name + " " + $0.value } }.joined(separator: "\n")
        #expect(!shown.contains("do-not-show") && !shown.contains("abab") && !shown.contains("sha256:"))
        #expect(DashboardEvents.recent(path: dir + "/audit.jsonl", limit: 1) { _ in true }.count == 1)
        #expect(DashboardEvents.recent(path: dir + "/missing.jsonl", limit: 10) { _ in true }.isEmpty)

        var model = DashboardModel(caller: Self.admin.caller, now: 1_900_000_000, window: .day, focus: nil)
        model.events = events
        model.auditPath = dir + "/audit.jsonl"
        model.keys = [KeyView(id: "key_<b>", prefix: "tg_abcde", consumer: "a&b", scopes: ["x\"y"], plan: nil, status: "active",
                              expires: nil, created: nil, allowIPs: nil, requireHTTPS: false, metadata: [:], source: "store",
                              replaces: nil, rotatedTo: nil, lastUsed: nil)]
        let html = DashboardPage(model: model).render()
        #expect(html.contains("key_&lt;b&gt;") && html.contains("a&amp;b") && html.contains("x&quot;y"))
        #expect(!html.contains("key_<b>") && !html.contains("do-not-show"))
        #expect(html.contains("security.auto_disable") && html.contains("198.51.100.0/24"))
    }

    @Test func theChartsAxisEndsOnARoundNumber() {
        #expect(DashboardChart.niceTop(0) == 4)
        #expect(DashboardChart.niceTop(7) == 8)
        #expect(DashboardChart.niceTop(30) == 40)
        #expect(DashboardChart.niceTop(100) == 100)
        #expect(DashboardChart.niceTop(101) == 200)
        #expect(DashboardChart.niceTop(1234) == 2000)
        let starts = DashboardWindow.hour.slotStarts(now: 3_600_000 + 125)
        #expect(starts.count == 60 && starts.last == 3_600_120 && starts.first == 3_600_120 - 59 * 60)
    }

    @Test func linksLeadOnlyToTheDashboard() {
        for ok in ["/", "/?window=1h", "/?key=key_a&window=7d"] { #expect(Dashboard.isDashboardPath(ok), "\(ok)") }
        for bad in ["//evil.example", "/\\evil", "https://evil.example/", "/v1/keys", "/?a=b c", "", "/login"] {
            #expect(!Dashboard.isDashboardPath(bad), "\(bad)")
        }
        #expect(Dashboard.form(Array("token=a%2Bb+c&token=second&x".utf8)) == ["token": "a+b c", "x": ""])
        #expect(Dashboard.percentDecode(Array("%4".utf8)[...]) == "%4")
    }
}
