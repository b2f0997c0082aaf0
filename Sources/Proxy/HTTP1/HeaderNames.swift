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
    static let connection = StaticBytes("connection")
    static let keepAlive = StaticBytes("keep-alive")
    static let proxyConnection = StaticBytes("proxy-connection")
    static let te = StaticBytes("te")
    static let trailer = StaticBytes("trailer")
    static let transferEncoding = StaticBytes("transfer-encoding")
    static let upgrade = StaticBytes("upgrade")
    static let proxyAuthorization = StaticBytes("proxy-authorization")
    static let proxyAuthenticate = StaticBytes("proxy-authenticate")
    static let contentLength = StaticBytes("content-length")
    static let expect = StaticBytes("expect")
    static let host = StaticBytes("host")
    static let xForwardedFor = StaticBytes("x-forwarded-for")
    static let xForwardedProto = StaticBytes("x-forwarded-proto")
    static let xForwardedHost = StaticBytes("x-forwarded-host")
    static let xRequestID = StaticBytes("x-request-id")
    static let xTollgatePrefix = StaticBytes("x-tollgate-")
    static let authorization = StaticBytes("authorization")
    static let traceparent = StaticBytes("traceparent")

    @inline(__always)
    static func lowerEquals(_ p: UnsafeRawPointer, _ n: Int, _ lit: StaticBytes) -> Bool {
        if n != lit.count { return false }
        var i = 0
        while i < n {
            var c = p.load(fromByteOffset: i, as: UInt8.self)
            if c &- 0x41 < 26 { c |= 0x20 }
            if c != lit.pointer.load(fromByteOffset: i, as: UInt8.self) { return false }
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

    /// Calls `body` with each comma-separated token of a field value (OWS trimmed).
    static func forEachToken(_ p: UnsafeRawPointer, _ n: Int, _ body: (UnsafeRawPointer, Int) -> Void) {
        var i = 0
        while i < n {
            while i < n, isOWSorComma(p.load(fromByteOffset: i, as: UInt8.self)) { i += 1 }
            let start = i
            while i < n, p.load(fromByteOffset: i, as: UInt8.self) != 0x2C { i += 1 }
            var end = i
            while end > start, isOWS(p.load(fromByteOffset: end - 1, as: UInt8.self)) { end -= 1 }
            if end > start { body(p + start, end - start) }
        }
    }
    @inline(__always) static func isOWS(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 }
    @inline(__always) static func isOWSorComma(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x2C }
}
