import Foundation
import Testing
@testable import Policy

/// `audit:` is read, validated with file:line errors, and compiled into the snapshot; the
/// snapshot keeps the SHA-256 of every policy file (the audit trail records them).
struct AuditPolicyTests {
    func errors(_ yaml: String, file: String = "p.yaml") -> [String] {
        do {
            _ = try PolicyLoader.load(yaml: yaml, file: file)
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    @Test func auditBlockIsCompiledWithDefaultsAndRelativePaths() throws {
        let full = try PolicyLoader.load(yaml: """
            version: 1
            audit:
              path: .state/audit.jsonl
              signing_key: secrets/audit.pem
              checkpoint: {every: 50, interval: 5s}
            """, file: "/etc/tg/10-audit.yaml")
        #expect(full.audit == AuditSpec(path: "/etc/tg/.state/audit.jsonl", signingKey: "/etc/tg/secrets/audit.pem",
                                        signingKeyLocation: "/etc/tg/10-audit.yaml:4",
                                        checkpointEvery: 50, checkpointInterval: .seconds(5)))
        let minimal = try PolicyLoader.load(yaml: "version: 1\naudit: {path: /var/log/tg/audit.jsonl}\n", file: "p.yaml")
        #expect(minimal.audit == AuditSpec(path: "/var/log/tg/audit.jsonl", signingKey: nil, signingKeyLocation: "",
                                           checkpointEvery: 1000, checkpointInterval: .seconds(60)))
        #expect(try PolicyLoader.load(yaml: "version: 1\n", file: "p.yaml").audit == nil)
    }

    @Test func auditErrorsNameTheirLine() {
        #expect(errors("version: 1\naudit:\n  signing_key: k.pem\n") == ["p.yaml:3: audit.path: missing required field"])
        #expect(errors("version: 1\naudit:\n  path: a.jsonl\n  sign: k.pem\n") == ["p.yaml:4: audit.sign: unknown field"])
        #expect(errors("version: 1\naudit:\n  path: a.jsonl\n  checkpoint: {every: 0}\n")
            == ["p.yaml:4: audit.checkpoint.every: must be between 1 and 100000000"])
        #expect(errors("version: 1\naudit:\n  path: a.jsonl\n  checkpoint: {interval: soon}\n")
            == ["p.yaml:4: audit.checkpoint.interval: invalid duration 'soon' (expected a number followed by ms, s, m, h or d)"])
        #expect(errors("version: 1\naudit:\n  path: a.jsonl\n  checkpoint:\n    every: 10\n    size: 1MiB\n")
            == ["p.yaml:6: audit.checkpoint.size: unknown field"])
        #expect(errors("version: 1\naudit: {path: \"\"}\n") == ["p.yaml:2: audit.path: must not be empty"])
        #expect(errors("version: 1\naudit: on\n") == ["p.yaml:2: audit: expected a mapping, found 'on'"])
        do {
            _ = try PolicyLoader.load(files: [("a.yaml", "version: 1\naudit: {path: a.jsonl}\n"),
                                              ("b.yaml", "version: 1\naudit: {path: b.jsonl}\n")])
            Issue.record("two audit blocks loaded")
        } catch {
            #expect(error.errors.map(\.description)
                == ["b.yaml:2: audit: already defined at a.yaml:2; 'audit' may appear in one file only"])
        }
    }

    @Test func snapshotsKeepEachFilesSHA256() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-src-\(UInt64.random(in: 0...UInt64.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let a = "version: 1\n# a\n", b = "version: 1\n# b\n"
        try a.write(to: dir.appendingPathComponent("00-a.yaml"), atomically: true, encoding: .utf8)
        try b.write(to: dir.appendingPathComponent("10-b.yaml"), atomically: true, encoding: .utf8)
        let s = try PolicyLoader.load(path: dir.path)
        #expect(s.sources == [PolicySource(file: dir.path + "/00-a.yaml", sha256: KeyHash.sha256(a).hex),
                              PolicySource(file: dir.path + "/10-b.yaml", sha256: KeyHash.sha256(b).hex)])
    }
}
