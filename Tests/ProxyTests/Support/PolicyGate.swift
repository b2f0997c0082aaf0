import Backends
import ReferenceBackends
import Foundation
import Glibc
import Policy
import Testing

/// Request heads an upstream received, in arrival order (thread-safe).
final class HeadLog: @unchecked Sendable {
    // SAFETY: every access goes through `lock`.
    private let lock = NSLock()
    private var items: [String] = []

    func add(_ head: String) { lock.lock(); items.append(head); lock.unlock() }
    var heads: [String] { lock.lock(); defer { lock.unlock() }; return items }
    /// The request target of every head (`GET /a HTTP/1.1` → `/a`).
    var targets: [String] {
        heads.map { head in
            let line = head.prefix { $0 != "\r" }
            let parts = line.split(separator: " ")
            return parts.count >= 2 ? String(parts[1]) : String(line)
        }
    }
    var count: Int { lock.lock(); defer { lock.unlock() }; return items.count }
}

/// An upstream that records every request head and answers 200 with the head as the body.
func recordingUpstream(_ log: HeadLog) throws -> ScriptedUpstream {
    try ScriptedUpstream { peer in
        while let head = peer.readHead() {
            log.add(head)
            if let cl = headerValue(head, "Content-Length"), let n = Int(cl), n > 0 { _ = peer.read(count: n) }
            peer.write(okResponse(head))
        }
    }
}

/// Plain declared keys of the enforcement fixture (their SHA-256 goes into keys.yaml).
enum PlainKey {
    static let alice = "alice-plain-key-0001"        // finance:read, finance:write; no admin
    static let admin = "admin-plain-key-0001"        // admin, finance:read
    static let revoked = "revoked-plain-key-0001"
    static let disabled = "disabled-plain-key-0001"
    static let expired = "expired-plain-key-0001"
    static let remote = "remote-only-plain-key-0001" // allow_ips: 10.0.0.0/8
    static let limited = "limited-plain-key-0001"    // plan tight: 3 per hour
    static let swarm = "swarm-plain-key-0001"        // plan swarm: 20 per hour
}

/// The enforcement fixture: the real `tollgate` binary in front of the reference finance
/// backend and a recording upstream, with one declared key per interesting state.
final class PolicyGate {
    let dir: String
    let port: UInt16
    let dataDir = makeTempDir("tgdata")
    let backends: ReferenceBackends
    let recorder: ScriptedUpstream
    let log = HeadLog()
    /// A minted-format key declared in keys.yaml (valid checksum).
    let mintedGood: String
    /// `mintedGood` with its last checksum character changed; its hash is declared too, so
    /// only the checksum rule (no lookup) can refuse it.
    let mintedBad: String
    private(set) var tg: TollgateProcess!

    /// - Parameter clients: the YAML of the `clients:` block (without the key), or nil.
    /// The admin listener's port (`admin.address`), when `withAdmin`.
    let adminPort: UInt16?

    /// - Parameters:
    ///   - extraTop: more top-level YAML (e.g. `access_log:`, `store:`).
    ///   - extraBackends: more `backends:` entries (indented two spaces).
    init(clients: String? = "  deny: [203.0.113.0/24]", credentials: String? = nil, extraRoutes: String = "",
         extraBackends: String = "", extraTop: String = "", withAdmin: Bool = false) throws {
        adminPort = withAdmin ? freePort() : nil
        dir = makeTempDir("tgenf")
        port = freePort()
        backends = try ReferenceBackends.start(finance: ReferenceAddress(host: "127.0.0.1", port: 0), accounting: nil,
                                               flowise: nil, dataDirectory: dataDir)
        recorder = try recordingUpstream(log)
        mintedGood = KeyFormat.mint()
        var bad = Array(mintedGood)
        bad[bad.count - 1] = bad[bad.count - 1] == "A" ? "B" : "A"
        mintedBad = String(bad)
        var top = extraTop
        if let adminPort {
            writeFile(dir + "/admin-tokens", AdminAuth.tokensFileLine + "\n")
            top += "\nadmin:\n  address: 127.0.0.1:\(adminPort)\n  tokens_file: admin-tokens\n"
        }
        writeFile(dir + "/00-gateway.yaml", Self.gateway(port: port, finance: backends.financePort!, recorder: recorder.port,
                                                         clients: clients, credentials: credentials, extraRoutes: extraRoutes,
                                                         extraBackends: extraBackends) + top)
        writeFile(dir + "/10-keys.yaml", Self.keys(mintedGood: mintedGood, mintedBad: mintedBad))
        do {
            tg = try TollgateProcess(policies: dir, port: port)
        } catch {
            recorder.stop()
            backends.stop()
            try? FileManager.default.removeItem(atPath: dir)
            try? FileManager.default.removeItem(atPath: dataDir)
            throw error
        }
    }

    /// Stops everything started here and removes the policy and data directories.
    func stop() {
        tg?.stop()
        recorder.stop()
        backends.stop()
        try? FileManager.default.removeItem(atPath: dir)
        try? FileManager.default.removeItem(atPath: dataDir)
    }

    /// Restarts the proxy on the same policy directory (same port).
    func restart() throws {
        tg.stop()
        tg = try TollgateProcess(policies: dir, port: port)
    }

    func get(_ path: String, key: String? = nil, headers: [String: String] = [:]) throws -> HTTPResponse {
        var h = headers
        if let key { h["X-API-Key"] = key }
        return try ProxyTests.get(port, path, headers: h)
    }

    static func gateway(port: UInt16, finance: UInt16, recorder: UInt16, clients: String?, credentials: String?,
                        extraRoutes: String, extraBackends: String = "") -> String {
        """
        version: 1
        listen:
          - address: 127.0.0.1:\(port)
        \(clients.map { "clients:\n\($0)" } ?? "")
        credentials:
        \(credentials ?? "  api_key:\n    headers: [X-API-Key]")
        backends:
          finance: {url: "http://127.0.0.1:\(finance)"}
          recorder: {url: "http://127.0.0.1:\(recorder)"}
        \(extraBackends)
        plans:
          tight:
            rate_limits:
              - {requests: 3, per: 1h, burst: 3}
          swarm:
            rate_limits:
              - {requests: 20, per: 1h, burst: 20}
        routes:
        \(extraRoutes)
          - name: finance-read
            match: {methods: [GET, HEAD], path_prefix: /api/finance/}
            backend: finance
            scopes: [finance:read]
          - name: finance-write
            match: {methods: [POST, PUT, PATCH, DELETE], path_prefix: /api/finance/}
            backend: finance
            scopes: [finance:write]
            require_https: true
          - name: admin
            match: {path_prefix: /admin/}
            backend: recorder
            scopes: [admin]
          - name: secure
            match: {path_prefix: /secure/}
            backend: recorder
            require_https: true
          - name: open
            match: {path_prefix: /open/}
            backend: recorder
          - name: public
            match: {methods: [GET], path_prefix: /pub/}
            backend: recorder
            auth: none

        """
    }

    static func keys(mintedGood: String, mintedBad: String) -> String {
        func h(_ s: String) -> String { "sha256:" + KeyHash.sha256(s).hex }
        return """
        version: 1
        keys:
          - id: key_alice
            hash: \(h(PlainKey.alice))
            consumer: alice
            scopes: [finance:read, finance:write]
          - id: key_admin
            hash: \(h(PlainKey.admin))
            consumer: root
            scopes: [admin, finance:read]
          - id: key_revoked
            hash: \(h(PlainKey.revoked))
            consumer: rex
            scopes: [finance:read]
            status: revoked
          - id: key_disabled
            hash: \(h(PlainKey.disabled))
            consumer: dora
            scopes: [finance:read]
            status: disabled
          - id: key_expired
            hash: \(h(PlainKey.expired))
            consumer: eve
            scopes: [finance:read]
            expires: 2020-01-01T00:00:00Z
          - id: key_remote
            hash: \(h(PlainKey.remote))
            consumer: remy
            scopes: [finance:read]
            allow_ips: [10.0.0.0/8]
          - id: key_limited
            hash: \(h(PlainKey.limited))
            consumer: lim
            plan: tight
            scopes: [finance:read]
          - id: key_swarm
            hash: \(h(PlainKey.swarm))
            consumer: swarm
            plan: swarm
            scopes: [finance:read]
          - id: key_minted_good
            hash: \(h(mintedGood))
            consumer: minty
            scopes: [finance:read]
          - id: key_minted_bad
            hash: \(h(mintedBad))
            consumer: mallory
            scopes: [finance:read]

        """
    }
}

/// A denial as DESIGN.md fixes it: status, JSON `error.code`, `request_id` = `X-Request-Id`,
/// `WWW-Authenticate` on 401s, `Retry-After` + RateLimit headers on 429s.
func expectDenial(_ r: HTTPResponse, _ code: String, _ status: Int, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(r.status == status, "status for \(code): \(r.status) \(r.text)", sourceLocation: sourceLocation)
    #expect(r.errorCode == code, "body: \(r.text)", sourceLocation: sourceLocation)
    #expect(r.header("Content-Type")?.hasPrefix("application/json") == true, sourceLocation: sourceLocation)
    let error = r.json?["error"] as? [String: Any]
    let rid = error?["request_id"] as? String
    #expect(rid != nil && rid?.isEmpty == false, "request_id missing: \(r.text)", sourceLocation: sourceLocation)
    #expect(rid == r.header("X-Request-Id"), "request_id \(rid ?? "nil") vs header \(r.header("X-Request-Id") ?? "nil")",
            sourceLocation: sourceLocation)
    #expect((error?["message"] as? String)?.isEmpty == false, sourceLocation: sourceLocation)
    if status == 401 {
        #expect(r.header("WWW-Authenticate") != nil, "401 without WWW-Authenticate", sourceLocation: sourceLocation)
    } else {
        #expect(r.header("WWW-Authenticate") == nil, sourceLocation: sourceLocation)
    }
    if status == 429 {
        #expect(Int(r.header("Retry-After") ?? "") ?? 0 > 0, "Retry-After: \(r.header("Retry-After") ?? "nil")",
                sourceLocation: sourceLocation)
        if code == "LOCKED_OUT" {
            // A lock-out is no rate limit of the key's plan: no RateLimit fields.
            #expect(r.header("RateLimit-Policy") == nil && r.header("RateLimit") == nil, sourceLocation: sourceLocation)
        } else {
            #expect(r.header("RateLimit-Policy") != nil, sourceLocation: sourceLocation)
            #expect(r.header("RateLimit") != nil, sourceLocation: sourceLocation)
        }
    }
}

/// Polls `condition` every `step` seconds until it holds or `timeout` passes; returns the
/// seconds it took, or nil when it never held.
func poll(timeout: Double, step: Double = 0.05, _ condition: () throws -> Bool) rethrows -> Double? {
    let start = Date()
    while true {
        if try condition() { return Date().timeIntervalSince(start) }
        if Date().timeIntervalSince(start) > timeout { return nil }
        usleep(UInt32(step * 1_000_000))
    }
}

/// The root of this package (for `policies/`).
func packageRoot(_ file: String = #filePath) -> String {
    var url = URL(fileURLWithPath: file)
    while url.path != "/" {
        url = url.deletingLastPathComponent()
        if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url.path }
    }
    return FileManager.default.currentDirectoryPath
}

/// `GET /metrics` of an admin listener, parsed: sample name with labels → value.
func scrapeMetrics(_ port: UInt16) throws -> [String: Double] {
    let r = try get(port, "/metrics")
    guard r.status == 200 else { throw HarnessError("metrics: \(r.status)") }
    var out: [String: Double] = [:]
    for line in r.text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let sp = line.lastIndex(of: " "), let v = Double(line[line.index(after: sp)...]) else { continue }
        out[String(line[..<sp])] = v
    }
    return out
}

/// `tollgate_requests_total` summed by code.
func requestsByCode(_ m: [String: Double]) -> [String: Int] {
    var out: [String: Int] = [:]
    for (k, v) in m where k.hasPrefix("tollgate_requests_total{") {
        guard let r = k.range(of: "code=\""), let end = k[r.upperBound...].firstIndex(of: "\"") else { continue }
        out[String(k[r.upperBound..<end]), default: 0] += Int(v)
    }
    return out
}
