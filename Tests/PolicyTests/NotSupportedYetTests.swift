import Foundation
import Testing
@testable import Policy

/// Settings of the contract (shared/POLICY.md) that are not built yet are refused at their
/// key, `file:line: key.path: not supported yet`, instead of being read and then ignored.
struct NotSupportedYetTests {
    /// The environment the POLICY.md example's `secret_env` names.
    static let environment = PolicyEnvironment.fixed(variables: ["JWT_ACCESS_SECRET": "a-secret-for-the-policy-md-example", "WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])

    func errors(_ yaml: String, file: String = "p.yaml") -> [String] {
        do {
            _ = try PolicyLoader.load(yaml: yaml, file: file, environment: Self.environment)
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var yaml: String
        var expected: [String]
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "listen tls, a misspelt field is still unknown", yaml: """
            version: 1
            listen:
              - address: 0.0.0.0:8443
                tls:
                  certificate: a.pem
                  privat_key: a-key.pem
            """, expected: ["p.yaml:5: listen[0].tls.private_key: missing required field",
                            "p.yaml:6: listen[0].tls.privat_key: unknown field"]),
        Case(name: "listen tls, nothing older than 1.2", yaml: """
            version: 1
            listen:
              - address: 0.0.0.0:8443
                tls: {certificate: a.pem, private_key: a-key.pem, min_version: "1.1"}
            """, expected: ["p.yaml:4: listen[0].tls.min_version: unsupported TLS version '1.1' (expected \"1.2\" or \"1.3\"; nothing older)"]),
        Case(name: "listen tls, one certificate or a list, not both", yaml: """
            version: 1
            listen:
              - address: 0.0.0.0:8443
                tls: {certificate: a.pem, private_key: a-key.pem, certificates: [{certificate: b.pem, private_key: b-key.pem}]}
            """, expected: ["p.yaml:4: listen[0].tls: give either certificate + private_key or certificates, not both"]),
        Case(name: "backend tls settings on a plain URL", yaml: """
            version: 1
            backends:
              finance: {url: http://127.0.0.1:7001}
              flowise:
                url: http://flowise.internal:3000
                tls: {ca: ca.pem}
            """, expected: ["p.yaml:6: backends.flowise.tls: tls settings need an https:// url"]),
        Case(name: "backend base path", yaml: """
            version: 1
            backends:
              flowise: {url: http://127.0.0.1:7003/api/v1}
            """, expected: ["p.yaml:3: backends.flowise.url: not supported yet (a base path)"]),
    ]

    @Test(arguments: cases) func refusedAtItsKey(_ c: Case) {
        #expect(errors(c.yaml) == c.expected)
    }

    /// A refused backend setting leaves the backend defined, so what refers to it reports
    /// nothing more.
    @Test func refusalsDoNotCascade() {
        let yaml = """
        version: 1
        backends:
          flowise: {url: "https://flowise.internal", inject: {header: Authorization, format: "Bearer {secret}", secret: s}}
        routes:
          - {name: chat, match: {path: /chat}, backend: flowise}
        """
        #expect(errors(yaml) == [
            "p.yaml:3: backends.flowise.inject: inject needs the top-level secrets block (the master key of the secret store)",
        ])
    }

    /// The whole example of POLICY.md compiles: every block of it is built (and nothing is
    /// an unknown field).
    @Test func policyMDExampleCompiles() {
        #expect(errors(Self.policyMDExample, file: "POLICY.yaml") == [])
    }

    // MARK: credentials.jwt and route credentials are built

    @Test func jwtBlockOfPolicyMDCompiles() throws {
        let yaml = """
            version: 1
            credentials:
              api_key: {headers: [X-API-Key]}
              jwt:
                algorithms: [HS256]
                secret_env: JWT_ACCESS_SECRET
                keys_file: null
                issuer: null
                audience: null
                required_claims: {type: access}
                leeway: 30s
                consumer_claim: sub
                scopes_claim: scope
            backends:
              finance: {url: http://127.0.0.1:7001}
            routes:
              - {name: a, match: {path: /a}, backend: finance}
              - name: chat
                match: {path_prefix: /chat/}
                credentials: [api_key, jwt]
                backend: finance
              - {name: keys-only, match: {path: /k}, backend: finance, credentials: [api_key]}
              - {name: jwt-only, match: {path: /j}, backend: finance, credentials: [jwt]}
            """
        let s = try PolicyLoader.load(yaml: yaml, file: "p.yaml", environment: Self.environment)
        let jwt = try #require(s.jwt)
        #expect(jwt.settings.algorithms == [.hs256])
        #expect(jwt.settings.requiredClaims == [.init(name: "type", value: .string("access"))])
        #expect(jwt.settings.leewaySeconds == 30 && jwt.settings.consumerClaim == "sub" && jwt.settings.scopesClaim == "scope")
        #expect(jwt.keys.count == 1 && jwt.keys[0].type == .oct)
        #expect(s.routes.map(\.credentials) == [[.apiKey, .jwt], [.apiKey, .jwt], .apiKey, .jwt])
        // Without credentials.jwt, routes take API keys only, and naming jwt is an error.
        let plain = try PolicyLoader.load(yaml: "version: 1\nbackends: {f: {url: http://127.0.0.1:1}}\nroutes:\n  - {name: a, match: {path: /a}, backend: f}\n",
                                          file: "p.yaml")
        #expect(plain.jwt == nil && plain.routes[0].credentials == .apiKey)
        #expect(errors("version: 1\nbackends: {f: {url: http://127.0.0.1:1}}\nroutes:\n  - {name: a, match: {path: /a}, backend: f, credentials: [jwt]}\n")
            == ["p.yaml:4: routes[0].credentials: jwt needs credentials.jwt (algorithms and keys)"])
        #expect(errors("version: 1\nbackends: {f: {url: http://127.0.0.1:1}}\nroutes:\n  - {name: a, match: {path: /a}, backend: f, credentials: [oauth]}\n")
            == ["p.yaml:4: routes[0].credentials[0]: invalid value 'oauth' (expected api_key or jwt)"])
        #expect(errors("version: 1\nbackends: {f: {url: http://127.0.0.1:1}}\nroutes:\n  - {name: a, match: {path: /a}, backend: f, credentials: []}\n")
            == ["p.yaml:4: routes[0].credentials: must name at least one credential (or use auth: none)"])
        #expect(errors("version: 1\nbackends: {f: {url: http://127.0.0.1:1}}\nroutes:\n  - {name: a, match: {path: /a}, backend: f, auth: none, credentials: [api_key]}\n")
            == ["p.yaml:4: routes[0].credentials: a route with auth: none takes no credential"])
    }

    // MARK: admin.address and access_log are built

    @Test func adminAddressIsCompiled() throws {
        let v4 = try PolicyLoader.load(yaml: "version: 1\nadmin:\n  address: 127.0.0.1:9901\n", file: "p.yaml")
        #expect(v4.admin == AdminSpec(host: "127.0.0.1", port: 9901, isIPv6: false))
        let v6 = try PolicyLoader.load(yaml: "version: 1\nadmin: {address: \"[::1]:9902\"}\n", file: "p.yaml")
        #expect(v6.admin == AdminSpec(host: "::1", port: 9902, isIPv6: true))
        let none = try PolicyLoader.load(yaml: "version: 1\n", file: "p.yaml")
        #expect(none.admin == nil)
        #expect(errors("version: 1\nadmin:\n  address: 9901\n")
            == ["p.yaml:3: admin.address: invalid address '9901' (expected IPv4:port, [IPv6]:port or localhost:port)"])
        #expect(errors("version: 1\nadmin:\n  port: 9901\n")
            == ["p.yaml:3: admin.port: unknown field", "p.yaml:3: admin.address: missing required field"])
    }

    func accessLog(_ yaml: String, file: String) throws -> AccessLogSpec? {
        try PolicyLoader.load(yaml: yaml, file: file).accessLog
    }

    @Test func accessLogTargets() throws {
        #expect(try accessLog("version: 1\naccess_log:\n  path: \"-\"\n", file: "/etc/tg/p.yaml")
            == AccessLogSpec(target: .stdout))
        // Relative paths resolve against the directory of the file that names them.
        #expect(try accessLog("version: 1\naccess_log: {path: logs/access.jsonl}\n", file: "/etc/tg/10-log.yaml")
            == AccessLogSpec(target: .file("/etc/tg/logs/access.jsonl")))
        #expect(try accessLog("version: 1\naccess_log: {path: logs/access.jsonl}\n", file: "policies/10-log.yaml")
            == AccessLogSpec(target: .file("policies/logs/access.jsonl")))
        #expect(try accessLog("version: 1\naccess_log: {path: access.jsonl}\n", file: "p.yaml")
            == AccessLogSpec(target: .file("access.jsonl")))
        #expect(try accessLog("version: 1\naccess_log: {path: /var/log/tg.jsonl}\n", file: "/etc/tg/p.yaml")
            == AccessLogSpec(target: .file("/var/log/tg.jsonl")))
        #expect(try accessLog("version: 1\n", file: "p.yaml") == nil)
    }

    @Test func accessLogFromADirectoryResolvesAgainstThatDirectory() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-log-\(UInt64.random(in: 0...UInt64.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try "version: 1\naccess_log:\n  path: logs/a.jsonl\n".write(to: dir.appendingPathComponent("00.yaml"),
                                                                    atomically: true, encoding: .utf8)
        let s = try PolicyLoader.load(path: dir.path)
        #expect(s.accessLog == AccessLogSpec(target: .file(dir.path + "/logs/a.jsonl")))
    }

    @Test func accessLogErrors() {
        #expect(errors("version: 1\naccess_log:\n  path: a.jsonl\n  rotate: 1d\n")
            == ["p.yaml:4: access_log.rotate: unknown field"])
        #expect(errors("version: 1\naccess_log:\n  format: json\n")
            == ["p.yaml:3: access_log.format: unknown field", "p.yaml:3: access_log.path: missing required field"])
        #expect(errors("version: 1\naccess_log: {path: \"\"}\n") == ["p.yaml:2: access_log.path: must not be empty"])
        #expect(errors("version: 1\naccess_log: {path: [a]}\n") == ["p.yaml:2: access_log.path: expected a string, found a list"])
        #expect(errors("version: 1\naccess_log: stdout\n") == ["p.yaml:2: access_log: expected a mapping, found 'stdout'"])
        let a = "version: 1\naccess_log: {path: a.jsonl}\n"
        let b = "version: 1\n\naccess_log: {path: b.jsonl}\n"
        do {
            _ = try PolicyLoader.load(files: [("a.yaml", a), ("b.yaml", b)])
            Issue.record("two access_log blocks loaded")
        } catch {
            #expect(error.errors.map(\.description)
                == ["b.yaml:3: access_log: already defined at a.yaml:2; 'access_log' may appear in one file only"])
        }
    }

    /// shared/POLICY.md's example, verbatim.
    static let policyMDExample = """
        version: 1

        listen:
          - address: 127.0.0.1:8080               # plain HTTP/1.1 (and h2c prior knowledge)
          - address: 0.0.0.0:8443
            tls:
              certificate: certs/server.pem       # chain, leaf first
              private_key: certs/server-key.pem
              # or several, chosen by SNI (the first is the default):
              # certificates: [{certificate: a.pem, private_key: a-key.pem}, ...]
              min_version: "1.2"                  # "1.2" | "1.3"
              session_resumption: true            # tickets (keys rotated in memory); false = full handshakes
        admin:
          address: 127.0.0.1:9901                 # /healthz /readyz /metrics, /v1/... API, dashboard
          tokens_file: secrets/admin-tokens       # bootstrap bearer tokens for automation (hashes)

        access_log:                               # off when omitted
          path: logs/access.jsonl                 # or "-" for standard output

        store:                                    # omit the whole block: embedded default
          redis: redis://127.0.0.1:6379/0
          on_error: closed                        # closed | open | local
          deadline: 10ms

        clients:
          trusted_proxies: [10.0.0.0/8, "::1/128"]  # only these may set X-Forwarded-For
          deny: [203.0.113.0/24]                  # checked before any credential work
          allow: []                               # empty = everyone not denied

        credentials:
          api_key:
            headers: [X-API-Key]                  # Authorization: Bearer <key> is also read
            query: null                           # e.g. api_key; off unless named
            forward: false                        # strip the key before the backend (default)
          jwt:                                    # optional second credential (seeds 001, 003)
            algorithms: [HS256]                   # pinned; also RS256, ES256
            secret_env: JWT_ACCESS_SECRET         # HS*: shared secret from the environment
            keys_file: null                       # RS*/ES*: a JWKS file or a PEM public key
            issuer: null                          # checked when set
            audience: null                        # checked when set
            required_claims: {type: access}       # a refresh token is never an access token
            leeway: 30s
            consumer_claim: sub                   # identity for limits, credits, usage
            scopes_claim: scope                   # space-separated or array

        backends:
          finance:    {url: http://127.0.0.1:7001}
          accounting: {url: http://127.0.0.1:7002}
          flowise:
            url: http://127.0.0.1:7003            # https:// verifies the server (system CAs or tls.ca)
            inject:                               # upstream credential (seed 004)
              header: Authorization
              format: "Bearer {secret}"
              secret: flowise_api_key             # the consumer's own secret if set, else the system one

        secrets:                                  # encrypted at rest (AES-256-GCM, PBKDF2 per-consumer salt)
          master_key_file: secrets/master.key     # or master_key_env: TOLLGATE_MASTER_KEY

        plans:
          free:
            rate_limits:
              - {requests: 10, per: 1s, burst: 20}
              - {requests: 1000, per: 1d}
            quotas:                               # calendar periods in UTC: day | month
              - {requests: 5000, per: month}
              - {tokens: 200000, per: day}        # LLM tokens counted on credit routes
          pro:
            rate_limits:
              - {requests: 200, per: 1s}

        routes:                                   # first match wins, on the normalised path
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
            credentials: [api_key, jwt]           # which credentials this route takes (default: all configured)
            credits:
              per_request: 1                      # flat price, and/or per token:
              per_token: {input: 1, output: 3, per: 1000}   # credits per 1,000 tokens
              reserve_tokens: 1024                # output tokens reserved when the request names no max
              stream: flowise                     # SSE dialect counted as it passes: flowise | openai
              refund_on: [5xx, unavailable]
          - name: admin
            match: {path_prefix: /admin/}
            backend: finance
            scopes: [admin]
          - name: public-health
            match: {methods: [GET], path: /health}
            backend: finance
            auth: none                            # explicit: no credential needed

        keys:                                     # declared keys: hashes only, never plain keys
          - id: key_demo_alice
            hash: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
            consumer: alice
            plan: free
            scopes: [finance:read, chat]
            allow_ips: [127.0.0.0/8]              # optional per-key CIDR allow-list
            expires: 2027-01-01T00:00:00Z         # optional
            status: active                        # active | disabled | revoked

        credits:                                  # ledger for routes with `credits`
          ledger: local                           # local (durable file) | redis | accounting (seed 003 API)
          account: consumer                       # who pays: consumer | key
          accounting: {backend: accounting, token_env: ACCOUNTING_SERVICE_TOKEN}
          on_error: closed

        usage:                                    # one record per answered request, never lost
          spool: .state/usage                     # written before a sink is tried; replayed in order
          durability: 100ms                       # group-commit fsync interval (0 = every record)
          sinks:
            - {kind: file, path: logs/usage.jsonl, rotate: {size: 100MiB, keep: 10}}
            - {kind: redis_stream, stream: "tg:usage", maxlen: 1000000}
            - {kind: http, url: http://127.0.0.1:7002/api/usage/record, format: accounting}

        audit:                                    # key, secret, credit and policy changes; security actions
          path: .state/audit.jsonl                # hash-chained
          signing_key: secrets/audit-ed25519.pem  # signed checkpoints (Ed25519)
          checkpoint: {every: 1000, interval: 60s}

        security:
          lockout: {invalid_keys: 20, per: 1m, for: 10m}   # per client IP -> LOCKED_OUT 429
          auto_disable:
            - {refusals: 50, per: 10m}            # a valid key refused (scope, IP, HTTPS) this often
            - {networks: 5, per: 1h}              # a key used from more than 5 /24 (IPv6 /48) networks
          webhooks:                               # Standard Webhooks signatures (HMAC-SHA256)
            - {url: http://127.0.0.1:9000/hooks, secret_env: WEBHOOK_SECRET,
               events: [lockout, auto_disable, credits_exhausted, store_degraded]}
        """
}
