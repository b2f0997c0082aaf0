/// The lifecycle state of a key.
public enum KeyStatus: String, Sendable, CaseIterable {
    case active, disabled, revoked
}

/// Everything the gate knows about one key. Never holds the plain key.
///
/// A final class, not a struct: records are shared by the snapshot's index, the
/// store's cache and in-flight requests across loops, and passing one on the hot path
/// must cost a single retain rather than one per String/Array field. Records are
/// immutable; a status change (revoke/disable) produces a new record.
public final class KeyRecord: Sendable, CustomStringConvertible {
    public let id: String
    public let hash: KeyHash
    /// Display prefix (``KeyFormat/displayPrefix(of:)``); "" for declared keys.
    public let prefix: String
    public let consumer: String
    /// Index into ``PolicySnapshot/plans``; nil means no rate limits.
    public let planIndex: Int?
    /// Compiled against the snapshot's ``ScopeTable`` (only route scopes get bits).
    public let scopes: ScopeSet
    /// The scope names as declared, for listing and identity headers.
    public let scopeNames: [String]
    /// Per-key allow-list; nil means any address (subject to the global rules).
    public let allowIPs: CIDRSet?
    /// Unix seconds; the key is refused from this instant on.
    public let expiresAt: Int64?
    public let status: KeyStatus
    /// The identity lines the backend receives, built once per record:
    /// `X-Tollgate-Key-Id: …`, `X-Tollgate-Consumer: …`, `X-Tollgate-Scopes: a,b`, each with
    /// its CRLF. Owned by the record (freed with it) and never written after init.
    nonisolated(unsafe) public let identityLines: UnsafeRawBufferPointer

    public init(id: String, hash: KeyHash, prefix: String = "", consumer: String, planIndex: Int?,
                 scopes: ScopeSet, scopeNames: [String], allowIPs: CIDRSet?, expiresAt: Int64?,
                 status: KeyStatus) {
        self.id = id; self.hash = hash; self.prefix = prefix; self.consumer = consumer
        self.planIndex = planIndex; self.scopes = scopes; self.scopeNames = scopeNames
        self.allowIPs = allowIPs; self.expiresAt = expiresAt; self.status = status
        // Field-value bytes only: a control byte in a name (CR, LF, NUL …) becomes '?', so no
        // record, whatever wrote it, can split or end a header line.
        func value(_ s: String) -> [UInt8] {
            s.utf8.map { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F ? 0x3F : $0 }
        }
        var lines = Array("X-Tollgate-Key-Id: ".utf8) + value(id) + [0x0D, 0x0A]
        lines += Array("X-Tollgate-Consumer: ".utf8) + value(consumer) + [0x0D, 0x0A]
        lines += Array("X-Tollgate-Scopes: ".utf8) + value(scopeNames.joined(separator: ",")) + [0x0D, 0x0A]
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: lines.count, alignment: 1)
        storage.copyBytes(from: lines)
        identityLines = UnsafeRawBufferPointer(storage)
    }

    deinit { identityLines.deallocate() }

    /// A copy with another status (revoke / disable / enable).
    public func with(status: KeyStatus) -> KeyRecord {
        KeyRecord(id: id, hash: hash, prefix: prefix, consumer: consumer, planIndex: planIndex,
                  scopes: scopes, scopeNames: scopeNames, allowIPs: allowIPs, expiresAt: expiresAt,
                  status: status)
    }

    public var description: String { "KeyRecord(\(id), \(consumer), \(status.rawValue))" }
}
