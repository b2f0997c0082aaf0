import Glibc

/// Which credentials a route takes (`routes[].credentials: [api_key, jwt]`).
public struct CredentialKinds: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// An API key: a configured header, `Authorization: Bearer`, or the query parameter.
    public static let apiKey = CredentialKinds(rawValue: 1)
    /// A JWT in `Authorization: Bearer` (`credentials.jwt`).
    public static let jwt = CredentialKinds(rawValue: 2)
}

/// Where the proxy reads the API key, and whether it is forwarded upstream.
///
/// Order of reading: each configured header (first non-empty wins), then
/// `Authorization: Bearer <key>`, then the query parameter if one is named.
public struct CredentialRule: Sendable, Equatable {
    /// Header names as configured (for logs and stripping).
    public var headerNames: [String]
    /// The same names, ASCII-lowercased, for caseless byte comparison.
    public var headerNamesLowercased: [[UInt8]]
    /// `Authorization: Bearer` is always read.
    public var readsBearer: Bool { true }
    public var queryParam: [UInt8]?
    /// False (default): the key header / query parameter is stripped before the backend.
    public var forwardsCredential: Bool

    public init(headerNames: [String] = ["X-API-Key"], queryParam: String? = nil, forwardsCredential: Bool = false) {
        self.headerNames = headerNames
        self.headerNamesLowercased = headerNames.map { Array($0.lowercased().utf8) }
        self.queryParam = queryParam.map { Array($0.utf8) }
        self.forwardsCredential = forwardsCredential
    }

    /// The token of an `Authorization` value of the form `Bearer <token>` (scheme
    /// caseless, one or more spaces), as a range into `value`; nil otherwise.
    public static func bearerToken(in value: UnsafeRawBufferPointer) -> Range<Int>? {
        let scheme = "bearer".utf8
        guard value.count > 7 else { return nil }
        var i = 0
        for c in scheme {
            guard value[i] | 0x20 == c else { return nil }
            i += 1
        }
        guard value[i] == 0x20 else { return nil }
        while i < value.count, value[i] == 0x20 { i += 1 }
        var end = value.count
        while end > i, value[end - 1] == 0x20 || value[end - 1] == 0x09 { end -= 1 }
        guard end > i, let base = value.baseAddress else { return nil }
        // No blank inside (memchr: a JWT is a few hundred bytes, a byte loop cost ~6 each).
        if memchr(base + i, 0x20, end - i) != nil || memchr(base + i, 0x09, end - i) != nil { return nil }
        return i..<end
    }
}

extension CredentialRule {
    /// The value of parameter `name` in a raw query string (`a=1&api_key=K&b`), as a
    /// range into `query`; the first occurrence wins and nothing is percent-decoded
    /// (minted keys are base62; a foreign key needing escapes belongs in a header).
    public static func queryValue(named name: [UInt8], in query: UnsafeRawBufferPointer) -> Range<Int>? {
        var start = 0
        let n = query.count
        while start <= n {
            var end = start
            while end < n, query[end] != UInt8(ascii: "&") { end += 1 }
            var eq = start
            while eq < end, query[eq] != UInt8(ascii: "=") { eq += 1 }
            if eq - start == name.count, eq < end {
                var same = true
                for k in 0..<name.count where query[start + k] != name[k] { same = false; break }
                if same { return (eq + 1)..<end }
            }
            start = end + 1
        }
        return nil
    }
}
