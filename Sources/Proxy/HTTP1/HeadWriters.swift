import Backends
import Glibc
import Policy
import Runtime

/// What the head writers read from whatever carries an exchange: an HTTP/1.1 connection, or
/// an HTTP/2 stream (whose head was rebuilt as HTTP/1.1 text and parsed by the same strict
/// parser). Generic, not an existential: each carrier gets its own specialised writers.
protocol ExchangeCarrier: AnyObject {
    var request: HTTP1RequestHead { get }
    /// The request head's bytes (what `request`'s and the exchange's ranges point into).
    var headBytes: UnsafeRawBufferPointer { get }
    var exchange: Exchange { get }
    var headers: HeaderTable { get }
    var peer: PeerAddress { get }
    var context: LoopContext { get }
    var responseBody: HTTP1Session.ResponseBody { get set }
    var responseChunks: ChunkedDecoder { get set }
    var closeAfterResponse: Bool { get set }
    /// A chunked upstream body is de-chunked (HTTP/1.0 clients, HTTP/2 streams, metered
    /// answers).
    var decodesChunked: Bool { get }
    /// De-chunked bytes go to the client as chunks again (a metered chunked answer to an
    /// HTTP/1.1 client: the meter can end it with an event and the last chunk).
    var rechunks: Bool { get }
}

/// Writes the request head sent upstream: hop-by-hop and Tollgate-owned fields dropped,
/// framing re-stated, X-Forwarded-*, X-Request-Id and identity added, and for a backend with
/// `inject` its credential (any client-sent field of that name dropped).
enum RequestHeadWriter {
    static let http11: StaticString = " HTTP/1.1\r\n"
    static let colonSpace: StaticString = ": "
    static let crlf: StaticString = "\r\n"
    static let contentLength: StaticString = "Content-Length: "
    static let chunked: StaticString = "Transfer-Encoding: chunked\r\n"
    static let xff: StaticString = "X-Forwarded-For: "
    static let xfh: StaticString = "X-Forwarded-Host: "
    static let xrid: StaticString = "X-Request-Id: "
    static let host: StaticString = "Host: "
    static let commaSpace: StaticString = ", "
    static let crlfTraceparentStart: StaticString = "\r\ntraceparent: 00-"
    static let crlfXfpHTTP: StaticString = "\r\nX-Forwarded-Proto: http\r\n"
    static let crlfXfpHTTPS: StaticString = "\r\nX-Forwarded-Proto: https\r\n"
    static let crlfXrid: StaticString = "\r\nX-Request-Id: "
    static let traceparentEnd: StaticString = "-01\r\n"

    enum Outcome { case written, tooLarge, tooManyConnectionOptions }

    static func write<C: ExchangeCarrier>(_ c: C, into out: IOBuffer) -> Outcome {
        let req = c.request
        let head = c.headBytes
        guard let base = head.baseAddress else { return .tooLarge }
        // Every write below is bounded by the buffer: one that does not fit sets the flag and
        // the exchange is refused (431), never the process.
        out.isOverflowed = false

        out.put(base + Int(req.methodRange.offset), count: Int(req.methodRange.count))
        out.put(byte: 0x20)
        // The normalised path: what the route was matched on is what the backend sees.
        out.put(c.exchange.pathBuffer, count: c.exchange.facts.pathCount)
        let snapshot = c.exchange.facts.snapshot
        // A JWT is never forwarded (`forward: true` is about API keys).
        let stripCredential = !snapshot.credentials.forwardsCredential || c.exchange.facts.isJWT
        if req.hasQuery {
            if stripCredential, let name = snapshot.credentials.queryParam {
                // Every occurrence, read or not (a public route reads none).
                writeQuery(base: base, query: req.query, removing: name, into: out)
            } else {
                out.put(byte: 0x3F)
                out.put(base + Int(req.query.offset), count: Int(req.query.count))
            }
        }
        out.put(http11)
        let credentialHeader = c.exchange.facts.credentialHeader
        var clientXFF = ByteRange.empty

        // A backend with `inject`: any client field of that name is dropped whatever the
        // pipeline chose; the value it chose is written below.
        let injection = c.exchange.facts.pool.flatMap { $0.injects ? $0.inject : nil }
        let tokens = req.hasConnectionOptions ? ConnectionTokens(headers: c.headers, base: base) : ConnectionTokens.none
        if tokens.isTruncated { return .tooManyConnectionOptions }
        var hostValue = ByteRange.empty
        var hasHost = false
        var hasTraceparent = false
        let headers = c.headers
        var runs = LineRuns(base: base)
        for i in 0..<headers.count {
            let f = headers[i]
            let np = base + Int(f.name.offset)
            let nn = Int(f.name.count)
            var keep = true
            if stripCredential && i == credentialHeader {
                keep = false
            } else if let inj = injection, nn == inj.headerLowercased.count,
                      inj.headerLowercased.withUnsafeBytes({ HeaderNames.caselessEquals(np, $0.baseAddress!, nn) }) {
                // The client's own value of the injected field never reaches the backend.
                keep = false
            } else {
                switch HeaderNames.classifyRequestField(np, nn) {
                case .other:
                    if tokens.count > 0 && tokens.names(np, nn) { keep = false }
                    // Every configured key header, not only the one read: a repeated header, or a
                    // key sent to a public route (where none is read), must not reach the backend.
                    else if stripCredential && isCredentialHeader(np, nn, snapshot) { keep = false }
                case .host:
                    hasHost = true
                    hostValue = f.value
                case .authorization:
                    // Every Bearer credential, not only the one read: a second Authorization
                    // line, or one beside X-API-Key, or one sent to a public route.
                    if stripCredential && isBearer(base + Int(f.value.offset), Int(f.value.count)) { keep = false }
                case .traceparent:
                    hasTraceparent = true
                case .xForwardedFor:
                    clientXFF = f.value
                    keep = false
                case .connection, .keepAlive, .proxyConnection, .te, .trailer, .transferEncoding, .upgrade,
                     .proxyAuthorization, .proxyAuthenticate, .contentLength, .expect,
                     .xForwardedProto, .xForwardedHost, .xRequestID, .xTollgate, .identityAlias:
                    keep = false
                }
            }
            runs.line(at: Int(f.name.offset), kept: keep, into: out)
        }
        runs.finish(headLength: req.headLength, into: out)
        if !hasHost {
            out.put(host)
            out.put(string: c.exchange.facts.pool?.hostField ?? "localhost")
            out.put(crlf)
        }
        switch req.framing {
        case .contentLength(let n):
            out.put(contentLength)
            out.put(decimal: Int(n))
            out.put(crlf)
        case .chunked:
            out.put(chunked)
        case .none, .untilClose:
            break
        }
        // A trusted proxy's chain is extended; anyone else's X-Forwarded-* is replaced.
        out.put(xff)
        if c.exchange.facts.isPeerTrusted && !clientXFF.isEmpty {
            out.put(base + Int(clientXFF.offset), count: Int(clientXFF.count))
            out.put(commaSpace)
        }
        c.peer.text.withUnsafeBytes { out.put($0) }
        // What the client phase decided (a trusted proxy's last X-Forwarded-Proto, else the
        // listener's). Constant fragments are merged with the line ends around them.
        out.put(c.exchange.facts.isHTTPS ? crlfXfpHTTPS : crlfXfpHTTP)
        if hasHost {
            out.put(xfh)
            out.put(base + Int(hostValue.offset), count: Int(hostValue.count))
            out.put(crlfXrid)
        } else {
            out.put(xrid)
        }
        c.exchange.withRequestID { out.put($0) }
        // The trace id below is written in place: make sure it fits first.
        if out.isOverflowed || out.writableBytes < 96 { return .tooLarge }
        if !hasTraceparent {
            // W3C trace context: start a trace when the client did not send one (DESIGN.md, step 7).
            // trace-id: the loop's random half, then this request's own id (ours, or a fresh
            // one when the client named the request); parent-id: a fresh id.
            out.put(crlfTraceparentStart)
            var seed = c.context.traceSeedHex
            withUnsafeBytes(of: &seed) { out.put($0.baseAddress!, count: 16) }
            if c.exchange.requestIDGenerated {
                c.exchange.withRequestID { out.put($0) }
            } else {
                out.writerIndex += c.context.nextRequestID(into: out.writePointer)
            }
            out.put(byte: 0x2D)
            out.writerIndex += c.context.nextRequestID(into: out.writePointer)
            out.put(traceparentEnd)
        } else {
            out.put(crlf)
        }
        if let r = c.exchange.facts.record {
            // Identity for the backend (client-sent X-Tollgate-* were dropped above), built
            // once per record.
            out.put(r.identityLines)
        }
        if let inj = injection, let table = c.exchange.facts.secretTable {
            out.put(inj.opening)
            out.put(table.value(c.exchange.facts.secretSlot))
            out.put(inj.closing)
        }
        out.put(crlf)
        return out.isOverflowed ? .tooLarge : .written
    }

    /// `Bearer` (any case) alone or followed by a space: a credential whatever its token looks like.
    @inline(__always)
    static func isBearer(_ p: UnsafeRawPointer, _ n: Int) -> Bool {
        if n < 6 || !HeaderNames.lowerEquals(p, 6, bearer) { return false }
        return n == 6 || p.load(fromByteOffset: 6, as: UInt8.self) == 0x20 || p.load(fromByteOffset: 6, as: UInt8.self) == 0x09
    }
    static let bearer: StaticString = "bearer"

    @inline(__always)
    private static func isCredentialHeader(_ name: UnsafeRawPointer, _ count: Int, _ snapshot: PolicySnapshot) -> Bool {
        for lower in snapshot.credentials.headerNamesLowercased where lower.count == count {
            if lower.withUnsafeBytes({ HeaderNames.caselessEquals(name, $0.baseAddress!, count) }) { return true }
        }
        return false
    }

    /// The query without any parameter named `name` (`a=1&api_key=K&b=2&api_key=J` → `a=1&b=2`),
    /// and without the `?` when nothing is left.
    static func writeQuery(base: UnsafeRawPointer, query: ByteRange, removing name: [UInt8], into out: IOBuffer) {
        let qEnd = query.end
        var i = Int(query.offset)
        var wroteAny = false
        while i <= qEnd {
            var e = i
            while e < qEnd && base.load(fromByteOffset: e, as: UInt8.self) != 0x26 { e += 1 }
            // The parameter's name runs to its `=` (or its end).
            var n = i
            while n < e && base.load(fromByteOffset: n, as: UInt8.self) != 0x3D { n += 1 }
            let isCredential = n - i == name.count && name.withUnsafeBytes { memcmp(base + i, $0.baseAddress!, name.count) == 0 }
            if !isCredential && e > i {
                out.put(byte: wroteAny ? 0x26 : 0x3F)
                out.put(base + i, count: e - i)
                wroteAny = true
            }
            i = e + 1
        }
    }
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) for the exchange's plan.
enum RateLimitFields {
    static let stateReset: StaticString = ";t="
    static let retryAfter: StaticString = "Retry-After: "
    static let crlf: StaticString = "\r\n"

    static func write<C: ExchangeCarrier>(_ c: C, into out: IOBuffer) {
        let limitPlan = c.exchange.facts.limitPlan
        guard limitPlan >= 0 else { return }
        let plans = c.exchange.facts.snapshot.plans
        guard limitPlan < plans.count else { return }
        let plan = plans[limitPlan]
        let report = c.exchange.facts.limitReport
        guard report.windowIndex < plan.windows.count else { return }
        // `RateLimit-Policy: …` and `RateLimit: "<window>";r=<remaining>;t=<reset>` (the value
        // `RateLimitHeaders.writeState` renders), from text the plan built once.
        let text = plan.headerText
        guard out.writableBytes > text.count + 64 else { return }
        out.put(text.baseAddress!, count: plan.policyLineCount)
        let (offset, count) = plan.stateOpenings[report.windowIndex]
        out.put(text.baseAddress! + Int(offset), count: Int(count))
        out.put(decimal: max(0, report.remaining))
        out.put(stateReset)
        out.put(decimal: max(0, report.resetSeconds))
        out.put(crlf)
    }
}

/// The field names listed in a message's Connection header(s): removed from what is forwarded.
/// Up to 8 tokens, kept inline (no allocation); `keep-alive` and `close` are not field names
/// anyone sends, so the common `Connection: keep-alive` costs one short comparison later.
struct ConnectionTokens {
    private var offsets: (Int32, Int32, Int32, Int32, Int32, Int32, Int32, Int32) = (0, 0, 0, 0, 0, 0, 0, 0)
    private var counts: (Int32, Int32, Int32, Int32, Int32, Int32, Int32, Int32) = (0, 0, 0, 0, 0, 0, 0, 0)
    private(set) var count = 0
    /// The Connection header named more than 8 fields: not forwarded.
    private(set) var isTruncated = false
    private let base: UnsafeRawPointer

    /// No Connection options: nothing to drop.
    static var none: ConnectionTokens { ConnectionTokens() }
    private init() { base = UnsafeRawPointer(bitPattern: 1)! }

    init(headers: HeaderTable, base: UnsafeRawPointer) {
        self.base = base
        for i in 0..<headers.count {
            let f = headers[i]
            guard f.name.count == 10, HeaderNames.lowerEquals(base + Int(f.name.offset), 10, HeaderNames.connection) else { continue }
            let vp = base + Int(f.value.offset)
            let vn = Int(f.value.count)
            var at = 0
            while let (s, n, next) = HeaderNames.nextToken(vp, vn, from: at) {
                at = next
                // `close` / `keep-alive` name no field worth removing.
                if HeaderNames.lowerEquals(vp + s, n, HeaderNames.keepAlive) || HeaderNames.lowerEquals(vp + s, n, "close") { continue }
                // More names than are kept: a field named past them would be forwarded. The
                // message is refused instead (`isTruncated`).
                if count == 8 { isTruncated = true; break }
                set(count, offset: Int32(Int(f.value.offset) + s), length: Int32(n))
                count += 1
            }
        }
    }

    private mutating func set(_ k: Int, offset: Int32, length: Int32) {
        withUnsafeMutableBytes(of: &offsets) { $0.storeBytes(of: offset, toByteOffset: k * 4, as: Int32.self) }
        withUnsafeMutableBytes(of: &counts) { $0.storeBytes(of: length, toByteOffset: k * 4, as: Int32.self) }
    }

    /// True when `name` is one of the listed tokens (ASCII case-insensitive).
    func names(_ p: UnsafeRawPointer, _ n: Int) -> Bool {
        for k in 0..<count {
            let len = withUnsafeBytes(of: counts) { Int($0.load(fromByteOffset: k * 4, as: Int32.self)) }
            if len != n { continue }
            let off = withUnsafeBytes(of: offsets) { Int($0.load(fromByteOffset: k * 4, as: Int32.self)) }
            if HeaderNames.caselessEqualsMixed(p, base + off, n) { return true }
        }
        return false
    }
}

/// Copies the field lines a head writer keeps as they came (the parser validated them): a run
/// of consecutive kept lines costs one write.
struct LineRuns {
    let base: UnsafeRawPointer
    private var start = -1

    init(base: UnsafeRawPointer) { self.base = base }

    /// The field line starting at `offset` is kept or dropped.
    @inline(__always)
    mutating func line(at offset: Int, kept: Bool, into out: IOBuffer) {
        if kept {
            if start < 0 { start = offset }
        } else if start >= 0 {
            out.put(base + start, count: offset - start)
            start = -1
        }
    }

    /// Writes the last run (the field lines end 2 bytes before the head: its blank line).
    @inline(__always)
    mutating func finish(headLength: Int, into out: IOBuffer) {
        if start >= 0 { out.put(base + start, count: headLength - 2 - start) }
        start = -1
    }
}

/// Writes the response head sent to the client, and picks how its body is relayed.
enum ResponseHeadWriter {
    static let http11: StaticString = "HTTP/1.1 "
    static let colonSpace: StaticString = ": "
    static let crlf: StaticString = "\r\n"
    static let contentLength: StaticString = "Content-Length: "
    static let chunked: StaticString = "Transfer-Encoding: chunked\r\n"
    static let close: StaticString = "Connection: close\r\n"
    static let keepAlive: StaticString = "Connection: keep-alive\r\n"
    static let xrid: StaticString = "X-Request-Id: "
    static let crlfXrid: StaticString = "\r\nX-Request-Id: "

    static func write<C: ExchangeCarrier>(_ c: C, _ up: UpstreamConnection, into out: IOBuffer) -> Bool {
        let head = up.head
        let base = up.inBuf.readPointer
        if out.readableBytes == 0 { out.clear() }
        if out.writableBytes < head.headLength + 512 { return false }
        out.isOverflowed = false

        var keepContentLength = false
        c.exchange.beginMetering(up)
        switch head.framing {
        case .none:
            c.responseBody = .done
            keepContentLength = true      // HEAD / 304: the length of the representation
        case .contentLength(let n):
            c.responseBody = n == 0 ? .done : .length(remaining: n)
        case .chunked:
            if !c.decodesChunked {
                c.responseBody = .chunkedPass
            } else {
                c.responseBody = .chunkedDecode
                if !c.rechunks { c.closeAfterResponse = true }
            }
            c.responseChunks.reset()
        case .untilClose:
            c.responseBody = .untilClose
            c.closeAfterResponse = true
        }

        if head.version == .http11 {
            // The status line as the upstream sent it (the parser checked it).
            let lineEnd = up.headers.count > 0 ? Int(up.headers[0].name.offset) : head.headLength - 2
            out.put(base, count: lineEnd)
        } else {
            out.put(http11)
            out.put(decimal: head.status)
            out.put(byte: 0x20)
            if !head.reason.isEmpty { out.put(base + Int(head.reason.offset), count: Int(head.reason.count)) }
            out.put(crlf)
        }

        let tokens = head.hasConnectionOptions ? ConnectionTokens(headers: up.headers, base: UnsafeRawPointer(base)) : ConnectionTokens.none
        if tokens.isTruncated { return false }
        var hasRequestID = false
        var runs = LineRuns(base: UnsafeRawPointer(base))
        for i in 0..<up.headers.count {
            let f = up.headers[i]
            let np = base + Int(f.name.offset)
            let nn = Int(f.name.count)
            var keep = true
            switch HeaderNames.classify(np, nn) {
            case .other:
                if tokens.count > 0 && tokens.names(np, nn) { keep = false }
            case .contentLength:
                keep = keepContentLength
            case .xRequestID:
                hasRequestID = true
            case .host, .expect, .xForwardedFor, .xForwardedProto, .xForwardedHost, .xTollgate, .authorization, .traceparent,
                 .identityAlias:
                break
            case .connection, .keepAlive, .proxyConnection, .te, .trailer, .transferEncoding, .upgrade,
                 .proxyAuthorization, .proxyAuthenticate:
                keep = false
            }
            runs.line(at: Int(f.name.offset), kept: keep, into: out)
        }
        runs.finish(headLength: head.headLength, into: out)
        // Line ends are merged with the constant that follows them: fewer copies.
        var lineOpen = false
        switch head.framing {
        case .contentLength(let n):
            out.put(contentLength)
            out.put(decimal: Int(n))
            lineOpen = true
        case .chunked:
            if c.responseBody == .chunkedPass || c.rechunks { out.put(chunked) }
        case .none, .untilClose:
            break
        }
        if !hasRequestID {
            out.put(lineOpen ? crlfXrid : xrid)
            c.exchange.withRequestID { out.put($0) }
            lineOpen = true
        }
        if lineOpen { out.put(crlf) }
        RateLimitFields.write(c, into: out)
        if c.exchange.facts.creditState == .held {
            // Available to others after this request's reservation (settled at its end).
            out.put(LocalReply.creditsRemaining)
            out.put(decimal: Int(max(0, c.exchange.facts.creditsRemaining)))
            out.put(crlf)
        }
        if let d = c.exchange.facts.degraded.headerValue { out.put(d) }
        if c.closeAfterResponse {
            out.put(close)
        } else if c.request.version == .http10 {
            out.put(keepAlive)
        }
        out.put(crlf)
        return !out.isOverflowed
    }

    /// Relays an interim (1xx) response head as is, minus hop-by-hop fields.
    static func writeInterim<C: ExchangeCarrier>(_ c: C, _ up: UpstreamConnection, into out: IOBuffer) -> Bool {
        let head = up.head
        let base = up.inBuf.readPointer
        let start = out.writerIndex
        out.isOverflowed = false
        out.put(http11)
        out.put(decimal: head.status)
        out.put(byte: 0x20)
        if !head.reason.isEmpty { out.put(base + Int(head.reason.offset), count: Int(head.reason.count)) }
        out.put(crlf)
        for i in 0..<up.headers.count {
            let f = up.headers[i]
            let np = base + Int(f.name.offset)
            let nn = Int(f.name.count)
            if HeaderNames.classify(np, nn).isHopByHop { continue }
            out.put(np, count: nn)
            out.put(colonSpace)
            out.put(base + Int(f.value.offset), count: Int(f.value.count))
            out.put(crlf)
        }
        out.put(crlf)
        if out.isOverflowed {
            // Not relayed (a backend's interim heads may pile up faster than the client reads).
            out.writerIndex = start
            out.isOverflowed = false
            return false
        }
        return true
    }
}

/// Responses Tollgate writes itself: the stable JSON error body of DESIGN.md.
enum LocalReply {
    static let http11: StaticString = "HTTP/1.1 "
    static let crlf: StaticString = "\r\n"
    static let json: StaticString = "Content-Type: application/json\r\nCache-Control: no-store\r\n"
    static let contentLength: StaticString = "Content-Length: "
    static let close: StaticString = "Connection: close\r\n"
    static let keepAlive: StaticString = "Connection: keep-alive\r\n"
    static let xrid: StaticString = "X-Request-Id: "
    static let challenge: StaticString = "WWW-Authenticate: ApiKey realm=\"tollgate\", Bearer realm=\"tollgate\"\r\n"
    /// A JWT that was refused (RFC 6750 §3.1).
    static let tokenChallenge: StaticString = "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"
    static let bodyStart: StaticString = "{\"error\":{\"code\":\""
    static let bodyMessage: StaticString = "\",\"message\":\""
    static let bodyRequestID: StaticString = "\",\"request_id\":\""
    static let bodyEnd: StaticString = "\"}}"
    static let bodyEndAfterNumber: StaticString = "}}"

    static func write<C: ExchangeCarrier>(_ c: C, status: Int, code: DenialCode, message: String, into out: IOBuffer) {
        if out.readableBytes == 0 { out.clear() }
        let start = out.writerIndex
        out.isOverflowed = false
        writeReply(c, status: status, code: code, message: message, into: out)
        if out.isOverflowed {
            // Interim responses still queued leave no room: the reply replaces them.
            out.writerIndex = start
            out.clear()
            writeReply(c, status: status, code: code, message: message, into: out)
        }
    }

    private static func writeReply<C: ExchangeCarrier>(_ c: C, status: Int, code: DenialCode, message: String, into out: IOBuffer) {
        let isTokenRefusal = c.exchange.facts.isJWT && (code == .invalidToken || code == .expired)
        var msg = isTokenRefusal && code == .expired ? "The token has expired." : message
        let codeCount = code.rawValue.utf8.count
        let bodyLength = bodyStart.utf8CodeUnitCount + codeCount + bodyMessage.utf8CodeUnitCount + msg.utf8.count + bodyRequestID.utf8CodeUnitCount
            + c.exchange.requestIDCount + bodyEnd.utf8CodeUnitCount
            + (status == 402 ? balanceField.utf8CodeUnitCount + decimalDigits(max(0, c.exchange.facts.creditsRemaining))
                + bodyEndAfterNumber.utf8CodeUnitCount - bodyEnd.utf8CodeUnitCount : 0)
        out.put(http11)
        out.put(decimal: status)
        out.put(byte: 0x20)
        out.put(string: reason(status))
        out.put(crlf)
        out.put(json)
        out.put(contentLength)
        out.put(decimal: bodyLength)
        out.put(crlf)
        out.put(xrid)
        c.exchange.withRequestID { out.put($0) }
        out.put(crlf)
        if status == 401 { out.put(isTokenRefusal ? tokenChallenge : challenge) }
        if status != 100 { RateLimitFields.write(c, into: out) }
        if let d = c.exchange.facts.degraded.headerValue { out.put(d) }
        if status == 429 || status == 503, c.exchange.facts.retryAfterSeconds > 0 {
            out.put(RateLimitFields.retryAfter)
            out.put(decimal: c.exchange.facts.retryAfterSeconds)
            out.put(crlf)
        }
        if status == 402 {
            out.put(creditsRemaining)
            out.put(decimal: Int(max(0, c.exchange.facts.creditsRemaining)))
            out.put(crlf)
        }
        if c.closeAfterResponse { out.put(close) } else if c.request.version == .http10 { out.put(keepAlive) }
        out.put(crlf)
        out.put(bodyStart)
        out.put(string: code.rawValue)
        out.put(bodyMessage)
        msg.withUTF8 { out.put(UnsafeRawBufferPointer($0)) }
        out.put(bodyRequestID)
        c.exchange.withRequestID { out.put($0) }
        if status == 402 {
            out.put(balanceField)
            out.put(decimal: Int(max(0, c.exchange.facts.creditsRemaining)))
            out.put(bodyEndAfterNumber)
        } else {
            out.put(bodyEnd)
        }
    }

    static let creditsRemaining: StaticString = "X-Tollgate-Credits-Remaining: "
    /// Inside the error object, before its closing `}}`: `"request_id":"…","balance":N`.
    static let balanceField: StaticString = "\",\"balance\":"

    static func decimalDigits(_ v: Int64) -> Int {
        var n = 1
        var x = v
        while x >= 10 { x /= 10; n += 1 }
        return n
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 402: return "Payment Required"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 408: return "Request Timeout"
        case 411: return "Length Required"
        case 413: return "Content Too Large"
        case 414: return "URI Too Long"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return "Error"
        }
    }
}
