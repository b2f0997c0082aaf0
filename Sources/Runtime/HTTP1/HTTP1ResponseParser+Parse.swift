/// Resumable state of `HTTP1ResponseParser`: the status line is judged once its LF has
/// arrived, then the field lines as their bytes arrive (see `RequestParseState`).
struct ResponseParseState: Sendable {
    /// Bytes already looked at (the status line's LF search goes on from here).
    var scanned = 0
    /// Where the field scan goes on; `fieldsStarted` once the status line is done.
    var cursor = FieldCursor()
    var fieldsStarted = false
    var facts = FieldFacts()
    var status = 0
    var version = HTTPVersion.http11
    var reason = ByteRange.empty

    mutating func parse(_ bytes: UnsafeRawBufferPointer, requestMethod: HTTPMethod, limits: HTTP1Limits,
                        into head: inout HTTP1ResponseHead, headers: HeaderTable) -> HTTP1ParseResult {
        guard let p = bytes.baseAddress, bytes.count > 0 else { return .incomplete }
        let n = bytes.count
        if n < scanned { self = ResponseParseState() }
        let maxHead = limits.maxHeadBytes
        let view = min(n, maxHead)
        if !fieldsStarted {
            guard let lf = HTTP1Lexer.nextLF(p, from: scanned, to: view) else {
                scanned = view
                return n > maxHead ? fail(HTTP1ParseError(.headTooLarge, at: maxHead)) : .incomplete
            }
            if let e = parseStatusLine(p, lf: lf) { return fail(e) }
            fieldsStarted = true
            cursor.line = lf &+ 1
            scanned = cursor.line
            headers.removeAll()
        }
        let end: Int
        switch HTTP1Lexer.fieldStep(p, count: n, view: view, limits: limits, side: .response, version: version,
                                    headers: headers, cursor: &cursor, facts: &facts, scanned: &scanned) {
        case .complete(let e): end = e
        case .incomplete: return .incomplete
        case .failed(let e): return fail(e)
        }
        if let e = HTTP1Lexer.checkFraming(facts) { return fail(e) }

        head.status = status
        head.version = version
        head.reason = reason
        head.headLength = end
        head.hasConnectionOptions = facts.hasConnectionOptions
        var wantsClose = facts.close || (version == .http10 && !facts.keepAlive)
        // RFC 9112 §6.3, in order.
        if requestMethod == .head || status < 200 || status == 204 || status == 304
            || (requestMethod == .connect && status < 300) {
            head.framing = .none
        } else if facts.transferEncodingLine >= 0 {
            head.framing = .chunked
        } else if facts.contentLength >= 0 {
            head.framing = .contentLength(facts.contentLength)
        } else {
            head.framing = .untilClose
            wantsClose = true
        }
        head.wantsClose = wantsClose
        self = ResponseParseState()
        return .complete(consumed: end)
    }

    @inline(__always)
    private mutating func fail(_ e: HTTP1ParseError) -> HTTP1ParseResult {
        self = ResponseParseState()
        return .failed(e)
    }

    /// `HTTP/1.x SP 3DIGIT [SP reason] CRLF`; `lf` is the line's LF (every read stays at or
    /// before it).
    private mutating func parseStatusLine(_ p: UnsafeRawPointer, lf: Int) -> HTTP1ParseError? {
        let b = HTTP1Lexer.byte
        var i = 0
        // The usual line starts with exactly "HTTP/1.1 " (or 1.0): one word compare.
        let word = lf > 8 && b(p, 8) == HTTP1Lexer.sp ? p.loadUnaligned(fromByteOffset: 0, as: UInt64.self) : 0
        if word == HTTP1Lexer.http11Word {
            version = .http11
        } else if word == HTTP1Lexer.http10Word {
            version = .http10
        } else {
            // "HTTP/" must be there in full before the line ends.
            let http = ResponseParseState.httpSlash
            while i < 5 {
                if i == lf || b(p, i) != b(http.pointer, i) { return HTTP1ParseError(.badStatusLine, at: i) }
                i += 1
            }
            // The version token runs to the first SP (or the line end).
            var ve = 5
            while ve < lf && b(p, ve) != HTTP1Lexer.sp && b(p, ve) != HTTP1Lexer.cr { ve += 1 }
            switch versionAt(p, 0, ve) {
            case .some(let v): version = v
            case .none:
                return HTTP1ParseError(isHTTPDigitDotDigit(p, 0, ve) ? .unsupportedVersion : .badVersion, at: 5)
            }
        }
        if b(p, 8) != HTTP1Lexer.sp { return HTTP1ParseError(.badStatusLine, at: 8) }
        var code = 0
        i = 9
        while i < 12 {
            if i >= lf { return HTTP1ParseError(.badStatusLine, at: i) }
            let c = b(p, i)
            if c < 0x30 || c > 0x39 { return HTTP1ParseError(.badStatusLine, at: i) }
            code = code * 10 + Int(c - 0x30)
            i += 1
        }
        if code < 100 { return HTTP1ParseError(.badStatusLine, at: 9) }
        status = code
        reason = ByteRange(offset: 12, count: 0)
        let c12 = b(p, 12)
        if c12 == HTTP1Lexer.sp {
            // reason-phrase = *( HTAB / SP / VCHAR / obs-text )
            let t = HTTP1Lexer.classes.pointer
            i = 13
            while b(t, Int(b(p, i))) & HTTP1Lexer.value != 0 { i += 1 }
            let c = b(p, i)
            if c == HTTP1Lexer.lf { return HTTP1ParseError(.bareLF, at: i) }
            if c != HTTP1Lexer.cr { return HTTP1ParseError(.controlCharacter, at: i) }
            if b(p, i + 1) != HTTP1Lexer.lf { return HTTP1ParseError(.bareCR, at: i) }
            reason = ByteRange(offset: 13, count: i - 13)
        } else if c12 == HTTP1Lexer.cr {
            // "HTTP/1.1 200\r\n": no reason and no SP, as real servers send.
            if b(p, 13) != HTTP1Lexer.lf { return HTTP1ParseError(.bareCR, at: 12) }
        } else if c12 == HTTP1Lexer.lf {
            return HTTP1ParseError(.bareLF, at: 12)
        } else {
            return HTTP1ParseError(.badStatusLine, at: 12)
        }
        return nil
    }

    static let httpSlash = StaticBytes("HTTP/")
}
