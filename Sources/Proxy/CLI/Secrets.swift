import ArgumentParser
import Backends
import Foundation
import Glibc
import Policy

/// `tollgate secrets set|list|delete`: provider secrets (seed 004) in the store the policy
/// names (the state directory, or Redis with `store.redis`), encrypted under the policy's
/// master key. A value is read from standard input, never from an argument, and never
/// printed: `list` shows names, consumers and fingerprints. Every change is audited (when
/// the policy has an audit trail) and reaches running instances within a second.
struct SecretsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secrets",
        abstract: "Set, list and delete provider secrets (encrypted at rest with the policy's master key).",
        subcommands: [Set.self, List.self, Delete.self, Rekey.self])

    struct Common: ParsableArguments {
        @Option(help: "The policy file or directory the running instances serve.")
        var policies: String
    }

    /// The policy, its audit trail and the opened store.
    struct Access {
        let snapshot: PolicySnapshot
        let vault: SecretVault

        init(policies: String) throws {
            do {
                snapshot = try PolicyLoader.load(path: policies, environment: .tools)
            } catch {
                throw ValidationError(error.errors.map(\.description).joined(separator: "\n"))
            }
            guard let spec = snapshot.secrets else {
                throw ValidationError("\(policies) has no secrets block: there is no master key to encrypt with")
            }
            let master: SecureBytes
            do { master = try MasterKey.load(spec) } catch { throw KeysError("secrets: \(error)") }
            vault = SecretVault(master: master, location: SecretVault.location(
                for: snapshot, stateDirectory: EmbeddedKeyLog.defaultDirectory(forPolicies: policies)))
        }

        var kind: String { if case .redis = vault.location { return "redis" } else { return "store" } }

        func openAudit() throws -> AuditLog? {
            do { return try AuditLog.openForCommand(snapshot) } catch { throw KeysError("\(error)") }
        }

        func record(_ audit: AuditLog?, _ event: AuditEvent, done: String) throws {
            guard let audit else { return }
            do { try audit.record(event) } catch {
                throw KeysError("\(done), but the audit trail could not record it: \(error)")
            }
        }
    }

    static func scope(_ consumer: String?) -> SecretScope { consumer.map { .consumer($0) } ?? .system }

    static func describe(_ name: String, _ scope: SecretScope) -> String {
        switch scope {
        case .system: return "\(name) (system)"
        case .consumer(let c): return "\(name) for consumer \(c)"
        }
    }

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Store a secret read from standard input (one trailing newline stripped); without --consumer, the system one.")
        @Argument(help: "The secret's name (what backends.NAME.inject.secret names).") var name: String
        @Option(help: "Whose secret (a consumer); omitted: the system secret, used for consumers without their own.")
        var consumer: String?
        @OptionGroup var common: Common

        func run() throws {
            let scope = SecretsCommand.scope(consumer)
            do { try SecretVault.validate(name: name, scope: scope) } catch { throw ValidationError("\(error)") }
            let access = try Access(policies: common.policies)
            let value = try Self.readStandardInput()
            let audit = try access.openAudit()
            let fingerprint: String
            do {
                fingerprint = try access.vault.set(name: name, scope: scope, value: value.bytes)
            } catch {
                throw KeysError("secrets: \(error)")
            }
            try access.record(audit, AuditEvent(.secretSet, actor: .cli, subject: name, details: [
                ("name", .string(name)), ("consumer", .optional(consumer)), ("fingerprint", .string(fingerprint)),
                ("store", .string(access.kind)), ("os_user", .string(AuditLog.osUser())),
            ]), done: "secret \(SecretsCommand.describe(name, scope)) was set")
            print("set: \(SecretsCommand.describe(name, scope))")
            print("fingerprint: \(fingerprint)")
        }

        /// Standard input into locked, non-dumpable memory (at most 8 KiB and a newline);
        /// one trailing newline is not part of the value.
        static func readStandardInput() throws -> SecureBytes {
            let limit = SecretCipher.maximumValueBytes + 2
            let buf = SecureBytes(count: limit)
            var n = 0
            while n < limit {
                let r = read(0, buf.base + n, limit - n)
                if r < 0 { if errno == EINTR { continue }; throw KeysError("secrets: cannot read standard input") }
                if r == 0 { break }
                n += r
            }
            if n == limit { throw KeysError("secrets: the secret is longer than \(SecretCipher.maximumValueBytes) bytes") }
            if n > 0 && buf.base.load(fromByteOffset: n - 1, as: UInt8.self) == 0x0A { n -= 1 }
            let value = SecureBytes(copying: buf.prefix(n))
            return value
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List secrets: name, consumer (- for the system one), fingerprint, last change; never a value.")
        @OptionGroup var common: Common

        func run() throws {
            let access = try Access(policies: common.policies)
            let rows: [SecretVault.Listing]
            do { rows = try access.vault.list() } catch { throw KeysError("secrets: \(error)") }
            var table: [[String]] = [["NAME", "CONSUMER", "FINGERPRINT", "UPDATED"]]
            for r in rows {
                table.append([r.name, r.scope.label, r.fingerprint, Keys.List.format(r.updatedAt)])
            }
            let widths = (0..<table[0].count).map { c in table.map { $0[c].count }.max() ?? 0 }
            for r in table {
                print(r.enumerated().map { i, v in v.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                    .joined(separator: "  ").trimmingCharacters(in: .whitespaces))
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a secret (without --consumer: the system one).")
        @Argument(help: "The secret's name.") var name: String
        @Option(help: "Whose secret (a consumer); omitted: the system secret.") var consumer: String?
        @OptionGroup var common: Common

        func run() throws {
            let scope = SecretsCommand.scope(consumer)
            let access = try Access(policies: common.policies)
            let audit = try access.openAudit()
            let fingerprint: String?
            do { fingerprint = try access.vault.delete(name: name, scope: scope) } catch { throw KeysError("secrets: \(error)") }
            guard let fingerprint else { throw KeysError("secrets: no secret \(SecretsCommand.describe(name, scope))") }
            try access.record(audit, AuditEvent(.secretDeleted, actor: .cli, subject: name, details: [
                ("name", .string(name)), ("consumer", .optional(consumer)), ("fingerprint", .string(fingerprint)),
                ("store", .string(access.kind)), ("os_user", .string(AuditLog.osUser())),
            ]), done: "secret \(SecretsCommand.describe(name, scope)) was deleted")
            print("deleted: \(SecretsCommand.describe(name, scope))")
        }
    }

    struct Rekey: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-encrypt every secret under a new master key (one atomic change); then point the policy at the new key.")
        @Option(help: "A file holding the new master key (64 hex characters).") var newMasterKeyFile: String?
        @Option(help: "An environment variable holding the new master key.") var newMasterKeyEnv: String?
        @OptionGroup var common: Common

        func run() throws {
            let source: SecretsSpec.MasterKey
            switch (newMasterKeyFile, newMasterKeyEnv) {
            case (let f?, nil): source = .file(f)
            case (nil, let e?): source = .env(e)
            default: throw ValidationError("give --new-master-key-file or --new-master-key-env (one of them)")
            }
            let access = try Access(policies: common.policies)
            let next: SecureBytes
            do { next = try MasterKey.load(SecretsSpec(masterKey: source)) } catch { throw KeysError("secrets: the new key: \(error)") }
            if access.vault.isMaster(next) {
                throw KeysError("secrets: the new master key is the current one")
            }
            let audit = try access.openAudit()
            let moved: Int
            do { moved = try access.vault.rekey(to: next) } catch { throw KeysError("secrets: \(error)") }
            try access.record(audit, AuditEvent(.secretsRekeyed, actor: .cli, subject: access.kind, details: [
                ("secrets", .int(Int64(moved))), ("new_key", .string(SecretsSpec(masterKey: source).source)),
                ("store", .string(access.kind)), ("os_user", .string(AuditLog.osUser())),
            ]), done: "the secret store was re-encrypted")
            print("rekeyed: \(moved) secret(s) now open with the new master key only")
            print("next: point the policy's secrets block at the new key (running instances keep serving what they hold until they reload with it)")
        }
    }
}
