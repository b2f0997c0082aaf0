import Glibc

/// Byte classes and the field-line scanner shared by the request and response parsers.
/// Everything works on raw pointers into the caller's buffer; nothing allocates.
enum HTTP1Lexer {
    static let cr: UInt8 = 0x0D
    static let lf: UInt8 = 0x0A
    static let sp: UInt8 = 0x20
    static let htab: UInt8 = 0x09

    // Class bits of `classes`.
    /// RFC 9110 tchar.
    static let tchar: UInt8 = 1 << 0
    /// Plain field-value byte: VCHAR, obs-text, SP, HTAB.
    static let value: UInt8 = 1 << 1
    /// request-target byte: visible ASCII 0x21–0x7E.
    static let target: UInt8 = 1 << 2
    /// Host / authority byte: unreserved, pct-encoded's '%', sub-delims, ':', '[', ']'.
    static let host: UInt8 = 1 << 3
    /// quoted-string qdtext: HTAB, SP, 0x21, 0x23–0x5B, 0x5D–0x7E, obs-text.
    static let qdtext: UInt8 = 1 << 4
    /// HEXDIG.
    static let hex: UInt8 = 1 << 5
    /// DIGIT.
    static let digit: UInt8 = 1 << 6
    /// CTL other than HTAB, CR and LF (which have rules of their own): 0x00–0x08, 0x0B, 0x0C,
    /// 0x0E–0x1F, 0x7F. Anywhere in a head these are `controlCharacter`.
    static let ctl: UInt8 = 1 << 7

    /// 256-entry class table, built once.
    static let classes: StaticBytes = {
        var t = [UInt8](repeating: 0, count: 256)
        let tcharPunct = Array("!#$%&'*+-.^_`|~".utf8)
        let hostPunct = Array("-._~!$&'()*+,;=:[]%".utf8)
        for b in 0..<256 {
            let c = UInt8(b)
            var k: UInt8 = 0
            let alpha = (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
            let isDigit = c >= 0x30 && c <= 0x39
            if alpha || isDigit || tcharPunct.contains(c) { k |= tchar }
            if (c >= 0x21 && c <= 0x7E) || c >= 0x80 || c == sp || c == htab { k |= value }
            if c >= 0x21 && c <= 0x7E { k |= target }
            if alpha || isDigit || hostPunct.contains(c) { k |= host }
            if c == htab || c == sp || c == 0x21 || (c >= 0x23 && c <= 0x5B) || (c >= 0x5D && c <= 0x7E) || c >= 0x80 {
                k |= qdtext
            }
            if isDigit || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66) { k |= hex }
            if isDigit { k |= digit }
            if (c < 0x20 && c != htab && c != cr && c != lf) || c == 0x7F { k |= ctl }
            t[b] = k
        }
        return StaticBytes(bytes: t)
    }()

    static let lowerHost = StaticBytes("host")
    static let lowerContentLength = StaticBytes("content-length")
    static let lowerTransferEncoding = StaticBytes("transfer-encoding")
    static let lowerConnection = StaticBytes("connection")
    static let lowerExpect = StaticBytes("expect")
    static let lowerChunked = StaticBytes("chunked")
    static let lowerClose = StaticBytes("close")
    static let lowerKeepAlive = StaticBytes("keep-alive")
    static let lower100Continue = StaticBytes("100-continue")

    @inline(__always)
    static func byte(_ p: UnsafeRawPointer, _ i: Int) -> UInt8 { p.load(fromByteOffset: i, as: UInt8.self) }

    @inline(__always)
    static func isWS(_ c: UInt8) -> Bool { c == sp || c == htab }

    /// Case-insensitive equality of `p[start..<end]` with a lowercase literal.
    @inline(__always)
    static func equalsLower(_ p: UnsafeRawPointer, _ start: Int, _ end: Int, _ lower: StaticBytes) -> Bool {
        if end - start != lower.count { return false }
        let l = lower.pointer
        var i = 0
        while i < lower.count {
            var c = byte(p, start + i)
            if c >= 0x41 && c <= 0x5A { c |= 0x20 }
            if c != byte(l, i) { return false }
            i += 1
        }
        return true
    }

    /// Case-insensitive equality of two byte ranges.
    static func equalsCaseless(_ p: UnsafeRawPointer, _ a: ByteRange, _ b: ByteRange) -> Bool {
        if a.count != b.count { return false }
        var i = 0
        let n = Int(a.count)
        while i < n {
            var x = byte(p, Int(a.offset) + i)
            var y = byte(p, Int(b.offset) + i)
            if x >= 0x41 && x <= 0x5A { x |= 0x20 }
            if y >= 0x41 && y <= 0x5A { y |= 0x20 }
            if x != y { return false }
            i += 1
        }
        return true
    }

    /// Parses a Content-Length value (already OWS-trimmed): a comma list of 1*DIGIT
    /// elements (at most 18 digits each) that must all be equal (RFC 9112 §6.3).
    /// `previous` is the value of an earlier Content-Length field, or -1.
    static func parseContentLength(_ p: UnsafeRawPointer, _ start: Int, _ end: Int,
                                   previous: Int64) -> (Int64, HTTP1ParseError?) {
        let t = classes.pointer
        var i = start
        var value = previous
        while true {
            let es = i
            var v: Int64 = 0
            while i < end {
                let c = byte(p, i)
                if byte(t, Int(c)) & digit == 0 { break }
                if i - es == 18 { return (-1, HTTP1ParseError(.badContentLength, at: i)) }
                v = v &* 10 &+ Int64(c &- 0x30)
                i += 1
            }
            if i == es { return (-1, HTTP1ParseError(.badContentLength, at: i)) }
            if value >= 0 && v != value { return (-1, HTTP1ParseError(.conflictingContentLength, at: es)) }
            value = v
            while i < end && isWS(byte(p, i)) { i += 1 }
            if i == end { return (value, nil) }
            if byte(p, i) != 0x2C { return (-1, HTTP1ParseError(.badContentLength, at: i)) }
            i += 1
            while i < end && isWS(byte(p, i)) { i += 1 }
        }
    }

    /// Scans a Connection value: a comma list of tokens (empty elements ignored).
    /// Returns (has "close", has "keep-alive") or an error at the first non-token byte.
    static func scanConnection(_ p: UnsafeRawPointer, _ start: Int, _ end: Int)
        -> (close: Bool, keepAlive: Bool, error: HTTP1ParseError?) {
        let r = scanConnectionOptions(p, start, end)
        return (r.close, r.keepAlive, r.error)
    }

    static func scanConnectionOptions(_ p: UnsafeRawPointer, _ start: Int, _ end: Int)
        -> (close: Bool, keepAlive: Bool, other: Bool, error: HTTP1ParseError?) {
        // The common single-token values, without the general scan.
        if end - start == 10 && equalsLower(p, start, end, lowerKeepAlive) { return (false, true, false, nil) }
        if end - start == 5 && equalsLower(p, start, end, lowerClose) { return (true, false, false, nil) }
        let t = classes.pointer
        var close = false, keepAlive = false, other = false
        var i = start
        while i < end {
            let c = byte(p, i)
            if c == 0x2C || isWS(c) { i += 1; continue }
            let ts = i
            while i < end && byte(t, Int(byte(p, i))) & tchar != 0 { i += 1 }
            if i == ts { return (false, false, false, HTTP1ParseError(.badHeaderValue, at: i)) }
            if equalsLower(p, ts, i, lowerClose) { close = true }
            else if equalsLower(p, ts, i, lowerKeepAlive) { keepAlive = true }
            else { other = true }
            // After a token: OWS then ',' or the end.
            while i < end && isWS(byte(p, i)) { i += 1 }
            if i < end && byte(p, i) != 0x2C { return (false, false, false, HTTP1ParseError(.badHeaderValue, at: i)) }
        }
        return (close, keepAlive, other, nil)
    }
}

/// Finds the end of a head without judging it: the first empty line, where a line ends at
/// LF (a bare LF too, so that a head using bare LFs is found and then rejected by the
/// strict pass instead of waiting for bytes that never come). Resumable: `scanned` marks
/// how far the buffer has been searched.
struct HeadEndScanner: Sendable {
    /// Bytes already searched for LF.
    var scanned = 0
    /// Start of the line being scanned.
    var lineStart = 0
    /// Offset of the first LF (end of the request/status line), -1 until seen.
    var firstLF = -1
    /// Offset just past the final LF of the head, -1 until seen.
    var end = -1

    mutating func scan(_ p: UnsafeRawPointer, _ n: Int) {
        while end < 0 && scanned < n {
            guard let lf = Self.nextLF(p, from: scanned, to: n) else {
                scanned = n
                return
            }
            if firstLF < 0 { firstLF = lf }
            let len = lf - lineStart
            if len == 0 || (len == 1 && HTTP1Lexer.byte(p, lineStart) == HTTP1Lexer.cr) {
                end = lf + 1
            }
            lineStart = lf + 1
            scanned = lf + 1
        }
    }

    /// The offset of the next LF in `p[from..<to]`: eight bytes per step (SWAR zero-byte
    /// test on `w ^ 0x0A…`), which beats a memchr call for lines of a few dozen bytes.
    @inline(__always)
    static func nextLF(_ p: UnsafeRawPointer, from: Int, to: Int) -> Int? {
        var i = from
        while i &+ 8 <= to {
            let x = p.loadUnaligned(fromByteOffset: i, as: UInt64.self) ^ 0x0A0A_0A0A_0A0A_0A0A
            let found = (x &- 0x0101_0101_0101_0101) & ~x & 0x8080_8080_8080_8080
            if found != 0 { return i &+ (found.trailingZeroBitCount >> 3) }
            i &+= 8
        }
        while i < to {
            if p.load(fromByteOffset: i, as: UInt8.self) == 0x0A { return i }
            i &+= 1
        }
        return nil
    }
}

/// What the field lines said, gathered while scanning them.
struct FieldFacts {
    var contentLength: Int64 = -1
    var contentLengthLine = -1
    var transferEncodingLine = -1
    var close = false
    var keepAlive = false
    var hostIndex = -1
    var hostValue = ByteRange.empty
    var expectsContinue = false
    /// A Connection header names something besides close/keep-alive (fields to drop).
    var hasConnectionOptions = false
}

extension HTTP1Lexer {
    enum Side { case request, response }

    /// Strictly parses the field lines in `p[start..<end]`, where `end` is the head end
    /// found by `HeadEndScanner` (just past the final LF). Appends fields to `headers`
    /// and collects framing facts. Errors come in byte order, one line at a time.
    static func scanFields(_ p: UnsafeRawPointer, _ start: Int, _ end: Int, side: Side,
                           version: HTTPVersion, maxCount: Int, headers: HeaderTable,
                           facts: inout FieldFacts) -> HTTP1ParseError? {
        let t = classes.pointer
        var ls = start
        while ls < end {
            let b0 = byte(p, ls)
            if b0 == cr {
                // Only the final line can start with CR; the scanner guarantees ls + 1 < end.
                if byte(p, ls + 1) == lf { return nil }
                return HTTP1ParseError(.bareCR, at: ls)
            }
            if b0 == lf { return HTTP1ParseError(.bareLF, at: ls) }
            if isWS(b0) { return HTTP1ParseError(.obsFold, at: ls) }
            if headers.count >= maxCount { return HTTP1ParseError(.tooManyHeaders, at: ls) }

            // field-name ":"
            var i = ls
            while byte(t, Int(byte(p, i))) & tchar != 0 { i += 1 }
            let c = byte(p, i)
            if c != 0x3A {
                if isWS(c) {
                    var j = i
                    while isWS(byte(p, j)) { j += 1 }
                    return HTTP1ParseError(byte(p, j) == 0x3A ? .whitespaceBeforeColon : .badHeaderName, at: i)
                }
                if c == cr && byte(p, i + 1) != lf { return HTTP1ParseError(.bareCR, at: i) }
                if byte(t, Int(c)) & ctl != 0 { return HTTP1ParseError(.controlCharacter, at: i) }
                return HTTP1ParseError(.badHeaderName, at: i)
            }
            if i == ls { return HTTP1ParseError(.badHeaderName, at: ls) }
            let nameEnd = i
            i += 1
            while isWS(byte(p, i)) { i += 1 }
            let vs = i
            // Eight bytes at a time while none is a CTL (< 0x20, which includes CR, LF and
            // HTAB) or DEL; obs-text (>= 0x80) passes. The byte loop settles the rest.
            while i &+ 8 <= end {
                let w = p.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                let low = (w &- 0x2020_2020_2020_2020) & ~w & 0x8080_8080_8080_8080
                let x = w ^ 0x7F7F_7F7F_7F7F_7F7F
                let del = (x &- 0x0101_0101_0101_0101) & ~x & 0x8080_8080_8080_8080
                if low | del != 0 { break }
                i &+= 8
            }
            while byte(t, Int(byte(p, i))) & value != 0 { i += 1 }
            let v = byte(p, i)
            if v == cr {
                if byte(p, i + 1) != lf { return HTTP1ParseError(.bareCR, at: i) }
            } else if v == lf {
                return HTTP1ParseError(.bareLF, at: i)
            } else {
                return HTTP1ParseError(.controlCharacter, at: i)
            }
            let next = i + 2
            var ve = i
            while ve > vs && isWS(byte(p, ve - 1)) { ve -= 1 }

            let index = headers.count
            let name = ByteRange(offset: ls, count: nameEnd - ls)
            let val = ByteRange(offset: vs, count: ve - vs)
            if !headers.append(HeaderField(name: name, value: val)) {
                return HTTP1ParseError(.tooManyHeaders, at: ls)
            }
            if let e = noteField(p, ls, nameEnd, vs, ve, index: index, side: side, version: version, facts: &facts) {
                return e
            }
            ls = next
        }
        // Unreachable when `end` came from HeadEndScanner; report it as malformed anyway.
        return HTTP1ParseError(.badHeaderName, at: end)
    }

    /// Per-field checks of the fields that decide framing, routing and connection reuse.
    @inline(__always)
    static func noteField(_ p: UnsafeRawPointer, _ ls: Int, _ nameEnd: Int, _ vs: Int, _ ve: Int,
                          index: Int, side: Side, version: HTTPVersion,
                          facts: inout FieldFacts) -> HTTP1ParseError? {
        switch nameEnd - ls {
        case 4:
            guard side == .request, equalsLower(p, ls, nameEnd, lowerHost) else { return nil }
            if facts.hostIndex >= 0 { return HTTP1ParseError(.duplicateHost, at: ls) }
            let t = classes.pointer
            var i = vs
            while i < ve {
                if byte(t, Int(byte(p, i))) & host == 0 { return HTTP1ParseError(.badHeaderValue, at: i) }
                i += 1
            }
            facts.hostIndex = index
            facts.hostValue = ByteRange(offset: vs, count: ve - vs)
        case 6:
            guard side == .request, equalsLower(p, ls, nameEnd, lowerExpect) else { return nil }
            if !equalsLower(p, vs, ve, lower100Continue) { return HTTP1ParseError(.badExpect, at: vs) }
            // RFC 9110 §10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request.
            facts.expectsContinue = version == .http11
        case 10:
            guard equalsLower(p, ls, nameEnd, lowerConnection) else { return nil }
            let r = scanConnectionOptions(p, vs, ve)
            if let e = r.error { return e }
            facts.close = facts.close || r.close
            facts.keepAlive = facts.keepAlive || r.keepAlive
            facts.hasConnectionOptions = facts.hasConnectionOptions || r.other
        case 14:
            guard equalsLower(p, ls, nameEnd, lowerContentLength) else { return nil }
            let (n, e) = parseContentLength(p, vs, ve, previous: facts.contentLength)
            if let e { return e }
            facts.contentLength = n
            facts.contentLengthLine = ls
        case 17:
            guard equalsLower(p, ls, nameEnd, lowerTransferEncoding) else { return nil }
            if version == .http10 { return HTTP1ParseError(.transferEncodingInHTTP10, at: ls) }
            if facts.transferEncodingLine >= 0 { return HTTP1ParseError(.badTransferEncoding, at: ls) }
            if !equalsLower(p, vs, ve, lowerChunked) { return HTTP1ParseError(.badTransferEncoding, at: vs) }
            facts.transferEncodingLine = ls
        default:
            return nil
        }
        return nil
    }

    /// RFC 9112 §6.1: both framings present is a smuggling attempt; reject.
    @inline(__always)
    static func checkFraming(_ facts: FieldFacts) -> HTTP1ParseError? {
        if facts.contentLengthLine >= 0 && facts.transferEncodingLine >= 0 {
            return HTTP1ParseError(.contentLengthWithTransferEncoding,
                                   at: max(facts.contentLengthLine, facts.transferEncodingLine))
        }
        return nil
    }
}
