/// Resumable state of `HTTP1ResponseParser`: only the search for the end of the head
/// carries over between calls; the complete head is then parsed strictly in one pass.
struct ResponseParseState: Sendable {
    var end = HeadEndScanner()

    mutating func parse(_ bytes: UnsafeRawBufferPointer, requestMethod: HTTPMethod, limits: HTTP1Limits,
                        into head: inout HTTP1ResponseHead, headers: HeaderTable) -> HTTP1ParseResult {
        guard let p = bytes.baseAddress, bytes.count > 0 else { return .incomplete }
        let n = bytes.count
        if n < end.scanned { self = ResponseParseState() }
        end.scan(p, n)
        let maxHead = limits.maxHeadBytes
        if (end.end < 0 && n > maxHead) || end.end > maxHead {
            return fail(HTTP1ParseError(.headTooLarge, at: maxHead))
        }
        if end.end < 0 { return .incomplete }
        let result = parseHead(p, requestMethod: requestMethod, limits: limits, into: &head, headers: headers)
        self = ResponseParseState()
        return result
    }

    @inline(__always)
    private mutating func fail(_ e: HTTP1ParseError) -> HTTP1ParseResult {
        self = ResponseParseState()
        return .failed(e)
    }

    /// `HTTP/1.x SP 3DIGIT [SP reason] CRLF` then the fields.
    private func parseHead(_ p: UnsafeRawPointer, requestMethod: HTTPMethod, limits: HTTP1Limits,
                           into head: inout HTTP1ResponseHead, headers: HeaderTable) -> HTTP1ParseResult {
        let b = HTTP1Lexer.byte
        let lf = end.firstLF
        // "HTTP/" must be there in full before the line ends.
        var i = 0
        let http = ResponseParseState.httpSlash
        while i < 5 {
            if i == lf || b(p, i) != b(http.pointer, i) { return .failed(HTTP1ParseError(.badStatusLine, at: i)) }
            i += 1
        }
        // The version token runs to the first SP (or the line end).
        var ve = 5
        while ve < lf && b(p, ve) != HTTP1Lexer.sp && b(p, ve) != HTTP1Lexer.cr { ve += 1 }
        var version = HTTPVersion.http11
        switch versionAt(p, 0, ve) {
        case .some(let v): version = v
        case .none:
            return .failed(HTTP1ParseError(isHTTPDigitDotDigit(p, 0, ve) ? .unsupportedVersion : .badVersion, at: 5))
        }
        if b(p, 8) != HTTP1Lexer.sp { return .failed(HTTP1ParseError(.badStatusLine, at: 8)) }
        var status = 0
        i = 9
        while i < 12 {
            let c = b(p, i)
            if i >= lf || c < 0x30 || c > 0x39 { return .failed(HTTP1ParseError(.badStatusLine, at: i)) }
            status = status * 10 + Int(c - 0x30)
            i += 1
        }
        if status < 100 { return .failed(HTTP1ParseError(.badStatusLine, at: 9)) }
        var reason = ByteRange(offset: 12, count: 0)
        let c12 = b(p, 12)
        if c12 == HTTP1Lexer.sp {
            // reason-phrase = *( HTAB / SP / VCHAR / obs-text )
            let t = HTTP1Lexer.classes.pointer
            i = 13
            while b(t, Int(b(p, i))) & HTTP1Lexer.value != 0 { i += 1 }
            let c = b(p, i)
            if c == HTTP1Lexer.lf { return .failed(HTTP1ParseError(.bareLF, at: i)) }
            if c != HTTP1Lexer.cr { return .failed(HTTP1ParseError(.controlCharacter, at: i)) }
            if b(p, i + 1) != HTTP1Lexer.lf { return .failed(HTTP1ParseError(.bareCR, at: i)) }
            reason = ByteRange(offset: 13, count: i - 13)
        } else if c12 == HTTP1Lexer.cr {
            // "HTTP/1.1 200\r\n": no reason and no SP, as real servers send.
            if b(p, 13) != HTTP1Lexer.lf { return .failed(HTTP1ParseError(.bareCR, at: 12)) }
        } else if c12 == HTTP1Lexer.lf {
            return .failed(HTTP1ParseError(.bareLF, at: 12))
        } else {
            return .failed(HTTP1ParseError(.badStatusLine, at: 12))
        }

        headers.removeAll()
        var facts = FieldFacts()
        if let e = HTTP1Lexer.scanFields(p, lf + 1, end.end, side: .response, version: version,
                                         maxCount: limits.maxHeaderCount, headers: headers, facts: &facts) {
            return .failed(e)
        }
        if let e = HTTP1Lexer.checkFraming(facts) { return .failed(e) }

        head.status = status
        head.version = version
        head.reason = reason
        head.headLength = end.end
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
        return .complete(consumed: end.end)
    }

    static let httpSlash = StaticBytes("HTTP/")
}
