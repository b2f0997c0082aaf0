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
    /// The key itself requires HTTPS (`require_https` of the key API), whatever the route says.
    public let requiresHTTPS: Bool
    /// Rotated: the id of the key that replaced it (it works until `expiresAt`, the overlap's
    /// end; then it is refused as revoked, saying so).
    public let rotatedTo: String?
    /// The identity lines the backend receives, built once per record:
    /// `X-Tollgate-Key-Id: …`, `X-Tollgate-Consumer: …`, `X-Tollgate-Scopes: a,b`, each with
    /// its CRLF. Owned by the record (freed with it) and never written after init.
    nonisolated(unsafe) public let identityLines: UnsafeRawBufferPointer
    /// The id's and the consumer's bytes inside `identityLines` (control bytes shown as '?'):
    /// what a usage record copies without touching a `String`.
    nonisolated(unsafe) public let idBytes: UnsafeRawBufferPointer
    nonisolated(unsafe) public let consumerBytes: UnsafeRawBufferPointer

    public init(id: String, hash: KeyHash, prefix: String = "", consumer: String, planIndex: Int?,
                 scopes: ScopeSet, scopeNames: [String], allowIPs: CIDRSet?, expiresAt: Int64?,
                 status: KeyStatus, requiresHTTPS: Bool = false, rotatedTo: String? = nil) {
        self.requiresHTTPS = requiresHTTPS
        self.rotatedTo = rotatedTo
        self.id = id; self.hash = hash; self.prefix = prefix; self.consumer = consumer
        self.planIndex = planIndex; self.scopes = scopes; self.scopeNames = scopeNames
        self.allowIPs = allowIPs; self.expiresAt = expiresAt; self.status = status
        // Field-value bytes only: a control byte in a name (CR, LF, NUL …) becomes '?', so no
        // record, whatever wrote it, can split or end a header line. Written in place: a
        // policy may declare a hundred thousand keys.
        let idHead = "X-Tollgate-Key-Id: ", consumerHead = "X-Tollgate-Consumer: ", scopesHead = "X-Tollgate-Scopes: "
        var count = idHead.utf8.count + id.utf8.count + consumerHead.utf8.count + consumer.utf8.count
            + scopesHead.utf8.count + 6
        for s in scopeNames { count += s.utf8.count }
        count += max(0, scopeNames.count - 1)
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 1)
        var o = 0
        func put(_ text: String, asValue: Bool) {
            var text = text
            o += text.withUTF8 { bytes in
                let out = UnsafeMutableRawBufferPointer(rebasing: storage[o..<(o + bytes.count)])
                out.copyMemory(from: UnsafeRawBufferPointer(bytes))
                if asValue {
                    for (i, c) in bytes.enumerated() where (c < 0x20 && c != 0x09) || c == 0x7F { out[i] = 0x3F }
                }
                return bytes.count
            }
        }
        func endLine() { storage[o] = 0x0D; storage[o + 1] = 0x0A; o += 2 }
        put(idHead, asValue: false)
        let idStart = o
        put(id, asValue: true)
        let idEnd = o
        endLine()
        put(consumerHead, asValue: false)
        let consumerStart = o
        put(consumer, asValue: true)
        let consumerEnd = o
        endLine()
        put(scopesHead, asValue: false)
        for (i, s) in scopeNames.enumerated() {
            if i > 0 { storage[o] = UInt8(ascii: ","); o += 1 }
            put(s, asValue: true)
        }
        endLine()
        precondition(o == count)
        identityLines = UnsafeRawBufferPointer(storage)
        idBytes = UnsafeRawBufferPointer(rebasing: identityLines[idStart..<idEnd])
        consumerBytes = UnsafeRawBufferPointer(rebasing: identityLines[consumerStart..<consumerEnd])
    }

    deinit { identityLines.deallocate() }

    /// A copy with another status (revoke / disable / enable).
    public func with(status: KeyStatus) -> KeyRecord {
        KeyRecord(id: id, hash: hash, prefix: prefix, consumer: consumer, planIndex: planIndex,
                  scopes: scopes, scopeNames: scopeNames, allowIPs: allowIPs, expiresAt: expiresAt,
                  status: status, requiresHTTPS: requiresHTTPS, rotatedTo: rotatedTo)
    }

    public var description: String { "KeyRecord(\(id), \(consumer), \(status.rawValue))" }
}
