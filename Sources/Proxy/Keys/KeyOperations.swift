import Backends
import Foundation
import Policy
import Runtime

/// Why a key operation was refused: an HTTP status and a stable code for the admin API, the
/// message for the command line. Never holds key material.
struct KeyAPIError: Error, CustomStringConvertible {
    let status: Int
    let code: String
    let message: String
    var description: String { message }
    static func notFound(_ id: String) -> KeyAPIError { KeyAPIError(status: 404, code: "NOT_FOUND", message: "no key with id \(id)") }
    static func bad(_ m: String) -> KeyAPIError { KeyAPIError(status: 400, code: "BAD_REQUEST", message: m) }
    static func conflict(_ m: String) -> KeyAPIError { KeyAPIError(status: 409, code: "CONFLICT", message: m) }
}

/// Who asks: the command line (an OS user), or an admin API caller (a bootstrap token, or a
/// JWT whose consumer owns the keys it touches).
struct KeyCaller {
    enum Kind { case cli, adminToken, consumer, security }
    var kind: Kind
    /// For audit entries (an OS user, a token's fingerprint, a consumer).
    var name: String
    /// Only keys of this consumer are visible (nil: every key).
    var owner: String? { kind == .consumer ? name : nil }
    var auditActor: AuditActor {
        switch kind {
        case .cli: return .cli
        case .adminToken, .consumer: return .admin
        case .security: return .security
        }
    }
}

/// A key as the key API shows it: never the key, never its hash.
struct KeyView {
    var id: String
    var prefix: String?
    var consumer: String
    var scopes: [String]
    var plan: String?
    var status: String
    var expires: Int64?
    var created: Int64?
    var allowIPs: [String]?
    var requireHTTPS: Bool
    var metadata: [String: String]
    var source: String
    var replaces: String?
    var rotatedTo: String?
    var lastUsed: Int64?

    func json() -> [String: Any] {
        func time(_ t: Int64?) -> Any { t.map { Self.rfc3339($0) } ?? NSNull() }
        return ["id": id, "prefix": prefix ?? NSNull(), "consumer": consumer, "scopes": scopes, "plan": plan ?? NSNull(),
                "status": status, "expires": time(expires), "created": time(created), "allow_ips": allowIPs ?? NSNull(),
                "require_https": requireHTTPS, "metadata": metadata, "source": source,
                "replaces": replaces ?? NSNull(), "rotated_to": rotatedTo ?? NSNull(), "last_used": time(lastUsed)]
    }

    static func rfc3339(_ t: Int64) -> String {
        ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(t)))
    }
}

/// The key operations, one implementation for `tollgate keys …` and the admin API: each
/// change is made durable in the store the policy names (the embedded log, or Redis, which
/// tells every instance within a second), then audited.
struct KeyOperations {
    let store: KeyStoreAccess
    let caller: KeyCaller
    /// Hour-granular last use per key id, when usage records are on.
    var lastUsed: (String) -> Int64? = { _ in nil }

    var snapshot: PolicySnapshot { store.snapshot }

    struct NewKey {
        var consumer: String
        var scopes: [String]
        var plan: String?
        var allowIPs: [String]?
        var expires: Int64?
        var requireHTTPS = false
        var metadata: [String: String] = [:]
        var id: String?
        /// Rotation: the key this one replaces.
        var replaces: String?
    }

    static func validID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 128 && id.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_-.:".contains($0)) }
    }

    static func validate(_ k: NewKey, _ snapshot: PolicySnapshot) throws(KeyAPIError) {
        guard !k.consumer.isEmpty, k.consumer.utf8.count <= 256, !k.consumer.contains(where: { $0.isNewline }) else {
            throw .bad("consumer must be 1 to 256 characters")
        }
        if let p = k.plan, snapshot.plan(named: p) == nil { throw .bad("plan \(p) is not defined in the policy") }
        for s in k.scopes where s.isEmpty || s.utf8.count > 128 || s.contains(where: { $0.isWhitespace || $0 == "," }) {
            throw .bad("invalid scope '\(s)'")
        }
        for c in k.allowIPs ?? [] { if case .failure = CIDR.parse(c) { throw .bad("allow_ips: not a CIDR: \(c)") } }
        if k.metadata.count > 32 || k.metadata.contains(where: { $0.key.utf8.count > 64 || $0.value.utf8.count > 1024 }) {
            throw .bad("metadata: at most 32 entries, keys up to 64 and values up to 1024 bytes")
        }
    }

    /// Mints a key; the plain key is in the answer, once, and nowhere else.
    func create(_ k: NewKey) throws(KeyAPIError) -> (view: KeyView, key: String) {
        if let owner = caller.owner, k.consumer != owner { throw KeyAPIError(status: 403, code: "FORBIDDEN", message: "a key for another consumer") }
        try Self.validate(k, snapshot)
        let keyID = k.id ?? "key_" + String(KeyHash.sha256(KeyFormat.mint()).hex.prefix(12))
        guard Self.validID(keyID) else { throw .bad("id: use letters, digits and _-.: only (at most 128)") }
        if snapshot.declaredKey(id: keyID) != nil || (try? store.entry(id: keyID)) != nil {
            throw .conflict("a key with id \(keyID) already exists")
        }
        let key = KeyFormat.mint()
        let hash = KeyHash.sha256(key)
        var entry = KeyLogEntry(op: .put, id: keyID, hash: "sha256:" + hash.hex, prefix: KeyFormat.displayPrefix(of: key),
                                consumer: k.consumer, plan: k.plan, scopes: k.scopes, allowIPs: k.allowIPs, expires: k.expires,
                                status: "active", at: wallClockSeconds())
        entry.requireHTTPS = k.requireHTTPS ? true : nil
        entry.metadata = k.metadata.isEmpty ? nil : k.metadata
        entry.replaces = k.replaces
        entry.created = entry.at
        try change(entry, audit: AuditEvent(.keyCreated, actor: caller.auditActor, subject: keyID, details: [
            ("id", .string(keyID)), ("hash", .string("sha256:" + hash.hex)), ("prefix", .optional(entry.prefix)),
            ("consumer", .string(k.consumer)), ("plan", .optional(k.plan)), ("scopes", .strings(k.scopes)),
            ("allow_ips", k.allowIPs.map { .strings($0) } ?? .null),
            ("expires", k.expires.map { .string(AuditFormat.time(millis: $0 * 1000)) } ?? .null),
            ("store", .string(store.kind)), ("by", .string(caller.name)),
        ]), done: "key \(keyID) was created (its key is not shown)")
        return (view(entry), key)
    }

    /// Every key the caller may see (declared and minted), ordered by id, a page at a time.
    func list(after: String?, limit: Int) throws(KeyAPIError) -> (keys: [KeyView], next: String?) {
        var all: [KeyView] = []
        for d in snapshot.keys where caller.owner == nil || d.consumer == caller.owner { all.append(try view(declared: d)) }
        for e in try storeEntries() where caller.owner == nil || e.consumer == caller.owner { all.append(view(e)) }
        all.sort { $0.id < $1.id }
        if let after { all = all.filter { $0.id > after } }
        let page = Array(all.prefix(limit))
        return (page, all.count > limit ? page.last?.id : nil)
    }

    func get(_ id: String) throws(KeyAPIError) -> KeyView {
        if let d = snapshot.declaredKey(id: id) {
            guard caller.owner == nil || d.consumer == caller.owner else { throw .notFound(id) }
            return try view(declared: d)
        }
        return view(try owned(id))
    }

    struct Patch {
        var scopes: [String]?
        var plan: String??
        var allowIPs: [String]??
        var expires: Int64??
        var requireHTTPS: Bool?
        var metadata: [String: String]?
    }

    /// Changes a minted key's scopes, plan, allowed IPs, expiry, HTTPS requirement, metadata.
    /// A key declared in a policy file is changed there, not here (409).
    func update(_ id: String, _ p: Patch) throws(KeyAPIError) -> KeyView {
        if snapshot.declaredKey(id: id) != nil { throw .conflict("key \(id) is declared in a policy file: change it there") }
        var e = try owned(id)
        if e.status == KeyStatus.revoked.rawValue { throw .conflict("key \(id) is revoked") }
        if let s = p.scopes { e.scopes = s }
        if let pl = p.plan { e.plan = pl }
        if let a = p.allowIPs { e.allowIPs = a }
        if let x = p.expires { e.expires = x }
        if let h = p.requireHTTPS { e.requireHTTPS = h ? true : nil }
        if let m = p.metadata { e.metadata = m.isEmpty ? nil : m }
        try Self.validate(NewKey(consumer: e.consumer ?? "", scopes: e.scopes ?? [], plan: e.plan, allowIPs: e.allowIPs,
                                 metadata: e.metadata ?? [:]), snapshot)
        e.at = wallClockSeconds()
        try change(e, audit: AuditEvent(.keyUpdated, actor: caller.auditActor, subject: id, details: [
            ("id", .string(id)), ("scopes", .strings(e.scopes ?? [])), ("plan", .optional(e.plan)),
            ("allow_ips", e.allowIPs.map { .strings($0) } ?? .null),
            ("expires", e.expires.map { .string(AuditFormat.time(millis: $0 * 1000)) } ?? .null),
            ("require_https", .bool(e.requireHTTPS ?? false)), ("by", .string(caller.name)),
        ]), done: "key \(id) was changed")
        return view(e)
    }

    /// A new key with the old one's settings; the old one works until `overlap` ends (then
    /// it is refused as revoked, saying it was rotated).
    func rotate(_ id: String, overlap: Int64) throws(KeyAPIError) -> (view: KeyView, key: String, oldExpires: Int64) {
        guard overlap >= 0, overlap <= 30 * 86_400 else { throw .bad("overlap must be between 0s and 30d") }
        if snapshot.declaredKey(id: id) != nil { throw .conflict("key \(id) is declared in a policy file: rotate it there") }
        var old = try owned(id)
        if old.status != KeyStatus.active.rawValue { throw .conflict("key \(id) is \(old.status ?? "not active")") }
        if let to = old.rotatedTo { throw .conflict("key \(id) was already rotated (replaced by \(to))") }
        let now = wallClockSeconds()
        let ends = min(old.expires ?? Int64.max, now + overlap)
        var k = NewKey(consumer: old.consumer ?? "", scopes: old.scopes ?? [], plan: old.plan, allowIPs: old.allowIPs,
                       expires: old.expires, requireHTTPS: old.requireHTTPS ?? false, metadata: old.metadata ?? [:])
        k.replaces = id
        let (created, key) = try create(k)
        old.expires = ends
        old.rotatedTo = created.id
        old.at = now
        try change(old, audit: AuditEvent(.keyRotated, actor: caller.auditActor, subject: id, details: [
            ("id", .string(id)), ("replaced_by", .string(created.id)),
            ("old_key_expires", .string(AuditFormat.time(millis: ends * 1000))), ("by", .string(caller.name)),
        ]), done: "key \(id) was rotated to \(created.id)")
        notify(.keyRotated, consumer: old.consumer, subject: id, data: [
            ("key_id", .string(id)), ("replaced_by", .string(created.id)), ("consumer", .optional(old.consumer)),
            ("prefix", .optional(old.prefix)), ("new_prefix", .optional(created.prefix)),
            ("old_key_expires", .string(AuditFormat.time(millis: ends * 1000))), ("actor", .string(caller.auditActor.rawValue)),
        ])
        return (created, key, ends)
    }

    func setStatus(_ id: String, _ status: KeyStatus) throws(KeyAPIError) -> KeyView {
        let current: KeyStatus
        var revokedBy = "the key store"
        if let d = snapshot.declaredKey(id: id) {
            guard caller.owner == nil || d.consumer == caller.owner else { throw .notFound(id) }
            do { current = try store.effectiveStatus(of: d) } catch { throw KeyAPIError(status: 503, code: "STORE_UNAVAILABLE", message: "\(error)") }
            if d.status == .revoked { revokedBy = "its policy file" }
        } else {
            let e = try owned(id)
            current = KeyStatus(rawValue: e.status ?? "active") ?? .disabled
        }
        if current == .revoked && status != .revoked {
            let verb = status == .active ? "enabled" : "disabled"
            throw .conflict("key \(id) is revoked (by \(revokedBy)) and cannot be \(verb): revocation is final; mint a new key instead")
        }
        let audit = try openAudit()
        do { try store.setStatus(id: id, status: status) } catch { throw KeyAPIError(status: 503, code: "STORE_UNAVAILABLE", message: "\(error)") }
        let action: AuditAction
        switch status {
        case .revoked: action = .keyRevoked
        case .disabled: action = .keyDisabled
        case .active: action = .keyEnabled
        }
        try record(audit, AuditEvent(action, actor: caller.auditActor, subject: id, details: [
            ("id", .string(id)), ("from", .string(current.rawValue)), ("to", .string(status.rawValue)),
            ("declared", .bool(snapshot.declaredKey(id: id) != nil)), ("store", .string(store.kind)),
            ("by", .string(caller.name)),
        ]), done: "key \(id) is \(status.rawValue)")
        var v = try get(id)   // read before the change (the embedded log is read once per operation)
        v.status = status.rawValue
        if status == .revoked && current != .revoked {
            notify(.keyRevoked, consumer: v.consumer, subject: id, data: [
                ("key_id", .string(id)), ("consumer", .string(v.consumer)), ("prefix", .optional(v.prefix)),
                ("from", .string(current.rawValue)), ("declared", .bool(snapshot.declaredKey(id: id) != nil)),
                ("actor", .string(caller.auditActor.rawValue)),
            ])
        }
        return v
    }

    // MARK: webhooks

    /// `key_rotated` / `key_revoked`: from a running instance (the admin API) through its
    /// outbox; from `tollgate keys …` (a short-lived process) into the spool's inbox, which
    /// the instance owning the spool delivers (now, or when it next starts).
    private func notify(_ type: WebhookEventType, consumer: String?, subject: String, data: [(String, AuditValue)]) {
        if caller.kind == .cli {
            WebhookEvents.spoolFromCommand(snapshot, policies: store.policies, type, consumer: consumer, subject: subject, data: data)
        } else {
            WebhookEvents.emit(type, consumer: consumer, subject: subject, data: data)
        }
    }

    // MARK: store access

    /// A minted key the caller may touch (another consumer's key is "not found").
    private func owned(_ id: String) throws(KeyAPIError) -> KeyLogEntry {
        let e: KeyLogEntry?
        do { e = try store.entry(id: id) } catch { throw KeyAPIError(status: 503, code: "STORE_UNAVAILABLE", message: "\(error)") }
        guard let e, caller.owner == nil || e.consumer == caller.owner else { throw .notFound(id) }
        return e
    }

    private func storeEntries() throws(KeyAPIError) -> [KeyLogEntry] {
        do { return try store.entries() } catch { throw KeyAPIError(status: 503, code: "STORE_UNAVAILABLE", message: "\(error)") }
    }

    private func openAudit() throws(KeyAPIError) -> AuditLog? {
        do { return try store.openAudit() } catch { throw KeyAPIError(status: 503, code: "AUDIT_UNAVAILABLE", message: "\(error)") }
    }

    private func record(_ audit: AuditLog?, _ event: AuditEvent, done: String) throws(KeyAPIError) {
        do { try store.record(audit, event, done: done) } catch { throw KeyAPIError(status: 500, code: "AUDIT_FAILED", message: "\(error)") }
    }

    /// Writes a record (durable in the store), then its audit entry (the audit trail is
    /// checked writable first: a broken trail stops the change).
    private func change(_ e: KeyLogEntry, audit event: AuditEvent?, done: String) throws(KeyAPIError) {
        let audit = event == nil ? nil : try openAudit()
        do { try store.put(e) } catch { throw KeyAPIError(status: 503, code: "STORE_UNAVAILABLE", message: "\(error)") }
        if let event { try record(audit, event, done: done) }
    }

    // MARK: views

    func view(_ e: KeyLogEntry) -> KeyView {
        KeyView(id: e.id, prefix: e.prefix, consumer: e.consumer ?? "", scopes: e.scopes ?? [], plan: e.plan,
                status: e.status ?? "active", expires: e.expires, created: e.created, allowIPs: e.allowIPs,
                requireHTTPS: e.requireHTTPS ?? false, metadata: e.metadata ?? [:], source: store.kind,
                replaces: e.replaces, rotatedTo: e.rotatedTo, lastUsed: lastUsed(e.id))
    }

    func view(declared d: KeyRecord) throws(KeyAPIError) -> KeyView {
        let status: KeyStatus
        do { status = try store.effectiveStatus(of: d) } catch { throw KeyAPIError(status: 503, code: "STORE_UNAVAILABLE", message: "\(error)") }
        return KeyView(id: d.id, prefix: nil, consumer: d.consumer, scopes: d.scopeNames,
                       plan: d.planIndex.map { snapshot.plans[$0].name }, status: status.rawValue, expires: d.expiresAt,
                       created: nil, allowIPs: nil, requireHTTPS: d.requiresHTTPS, metadata: [:], source: "policy",
                       replaces: nil, rotatedTo: nil, lastUsed: lastUsed(d.id))
    }
}
