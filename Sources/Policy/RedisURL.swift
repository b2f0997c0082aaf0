/// Where the store lives, parsed from the `store.redis` field of the policy.
///
/// Accepted forms:
///
///     redis://[user:pass@]host[:port][/db]        port 6379, db 0 by default
///     redis://[:pass@][::1]:6380/2                IPv6 literal in brackets
///     unix:///run/redis.sock[?db=N]               a unix socket (also unix:/path)
///     redis+unix://[user:pass@]/run/redis.sock[?db=N]
///
/// User and password are percent-decoded. `rediss://` (TLS) is refused: hiredis 0.14 has no TLS.
public struct RedisURL: Sendable, Equatable, CustomStringConvertible {
    public enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    public var endpoint: Endpoint
    public var username: String?
    public var password: String?
    public var database: Int

    public init(endpoint: Endpoint, username: String? = nil, password: String? = nil, database: Int = 0) {
        self.endpoint = endpoint; self.username = username; self.password = password; self.database = database
    }

    /// The URL without its password (for logs).
    public var description: String {
        let auth = password == nil ? (username.map { "\($0)@" } ?? "") : "\(username ?? ""):***@"
        switch endpoint {
        case .tcp(let host, let port):
            let h = host.contains(":") ? "[\(host)]" : host
            return "redis://\(auth)\(h):\(port)/\(database)"
        case .unix(let path):
            return "redis+unix://\(auth)\(path)" + (database == 0 ? "" : "?db=\(database)")
        }
    }

    public static let defaultPort = 6379

    public init(parsing text: String) throws(RedisURLError) {
        let s = text.trimmingWhitespace
        if s.isEmpty { throw .empty }
        guard let colon = s.firstIndex(of: ":") else { throw .missingScheme(text) }
        let scheme = s[..<colon].lowercased()
        var rest = s[s.index(after: colon)...]
        switch scheme {
        case "redis":
            guard rest.hasPrefix("//") else { throw .missingSlashes(text) }
            rest = rest.dropFirst(2)
            try self.init(tcp: rest, original: text)
        case "unix", "redis+unix":
            if rest.hasPrefix("//") { rest = rest.dropFirst(2) }
            try self.init(unix: rest, original: text)
        case "rediss":
            throw .tlsUnsupported(text)
        default:
            throw .unsupportedScheme(String(scheme))
        }
    }

    private init(tcp rest: Substring, original: String) throws(RedisURLError) {
        var rest = rest
        if let q = rest.firstIndex(of: "?") {
            if rest[rest.index(after: q)...].contains(where: { $0 != "&" }) { throw .unexpectedQuery(original) }
            rest = rest[..<q]
        }
        let (user, pass, hostPart) = try RedisURL.splitUserInfo(rest, original: original)
        var authority = hostPart
        var dbText: Substring?
        if let slash = authority.firstIndex(of: "/") {
            dbText = authority[authority.index(after: slash)...]
            authority = authority[..<slash]
        }
        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw .badHost(original) }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw .badHost(original) }
                portText = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        if host.isEmpty { throw .missingHost(original) }
        if host.contains(where: { $0 == "@" || $0 == " " || $0 == "[" || $0 == "]" }) { throw .badHost(original) }
        var port = RedisURL.defaultPort
        if let pt = portText {
            guard let p = Int(pt), (1...65535).contains(p) else { throw .badPort(String(pt)) }
            port = p
        }
        var db = 0
        if let d = dbText, !d.isEmpty {
            guard let n = Int(d), n >= 0 else { throw .badDatabase(String(d)) }
            db = n
        }
        self.init(endpoint: .tcp(host: String(host), port: port), username: user, password: pass, database: db)
    }

    private init(unix rest: Substring, original: String) throws(RedisURLError) {
        var rest = rest
        var db = 0
        if let q = rest.firstIndex(of: "?") {
            let query = rest[rest.index(after: q)...]
            rest = rest[..<q]
            for item in query.split(separator: "&") {
                guard item.hasPrefix("db=") else { throw .unexpectedQuery(original) }
                let d = item.dropFirst(3)
                guard let n = Int(d), n >= 0 else { throw .badDatabase(String(d)) }
                db = n
            }
        }
        var user: String?, pass: String?
        if let at = rest.firstIndex(of: "@"), rest.first != "/" || rest[..<at].firstIndex(of: "/") == nil {
            (user, pass, rest) = try RedisURL.splitUserInfo(rest, original: original)
        }
        guard rest.hasPrefix("/"), rest.count > 1 else { throw .badSocketPath(original) }
        self.init(endpoint: .unix(path: String(rest)), username: user, password: pass, database: db)
    }

    /// `[user[:pass]@]rest` → (user, pass, rest); an empty user (`:pass@`) means none.
    private static func splitUserInfo(_ s: Substring, original: String) throws(RedisURLError)
        -> (String?, String?, Substring) {
        guard let at = s.lastIndex(of: "@") else { return (nil, nil, s) }
        let info = s[..<at]
        let rest = s[s.index(after: at)...]
        var user: Substring = info
        var pass: Substring?
        if let colon = info.firstIndex(of: ":") {
            user = info[..<colon]
            pass = info[info.index(after: colon)...]
        }
        guard let u = percentDecode(user) else { throw .badUserInfo(original) }
        var p: String?
        if let pass {
            guard let decoded = percentDecode(pass) else { throw .badUserInfo(original) }
            p = decoded
        }
        return (u.isEmpty ? nil : u, p, rest)
    }

    private static func percentDecode(_ s: Substring) -> String? {
        var out = [UInt8]()
        var it = Array(s.utf8)[...]
        while let c = it.popFirst() {
            if c == UInt8(ascii: "%") {
                guard it.count >= 2, let hi = hexValue(it.removeFirst()), let lo = hexValue(it.removeFirst()) else { return nil }
                out.append(hi << 4 | lo)
            } else {
                out.append(c)
            }
        }
        return String(validating: out, as: UTF8.self)
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// Why a `store.redis` URL was refused; the description is meant for the operator.
public enum RedisURLError: Error, Equatable, CustomStringConvertible {
    case empty
    case missingScheme(String)
    case unsupportedScheme(String)
    case tlsUnsupported(String)
    case missingSlashes(String)
    case missingHost(String)
    case badHost(String)
    case badPort(String)
    case badDatabase(String)
    case badUserInfo(String)
    case badSocketPath(String)
    case unexpectedQuery(String)

    public var description: String {
        switch self {
        case .empty: "redis URL is empty"
        case .missingScheme(let u): "redis URL '\(RedisURLError.redact(u))' has no scheme (expected redis://host:port/db or unix:///path)"
        case .unsupportedScheme(let s): "redis URL scheme '\(s)' is not supported (use redis://, unix:// or redis+unix://)"
        case .tlsUnsupported: "rediss:// (TLS) is not supported by this build; use redis:// over loopback or a unix socket"
        case .missingSlashes(let u): "redis URL '\(RedisURLError.redact(u))' must start with redis://"
        case .missingHost(let u): "redis URL '\(RedisURLError.redact(u))' has no host"
        case .badHost(let u): "redis URL '\(RedisURLError.redact(u))' has a malformed host"
        case .badPort(let p): "redis port '\(p)' is not a number in 1...65535"
        case .badDatabase(let d): "redis database '\(d)' is not a non-negative integer"
        case .badUserInfo(let u): "redis URL '\(RedisURLError.redact(u))' has malformed user:password (bad percent-encoding)"
        case .badSocketPath(let u): "redis URL '\(RedisURLError.redact(u))' needs an absolute socket path (unix:///path/to/redis.sock)"
        case .unexpectedQuery(let u): "redis URL '\(RedisURLError.redact(u))' has an unsupported query (only ?db=N on unix sockets)"
        }
    }

    /// Hides the password of a URL quoted in an error.
    public static func redact(_ url: String) -> String {
        guard let at = url.lastIndex(of: "@"), let colon0 = url.firstIndex(of: ":") else { return url }
        var start = url.index(after: colon0)
        while start < at, url[start] == "/" { start = url.index(after: start) }
        let info = url[start..<at]
        guard let colon = info.firstIndex(of: ":") else { return url }
        return String(url[..<url.index(after: colon)]) + "***" + String(url[at...])
    }
}

extension String {
    fileprivate var trimmingWhitespace: Substring {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" || l == "\r" { s.removeLast() }
        return s
    }
}
