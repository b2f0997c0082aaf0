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
        subcommands: [New.self, List.self, Revoke.self, Disable.self, Enable.self])

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
            let snapshot = store.snapshot
            if let p = plan, snapshot.plan(named: p) == nil {
                throw ValidationError("plan \(p) is not defined in \(common.policies)")
            }
            var expiresAt: Int64?
            if let e = expires {
                guard let d = ISO8601DateFormatter().date(from: e) else { throw ValidationError("--expires: not an RFC 3339 time: \(e)") }
                expiresAt = Int64(d.timeIntervalSince1970)
            }
            var cidrs: [String]?
            if let a = allowIps {
                cidrs = a.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                for c in cidrs! {
                    if case .failure = CIDR.parse(c) { throw ValidationError("--allow-ips: not a CIDR: \(c)") }
                }
            }
            let keyID = id ?? "key_" + String(KeyHash.sha256(KeyFormat.mint()).hex.prefix(12))
            guard keyID.allSatisfy({ $0.isLetter || $0.isNumber || "_-.:".contains($0) }), !keyID.isEmpty else {
                throw ValidationError("--id: use letters, digits and _-.: only")
            }
            let existing = try store.entry(id: keyID)
            if snapshot.declaredKey(id: keyID) != nil || existing != nil {
                throw ValidationError("a key with id \(keyID) already exists")
            }
            let key = KeyFormat.mint()
            let hash = KeyHash.sha256(key)
            let entry = KeyLogEntry(op: .put, id: keyID, hash: "sha256:" + hash.hex, prefix: KeyFormat.displayPrefix(of: key),
                                    consumer: consumer, plan: plan,
                                    scopes: scopes.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty },
                                    allowIPs: cidrs, expires: expiresAt, status: "active", at: wallClockSeconds())
            try store.put(entry)
            print("key: \(key)")
            print("id: \(keyID)")
            print("hash: sha256:\(hash.hex)")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List keys: id, prefix, consumer, scopes, plan, status, expiry (never a key or hash).")
        @OptionGroup var common: Common

        func run() throws {
            let store = try KeyStoreAccess(policies: common.policies)
            var rows: [[String]] = [["ID", "PREFIX", "CONSUMER", "SCOPES", "PLAN", "STATUS", "EXPIRES", "SOURCE"]]
            let overrides = try store.overrides()
            for k in store.snapshot.keys {
                rows.append([k.id, "-", k.consumer, k.scopeNames.joined(separator: ","),
                             k.planIndex.map { store.snapshot.plans[$0].name } ?? "-",
                             overrides[k.id] ?? k.status.rawValue, Self.format(k.expiresAt), "policy"])
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
        func run() throws { try setStatus(id, "revoked", common.policies) }
    }
    struct Disable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Disable a key (can be enabled again).")
        @Argument var id: String
        @OptionGroup var common: Common
        func run() throws { try setStatus(id, "disabled", common.policies) }
    }
    struct Enable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Enable a disabled key.")
        @Argument var id: String
        @OptionGroup var common: Common
        func run() throws { try setStatus(id, "active", common.policies) }
    }
}

private func setStatus(_ id: String, _ status: String, _ policies: String) throws {
    let store = try KeyStoreAccess(policies: policies)
    let current: String
    if let e = try store.entry(id: id) {
        current = e.status ?? "active"
    } else if let d = store.snapshot.declaredKey(id: id) {
        current = (try store.overrides())[id] ?? d.status.rawValue
    } else {
        throw ValidationError("no key with id \(id)")
    }
    if current == "revoked" && status != "revoked" {
        throw ValidationError("key \(id) is revoked; a revoked key cannot be enabled or disabled")
    }
    try store.setStatus(id: id, status: status, isDeclared: store.snapshot.declaredKey(id: id) != nil)
    print("\(id): \(status)")
}

/// The key store a policy names: the embedded log, or Redis.
struct KeyStoreAccess {
    let snapshot: PolicySnapshot
    let kind: String
    private let log: EmbeddedKeyLog?
    private let redis: RedisKeyDirectory?

    init(policies: String) throws {
        do {
            snapshot = try PolicyLoader.load(path: policies)
        } catch {
            throw ValidationError(error.errors.map(\.description).joined(separator: "\n"))
        }
        if let store = snapshot.store {
            kind = "redis"
            log = nil
            do {
                redis = try RedisKeyDirectory(url: store.url)
            } catch {
                throw ValidationError("store \(store.url): \(error)")
            }
        } else {
            kind = "store"
            log = EmbeddedKeyLog(directory: EmbeddedKeyLog.defaultDirectory(forPolicies: policies))
            redis = nil
        }
    }

    func entry(id: String) throws -> KeyLogEntry? {
        if let redis { return try redis.get(id: id) }
        return try log!.load().records[id]
    }
    func entries() throws -> [KeyLogEntry] {
        if let redis { return try redis.list() }
        let s = try log!.load()
        return s.order.compactMap { s.records[$0] }
    }
    func overrides() throws -> [String: String] {
        if let redis {
            var out: [String: String] = [:]
            for k in snapshot.keys { if let e = try redis.get(id: k.id), let st = e.status { out[k.id] = st } }
            return out
        }
        return try log!.load().overrides
    }
    func put(_ e: KeyLogEntry) throws {
        if let redis { try redis.put(e) } else { try log!.append(e) }
    }
    func setStatus(id: String, status: String, isDeclared: Bool) throws {
        if let redis {
            if isDeclared, (try redis.get(id: id)) == nil, let d = snapshot.declaredKey(id: id) {
                // A declared key's status lives in Redis as a record of its own.
                try redis.put(KeyLogEntry(op: .put, id: id, hash: "sha256:" + d.hash.hex, prefix: "", consumer: d.consumer,
                                          plan: d.planIndex.map { snapshot.plans[$0].name }, scopes: d.scopeNames,
                                          allowIPs: d.allowIPs.map { $0.blocks.map(\.description) }, expires: d.expiresAt,
                                          status: status, at: wallClockSeconds()))
                return
            }
            _ = try redis.setStatus(id: id, status: status)
        } else {
            try log!.append(KeyLogEntry(op: .status, id: id, status: status, at: wallClockSeconds()))
        }
    }
}
