import Policy

extension KeyStatus {
    /// This status (say, the policy file's) with a status change from another source (the
    /// key log, Redis, the command line) applied. Revoked is final whichever side says it and
    /// whatever order the changes were made in; otherwise the change wins, so `enable` lifts
    /// `disabled` (from either side) but never `revoked`.
    public func applying(_ change: KeyStatus) -> KeyStatus {
        self == .revoked || change == .revoked ? .revoked : change
    }
}

/// Keys known in-process: the embedded store's records (and status changes of declared
/// keys) compiled against one policy snapshot. Immutable; rebuilt when either changes and
/// handed to every loop, so a lookup is one or two dictionary probes and no lock.
public final class KeyDirectory: Sendable {
    private let byHash: KeyHashMap<KeyRecord>
    /// Stored records whose plan is missing from the policy, etc. (for the log).
    public let warnings: [String]
    public let storedCount: Int

    public static let empty = KeyDirectory()

    private init() {
        byHash = KeyHashMap()
        warnings = []
        storedCount = 0
    }

    public init(snapshot: PolicySnapshot, state: KeyLogState) {
        var map = KeyHashMap<KeyRecord>(minimumCapacity: state.records.count)
        var warnings: [String] = []
        for id in state.order {
            guard let e = state.records[id] else { continue }
            guard let hex = e.hash, let hash = KeyHash(hex: hex.hasPrefix("sha256:") ? String(hex.dropFirst(7)) : hex) else {
                warnings.append("stored key \(id): unreadable hash, ignored")
                continue
            }
            if snapshot.declaredKey(id: id) != nil {
                warnings.append("stored key \(id): the id is also declared in the policy; the stored one is ignored")
                continue
            }
            map[hash] = Self.record(from: e, hash: hash, snapshot: snapshot, warnings: &warnings)
        }
        for (id, statusText) in state.overrides {
            guard let declared = snapshot.declaredKey(id: id) else { continue }
            guard let change = KeyStatus(rawValue: statusText) else {
                warnings.append("status change of key \(id): unknown status '\(statusText)', ignored")
                continue
            }
            let status = declared.status.applying(change)
            if declared.status != status { map[declared.hash] = declared.with(status: status) }
        }
        byHash = map
        self.warnings = warnings
        storedCount = state.records.count
    }

    /// A stored record compiled against `snapshot` (plan by name, scopes to bits).
    public static func record(from e: KeyLogEntry, hash: KeyHash, snapshot: PolicySnapshot, warnings: inout [String]) -> KeyRecord {
        var planIndex: Int?
        if let p = e.plan {
            if let plan = snapshot.plan(named: p) {
                planIndex = plan.index
            } else {
                warnings.append("stored key \(e.id): plan \(p) is not in the policy; the key is disabled until it is")
            }
        }
        var allow: CIDRSet?
        if let ips = e.allowIPs, !ips.isEmpty {
            var blocks: [CIDR] = []
            for t in ips {
                if case .success(let c) = CIDR.parse(t) { blocks.append(c) }
            }
            allow = CIDRSet(blocks)
        }
        var status = KeyStatus(rawValue: e.status ?? "active") ?? .disabled
        if e.plan != nil && planIndex == nil { status = status == .revoked ? .revoked : .disabled }
        let scopes = e.scopes ?? []
        return KeyRecord(id: e.id, hash: hash, prefix: e.prefix ?? "", consumer: e.consumer ?? "", planIndex: planIndex,
                         scopes: snapshot.scopeSet(of: scopes), scopeNames: scopes, allowIPs: allow,
                         expiresAt: e.expires, status: status, requiresHTTPS: e.requireHTTPS ?? false,
                         rotatedTo: e.rotatedTo)
    }

    /// The record for `hash`: stored (or status-changed) first, then declared.
    @inline(__always)
    public func lookup(_ hash: KeyHash, in snapshot: PolicySnapshot) -> KeyRecord? {
        if !byHash.isEmpty, let r = byHash[hash] { return r }
        return snapshot.declaredKey(hash)
    }
}
