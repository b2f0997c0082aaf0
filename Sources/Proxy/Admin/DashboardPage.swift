import CSystem
import Glibc

/// The dashboard's HTML: one page with inline CSS and inline SVG, no script. Every text
/// that comes from data (ids, consumers, plans, scopes, audit details, sink names, paths)
/// goes through ``escape(_:)``. Sections have stable ids for tools and tests: `summary`,
/// `usage` (with the chart `usage-chart`), `keys`, `events`, `health`.
struct DashboardPage {
    let model: DashboardModel

    func render() -> String {
        let m = model
        let focus = m.focusMissing ? nil : m.focus
        var h = Self.head(title: "Tollgate dashboard")
        h += "<body><header class=\"top\"><div class=\"brand\">Tollgate <span>dashboard</span></div>"
        h += "<nav class=\"windows\" aria-label=\"window\">"
        for w in DashboardWindow.allCases {
            h += "<a href=\"\(Self.escape(link(window: w, key: focus)))\"\(w == m.window ? " class=\"on\"" : "")>\(w.rawValue)</a>"
        }
        h += "</nav><div class=\"who\">signed in as <b>\(Self.escape(m.caller.name))</b>"
        if let owner = m.caller.owner { h += " <span class=\"chip dark\">consumer \(Self.escape(owner))</span>" }
        h += "<form method=\"post\" action=\"/logout\"><button type=\"submit\">Sign out</button></form></div></header><main>"
        h += summary()
        h += usage()
        h += keys()
        h += "<div class=\"cols\">" + events() + health() + "</div>"
        h += "</main><footer>Rendered \(Self.escape(Self.stamp(m.now))) UTC · times are UTC · "
        h += "keys are shown by id and prefix only: never a key, a hash or a secret</footer></body></html>"
        return h
    }

    func link(window: DashboardWindow, key: String?) -> String {
        var s = "/?window=" + window.rawValue
        if let key { s += "&key=" + Self.queryEscape(key) }
        return s
    }

    // MARK: sections

    private func summary() -> String {
        let m = model
        let totals = m.total(m.chartedKeys)
        let requests = totals.reduce(0) { $0 + $1.requests }
        let refused = totals.reduce(0) { $0 + $1.refused }
        let credits = totals.reduce(0) { $0 + $1.credits }
        let active = m.keys.filter { $0.status == "active" && !isExpired($0) }.count
        var h = "<section id=\"summary\" class=\"tiles\">"
        h += tile("\(active) / \(m.keys.count)", "keys active", id: "tile-keys")
        h += tile(Self.count(requests), "requests · \(m.window.rawValue)", id: "tile-requests")
        let share = requests > 0 ? " (\(Int((Double(refused) / Double(requests) * 100).rounded()))%)" : ""
        h += tile(Self.count(refused) + "<small>\(share)</small>", "refused · \(m.window.rawValue)", id: "tile-refused", raw: true)
        h += tile(Self.count(credits), "credits charged · \(m.window.rawValue)", id: "tile-credits")
        return h + "</section>"
    }

    private func tile(_ value: String, _ label: String, id: String, raw: Bool = false) -> String {
        "<div class=\"tile\" id=\"\(id)\"><div class=\"n\">\(raw ? value : Self.escape(value))</div><div class=\"l\">\(Self.escape(label))</div></div>"
    }

    private func usage() -> String {
        let m = model
        var h = "<section id=\"usage\"><h2>Usage over time <small>\(Self.escape(m.window.label)), UTC"
        if let focus = m.focus, !m.focusMissing {
            h += " · key <code>\(Self.escape(focus))</code> · <a href=\"\(Self.escape(link(window: m.window, key: nil)))\">all keys</a>"
        } else {
            h += " · all \(m.keys.count == 1 ? "1 key" : "\(m.keys.count) keys") shown"
        }
        h += "</small></h2>"
        if m.focusMissing, let focus = m.focus {
            h += "<p class=\"note\">No key <code>\(Self.escape(focus))</code> that you may see: showing every key.</p>"
        }
        if !m.hasUsage {
            h += "<p class=\"note\">Usage records are off (no <code>usage:</code> in the policy): nothing to chart.</p>"
        }
        let slots = m.total(m.chartedKeys)
        h += DashboardChart.usage(slots, starts: m.window.slotStarts(now: m.now), window: m.window)
        h += "<ul class=\"legend\"><li><span class=\"sw\" style=\"background:\(DashboardChart.color("OK"))\"></span>forwarded</li>"
        for c in DashboardChart.refusedCodes(slots) {
            h += "<li><span class=\"sw\" style=\"background:\(DashboardChart.color(MetricCode.names[c]))\"></span>\(MetricCode.names[c])</li>"
        }
        h += "<li><span class=\"sw line\" style=\"background:\(DashboardChart.creditsColor)\"></span>credits charged (right axis)</li>"
        if m.window == .hour { h += "<li class=\"muted\">minutes are kept in memory: a restart clears this view, not the hourly ones</li>" }
        return h + "</ul></section>"
    }

    private func keys() -> String {
        let m = model
        var h = "<section id=\"keys\"><h2>Keys <small>\(m.keys.count) shown"
        if m.caller.owner != nil { h += " · your consumer's only" }
        h += " · requests, refusals and credits over the \(Self.escape(m.window.rawValue)) window</small></h2>"
        if let e = m.keysError {
            return h + "<p class=\"note bad\">The key store did not answer: \(Self.escape(e))</p></section>"
        }
        if m.keys.isEmpty { return h + "<p class=\"empty\">No keys.</p></section>" }
        h += "<table class=\"keys\"><thead><tr><th>Key</th><th>Prefix</th><th>Consumer</th><th>Plan</th><th>Status</th>"
        h += "<th>Scopes</th><th>Last used</th><th class=\"num\">Requests</th><th class=\"num\">Refused</th><th class=\"num\">Credits</th>"
        h += "<th>Trend</th></tr></thead><tbody>"
        for k in m.keys {
            let s = m.series[k.id] ?? []
            let requests = s.reduce(0) { $0 + $1.requests }, refused = s.reduce(0) { $0 + $1.refused }
            let credits = s.reduce(0) { $0 + $1.credits }
            let status = isExpired(k) && k.status == "active" ? "expired" : k.status
            h += "<tr class=\"key\(m.focus == k.id ? " focus" : "")\" id=\"key-\(Self.escape(k.id))\" data-status=\"\(Self.escape(status))\">"
            h += "<td><a href=\"\(Self.escape(link(window: m.window, key: k.id)))\"><code>\(Self.escape(k.id))</code></a>"
            if k.source == "policy" { h += " <span class=\"chip\" title=\"declared in a policy file\">policy</span>" }
            if let to = k.rotatedTo { h += "<div class=\"sub\">rotated to <code>\(Self.escape(to))</code></div>" }
            h += "</td><td>\(k.prefix.map { "<code>\(Self.escape($0))…</code>" } ?? "<span class=\"muted\">–</span>")</td>"
            h += "<td>\(Self.escape(k.consumer))</td><td>\(k.plan.map(Self.escape) ?? "<span class=\"muted\">–</span>")</td>"
            h += "<td><span class=\"badge s-\(Self.cssName(status))\">\(Self.escape(status))</span></td><td>"
            h += k.scopes.isEmpty ? "<span class=\"muted\">none</span>" : k.scopes.map { "<span class=\"chip\">\(Self.escape($0))</span>" }.joined()
            h += "</td><td>\(Self.escape(lastUsed(k)))</td>"
            h += "<td class=\"num\">\(Self.count(requests))</td>"
            h += "<td class=\"num\(refused > 0 ? " warn" : "")\">\(Self.count(refused))</td><td class=\"num\">\(Self.count(credits))</td>"
            h += "<td>\(DashboardChart.sparkline(s, id: k.id))</td></tr>"
        }
        h += "</tbody></table>"
        if m.isKeyListCut { h += "<p class=\"note\">The first \(DashboardModel.maximumKeys) keys by id are shown; `GET /v1/keys` pages through all.</p>" }
        return h + "</section>"
    }

    private func events() -> String {
        let m = model
        var h = "<section id=\"events\"><h2>Recent security events <small>newest first · key and security entries of the audit trail"
        if let focus = m.focus, !m.focusMissing { h += " · key <code>\(Self.escape(focus))</code>" }
        h += "</small></h2>"
        guard m.auditPath != nil else {
            return h + "<p class=\"empty\">No audit trail (no <code>audit:</code> in the policy): nothing to show.</p></section>"
        }
        if m.events.isEmpty { return h + "<p class=\"empty\">No events yet.</p></section>" }
        h += "<table class=\"events\"><thead><tr><th>Time</th><th>Action</th><th>Subject</th><th>Details</th></tr></thead><tbody>"
        for e in m.events {
            h += "<tr class=\"event\" data-action=\"\(Self.escape(e.action))\" data-seq=\"\(e.seq)\">"
            h += "<td class=\"time\">\(Self.escape(Self.eventTime(e.time)))</td>"
            h += "<td><span class=\"badge \(Self.actionClass(e.action))\">\(Self.escape(e.action))</span>"
            h += "<div class=\"sub\">by \(Self.escape(e.actor))</div></td>"
            h += "<td><code>\(Self.escape(e.subject))</code></td><td class=\"details\">"
            for (name, value) in e.details where name != "id" || value != e.subject {
                h += "<span class=\"kv\"><span class=\"k\">\(Self.escape(name))</span> \(Self.escape(Self.clip(value)))</span>"
            }
            h += "</td></tr>"
        }
        return h + "</tbody></table></section>"
    }

    private func health() -> String {
        guard let x = model.health else { return "" }
        var h = "<section id=\"health\"><h2>Health</h2><table class=\"kv\"><tbody>"
        func row(_ state: String, _ label: String, _ value: String) {
            h += "<tr><th><span class=\"dot \(state)\"></span>\(Self.escape(label))</th><td>\(value)</td></tr>"
        }
        row(x.isReady ? "ok" : "bad", "Ready", Self.escape(x.readiness))
        switch x.store {
        case .none: row("ok", "Store", "embedded (no Redis)")
        case .up: row("ok", "Store", "Redis up")
        case .down: row("bad", "Store", "Redis down")
        }
        if x.store != .none {
            row(x.degradedOpen + x.degradedLocal > 0 ? "warn" : "ok", "Degraded admits",
                "\(Self.count(x.degradedOpen)) open · \(Self.count(x.degradedLocal)) local")
        }
        if let s = x.spool {
            row(s.dropped > 0 ? "bad" : "ok", "Usage spool",
                "\(Self.count(s.written)) written · \(Self.count(s.dropped)) dropped · \(Self.count(s.spilled)) spilled · \(Self.bytes(s.bytes))")
            if x.sinks.isEmpty { row("off", "Usage sinks", "none (the spool only)") }
            for k in x.sinks {
                let state = k.failed > 0 ? (k.lagBytes > 0 ? "bad" : "warn") : (k.lagBytes > 256 * 1024 ? "warn" : "ok")
                row(state, "Sink " + k.label, "\(Self.count(k.delivered)) delivered · \(Self.count(k.failed)) failed · \(Self.bytes(k.lagBytes)) spooled (lag)")
            }
        } else {
            row("off", "Usage records", "off")
        }
        if let a = x.audit {
            let where_ = "<code>\(Self.escape(Self.basename(a.path)))</code>"
            if let bytes = a.bytes, let t = a.modified {
                row("ok", "Audit trail", "\(where_) · \(Self.bytes(bytes)) · last write \(Self.escape(ago(t)))")
            } else {
                row("warn", "Audit trail", "\(where_) · not written yet")
            }
        } else {
            row("off", "Audit trail", "off")
        }
        if let sec = x.security {
            row(sec.bans > 0 ? "warn" : "ok", "Lock-out", "\(Self.count(sec.bans)) network\(sec.bans == 1 ? "" : "s") locked out · \(Self.count(sec.tracked)) tracked")
            row(sec.lockouts + sec.autoDisabled > 0 ? "warn" : "ok", "Security actions",
                "\(Self.count(sec.lockouts)) lock-out\(sec.lockouts == 1 ? "" : "s") · \(Self.count(sec.autoDisabled)) key\(sec.autoDisabled == 1 ? "" : "s") auto-disabled")
        } else {
            row("off", "Lock-out", "off (no <code>security:</code> in the policy)")
        }
        row(x.reloadsRejected > 0 ? "warn" : "ok", "Policy reloads", "\(Self.count(x.reloadsOK)) ok · \(Self.count(x.reloadsRejected)) rejected")
        row("ok", "Client connections", Self.count(x.connections))
        return h + "</tbody></table></section>"
    }

    /// By minute within the last hour (the aggregates' minutes), else by hour.
    private func lastUsed(_ k: KeyView) -> String {
        if let t = model.lastMinute[k.id] {
            let minutes = (model.now - model.now % 60 - t) / 60
            return minutes <= 0 ? "this minute" : "\(minutes) min ago"
        }
        guard let t = k.lastUsed else { return "never" }
        let hours = (model.now - model.now % 3600 - t) / 3600
        if hours <= 0 { return "this hour" }
        if hours < 48 { return "\(hours) h ago" }
        return Self.utc(t).date
    }

    private func isExpired(_ k: KeyView) -> Bool { k.expires.map { $0 <= model.now } ?? false }

    private func ago(_ t: Int64) -> String {
        let d = model.now - t
        if d < 3600 { return d < 60 ? "just now" : "\(d / 60) min ago" }
        if d < 86_400 { return "\(d / 3600) h ago" }
        return Self.utc(t).date
    }

    // MARK: other pages

    static func login(message: String?) -> String {
        var h = head(title: "Sign in · Tollgate")
        h += "<body class=\"center\"><main class=\"card\" id=\"login\"><div class=\"brand dark\">Tollgate <span>dashboard</span></div>"
        if let message { h += "<p class=\"note bad\" role=\"alert\">\(escape(message))</p>" }
        h += "<form method=\"post\" action=\"/login\"><label for=\"token\">Admin token or JWT</label>"
        h += "<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" autofocus required>"
        h += "<button type=\"submit\">Sign in</button></form>"
        h += "<p class=\"muted small\">A session lasts 12 hours in this browser (a cookie it cannot read from scripts). "
        h += "Or ask for a one-time link: <code>tollgate dashboard link</code>.</p></main></body></html>"
        return h
    }

    static func message(_ title: String, _ text: String, link: (String, String)? = nil) -> String {
        var h = head(title: title + " · Tollgate")
        h += "<body class=\"center\"><main class=\"card\"><div class=\"brand dark\">Tollgate <span>dashboard</span></div>"
        h += "<h1>\(escape(title))</h1><p>\(escape(text))</p>"
        h += "<p><a href=\"\(escape(link?.0 ?? "/login"))\">\(escape(link?.1 ?? "Sign in"))</a></p></main></body></html>"
        return h
    }

    static func head(title: String) -> String {
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            + "<meta name=\"referrer\" content=\"no-referrer\"><title>\(escape(title))</title><style>\(css)</style></head>"
    }

    static let css = """
    :root{--bg:#f4f6f8;--card:#fff;--ink:#1d2733;--muted:#6b7682;--line:#e2e6ea;--accent:#364fc7}
    *{box-sizing:border-box}
    body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;background:var(--bg);color:var(--ink)}
    a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
    code{font:12.5px/1.3 ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace}
    header.top{display:flex;align-items:center;gap:28px;padding:12px 28px;background:#1d2733;color:#fff}
    .brand{font-weight:700;font-size:18px;letter-spacing:.2px}.brand span{font-weight:400;opacity:.65}
    .brand.dark{color:#1d2733;margin-bottom:14px}
    nav.windows{display:flex;gap:4px;margin-left:auto}
    nav.windows a{color:#c9d1d9;padding:4px 11px;border-radius:6px;font-weight:600;font-size:13px}
    nav.windows a.on{background:var(--accent);color:#fff}nav.windows a:hover{text-decoration:none;background:#2c3845}
    .who{display:flex;align-items:center;gap:10px;color:#c9d1d9;font-size:13px}.who b{color:#fff;font-weight:600}
    .who form{margin:0}.who button{background:transparent;color:#fff;border:1px solid #4a5866;border-radius:6px;padding:4px 10px;font:inherit;cursor:pointer}
    main{max-width:1260px;margin:0 auto;padding:20px 28px 8px}
    section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 20px;margin-bottom:18px}
    h2{font-size:15px;margin:0 0 12px;display:flex;align-items:baseline;gap:10px;flex-wrap:wrap}
    h2 small{font-weight:400;color:var(--muted);font-size:12.5px}
    .tiles{display:grid;grid-template-columns:repeat(4,1fr);gap:14px;background:none;border:0;padding:0}
    .tile{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 18px}
    .tile .n{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums}.tile .n small{font-size:14px;color:var(--muted);font-weight:500}
    .tile .l{color:var(--muted);font-size:11.5px;text-transform:uppercase;letter-spacing:.5px}
    svg.chart{width:100%;height:auto;display:block}
    svg .tick{font-size:11px;fill:#6b7682}svg .axis{font-size:11px;fill:#6b7682;font-weight:600}
    svg .empty{font-size:14px;fill:#6b7682}svg g.slot:hover rect{opacity:.8}
    .legend{list-style:none;display:flex;flex-wrap:wrap;gap:6px 18px;padding:0;margin:10px 0 0 58px;font-size:12.5px;color:#3b4754}
    .legend .muted{color:var(--muted)}
    .sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px;vertical-align:-1px}.sw.line{height:3px;width:16px;vertical-align:3px}
    table{width:100%;border-collapse:collapse}
    th{text-align:left;font-weight:600;color:var(--muted);font-size:11.5px;text-transform:uppercase;letter-spacing:.4px;border-bottom:1px solid var(--line);padding:6px 8px;white-space:nowrap}
    td{padding:7px 8px;border-bottom:1px solid #eef0f3;vertical-align:middle}
    tbody tr:last-child td{border-bottom:0}
    .num{text-align:right;font-variant-numeric:tabular-nums}td.warn{color:#b35c00;font-weight:600}
    tr.focus td{background:#f1f4ff}
    .badge{display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;font-weight:600;white-space:nowrap}
    .s-active{background:#e3f6e8;color:#1e7b34}.s-disabled{background:#fff3d6;color:#946200}.s-revoked{background:#fde7e7;color:#b42318}
    .s-expired{background:#eceff1;color:#555}
    .a-security{background:#fde7e7;color:#b42318}.a-key{background:#e8edff;color:#2b3fa0}.a-key-bad{background:#fff3d6;color:#946200}
    .chip{display:inline-block;background:#eef1f6;color:#3b4754;border-radius:4px;padding:0 6px;margin:1px 3px 1px 0;font-size:12px}
    .chip.dark{background:#2c3845;color:#fff}
    .sub{color:var(--muted);font-size:12px;margin-top:2px}.muted{color:var(--muted)}.small{font-size:12.5px}
    .cols{display:grid;grid-template-columns:minmax(0,1.9fr) minmax(0,1fr);gap:18px;align-items:start}.cols section{margin:0}
    table.events td{font-size:13px;vertical-align:top}td.time{white-space:nowrap;color:#3b4754;font-variant-numeric:tabular-nums}
    .details .kv{display:inline-block;margin:0 10px 2px 0;font-size:12.5px;word-break:break-word}.kv .k{color:var(--muted)}
    table.kv th{text-transform:none;letter-spacing:0;font-size:13px;color:#3b4754;border-bottom:1px solid #eef0f3;width:42%;vertical-align:top}
    table.kv td{font-size:13px}
    .dot{display:inline-block;width:8px;height:8px;border-radius:50%;margin-right:8px;vertical-align:1px}
    .dot.ok{background:#37b24d}.dot.bad{background:#e03131}.dot.warn{background:#f59f00}.dot.off{background:#adb5bd}
    .note{background:#f8f9fb;border:1px solid var(--line);border-radius:6px;padding:8px 12px;color:#3b4754}.note.bad{background:#fff1f1;border-color:#f5c2c2;color:#8a1c1c}
    .empty{color:var(--muted);margin:6px 0}
    footer{color:var(--muted);font-size:12px;text-align:center;padding:6px 0 22px}
    body.center{display:flex;min-height:100vh;align-items:center;justify-content:center}
    .card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:28px 32px;width:400px;margin:0}
    .card h1{font-size:18px;margin:0 0 8px}
    .card label{display:block;font-weight:600;margin-bottom:6px}
    .card input{width:100%;padding:8px 10px;border:1px solid #c9d1d9;border-radius:6px;font:inherit;margin-bottom:12px}
    .card button{background:var(--accent);color:#fff;border:0;border-radius:6px;padding:8px 16px;font:inherit;font-weight:600;cursor:pointer}
    """

    // MARK: text

    /// HTML-escapes text for element content and quoted attribute values.
    static func escape(_ s: String) -> String {
        var o = ""
        o.reserveCapacity(s.utf8.count)
        for ch in s.unicodeScalars {
            switch ch {
            case "&": o += "&amp;"
            case "<": o += "&lt;"
            case ">": o += "&gt;"
            case "\"": o += "&quot;"
            case "'": o += "&#39;"
            case _ where ch.value < 0x20 && ch != "\n" && ch != "\t": o += "\u{FFFD}"
            default: o.unicodeScalars.append(ch)
            }
        }
        return o
    }

    /// Percent-encodes a query value (everything but unreserved characters).
    static func queryEscape(_ s: String) -> String {
        var o = ""
        for b in s.utf8 {
            switch b {
            case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                o.unicodeScalars.append(Unicode.Scalar(b))
            default:
                let hex = Array("0123456789ABCDEF".unicodeScalars)
                o += "%"
                o.unicodeScalars.append(hex[Int(b >> 4)])
                o.unicodeScalars.append(hex[Int(b & 0xF)])
            }
        }
        return o
    }

    /// A class-name-safe form of a status or action.
    static func cssName(_ s: String) -> String {
        String(s.lowercased().unicodeScalars.filter { ($0 >= "a" && $0 <= "z") || ($0 >= "0" && $0 <= "9") || $0 == "-" }.map(Character.init))
    }

    static func actionClass(_ action: String) -> String {
        if action.hasPrefix("security.") { return "a-security" }
        if action == "key.revoked" || action == "key.disabled" { return "a-key-bad" }
        return "a-key"
    }

    static func count(_ v: some BinaryInteger) -> String {
        let digits = Array(String(v).reversed())
        var out: [Character] = []
        for (i, c) in digits.enumerated() {
            if i > 0 && i % 3 == 0 && c != "-" { out.append(",") }
            out.append(c)
        }
        return String(out.reversed())
    }

    static func bytes(_ v: UInt64) -> String {
        if v < 1024 { return "\(v) B" }
        if v < 1024 * 1024 { return DashboardChart.number(Double(v) / 1024) + " KiB" }
        return DashboardChart.number(Double(v) / 1024 / 1024) + " MiB"
    }

    static func clip(_ s: String) -> String { s.count > 160 ? String(s.prefix(160)) + "…" : s }

    static func basename(_ p: String) -> String { p.split(separator: "/").last.map(String.init) ?? p }

    /// `2026-01-02T03:04:05.678Z` → `2026-01-02 03:04:05`.
    static func eventTime(_ t: String) -> String {
        guard t.count >= 19 else { return t }
        return String(t.prefix(10)) + " " + String(t.dropFirst(11).prefix(8))
    }

    /// (`YYYY-MM-DD`, `HH:MM:SS`) in UTC.
    static func utc(_ t: Int64) -> (date: String, clock: String) {
        var secs = time_t(t)
        var tm = tm()
        gmtime_r(&secs, &tm)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return ("\(tm.tm_year + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday))", "\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec))")
    }

    static func stamp(_ t: Int64) -> String {
        let (d, c) = utc(t)
        return d + " " + c
    }
}
