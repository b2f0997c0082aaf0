import Policy
import Testing

/// `security:` as the loader reads it: every setting compiled, every mistake refused at its
/// file, line and key.
struct SecurityPolicyTests {
    static let env = PolicyEnvironment.fixed(variables: ["HOOK": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw a-raw-one"])

    func errors(_ files: [(name: String, yaml: String)]) -> [String] {
        do {
            _ = try PolicyLoader.load(files: files, environment: Self.env)
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    @Test func everySettingIsCompiled() throws {
        let s = try PolicyLoader.load(yaml: """
            version: 1
            security:
              lockout: {invalid_keys: 20, per: 1m, for: 10m, max_tracked: 1024}
              auto_disable:
                - {refusals: 50, per: 10m}
                - {networks: 5, per: 1h}
              webhooks:
                - {url: "http://127.0.0.1:9000/hooks", secret_env: HOOK, events: [lockout, auto_disable],
                   consumers: [alice], tries: 3, first_retry: 50ms, timeout: 2s}
            """, file: "p.yaml", environment: Self.env)
        let sec = try #require(s.security)
        #expect(sec.lockout == .init(invalidKeys: 20, per: .seconds(60), banFor: .seconds(600), maxTracked: 1024))
        #expect(sec.refusalRule == .init(refusals: 50, per: .seconds(600)))
        #expect(sec.networkRule == .init(networks: 5, per: .seconds(3600)))
        #expect(s.securityFlags == PolicySnapshot.lockoutBit | PolicySnapshot.refusalsBit | PolicySnapshot.networksBit)
        let w = try #require(sec.webhooks.first)
        #expect(w.host == "127.0.0.1" && w.port == 9000 && w.path == "/hooks")
        #expect(w.secrets.keys.count == 2 && w.secrets.keys[1] == Array("a-raw-one".utf8))
        #expect("\(w.secrets)" == "<2 webhook secret(s)>")
        #expect(w.events == [.lockout, .autoDisable] && w.consumers == ["alice"] && w.tries == 3)
        #expect(w.wants(.lockout, consumer: nil) && w.wants(.autoDisable, consumer: "alice"))
        #expect(!w.wants(.autoDisable, consumer: "bob") && !w.wants(.keyRevoked, consumer: "alice"))
        #expect(!w.isTLS && w.caFile == nil)
        let tls = try PolicyLoader.load(yaml: """
            version: 1
            security:
              webhooks:
                - {url: "https://hooks.example.com/in", secret_env: HOOK, events: [lockout]}
            """, file: "p.yaml", environment: Self.env)
        let t = try #require(tls.security?.webhooks.first)
        #expect(t.isTLS && t.port == 443 && t.host == "hooks.example.com" && t.caFile == nil)
    }

    @Test func noSecurityMeansNoFlags() throws {
        let s = try PolicyLoader.load(yaml: "version: 1\n", file: "p.yaml")
        #expect(s.security == nil && s.securityFlags == 0)
    }

    @Test func mistakesAreRefusedAtTheirKey() {
        let cases: [(String, String)] = [
            ("security:\n  lockout: {invalid_keys: 0, per: 1m, for: 1m}\n", "p.yaml:3: security.lockout.invalid_keys: must be between 1 and 1000000"),
            ("security:\n  lockout: {invalid_keys: 5, per: 1m}\n", "p.yaml:3: security.lockout.for: missing required field"),
            ("security:\n  lockout: {invalid_keys: 5, per: 1m, for: 1m, ban: 2}\n", "p.yaml:3: security.lockout.ban: unknown field"),
            ("security:\n  auto_disable:\n    - {refusals: 5, networks: 2, per: 1m}\n",
             "p.yaml:4: security.auto_disable[0]: one rule per entry: refusals or networks, not both"),
            ("security:\n  auto_disable:\n    - {per: 1m}\n", "p.yaml:4: security.auto_disable[0]: expected refusals or networks"),
            ("security:\n  auto_disable:\n    - {refusals: 5}\n", "p.yaml:4: security.auto_disable[0].per: missing required field"),
            ("security:\n  auto_disable:\n    - {refusals: 5, per: 1m}\n    - {refusals: 6, per: 1m}\n",
             "p.yaml:5: security.auto_disable[1]: a refusals rule is already given"),
            ("security:\n  webhooks:\n    - {url: \"http://h:1/x\", secret_env: HOOK, events: [lockdown]}\n",
             "p.yaml:4: security.webhooks[0].events[0]: unknown event 'lockdown' (expected one of lockout, auto_disable, credits_exhausted, quota_exhausted, store_degraded, key_rotated, key_revoked)"),
            ("security:\n  webhooks:\n    - {url: \"http://h/x\", secret_env: HOOK, events: [lockout], ca_file: ca.pem}\n",
             "p.yaml:4: security.webhooks[0].ca_file: ca_file needs an https:// url"),
            ("security:\n  webhooks:\n    - {url: \"https://h/x\", secret_env: HOOK, events: [lockout], ca_file: nope.pem}\n",
             "p.yaml:4: security.webhooks[0].ca_file: cannot read nope.pem"),
            ("security:\n  webhooks:\n    - {url: \"ftp://h/x\", secret_env: HOOK, events: [lockout]}\n",
             "p.yaml:4: security.webhooks[0].url: invalid URL 'ftp://h/x' (expected http(s)://host[:port][/path])"),
            ("security:\n  webhooks:\n    - {url: \"http://h:1/x\", events: [lockout]}\n", "p.yaml:4: security.webhooks[0].secret_env: missing required field"),
            ("security:\n  webhooks:\n    - {url: \"http://h:1/x\", secret_env: NOPE, events: [lockout]}\n",
             "p.yaml:4: security.webhooks[0].secret_env: environment variable NOPE is not set"),
            ("security:\n  webhooks:\n    - {url: \"http://h:1/x\", secret_env: HOOK, events: [lockout], tries: 0}\n",
             "p.yaml:4: security.webhooks[0].tries: must be between 1 and 100"),
            ("security:\n  lockdown: {}\n", "p.yaml:3: security.lockdown: unknown field"),
        ]
        for (yaml, expected) in cases {
            #expect(errors([("p.yaml", "version: 1\n" + yaml)]) == [expected], "\(yaml)")
        }
    }

    @Test func theBlockMaySpanFilesEachSettingOnce() throws {
        let a = "version: 1\nsecurity:\n  lockout: {invalid_keys: 5, per: 1m, for: 1m}\n"
        let b = "version: 1\nsecurity:\n  webhooks:\n    - {url: \"http://127.0.0.1:9/h\", secret_env: HOOK, events: [lockout]}\n"
        let s = try PolicyLoader.load(files: [("a.yaml", a), ("b.yaml", b)], environment: Self.env)
        #expect(s.security?.lockout?.invalidKeys == 5 && s.security?.webhooks.count == 1)
        #expect(errors([("a.yaml", a), ("c.yaml", "version: 1\nsecurity:\n  lockout: {invalid_keys: 6, per: 1m, for: 1m}\n")])
                == ["c.yaml:3: security.lockout: already defined at a.yaml:3; each security setting may appear in one file only"])
        #expect(errors([("b.yaml", b), ("d.yaml", b)]).count == 1)
    }

    /// A receiver's `webhooks verify` reads the sender's timestamp: extreme values are refused,
    /// never overflow (found by reading the code for the `webhook` fuzz target).
    @Test func extremeTimestampsAreRefusedNotTrapped() {
        let secrets = WebhookSecrets([Array("k".utf8)])
        for t in ["-9223372036854775808", "9223372036854775807", "-1", "99999999999999", "1e9", ""] {
            let r = WebhookSignature.verify(id: "msg_1", timestamp: t, signature: "v1,AAAA", body: [],
                                            secrets: secrets, tolerance: 300, now: 1_796_536_566)
            if case .badTimestamp = r {} else { Issue.record("\(t): \(String(describing: r))") }
        }
        let h = WebhookSignature.header(id: "msg_1", timestamp: 1_796_536_566, body: [1, 2], secrets: secrets)
        #expect(WebhookSignature.verify(id: "msg_1", timestamp: "1796536566", signature: h, body: [1, 2],
                                        secrets: secrets, tolerance: 300, now: 1_796_536_600) == nil)
    }
}
