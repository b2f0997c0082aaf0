/// Parsers for the scalar forms policy files use: durations, sizes, addresses, URLs,
/// hashes, timestamps. Each returns nil (or a reason) instead of throwing; the reader
/// turns that into a ``PolicyError`` with file, line and key path.
enum PolicyValues {
    /// `10ms`, `1s`, `5m`, `2h`, `1d`: a non-negative integer and one unit.
    static func duration(_ s: String) -> Duration? {
        let u = Array(s.utf8)
        var i = 0
        var n: Int64 = 0
        while i < u.count, u[i] >= UInt8(ascii: "0"), u[i] <= UInt8(ascii: "9") {
            let (m, o1) = n.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int64(u[i] - UInt8(ascii: "0")))
            if o1 || o2 || i > 12 { return nil }
            n = a; i += 1
        }
        guard i > 0, i < u.count else { return nil }
        switch String(decoding: u[i...], as: UTF8.self) {
        case "ms": return .milliseconds(n)
        case "s": return .seconds(n)
        case "m": return .seconds(n * 60)
        case "h": return .seconds(n * 3600)
        case "d": return .seconds(n * 86_400)
        default: return nil
        }
    }

    /// `1048576`, `64KiB`, `10MiB`, `1GiB`.
    static func size(_ s: String) -> Int? {
        let u = Array(s.utf8)
        var i = 0
        var n = 0
        while i < u.count, u[i] >= UInt8(ascii: "0"), u[i] <= UInt8(ascii: "9") {
            if i > 12 { return nil }
            n = n * 10 + Int(u[i] - UInt8(ascii: "0")); i += 1
        }
        guard i > 0 else { return nil }
        switch String(decoding: u[i...], as: UTF8.self) {
        case "": return n
        case "KiB": return n << 10
        case "MiB": return n << 20
        case "GiB": return n << 30
        default: return nil
        }
    }

    struct HostPort: Equatable {
        var host: String
        var port: UInt16
        var isIPv6: Bool
    }

    /// `a.b.c.d:port`, `[v6]:port` or `localhost:port` (→ 127.0.0.1).
    static func address(_ s: String, allowZeroPort: Bool) -> HostPort? {
        let host: String
        let portText: Substring
        var isIPv6 = false
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]") else { return nil }
            host = String(s[s.index(after: s.startIndex)..<close])
            let rest = s[s.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
            guard let ip = IPAddress(host), !ip.isIPv4 || host.contains(":") else { return nil }
            isIPv6 = true
        } else {
            guard let colon = s.lastIndex(of: ":") else { return nil }
            let h = String(s[..<colon])
            portText = s[s.index(after: colon)...]
            if h == "localhost" {
                host = "127.0.0.1"
            } else {
                guard !h.contains(":"), let ip = IPAddress(h), ip.isIPv4 else { return nil }
                host = h
            }
        }
        guard let port = self.port(portText), port > 0 || allowZeroPort else { return nil }
        return HostPort(host: host, port: port, isIPv6: isIPv6)
    }

    static func port(_ p: Substring) -> UInt16? {
        guard !p.isEmpty, p.count <= 5, p.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              !(p.count > 1 && p.first == "0"), let v = Int(p), v <= 65535 else { return nil }
        return UInt16(v)
    }

    struct ParsedURL: Equatable {
        var scheme: String
        var host: String
        var port: UInt16
        var isIPv6: Bool
        /// "" or a path starting with `/`, without a trailing slash.
        var basePath: String
    }

    /// `http(s)://host[:port][/base]`; host is a DNS name, IPv4 or `[IPv6]`. No userinfo,
    /// query or fragment.
    static func url(_ s: String, schemes: [String: UInt16]) -> ParsedURL? {
        let parts = s.split(separator: "://", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else { return nil }
        let scheme = String(parts[0])
        guard let defaultPort = schemes[scheme] else { return nil }
        let rest = parts[1]
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        var path = String(rest[slash...])
        guard !authority.isEmpty, !authority.contains("@"), !path.contains("?"), !path.contains("#") else { return nil }
        var host: String
        var port = defaultPort
        var isIPv6 = false
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            guard let ip = IPAddress(host), host.contains(":"), !ip.isIPv4 || host.contains(":") else { return nil }
            isIPv6 = true
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let p = self.port(after.dropFirst()), p > 0 else { return nil }
                port = p
            }
        } else {
            let parts = authority.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            host = String(parts[0])
            if parts.count == 2 {
                guard let p = self.port(parts[1]), p > 0 else { return nil }
                port = p
            }
            guard isHostName(host) else { return nil }
        }
        if !path.isEmpty {
            guard PathNormalizer.normalizedString(path) == path else { return nil }
            while path.hasSuffix("/") { path.removeLast() }
        }
        host = host.lowercased()
        return ParsedURL(scheme: scheme, host: host, port: port, isIPv6: isIPv6, basePath: path)
    }

    static func isHostName(_ h: String) -> Bool {
        guard !h.isEmpty, h.utf8.count <= 253 else { return false }
        for label in h.split(separator: ".", omittingEmptySubsequences: false) {
            guard !label.isEmpty, label.count <= 63, label.first != "-", label.last != "-",
                  label.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 })
            else { return false }
        }
        return true
    }

    /// A path named in a policy file: absolute as written, else relative to the directory of
    /// `file` (the file that names it, as the loader labels it: `DIR/NAME` or the path given).
    static func resolve(_ path: String, relativeToFileAt file: String) -> String {
        if path.hasPrefix("/") { return path }
        guard let slash = file.lastIndex(of: "/") else { return path }
        return String(file[...slash]) + path
    }

    /// 16 hex digits of the SHA-256 of `s`: a stable, file-name-safe name for it.
    static func shortDigest(_ s: String) -> String { String(KeyHash.sha256(s).hex.prefix(16)) }

    /// `sha256:` + 64 lowercase hex digits.
    static func hash(_ s: String) -> KeyHash? {
        var s = s
        return s.withUTF8 { hash(UnsafeRawBufferPointer($0)) }
    }

    /// The same over the text's bytes.
    static func hash(_ u: UnsafeRawBufferPointer) -> KeyHash? {
        guard u.count == 71, u[0] == UInt8(ascii: "s"), u[1] == UInt8(ascii: "h"), u[2] == UInt8(ascii: "a"),
              u[3] == UInt8(ascii: "2"), u[4] == UInt8(ascii: "5"), u[5] == UInt8(ascii: "6"), u[6] == UInt8(ascii: ":")
        else { return nil }
        return KeyHash(hexUTF8: UnsafeRawBufferPointer(rebasing: u[7...]))
    }

    /// RFC 3339 date-time (`2027-01-01T00:00:00Z`, `…T00:00:00.5+02:00`) → unix seconds
    /// (fractions truncated).
    static func timestamp(_ s: String) -> Int64? {
        var s = s
        return s.withUTF8 { timestamp(UnsafeRawBufferPointer($0)) }
    }

    /// The same over the text's bytes.
    static func timestamp(_ u: UnsafeRawBufferPointer) -> Int64? {
        func num(_ from: Int, _ len: Int) -> Int? {
            guard from + len <= u.count else { return nil }
            var v = 0
            for i in from..<(from + len) {
                guard u[i] >= 48, u[i] <= 57 else { return nil }
                v = v * 10 + Int(u[i] - 48)
            }
            return v
        }
        guard u.count >= 20, let y = num(0, 4), u[4] == UInt8(ascii: "-"), let mo = num(5, 2),
              u[7] == UInt8(ascii: "-"), let d = num(8, 2), u[10] == UInt8(ascii: "T") || u[10] == UInt8(ascii: "t"),
              let h = num(11, 2), u[13] == UInt8(ascii: ":"), let mi = num(14, 2), u[16] == UInt8(ascii: ":"),
              let se = num(17, 2)
        else { return nil }
        guard (1...12).contains(mo), d >= 1, d <= daysIn(month: mo, year: y), h <= 23, mi <= 59, se <= 60 else { return nil }
        var i = 19
        if i < u.count, u[i] == UInt8(ascii: ".") {
            i += 1
            let start = i
            while i < u.count, u[i] >= 48, u[i] <= 57 { i += 1 }
            guard i > start else { return nil }
        }
        guard i < u.count else { return nil }
        var offset = 0
        if u[i] == UInt8(ascii: "Z") || u[i] == UInt8(ascii: "z") {
            i += 1
        } else if u[i] == UInt8(ascii: "+") || u[i] == UInt8(ascii: "-") {
            guard let oh = num(i + 1, 2), i + 3 < u.count, u[i + 3] == UInt8(ascii: ":"), let om = num(i + 4, 2),
                  oh <= 23, om <= 59 else { return nil }
            offset = (oh * 60 + om) * 60 * (u[i] == UInt8(ascii: "-") ? -1 : 1)
            i += 6
        } else {
            return nil
        }
        guard i == u.count else { return nil }
        let days = daysFromCivil(y, mo, d)
        return Int64(days) * 86_400 + Int64(h * 3600 + mi * 60 + min(se, 59)) - Int64(offset)
    }

    static func daysIn(month m: Int, year y: Int) -> Int {
        switch m {
        case 2: return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 (Howard Hinnant's algorithm).
    static func daysFromCivil(_ y0: Int, _ m: Int, _ d: Int) -> Int {
        let y = m <= 2 ? y0 - 1 : y0
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    /// RFC 9110 token (header names, methods).
    static func isToken(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { c in
            switch c {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"):
                return true
            default: return "!#$%&'*+-.^_`|~".utf8.contains(c)
            }
        }
    }

    /// Names of routes, plans, backends, key ids: `[A-Za-z0-9_.:-]+`.
    static func isName(_ s: String) -> Bool {
        var s = s
        return s.withUTF8 { isName(UnsafeRawBufferPointer($0)) }
    }

    /// The same over the text's bytes.
    static func isName(_ u: UnsafeRawBufferPointer) -> Bool {
        !u.isEmpty && u.count <= 128 && u.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 || c == 95 || c == 46
                || c == 58
        }
    }
}

/// A duration as policy files write it (`10ms`, `1s`, `5m`, `2h`, `1d`), for commands and the
/// admin API.
public func parsePolicyDuration(_ s: String) -> Duration? { PolicyValues.duration(s) }
