/// The lifecycle state of a key.
package enum KeyStatus: String, Sendable, CaseIterable {
    case active, disabled, revoked
}

/// Everything the gate knows about one key. Never holds the plain key.
///
/// A final class, not a struct: records are shared by the snapshot's index, the
/// store's cache and in-flight requests across loops, and passing one on the hot path
/// must cost a single retain rather than one per String/Array field. Records are
/// immutable; a status change (revoke/disable) produces a new record.
package final class KeyRecord: Sendable, CustomStringConvertible {
    package let id: String
    package let hash: KeyHash
    /// Display prefix (``KeyFormat/displayPrefix(of:)``); "" for declared keys.
    package let prefix: String
    package let consumer: String
    /// Index into ``PolicySnapshot/plans``; nil means no rate limits.
    package let planIndex: Int?
    /// Compiled against the snapshot's ``ScopeTable`` (only route scopes get bits).
    package let scopes: ScopeSet
    /// The scope names as declared, for listing and identity headers.
    package let scopeNames: [String]
    /// Per-key allow-list; nil means any address (subject to the global rules).
    package let allowIPs: CIDRSet?
    /// Unix seconds; the key is refused from this instant on.
    package let expiresAt: Int64?
    package let status: KeyStatus

    package init(id: String, hash: KeyHash, prefix: String = "", consumer: String, planIndex: Int?,
                 scopes: ScopeSet, scopeNames: [String], allowIPs: CIDRSet?, expiresAt: Int64?,
                 status: KeyStatus) {
        self.id = id; self.hash = hash; self.prefix = prefix; self.consumer = consumer
        self.planIndex = planIndex; self.scopes = scopes; self.scopeNames = scopeNames
        self.allowIPs = allowIPs; self.expiresAt = expiresAt; self.status = status
    }

    /// A copy with another status (revoke / disable / enable).
    package func with(status: KeyStatus) -> KeyRecord {
        KeyRecord(id: id, hash: hash, prefix: prefix, consumer: consumer, planIndex: planIndex,
                  scopes: scopes, scopeNames: scopeNames, allowIPs: allowIPs, expiresAt: expiresAt,
                  status: status)
    }

    package var description: String { "KeyRecord(\(id), \(consumer), \(status.rawValue))" }
}
