/// `secrets:`: where the master key of the provider-secret store comes from (POLICY.md,
/// seed 004). The store itself (state directory or Redis) is the proxy's business; the key
/// is read by `serve` and the `secrets` commands, never here.
public struct SecretsSpec: Sendable, Equatable {
    public enum MasterKey: Sendable, Equatable {
        /// `master_key_file`: resolved against the directory of the policy file that names it.
        case file(String)
        /// `master_key_env`: the name of an environment variable.
        case env(String)
    }
    public var masterKey: MasterKey

    public init(masterKey: MasterKey) { self.masterKey = masterKey }

    /// Where the key comes from, for messages (never the key).
    public var source: String {
        switch masterKey {
        case .file(let p): return "master_key_file \(p)"
        case .env(let n): return "master_key_env \(n)"
        }
    }
}

/// `backends.NAME.inject`: an upstream credential written into every request to the backend:
/// `header: <format with {secret} replaced>`, the consumer's own secret when one is set, else
/// the system one. A client-sent field of that name is removed first.
public struct InjectSpec: Sendable, Equatable {
    /// The field name as written in the policy.
    public var header: String
    /// The same, lowercased (compared against client fields without case).
    public var headerLowercased: [UInt8]
    /// `Header: ` followed by the format's text before `{secret}`.
    public var opening: [UInt8]
    /// The format's text after `{secret}`, then CRLF.
    public var closing: [UInt8]
    /// The secret's name in the store.
    public var secret: String

    public init(header: String, format: String, secret: String) {
        self.header = header
        headerLowercased = Array(header.lowercased().utf8)
        let parts = InjectSpec.split(format) ?? ("", "")
        opening = Array((header + ": " + parts.before).utf8)
        closing = Array((parts.after + "\r\n").utf8)
        self.secret = secret
    }

    static let placeholder = "{secret}"

    /// The text before and after the one `{secret}`; nil unless it appears exactly once.
    static func split(_ format: String) -> (before: String, after: String)? {
        let found = occurrences(in: format)
        guard found.count == 1 else { return nil }
        let b = Array(format.utf8)
        let at = found[0]
        return (String(decoding: b[..<at], as: UTF8.self),
                String(decoding: b[(at + placeholder.utf8.count)...], as: UTF8.self))
    }

    /// Byte offsets of every `{secret}` in `format`.
    static func occurrences(in format: String) -> [Int] {
        let b = Array(format.utf8), p = Array(placeholder.utf8)
        var out: [Int] = []
        var i = 0
        while i + p.count <= b.count {
            if Array(b[i..<(i + p.count)]) == p { out.append(i); i += p.count } else { i += 1 }
        }
        return out
    }

    /// Fields the proxy frames, owns or must never forward: not a place for a credential.
    static let refusedHeaders: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "content-length", "host", "expect", "proxy-authorization", "proxy-authenticate",
        "forwarded", "x-request-id", "traceparent", "x-real-ip", "cookie",
    ]

    /// Why `name` cannot carry an injected credential, or nil when it can.
    static func problem(withHeader name: String) -> String? {
        guard PolicyValues.isToken(name) else { return "invalid header name '\(name)'" }
        let lower = name.lowercased()
        if refusedHeaders.contains(lower) || lower.hasPrefix("x-forwarded-") || lower.hasPrefix("x-tollgate-") {
            return "'\(name)' is a framing, hop-by-hop or proxy-owned field; it cannot carry an injected credential"
        }
        return nil
    }

    /// Why `format` is not usable as a field value, or nil.
    static func problem(withFormat format: String) -> String? {
        let count = occurrences(in: format).count
        if count != 1 { return "must contain {secret} exactly once (found \(count))" }
        if format.utf8.contains(where: { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F }) {
            return "must not contain control characters (CR, LF, NUL, …)"
        }
        if let f = format.utf8.first, f == 0x20 || f == 0x09 { return "must not start with whitespace" }
        if let l = format.utf8.last, l == 0x20 || l == 0x09 { return "must not end with whitespace" }
        return nil
    }
}
