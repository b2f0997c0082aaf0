/// Resumable state of `HTTP1RequestParser`.
///
/// One pass, bounded by what has arrived (capped at the head size limit): the request line
/// as far as it has come (method and target bytes, the target length limit: a long or junk
/// request line fails before the head completes), then the field lines one at a time, each
/// judged strictly as the bytes arrive. Failures come in byte order, so a prefix of a
/// message yields either `.incomplete` or the failure of the whole message. Every call goes
/// on from the byte where the last one stopped (`FieldCursor`), so a head trickled in byte
/// by byte costs linear time.
struct RequestParseState: Sendable {
    /// Bytes already looked at (the request line's LF search goes on from here).
    var scanned = 0
    /// LF of the request line, -1 until seen.
    var firstLF = -1
    /// Where the field scan goes on (once `phase == 3`).
    var cursor = FieldCursor()
    var facts = FieldFacts()

    // Request-line progress.
    /// 0: method, 1: target, 2: rest of the line (judged once the line is complete), 3: line done.
    var phase: UInt8 = 0
    var pos = 0
    var targetStart = 0
    var targetEnd = 0

    // The finished request line.
    var method: HTTPMethod = .get
    var version: HTTPVersion = .http11
    var form: HTTP1RequestHead.TargetForm = .origin
    var path = ByteRange.empty
    var query = ByteRange.empty
    var hasQuery = false
    var authority = ByteRange.empty

    mutating func parse(_ bytes: UnsafeRawBufferPointer, limits: HTTP1Limits,
                        into head: inout HTTP1RequestHead, headers: HeaderTable) -> HTTP1ParseResult {
        guard let p = bytes.baseAddress, bytes.count > 0 else { return .incomplete }
        let n = bytes.count
        // A shorter buffer than last time can only be a new message the caller did not reset for.
        if n < scanned { self = RequestParseState() }
        let maxHead = limits.maxHeadBytes
        let view = min(n, maxHead)

        if phase < 3 {
            if firstLF < 0 {
                if let lf = HTTP1Lexer.nextLF(p, from: scanned, to: view) {
                    firstLF = lf
                    scanned = lf &+ 1
                } else {
                    scanned = view
                }
            }
            let lineComplete = firstLF >= 0
            if let e = advanceRequestLine(p, limit: lineComplete ? firstLF : view,
                                          maxTarget: limits.maxTargetBytes) {
                return fail(e)
            }
            if !lineComplete { return n > maxHead ? fail(HTTP1ParseError(.headTooLarge, at: maxHead)) : .incomplete }
            if let e = finishRequestLine(p, lf: firstLF) { return fail(e) }
            cursor.line = firstLF &+ 1
            headers.removeAll()
        }

        let end: Int
        switch HTTP1Lexer.fieldStep(p, count: n, view: view, limits: limits, side: .request, version: version,
                                    headers: headers, cursor: &cursor, facts: &facts, scanned: &scanned) {
        case .complete(let e): end = e
        case .incomplete: return .incomplete
        case .failed(let e): return fail(e)
        }
        let finalLine = end &- 2
        if let e = HTTP1Lexer.checkFraming(facts) { return fail(e) }
        if version == .http11 && facts.hostIndex < 0 { return fail(HTTP1ParseError(.missingHost, at: finalLine)) }
        if facts.hostIndex >= 0 && Int(facts.hostValue.count) > limits.maxHostBytes {
            return fail(HTTP1ParseError(.hostTooLong, at: Int(facts.hostValue.offset)))
        }
        if Int(authority.count) > limits.maxHostBytes { return fail(HTTP1ParseError(.hostTooLong, at: Int(authority.offset))) }
        if form == .absolute && facts.hostIndex >= 0 && !HTTP1Lexer.equalsCaseless(p, authority, facts.hostValue) {
            return fail(HTTP1ParseError(.hostMismatch, at: Int(facts.hostValue.offset)))
        }

        head.method = method
        head.methodRange = ByteRange(offset: 0, count: targetStart - 1)
        head.target = ByteRange(offset: targetStart, count: targetEnd - targetStart)
        head.path = path
        head.query = query
        head.hasQuery = hasQuery
        head.authority = authority
        head.form = form
        head.version = version
        head.hostIndex = facts.hostIndex
        if facts.transferEncodingLine >= 0 {
            head.framing = .chunked
        } else if facts.contentLength >= 0 {
            head.framing = .contentLength(facts.contentLength)
        } else {
            head.framing = .none
        }
        head.wantsClose = facts.close || (version == .http10 && !facts.keepAlive)
        head.expectsContinue = facts.expectsContinue
        head.hasConnectionOptions = facts.hasConnectionOptions
        head.headLength = end
        self = RequestParseState()
        return .complete(consumed: end)
    }

    @inline(__always)
    private mutating func fail(_ e: HTTP1ParseError) -> HTTP1ParseResult {
        self = RequestParseState()
        return .failed(e)
    }

    /// Checks method and target bytes in `p[pos..<limit]` (limit ≤ the first LF).
    private mutating func advanceRequestLine(_ p: UnsafeRawPointer, limit: Int, maxTarget: Int) -> HTTP1ParseError? {
        let t = HTTP1Lexer.classes.pointer
        var i = pos
        defer { pos = i }
        if phase == 0 {
            while i < limit {
                let c = HTTP1Lexer.byte(p, i)
                if HTTP1Lexer.byte(t, Int(c)) & HTTP1Lexer.tchar != 0 { i += 1; continue }
                if c == HTTP1Lexer.sp && i > 0 {
                    i += 1
                    phase = 1
                    targetStart = i
                    break
                }
                if c == HTTP1Lexer.sp || c == HTTP1Lexer.htab || c == HTTP1Lexer.cr || c == HTTP1Lexer.lf {
                    return HTTP1ParseError(.badRequestLine, at: i)
                }
                if HTTP1Lexer.byte(t, Int(c)) & HTTP1Lexer.ctl != 0 { return HTTP1ParseError(.controlCharacter, at: i) }
                return HTTP1ParseError(.badMethod, at: i)
            }
        }
        if phase == 1 {
            while i < limit {
                let c = HTTP1Lexer.byte(p, i)
                if HTTP1Lexer.byte(t, Int(c)) & HTTP1Lexer.target != 0 {
                    if i - targetStart >= maxTarget { return HTTP1ParseError(.uriTooLong, at: i) }
                    i += 1
                    continue
                }
                if c == HTTP1Lexer.sp && i > targetStart {
                    targetEnd = i
                    i += 1
                    phase = 2
                    break
                }
                if c == HTTP1Lexer.sp || c == HTTP1Lexer.htab || c == HTTP1Lexer.cr || c == HTTP1Lexer.lf {
                    return HTTP1ParseError(.badRequestLine, at: i)
                }
                if HTTP1Lexer.byte(t, Int(c)) & HTTP1Lexer.ctl != 0 { return HTTP1ParseError(.controlCharacter, at: i) }
                return HTTP1ParseError(.badTarget, at: i)
            }
        }
        return nil
    }

    /// The request line is complete (`lf` is its LF) and method/target bytes are checked:
    /// judge the version, the line ending, the method and the target's form.
    private mutating func finishRequestLine(_ p: UnsafeRawPointer, lf: Int) -> HTTP1ParseError? {
        if phase != 2 { return HTTP1ParseError(.badRequestLine, at: lf) }
        let vs = pos
        let hasCR = lf > vs && HTTP1Lexer.byte(p, lf - 1) == HTTP1Lexer.cr
        let ve = hasCR ? lf - 1 : lf
        // The usual line ends in exactly "HTTP/1.1" (or 1.0): one word compare; anything else
        // is judged byte by byte.
        let word = ve - vs == 8 ? p.loadUnaligned(fromByteOffset: vs, as: UInt64.self) : 0
        if word == HTTP1Lexer.http11Word {
            version = .http11
        } else if word == HTTP1Lexer.http10Word {
            version = .http10
        } else {
            var i = vs
            while i < ve {
                let c = HTTP1Lexer.byte(p, i)
                if HTTP1Lexer.isWS(c) { return HTTP1ParseError(.badRequestLine, at: i) }
                if c == HTTP1Lexer.cr { return HTTP1ParseError(.bareCR, at: i) }
                if c < 0x20 || c == 0x7F { return HTTP1ParseError(.controlCharacter, at: i) }
                i += 1
            }
            switch versionAt(p, vs, ve) {
            case .some(let v): version = v
            case .none: return HTTP1ParseError(isHTTPDigitDotDigit(p, vs, ve) ? .unsupportedVersion : .badVersion, at: vs)
            }
        }
        if !hasCR { return HTTP1ParseError(.bareLF, at: lf) }

        method = methodAt(p, 0, targetStart - 1)
        if let e = classifyTarget(p) { return e }
        phase = 3
        return nil
    }

    private mutating func classifyTarget(_ p: UnsafeRawPointer) -> HTTP1ParseError? {
        let ts = targetStart, te = targetEnd
        let first = HTTP1Lexer.byte(p, ts)
        if method == .connect {
            // authority-form only: host ":" port.
            if let e = checkAuthority(p, ts, te, requirePort: true) { return e }
            form = .authority
            path = .empty
            return nil
        }
        if first == 0x2F { // '/'
            form = .origin
            return splitPathQuery(p, ts, te)
        }
        if first == 0x2A && te - ts == 1 { // '*'
            if method != .options { return HTTP1ParseError(.badTarget, at: ts) }
            form = .asterisk
            path = ByteRange(offset: ts, count: 1)
            return nil
        }
        // absolute-form: "http://" or "https://", case-insensitive scheme.
        var a = -1
        if HTTP1Lexer.equalsLower(p, ts, min(te, ts + 7), RequestParseState.httpScheme) {
            a = ts + 7
        } else if HTTP1Lexer.equalsLower(p, ts, min(te, ts + 8), RequestParseState.httpsScheme) {
            a = ts + 8
        }
        if a < 0 { return HTTP1ParseError(.badTarget, at: ts) }
        var i = a
        while i < te {
            let c = HTTP1Lexer.byte(p, i)
            if c == 0x2F || c == 0x3F || c == 0x23 { break }
            i += 1
        }
        if let e = checkAuthority(p, a, i, requirePort: false) { return e }
        authority = ByteRange(offset: a, count: i - a)
        form = .absolute
        if i < te && HTTP1Lexer.byte(p, i) == 0x23 { return HTTP1ParseError(.badTarget, at: i) }
        return splitPathQuery(p, i, te)
    }

    /// `p[s..<e]` is `absolute-path [ "?" query ]` (or empty, or "?query"): no fragment.
    private mutating func splitPathQuery(_ p: UnsafeRawPointer, _ s: Int, _ e: Int) -> HTTP1ParseError? {
        var i = s
        var q = -1
        while i < e {
            let c = HTTP1Lexer.byte(p, i)
            if c == 0x23 { return HTTP1ParseError(.badTarget, at: i) }
            if c == 0x3F && q < 0 { q = i }
            i += 1
        }
        if q < 0 {
            path = ByteRange(offset: s, count: e - s)
            query = .empty
            hasQuery = false
        } else {
            path = ByteRange(offset: s, count: q - s)
            query = ByteRange(offset: q + 1, count: e - q - 1)
            hasQuery = true
        }
        return nil
    }

    /// uri-host [":" port]: non-empty, host bytes only, no userinfo; port digits if present.
    private func checkAuthority(_ p: UnsafeRawPointer, _ s: Int, _ e: Int, requirePort: Bool) -> HTTP1ParseError? {
        if s == e { return HTTP1ParseError(.badTarget, at: s) }
        let t = HTTP1Lexer.classes.pointer
        var colon = -1
        var i = s
        while i < e {
            let c = HTTP1Lexer.byte(p, i)
            if HTTP1Lexer.byte(t, Int(c)) & HTTP1Lexer.host == 0 { return HTTP1ParseError(.badTarget, at: i) }
            if c == 0x3A { colon = i }
            if c == 0x5D { colon = -1 } // ']' closes an IPv6 literal; a port colon comes after it
            i += 1
        }
        if colon < 0 {
            return requirePort ? HTTP1ParseError(.badTarget, at: e) : nil
        }
        if colon == s { return HTTP1ParseError(.badTarget, at: s) }
        if colon + 1 == e && requirePort { return HTTP1ParseError(.badTarget, at: e) }
        i = colon + 1
        while i < e {
            if HTTP1Lexer.byte(t, Int(HTTP1Lexer.byte(p, i))) & HTTP1Lexer.digit == 0 {
                return HTTP1ParseError(.badTarget, at: i)
            }
            i += 1
        }
        if e - colon - 1 > 5 { return HTTP1ParseError(.badTarget, at: colon + 1) }
        return nil
    }

    static let httpScheme = StaticBytes("http://")
    static let httpsScheme = StaticBytes("https://")
}

/// "HTTP/1.1" or "HTTP/1.0" exactly.
@inline(__always)
func versionAt(_ p: UnsafeRawPointer, _ s: Int, _ e: Int) -> HTTPVersion? {
    guard e - s == 8, isHTTPDigitDotDigit(p, s, e), HTTP1Lexer.byte(p, s + 5) == 0x31 else { return nil }
    switch HTTP1Lexer.byte(p, s + 7) {
    case 0x31: return .http11
    case 0x30: return .http10
    default: return nil
    }
}

/// "HTTP/" DIGIT "." DIGIT (case-sensitive, RFC 9112 §2.3).
@inline(__always)
func isHTTPDigitDotDigit(_ p: UnsafeRawPointer, _ s: Int, _ e: Int) -> Bool {
    guard e - s == 8 else { return false }
    let b = HTTP1Lexer.byte
    let isDigit = { (c: UInt8) in c >= 0x30 && c <= 0x39 }
    return b(p, s) == 0x48 && b(p, s + 1) == 0x54 && b(p, s + 2) == 0x54 && b(p, s + 3) == 0x50
        && b(p, s + 4) == 0x2F && isDigit(b(p, s + 5)) && b(p, s + 6) == 0x2E && isDigit(b(p, s + 7))
}

/// Case-sensitive method lookup over a valid token.
func methodAt(_ p: UnsafeRawPointer, _ s: Int, _ e: Int) -> HTTPMethod {
    @inline(__always) func eq(_ lit: StaticLiteral) -> Bool {
        lit.count == e - s && memcmpEqual(p + s, lit)
    }
    switch e - s {
    case 3:
        if eq(.get) { return .get }
        if eq(.put) { return .put }
    case 4:
        if eq(.post) { return .post }
        if eq(.head) { return .head }
    case 5:
        if eq(.patch) { return .patch }
        if eq(.trace) { return .trace }
    case 6:
        if eq(.delete) { return .delete }
    case 7:
        if eq(.options) { return .options }
        if eq(.connect) { return .connect }
    default:
        break
    }
    return .other
}

/// Method names as packed little-endian words: compared with at most two loads.
struct StaticLiteral {
    let word: UInt64
    let count: Int
    init(_ s: StaticString) {
        var w: UInt64 = 0
        let n = s.utf8CodeUnitCount
        s.withUTF8Buffer { b in
            for i in 0..<n { w |= UInt64(b[i]) << (8 * UInt64(i)) }
        }
        word = w
        count = n
    }
    static let get = StaticLiteral("GET"), put = StaticLiteral("PUT"), post = StaticLiteral("POST")
    static let head = StaticLiteral("HEAD"), patch = StaticLiteral("PATCH"), trace = StaticLiteral("TRACE")
    static let delete = StaticLiteral("DELETE"), options = StaticLiteral("OPTIONS")
    static let connect = StaticLiteral("CONNECT")
}

@inline(__always)
func memcmpEqual(_ p: UnsafeRawPointer, _ lit: StaticLiteral) -> Bool {
    var w: UInt64 = 0
    for i in 0..<lit.count { w |= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << (8 * UInt64(i)) }
    return w == lit.word
}
