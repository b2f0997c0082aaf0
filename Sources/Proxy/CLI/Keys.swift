import ArgumentParser
import Backends
import Foundation
import Policy
import Runtime

/// `tollgate keys …`: mint and manage keys in the store the policy names (Redis when
/// `store.redis` is set, the embedded log otherwise). Plain keys are printed once, by `new`,
/// and never stored or logged.
struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mint, list, revoke, disable and enable API keys.",
        subcommands: [New.self, List.self, Rotate.self, Revoke.self, Disable.self, Enable.self])

    struct Common: ParsableArguments {
        @Option(help: "The policy file or directory the running instances serve.")
        var policies: String
    }

    struct New: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Mint a key; prints it once (key, id, hash).")
        @OptionGroup var common: Common
        @Option(help: "Who the key belongs to.") var consumer: String
        @Option(help: "Comma-separated scopes.") var scopes: String
        @Option(help: "A plan of the policy (rate limits).") var plan: String?
        @Option(help: "Expiry, RFC 3339 (2027-01-01T00:00:00Z).") var expires: String?
        @Option(help: "Key id (default: key_<random>).") var id: String?
        @Option(help: "Comma-separated CIDRs the key may be used from.") var allowIps: String?

        func run() throws {
            let store = try KeyStoreAccess(policies: common.policies)
            var expiresAt: Int64?
            if let e = expires {
                guard let d = ISO8601DateFormatter().date(from: e) else { throw ValidationError("--expires: not an RFC 3339 time: \(e)") }
                expiresAt = Int64(d.timeIntervalSince1970)
            }
            let cidrs = allowIps.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
            var k = KeyOperations.NewKey(consumer: consumer, scopes: scopes.split(separator: ",")
                                            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty },
                                         plan: plan, allowIPs: cidrs, expires: expiresAt)
            k.id = id
            let (view, key) = try KeyOperations(store: store, caller: .commandLine).create(k)
            print("key: \(key)")
            print("id: \(view.id)")
            print("hash: sha256:\(KeyHash.sha256(key).hex)")
        }
    }

    struct Rotate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Mint a replacement with the same settings; the old key works until the overlap ends (printed once: key, id, hash).")
        @Argument var id: String
        @OptionGroup var common: Common
        @Option(help: "How long the old key keeps working (e.g. 1h, 30m, 0s).") var overlap: String = "1h"

        func run() throws {
            guard let d = parsePolicyDuration(overlap) else { throw ValidationError("--overlap: not a duration: \(overlap)") }
            let store = try KeyStoreAccess(policies: common.policies)
            let (view, key, ends) = try KeyOperations(store: store, caller: .commandLine)
                .rotate(id, overlap: Int64(d.components.seconds))
            print("key: \(key)")
            print("id: \(view.id)")
            print("hash: sha256:\(KeyHash.sha256(key).hex)")
            print("replaces: \(id) (works until \(KeyView.rfc3339(ends)))")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List keys: id, prefix, consumer, scopes, plan, status, expiry (never a key or hash).")
        @OptionGroup var common: Common

        func run() throws {
            let store = try KeyStoreAccess(policies: common.policies)
            var rows: [[String]] = [["ID", "PREFIX", "CONSUMER", "SCOPES", "PLAN", "STATUS", "EXPIRES", "SOURCE"]]
            for k in store.snapshot.keys {
                rows.append([k.id, "-", k.consumer, k.scopeNames.joined(separator: ","),
                             k.planIndex.map { store.snapshot.plans[$0].name } ?? "-",
                             try store.effectiveStatus(of: k).rawValue, Self.format(k.expiresAt), "policy"])
            }
            for e in try store.entries() {
                rows.append([e.id, e.prefix ?? "-", e.consumer ?? "-", (e.scopes ?? []).joined(separator: ","), e.plan ?? "-",
                             e.status ?? "active", Self.format(e.expires), store.kind])
            }
            let widths = (0..<rows[0].count).map { c in rows.map { $0[c].count }.max() ?? 0 }
            for r in rows {
                print(r.enumerated().map { i, v in v.padding(toLength: widths[i], withPad: " ", startingAt: 0) }.joined(separator: "  "))
            }
        }

        static func format(_ t: Int64?) -> String {
            guard let t else { return "-" }
            return ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(t)))
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a key for good.")
        @Argument var id: String
        @OptionGroup var common: Common
        func run() throws { try setStatus(id, .revoked, common.policies) }
    }
    struct Disable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Disable a key (can be enabled again).")
        @Argument var id: String
        @OptionGroup var common: Common
        func run() throws { try setStatus(id, .disabled, common.policies) }
    }
    struct Enable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Enable a disabled key (never a revoked one).")
        @Argument var id: String
        @OptionGroup var common: Common
        func run() throws { try setStatus(id, .active, common.policies) }
    }
}

/// A key command that could not be carried out (exit status 1, the reason on stderr).
struct KeysError: Error, CustomStringConvertible {
    var description: String
    init(_ s: String) { description = s }
}

private func setStatus(_ id: String, _ status: KeyStatus, _ policies: String) throws {
    let store = try KeyStoreAccess(policies: policies)
    _ = try KeyOperations(store: store, caller: .commandLine).setStatus(id, status)
    print("\(id): \(status.rawValue)")
}

extension KeyCaller {
    /// `tollgate keys …`: the OS user.
    static var commandLine: KeyCaller { KeyCaller(kind: .cli, name: AuditLog.osUser()) }
}

/// The key store a policy names: the embedded log, or Redis.
struct KeyStoreAccess {
    let snapshot: PolicySnapshot
    let kind: String
    /// The policy path (the state directory, the webhook spool).
    let policies: String
    private enum Backing {
        /// The embedded log and its state, read once for this command.
        case log(EmbeddedKeyLog, KeyLogState)
        case redis(RedisKeyDirectory)
    }
    private let backing: Backing

    init(policies: String) throws {
        let snapshot: PolicySnapshot
        do {
            snapshot = try PolicyLoader.load(path: policies, environment: .tools)
        } catch {
            throw ValidationError(error.errors.map(\.description).joined(separator: "\n"))
        }
        try self.init(snapshot: snapshot, policies: policies)
    }

    /// The store of a policy already loaded (the admin API: the running snapshot).
    init(snapshot: PolicySnapshot, policies: String) throws {
        self.snapshot = snapshot
        self.policies = policies
        if let store = snapshot.store {
            kind = "redis"
            do {
                backing = .redis(try RedisKeyDirectory(url: store.url))
            } catch {
                throw KeysError("store \(store.url): \(error)")
            }
        } else {
            kind = "store"
            let log = EmbeddedKeyLog(directory: EmbeddedKeyLog.defaultDirectory(forPolicies: policies))
            let state: KeyLogState
            do { state = try log.load() } catch { throw KeysError("key store unreadable: \(error)") }
            for p in state.problems { FileHandle.standardError.write(Data("warning: \(p)\n".utf8)) }
            backing = .log(log, state)
        }
    }

    /// The Redis connection when the store is Redis (idempotency records live there too).
    var redisDirectory: RedisKeyDirectory? {
        if case .redis(let r) = backing { return r }
        return nil
    }

    /// A key minted into the store (not a declared one), or nil.
    func entry(id: String) throws -> KeyLogEntry? {
        switch backing {
        case .redis(let redis):
            guard let e = try redis.get(id: id), e.op == .put else { return nil }
            return e
        case .log(_, let state):
            return state.records[id]
        }
    }

    /// Keys minted into the store, oldest first (copies of declared keys left by older versions excluded).
    func entries() throws -> [KeyLogEntry] {
        switch backing {
        case .redis(let redis):
            return try redis.list().filter { snapshot.declaredKey(id: $0.id) == nil }
        case .log(_, let state):
            return state.order.compactMap { state.records[$0] }
        }
    }

    /// A declared key's status as the proxy applies it: the policy file's, with the store's
    /// status change applied (revoked final from either side).
    func effectiveStatus(of d: KeyRecord) throws -> KeyStatus {
        let stored: String?
        switch backing {
        case .redis(let redis): stored = try redis.get(hash: d.hash)?.status
        case .log(_, let state): stored = state.overrides[d.id]
        }
        guard let stored else { return d.status }
        return d.status.applying(KeyStatus(rawValue: stored) ?? .disabled)
    }

    /// The policy's audit trail, checked writable (signing key loaded, tail readable), or nil
    /// when the policy has no `audit` block. Run before the change: a broken trail stops it.
    func openAudit() throws -> AuditLog? {
        do { return try AuditLog.openForCommand(snapshot) } catch { throw KeysError("\(error)") }
    }

    /// Records a change that is already durable in the store; a failure says what was done.
    func record(_ audit: AuditLog?, _ event: AuditEvent, done: String) throws {
        guard let audit else { return }
        do {
            try audit.record(event)
        } catch {
            throw KeysError("\(done), but the audit trail could not record it: \(error)")
        }
    }

    func put(_ e: KeyLogEntry) throws {
        switch backing {
        case .redis(let redis): try redis.put(e)
        case .log(let log, _): try log.append(e)
        }
    }

    /// Records a status change: for a declared key only its status (by id in the log, a
    /// status-only entry under its hash in Redis), for a minted key in its record.
    func setStatus(id: String, status: KeyStatus) throws {
        switch backing {
        case .redis(let redis):
            let hash: KeyHash?
            if let d = snapshot.declaredKey(id: id) {
                try redis.setDeclaredStatus(id: id, hash: d.hash, status: status.rawValue)
                hash = d.hash
            } else {
                let e = try redis.setStatus(id: id, status: status.rawValue)
                hash = e.hash.flatMap { KeyHash(hex: $0.hasPrefix("sha256:") ? String($0.dropFirst(7)) : $0) }
            }
            // Enabling clears the security evidence (auto-disable's marker and networks), so
            // the key starts again from nothing.
            if status == .active, let hash {
                for cmd in SecurityScript.clearCommands(keyHex: hash.hex) { _ = try redis.run(cmd) }
            }
        case .log(let log, _):
            try log.append(KeyLogEntry(op: .status, id: id, status: status.rawValue, at: wallClockSeconds()))
        }
    }
}
