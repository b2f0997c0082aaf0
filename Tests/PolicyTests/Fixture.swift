@testable import Policy

/// The policy most decision tests run against. Plain keys are test-only strings.
enum Fixture {
    static let aliceKey = "alice-plain-key-0001"
    static let bobKey = "bob-plain-key-0002"
    static let revokedKey = "revoked-plain-key"
    static let disabledKey = "disabled-plain-key"
    static let expiredKey = "expired-plain-key"
    static let lockedKey = "ip-locked-plain-key"
    static let tinyKey = "tiny-plan-key"

    static func hash(_ k: String) -> String { KeyHash.sha256(k).description }

    static let yaml = """
    version: 1
    listen:
      - address: 127.0.0.1:8080
    clients:
      trusted_proxies: [10.0.0.0/8]
      deny: [203.0.113.0/24]
      allow: []
    backends:
      finance: {url: http://127.0.0.1:7001}
      flowise: {url: http://127.0.0.1:7003/}
    plans:
      free:
        rate_limits:
          - {requests: 10, per: 1s, burst: 20}
          - {requests: 1000, per: 1d}
      tiny:
        rate_limits:
          - {requests: 2, per: 1s}
    routes:
      - name: finance-read
        match: {methods: [GET, HEAD], path_prefix: /api/finance/}
        backend: finance
        scopes: [finance:read]
      - name: finance-write
        match: {methods: [POST, PUT, PATCH, DELETE], path_prefix: /api/finance/}
        backend: finance
        scopes: [finance:write]
        require_https: true
      - name: chat
        match: {methods: [POST], path_prefix: /api/v1/prediction/}
        backend: flowise
        scopes: [chat]
        max_body: 1MiB
      - name: any-key
        match: {path_prefix: /api/misc/}
        backend: finance
      - name: public-health
        match: {methods: [GET], path: /health}
        backend: finance
        auth: none
    keys:
      - id: key_alice
        hash: \(hash(aliceKey))
        consumer: alice
        plan: free
        scopes: [finance:read, chat, not-used-by-any-route]
      - id: key_bob
        hash: \(hash(bobKey))
        consumer: bob
        scopes: [finance:read, finance:write]
      - id: key_revoked
        hash: \(hash(revokedKey))
        consumer: carol
        scopes: [finance:read]
        status: revoked
      - id: key_disabled
        hash: \(hash(disabledKey))
        consumer: dave
        scopes: [finance:read]
        status: disabled
      - id: key_expired
        hash: \(hash(expiredKey))
        consumer: erin
        scopes: [finance:read]
        expires: 2027-01-01T00:00:00Z
      - id: key_locked
        hash: \(hash(lockedKey))
        consumer: frank
        scopes: [finance:read]
        allow_ips: [192.0.2.0/24, "2001:db8::/32"]
      - id: key_tiny
        hash: \(hash(tinyKey))
        consumer: gina
        plan: tiny
        scopes: [finance:read]
    """

    static func snapshot() throws -> PolicySnapshot {
        try PolicyLoader.load(yaml: yaml, file: "fixture.yaml")
    }

    /// 2027-06-01T00:00:00Z
    static let now: Int64 = 1_811_808_000
}
