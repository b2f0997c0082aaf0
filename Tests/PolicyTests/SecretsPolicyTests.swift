import Testing
@testable import Policy

/// `secrets:` and `backends.NAME.inject` (seed 004): read, validated at their lines, compiled.
struct SecretsPolicyTests {
    func errors(_ yaml: String, file: String = "p.yaml") -> [String] {
        do {
            _ = try PolicyLoader.load(yaml: yaml, file: file)
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    static func policy(inject: String, secrets: String = "secrets: {master_key_env: TOLLGATE_MASTER_KEY}") -> String {
        """
        version: 1
        \(secrets)
        backends:
          flowise:
            url: http://127.0.0.1:7003
            inject: \(inject)
        """
    }

    @Test func compilesTheBlockAndTheInjection() throws {
        let s = try PolicyLoader.load(yaml: Self.policy(inject: #"{header: Authorization, format: "Bearer {secret}", secret: flowise_api_key}"#,
                                                        secrets: "secrets: {master_key_file: secrets/master.key}"),
                                      file: "/etc/tg/p.yaml")
        #expect(s.secrets == SecretsSpec(masterKey: .file("/etc/tg/secrets/master.key")))
        let inject = try #require(s.backend(named: "flowise")?.inject)
        #expect(inject.secret == "flowise_api_key")
        #expect(inject.headerLowercased == Array("authorization".utf8))
        #expect(String(decoding: inject.opening, as: UTF8.self) == "Authorization: Bearer ")
        #expect(String(decoding: inject.closing, as: UTF8.self) == "\r\n")
        let env = try PolicyLoader.load(yaml: Self.policy(inject: "{header: X-Api-Key, secret: k}"), file: "p.yaml")
        #expect(env.secrets == SecretsSpec(masterKey: .env("TOLLGATE_MASTER_KEY")))
        // format defaults to the secret alone; text after it is kept.
        #expect(String(decoding: try #require(env.backends.first?.inject).opening, as: UTF8.self) == "X-Api-Key: ")
        let after = try PolicyLoader.load(yaml: Self.policy(inject: #"{header: X-Key, format: "k={secret};v=1", secret: k}"#), file: "p.yaml")
        #expect(String(decoding: try #require(after.backends.first?.inject).closing, as: UTF8.self) == ";v=1\r\n")
    }

    @Test func injectNeedsTheSecretsBlock() {
        #expect(errors(Self.policy(inject: "{header: Authorization, secret: k}", secrets: "")) == [
            "p.yaml:6: backends.flowise.inject: inject needs the top-level secrets block (the master key of the secret store)",
        ])
    }

    @Test func formatHoldsTheSecretExactlyOnce() {
        #expect(errors(Self.policy(inject: #"{header: Authorization, format: "Bearer", secret: k}"#))
            == ["p.yaml:6: backends.flowise.inject.format: must contain {secret} exactly once (found 0)"])
        #expect(errors(Self.policy(inject: #"{header: Authorization, format: "{secret}{secret}", secret: k}"#))
            == ["p.yaml:6: backends.flowise.inject.format: must contain {secret} exactly once (found 2)"])
        #expect(errors(Self.policy(inject: #"{header: Authorization, format: "Bearer {secret}\r\nX-Evil: 1", secret: k}"#))
            == ["p.yaml:6: backends.flowise.inject.format: must not contain control characters (CR, LF, NUL, …)"])
        #expect(errors(Self.policy(inject: #"{header: Authorization, format: " {secret}", secret: k}"#))
            == ["p.yaml:6: backends.flowise.inject.format: must not start with whitespace"])
    }

    @Test(arguments: ["Transfer-Encoding", "content-length", "Connection", "Host", "TE", "Upgrade", "X-Forwarded-For",
                      "X-Tollgate-Consumer", "X-Request-Id", "Proxy-Authorization"])
    func framingAndOwnedHeadersAreRefused(_ header: String) {
        #expect(errors(Self.policy(inject: "{header: \(header), secret: k}"))
            == ["p.yaml:6: backends.flowise.inject.header: '\(header)' is a framing, hop-by-hop or proxy-owned field; it cannot carry an injected credential"])
    }

    @Test func headerAndSecretNamesAreChecked() {
        #expect(errors(Self.policy(inject: #"{header: "X Key", secret: k}"#))
            == ["p.yaml:6: backends.flowise.inject.header: invalid header name 'X Key'"])
        #expect(errors(Self.policy(inject: #"{header: X-Key, secret: "a b"}"#))
            == ["p.yaml:6: backends.flowise.inject.secret: invalid name 'a b' (letters, digits, '-', '_', '.', ':')"])
        #expect(errors(Self.policy(inject: "{secret: k, value: x}"))
            == ["p.yaml:6: backends.flowise.inject.value: unknown field", "p.yaml:6: backends.flowise.inject.header: missing required field"])
        #expect(errors(Self.policy(inject: "{header: X-Key}"))
            == ["p.yaml:6: backends.flowise.inject.secret: missing required field"])
    }

    @Test func secretsBlockErrors() {
        #expect(errors("version: 1\nsecrets: {master_key_file: a.key, master_key_env: K}\n")
            == ["p.yaml:2: secrets: give either master_key_file or master_key_env, not both"])
        #expect(errors("version: 1\nsecrets: {}\n") == ["p.yaml:2: secrets.master_key_file: missing required field"])
        #expect(errors("version: 1\nsecrets:\n  master_key: abc\n")
            == ["p.yaml:3: secrets.master_key: unknown field", "p.yaml:3: secrets.master_key_file: missing required field"])
        #expect(errors("version: 1\nsecrets: {master_key_env: \"A-B\"}\n")
            == ["p.yaml:2: secrets.master_key_env: invalid environment variable name 'A-B'"])
        do {
            _ = try PolicyLoader.load(files: [("a.yaml", "version: 1\nsecrets: {master_key_env: K}\n"),
                                              ("b.yaml", "version: 1\n\nsecrets: {master_key_env: K}\n")])
            Issue.record("two secrets blocks loaded")
        } catch {
            #expect(error.errors.map(\.description)
                == ["b.yaml:3: secrets: already defined at a.yaml:2; 'secrets' may appear in one file only"])
        }
    }
}
