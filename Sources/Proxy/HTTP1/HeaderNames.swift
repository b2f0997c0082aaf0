import Runtime

/// Header names the proxy acts on, recognised by length then bytes (no String, no hashing).
enum KnownHeader: UInt8 {
    case other
    case connection, keepAlive, proxyConnection, te, trailer, transferEncoding, upgrade
    case proxyAuthorization, proxyAuthenticate
    case contentLength, expect, host
    case xForwardedFor, xForwardedProto, xForwardedHost, xRequestID, xTollgate
    case authorization, traceparent
    /// A client-sent name for an identity, a client address or a URL/method rewrite that some
    /// backend framework reads (`Forwarded`, `X-Real-IP`, `X-Original-URL`, `X-User-Id`,
    /// `X_Tollgate_Consumer`, …, any case, `_` for `-`): never forwarded from a client.
    case identityAlias

    /// Removed on every hop (RFC 9110 §7.6.1) or rebuilt by the proxy.
    var isHopByHop: Bool {
        switch self {
        case .connection, .keepAlive, .proxyConnection, .te, .trailer, .transferEncoding, .upgrade,
             .proxyAuthorization, .proxyAuthenticate:
            return true
        case .other, .contentLength, .expect, .host, .xForwardedFor, .xForwardedProto, .xForwardedHost,
             .xRequestID, .xTollgate, .authorization, .traceparent, .identityAlias:
            return false
        }
    }
}

enum HeaderNames {
    static let connection: StaticString = "connection"
    static let keepAlive: StaticString = "keep-alive"
    static let proxyConnection: StaticString = "proxy-connection"
    static let te: StaticString = "te"
    static let trailer: StaticString = "trailer"
    static let transferEncoding: StaticString = "transfer-encoding"
    static let upgrade: StaticString = "upgrade"
    static let proxyAuthorization: StaticString = "proxy-authorization"
    static let proxyAuthenticate: StaticString = "proxy-authenticate"
    static let contentLength: StaticString = "content-length"
    static let expect: StaticString = "expect"
    static let host: StaticString = "host"
    static let xForwardedFor: StaticString = "x-forwarded-for"
    static let xForwardedProto: StaticString = "x-forwarded-proto"
    static let xForwardedHost: StaticString = "x-forwarded-host"
    static let xRequestID: StaticString = "x-request-id"
    static let xTollgatePrefix: StaticString = "x-tollgate-"
    static let authorization: StaticString = "authorization"
    static let traceparent: StaticString = "traceparent"

    @inline(__always)
    static func lowerEquals(_ p: UnsafeRawPointer, _ n: Int, _ lit: StaticString) -> Bool {
        if n != lit.utf8CodeUnitCount { return false }
        let q = UnsafeRawPointer(lit.utf8Start)
        var i = 0
        // Eight bytes at a time: OR 0x20 lowercases letters (and leaves '-' and digits, which
        // the literals contain, unchanged); the literal is lowercase already.
        while i &+ 8 <= n {
            let a = p.loadUnaligned(fromByteOffset: i, as: UInt64.self) | 0x2020_2020_2020_2020
            let b = q.loadUnaligned(fromByteOffset: i, as: UInt64.self) | 0x2020_2020_2020_2020
            if a != b { return false }
            i &+= 8
        }
        while i < n {
            if p.load(fromByteOffset: i, as: UInt8.self) | 0x20 != q.load(fromByteOffset: i, as: UInt8.self) | 0x20 { return false }
            i &+= 1
        }
        return true
    }

    static func classify(_ p: UnsafeRawPointer, _ n: Int) -> KnownHeader {
        switch n {
        case 2: return lowerEquals(p, n, te) ? .te : .other
        case 4: if lowerEquals(p, n, host) { return .host }
        case 6: return lowerEquals(p, n, expect) ? .expect : .other
        case 7:
            if lowerEquals(p, n, upgrade) { return .upgrade }
            return lowerEquals(p, n, trailer) ? .trailer : .other
        case 10:
            if lowerEquals(p, n, connection) { return .connection }
            if lowerEquals(p, n, keepAlive) { return .keepAlive }
        case 11:
            if lowerEquals(p, n, traceparent) { return .traceparent }
        case 12:
            if lowerEquals(p, n, xRequestID) { return .xRequestID }
        case 13: if lowerEquals(p, n, authorization) { return .authorization }
        case 14: if lowerEquals(p, n, contentLength) { return .contentLength }
        case 15: if lowerEquals(p, n, xForwardedFor) { return .xForwardedFor }
        case 16:
            if lowerEquals(p, n, proxyConnection) { return .proxyConnection }
            if lowerEquals(p, n, xForwardedHost) { return .xForwardedHost }
        case 17:
            if lowerEquals(p, n, transferEncoding) { return .transferEncoding }
            if lowerEquals(p, n, xForwardedProto) { return .xForwardedProto }
        case 18: if lowerEquals(p, n, proxyAuthenticate) { return .proxyAuthenticate }
        case 19: if lowerEquals(p, n, proxyAuthorization) { return .proxyAuthorization }
        default: break
        }
        return isTollgate(p, n) ? .xTollgate : .other
    }

    /// `classify`, plus the identity aliases a client may not send (request heads only).
    @inline(__always)
    static func classifyRequestField(_ p: UnsafeRawPointer, _ n: Int) -> KnownHeader {
        let k = classify(p, n)
        if k == .other && IdentityAliases.matches(p, n) { return .identityAlias }
        return k
    }

    @inline(__always)
    static func isTollgate(_ p: UnsafeRawPointer, _ n: Int) -> Bool {
        n > 11 && lowerEquals(p, 11, xTollgatePrefix)
    }

    /// The next comma-separated token of a field value at or after `i` (OWS trimmed):
    /// (start, count, next i), or nil at the end.
    @inline(__always)
    static func nextToken(_ p: UnsafeRawPointer, _ n: Int, from i0: Int) -> (Int, Int, Int)? {
        var i = i0
        while i < n, isOWSorComma(p.load(fromByteOffset: i, as: UInt8.self)) { i += 1 }
        if i >= n { return nil }
        let start = i
        while i < n, p.load(fromByteOffset: i, as: UInt8.self) != 0x2C { i += 1 }
        var end = i
        while end > start, isOWS(p.load(fromByteOffset: end - 1, as: UInt8.self)) { end -= 1 }
        return (start, end - start, i)
    }
    @inline(__always) static func isOWS(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 }

    /// ASCII case-insensitive comparison of two byte runs.
    @inline(__always)
    static func caselessEqualsMixed(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> Bool {
        var i = 0
        while i < n {
            var x = a.load(fromByteOffset: i, as: UInt8.self)
            var y = b.load(fromByteOffset: i, as: UInt8.self)
            if x &- 0x41 < 26 { x |= 0x20 }
            if y &- 0x41 < 26 { y |= 0x20 }
            if x != y { return false }
            i &+= 1
        }
        return true
    }

    @inline(__always)
    static func caselessEquals(_ a: UnsafeRawPointer, _ lower: UnsafeRawPointer, _ n: Int) -> Bool {
        var i = 0
        while i < n {
            var c = a.load(fromByteOffset: i, as: UInt8.self)
            if c &- 0x41 < 26 { c |= 0x20 }
            if c != lower.load(fromByteOffset: i, as: UInt8.self) { return false }
            i &+= 1
        }
        return true
    }

    @inline(__always) static func isOWSorComma(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x2C }
}

/// Field names that carry an identity, a client address or a rewritten URL/method to a backend
/// framework. WSGI, Rack and CGI fold `-` and `_` together (`X_Tollgate_Consumer` reads as
/// `HTTP_X_TOLLGATE_CONSUMER`), so names are compared caselessly with `_` taken as `-`.
/// Tollgate sets its own `X-Forwarded-*` and `X-Tollgate-*`; the client's never pass.
enum IdentityAliases {
    /// Decided by length and the letters after `x-`, then one caseless compare per candidate
    /// (no table walk: this runs for every unknown request field).
    static func matches(_ p: UnsafeRawPointer, _ n: Int) -> Bool {
        if n < 6 { return false }
        let c0 = p.load(as: UInt8.self) | 0x20
        if c0 != 0x78 {   // not x-…
            switch c0 {
            case 0x66: return eq(p, n, "forwarded") || eq(p, n, "forwarded-for")
            case 0x74: return eq(p, n, "true-client-ip")
            case 0x63: return eq(p, n, "cf-connecting-ip") || eq(p, n, "client-ip")
            case 0x72: return eq(p, n, "remote-addr") || eq(p, n, "remote-user")
            default: return false
            }
        }
        let c1 = p.load(fromByteOffset: 1, as: UInt8.self)
        if c1 != 0x2D && c1 != 0x5F { return false }
        switch p.load(fromByteOffset: 2, as: UInt8.self) | 0x20 {
        case 0x66: return eq(p, n, "x-forwarded") || prefix(p, n, "x-forwarded-")
        case 0x6F: return prefix(p, n, "x-original-") || eq(p, n, "x-originating-ip")
        case 0x74: return prefix(p, n, "x-tollgate-")
        case 0x63: return prefix(p, n, "x-consumer-") || eq(p, n, "x-client-ip") || eq(p, n, "x-cluster-client-ip")
                       || eq(p, n, "x-credential-identifier")
        case 0x61: return prefix(p, n, "x-authenticated-") || prefix(p, n, "x-auth-request-")
        case 0x72: return prefix(p, n, "x-remote-") || prefix(p, n, "x-real-") || eq(p, n, "x-rewrite-url")
        case 0x75: return eq(p, n, "x-user") || eq(p, n, "x-user-id") || eq(p, n, "x-userid") || eq(p, n, "x-username")
        case 0x65: return eq(p, n, "x-email") || eq(p, n, "x-envoy-original-path") || eq(p, n, "x-envoy-external-address")
        case 0x68: return eq(p, n, "x-host") || eq(p, n, "x-http-method-override") || eq(p, n, "x-http-method")
        case 0x6D: return eq(p, n, "x-method-override")
        default: return false
        }
    }

    @inline(__always)
    static func eq(_ p: UnsafeRawPointer, _ n: Int, _ lit: StaticString) -> Bool {
        n == lit.utf8CodeUnitCount && canonicalEquals(p, n, lit)
    }

    @inline(__always)
    static func prefix(_ p: UnsafeRawPointer, _ n: Int, _ lit: StaticString) -> Bool {
        n > lit.utf8CodeUnitCount && canonicalEquals(p, lit.utf8CodeUnitCount, lit)
    }

    /// The first `n` bytes of `p` equal the lowercase `lit` (of at least `n` bytes), ASCII
    /// caseless, `_` taken as `-`.
    @inline(__always)
    static func canonicalEquals(_ p: UnsafeRawPointer, _ n: Int, _ lit: StaticString) -> Bool {
        let q = lit.utf8Start
        var i = 0
        while i < n {
            var c = p.load(fromByteOffset: i, as: UInt8.self)
            if c == 0x5F { c = 0x2D } else if c &- 0x41 < 26 { c |= 0x20 }
            if c != q[i] { return false }
            i &+= 1
        }
        return true
    }
}
