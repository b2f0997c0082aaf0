import Runtime

/// Header names the proxy acts on, recognised by length then bytes (no String, no hashing).
enum KnownHeader: UInt8 {
    case other
    case connection, keepAlive, proxyConnection, te, trailer, transferEncoding, upgrade
    case proxyAuthorization, proxyAuthenticate
    case contentLength, expect, host
    case xForwardedFor, xForwardedProto, xForwardedHost, xRequestID, xTollgate
    case authorization, traceparent

    /// Removed on every hop (RFC 9110 §7.6.1) or rebuilt by the proxy.
    var isHopByHop: Bool {
        switch self {
        case .connection, .keepAlive, .proxyConnection, .te, .trailer, .transferEncoding, .upgrade,
             .proxyAuthorization, .proxyAuthenticate:
            return true
        case .other, .contentLength, .expect, .host, .xForwardedFor, .xForwardedProto, .xForwardedHost,
             .xRequestID, .xTollgate, .authorization, .traceparent:
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
        case 4: return lowerEquals(p, n, host) ? .host : .other
        case 6: return lowerEquals(p, n, expect) ? .expect : .other
        case 7:
            if lowerEquals(p, n, upgrade) { return .upgrade }
            return lowerEquals(p, n, trailer) ? .trailer : .other
        case 10:
            if lowerEquals(p, n, connection) { return .connection }
            return lowerEquals(p, n, keepAlive) ? .keepAlive : .other
        case 11:
            if lowerEquals(p, n, traceparent) { return .traceparent }
        case 12:
            if lowerEquals(p, n, xRequestID) { return .xRequestID }
        case 13: return lowerEquals(p, n, authorization) ? .authorization : (isTollgate(p, n) ? .xTollgate : .other)
        case 14: return lowerEquals(p, n, contentLength) ? .contentLength : (isTollgate(p, n) ? .xTollgate : .other)
        case 15: return lowerEquals(p, n, xForwardedFor) ? .xForwardedFor : (isTollgate(p, n) ? .xTollgate : .other)
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
    @inline(__always) static func isOWSorComma(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x2C }
}
