import Backends
import Foundation
import Policy
import Testing

/// Where a key's status comes from: the policy file, the key log, Redis. Revoked is final
/// from any of them; otherwise a status change lifts or sets `disabled`.
struct KeyStatusPrecedenceTests {
    static let dee = "dee-plain-key", rex = "rex-plain-key", dot = "dot-plain-key", gone = "gone-plain-key"

    /// The policy: `key_dee` (active, plan free, scopes read), `key_rex` (revoked),
    /// `key_dot` (disabled); the arguments edit `key_dee`.
    static func snapshot(deeScopes: String = "[read]", deePlan: String = "free", deeExtra: String = "") throws -> PolicySnapshot {
        func h(_ k: String) -> String { "sha256:" + KeyHash.sha256(k).hex }
        return try PolicyLoader.load(yaml: """
        version: 1
        backends:
          up: {url: "http://127.0.0.1:9"}
        plans:
          free:
            rate_limits:
              - {requests: 5, per: 1m}
          pro:
            rate_limits:
              - {requests: 50, per: 1m}
        routes:
          - name: r
            match: {path_prefix: /r/}
            backend: up
            scopes: [read]
          - name: w
            match: {path_prefix: /w/}
            backend: up
            scopes: [write]
        keys:
          - id: key_dee
            hash: \(h(dee))
            consumer: dee
            plan: \(deePlan)
            scopes: \(deeScopes)
        \(deeExtra)
          - id: key_rex
            hash: \(h(rex))
            consumer: rex
            scopes: [read]
            status: revoked
          - id: key_dot
            hash: \(h(dot))
            consumer: dot
            scopes: [read]
            status: disabled

        """, file: "policy.yaml")
    }

    @Test(arguments: [
        (KeyStatus.active, KeyStatus.active, KeyStatus.active),
        (.active, .disabled, .disabled), (.active, .revoked, .revoked),
        (.disabled, .active, .active), (.disabled, .disabled, .disabled), (.disabled, .revoked, .revoked),
        (.revoked, .active, .revoked), (.revoked, .disabled, .revoked), (.revoked, .revoked, .revoked),
    ])
    func revokedIsFinalFromEitherSide(base: KeyStatus, change: KeyStatus, expected: KeyStatus) {
        #expect(base.applying(change) == expected)
    }

    // MARK: embedded store

    @Test func aLogEnableNeverLiftsARevocationInThePolicy() throws {
        var state = KeyLogState()
        // disable + enable on the command line, then the policy file says revoked.
        for (id, status) in [("key_rex", "disabled"), ("key_rex", "active"), ("key_dot", "active"), ("key_dee", "disabled")] {
            state.apply(KeyLogEntry(op: .status, id: id, status: status, at: 1))
        }
        let dir = KeyDirectory(snapshot: try Self.snapshot(), state: state)
        let s = try Self.snapshot()
        #expect(dir.lookup(.sha256(Self.rex), in: s)?.status == .revoked)
        #expect(dir.lookup(.sha256(Self.dot), in: s)?.status == .active)      // enable lifts disabled
        #expect(dir.lookup(.sha256(Self.dee), in: s)?.status == .disabled)
        // The log revokes a key the policy says is active.
        state.apply(KeyLogEntry(op: .status, id: "key_dee", status: "revoked", at: 2))
        #expect(KeyDirectory(snapshot: s, state: state).lookup(.sha256(Self.dee), in: s)?.status == .revoked)
    }

    // MARK: Redis entries on the lookup path

    private static func statusEntry(_ id: String, _ key: String, _ status: String) -> KeyLogEntry {
        KeyLogEntry(op: .status, id: id, hash: "sha256:" + KeyHash.sha256(key).hex, status: status, at: 1)
    }

    private static func resolve(_ e: KeyLogEntry, _ key: String, in s: PolicySnapshot) -> KeyRecord? {
        var warnings: [String] = []
        let h = KeyHash.sha256(key)
        return RedisKeyDirectory.record(from: e, hash: h, local: KeyDirectory.empty.lookup(h, in: s), snapshot: s,
                                        warnings: &warnings)
    }

    @Test func aRedisStatusAppliesToTheDeclaredRecordOfTheCurrentPolicy() throws {
        let entry = Self.statusEntry("key_dee", Self.dee, "disabled")
        let before = try #require(Self.resolve(entry, Self.dee, in: try Self.snapshot()))
        #expect(before.status == .disabled && before.scopeNames == ["read"] && before.consumer == "dee")
        // The policy changes scopes, plan, allow_ips and expiry: all of it holds, with Redis's status.
        let edited = try Self.snapshot(deeScopes: "[write]", deePlan: "pro", deeExtra: """
                allow_ips: [10.0.0.0/8]
                expires: 2030-01-01T00:00:00Z
            """)
        let after = try #require(Self.resolve(entry, Self.dee, in: edited))
        #expect(after.status == .disabled && after.scopeNames == ["write"], "\(after)")
        #expect(after.allowIPs != nil && after.expiresAt == 1_893_456_000)
        #expect(after.planIndex.map { edited.plans[$0].name } == "pro")
        // enable lifts disabled; the policy's revocation holds whatever Redis says.
        #expect(Self.resolve(Self.statusEntry("key_dot", Self.dot, "active"), Self.dot, in: edited)?.status == .active)
        #expect(Self.resolve(Self.statusEntry("key_rex", Self.rex, "active"), Self.rex, in: edited)?.status == .revoked)
        #expect(Self.resolve(Self.statusEntry("key_dee", Self.dee, "revoked"), Self.dee, in: edited)?.status == .revoked)
        // A status change of a key no longer declared is no key at all.
        #expect(Self.resolve(Self.statusEntry("key_gone", Self.gone, "active"), Self.gone, in: edited) == nil)
    }

    @Test func aWholeCopyOfADeclaredKeyCountsAsAStatusChangeOnly() throws {
        // What older versions wrote for `keys disable|enable` of a declared key.
        let copy = KeyLogEntry(op: .put, id: "key_dee", hash: "sha256:" + KeyHash.sha256(Self.dee).hex, prefix: "",
                               consumer: "dee", plan: "free", scopes: ["read"], status: "active", at: 1)
        let edited = try Self.snapshot(deeScopes: "[write]")
        let r = try #require(Self.resolve(copy, Self.dee, in: edited))
        #expect(r.scopeNames == ["write"] && r.status == .active)
        // A key minted into Redis keeps its whole record.
        let minted = KeyLogEntry(op: .put, id: "key_new", hash: "sha256:" + KeyHash.sha256("minted").hex, prefix: "tg_ab",
                                 consumer: "neo", plan: "pro", scopes: ["write"], status: "disabled", at: 1)
        let m = try #require(Self.resolve(minted, "minted", in: edited))
        #expect(m.id == "key_new" && m.scopeNames == ["write"] && m.status == .disabled && m.planIndex != nil)
    }

    // MARK: Redis writes (real redis-server)

    @Test func declaredKeysGetStatusOnlyEntriesAndRevokedIsFinal() throws {
        let server = try RedisServer()
        defer { server.stop() }
        let dir = try server.client()
        let h = KeyHash.sha256(Self.dee)
        // An older version's whole copy, with its id index.
        try dir.put(KeyLogEntry(op: .put, id: "key_dee", hash: h.hex, consumer: "dee", plan: "free", scopes: ["read"], at: 1))
        try dir.setDeclaredStatus(id: "key_dee", hash: h, status: "disabled", at: 2)
        let stored = try #require(try dir.get(hash: h))
        #expect(stored == KeyLogEntry(op: .status, id: "key_dee", hash: "sha256:" + h.hex, status: "disabled", at: 2))
        #expect(try dir.get(id: "key_dee") == nil && (try dir.list()).isEmpty, "the old copy's id index is still there")
        try dir.setDeclaredStatus(id: "key_dee", hash: h, status: "active", at: 3)
        try dir.setDeclaredStatus(id: "key_dee", hash: h, status: "revoked", at: 4)
        #expect(throws: RedisStoreError.revoked(id: "key_dee")) {
            try dir.setDeclaredStatus(id: "key_dee", hash: h, status: "active", at: 5)
        }
        #expect(throws: RedisStoreError.revoked(id: "key_dee")) {
            try dir.setDeclaredStatus(id: "key_dee", hash: h, status: "disabled", at: 5)
        }
        #expect(try dir.get(hash: h)?.status == "revoked")
        try dir.setDeclaredStatus(id: "key_dee", hash: h, status: "revoked", at: 6)   // idempotent

        // Minted keys: the same rule, and a re-put cannot lift it either.
        let m = KeyHash.sha256("minted-in-redis")
        let minted = KeyLogEntry(op: .put, id: "key_m", hash: m.hex, consumer: "m", scopes: ["read"], at: 1)
        try dir.put(minted)
        try dir.setStatus(id: "key_m", status: "revoked")
        #expect(throws: RedisStoreError.revoked(id: "key_m")) { try dir.setStatus(id: "key_m", status: "active") }
        try dir.put(minted)
        #expect(try dir.get(id: "key_m")?.status == "revoked")
        #expect(try dir.list().map(\.id) == ["key_m"])
    }

    /// A record that does not decode can still be revoked (and nothing else can replace it).
    @Test func undecodableRecordsCanStillBeRevoked() throws {
        let server = try RedisServer()
        defer { server.stop() }
        let dir = try server.client()
        let h = KeyHash.sha256(Self.dee)
        _ = try dir.run(["SET", "tg:{\(h.hex)}:key", "{not json"])
        #expect(throws: RedisStoreError.self) { try dir.setDeclaredStatus(id: "key_dee", hash: h, status: "active", at: 2) }
        try dir.setDeclaredStatus(id: "key_dee", hash: h, status: "revoked", at: 3)
        #expect(try dir.get(hash: h)?.status == "revoked")
        // A minted key whose record went bad: revoked by id.
        let m = KeyHash.sha256("minted-gone-bad")
        try dir.put(KeyLogEntry(op: .put, id: "key_bad", hash: m.hex, consumer: "b", scopes: ["read"], at: 1))
        _ = try dir.run(["SET", "tg:{\(m.hex)}:key", "garbage"])
        #expect(throws: RedisStoreError.self) { try dir.setStatus(id: "key_bad", status: "disabled") }
        try dir.setStatus(id: "key_bad", status: "revoked")
        #expect(try dir.get(hash: m)?.status == "revoked")
    }
}
