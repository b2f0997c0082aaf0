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
        if end - start == 10 && isKeepAlive(p, start) { return (false, true, false, nil) }
        if end - start == 5 && isClose(p, start) { return (true, false, false, nil) }
        let t = classes.pointer
        var close = false, keepAlive = false, other = false
        var i = start
        while i < end {
            let c = byte(p, i)
            if c == 0x2C || isWS(c) { i += 1; continue }
            let ts = i
            while i < end && byte(t, Int(byte(p, i))) & tchar != 0 { i += 1 }
            if i == ts { return (false, false, false, HTTP1ParseError(.badHeaderValue, at: i)) }
            if i - ts == 5 && isClose(p, ts) { close = true }
            else if i - ts == 10 && isKeepAlive(p, ts) { keepAlive = true }
            else { other = true }
            // After a token: OWS then ',' or the end.
            while i < end && isWS(byte(p, i)) { i += 1 }
            if i < end && byte(p, i) != 0x2C { return (false, false, false, HTTP1ParseError(.badHeaderValue, at: i)) }
        }
        return (close, keepAlive, other, nil)
    }
}

extension HTTP1Lexer {
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

    // Caseless compares against lowercase literals by whole words. `| 0x20` folds ASCII
    // upper case; it is exact for the literals used here (lower-case letters, digits and
    // '-') because the only other bytes it could fold onto them (0x0D onto '-', 0x10–0x19
    // onto digits) are CTLs, which never reach a compare: names are tchar, values are
    // field-value bytes.
    @inline(__always) static func w64(_ p: UnsafeRawPointer, _ i: Int) -> UInt64 {
        p.loadUnaligned(fromByteOffset: i, as: UInt64.self) | 0x2020_2020_2020_2020
    }
    @inline(__always) static func w32(_ p: UnsafeRawPointer, _ i: Int) -> UInt32 {
        p.loadUnaligned(fromByteOffset: i, as: UInt32.self) | 0x2020_2020
    }
    @inline(__always) static func w16(_ p: UnsafeRawPointer, _ i: Int) -> UInt16 {
        p.loadUnaligned(fromByteOffset: i, as: UInt16.self) | 0x2020
    }
    @inline(__always) static func w8(_ p: UnsafeRawPointer, _ i: Int) -> UInt8 {
        p.load(fromByteOffset: i, as: UInt8.self) | 0x20
    }
    /// "HTTP/1.1" / "HTTP/1.0" as one little-endian word (case-sensitive, RFC 9112 §2.3).
    static let http11Word: UInt64 = 0x312E_312F_5054_5448
    static let http10Word: UInt64 = 0x302E_312F_5054_5448

    /// "host" (4 bytes at `i`).
    @inline(__always) static func isHost(_ p: UnsafeRawPointer, _ i: Int) -> Bool { w32(p, i) == 0x7473_6F68 }
    /// "expect" (6).
    @inline(__always) static func isExpect(_ p: UnsafeRawPointer, _ i: Int) -> Bool {
        w32(p, i) == 0x6570_7865 && w16(p, i &+ 4) == 0x7463
    }
    /// "connection" (10).
    @inline(__always) static func isConnection(_ p: UnsafeRawPointer, _ i: Int) -> Bool {
        w64(p, i) == 0x6974_6365_6E6E_6F63 && w16(p, i &+ 8) == 0x6E6F
    }
    /// "content-length" (14).
    @inline(__always) static func isContentLength(_ p: UnsafeRawPointer, _ i: Int) -> Bool {
        w64(p, i) == 0x2D74_6E65_746E_6F63 && w64(p, i &+ 6) == 0x6874_676E_656C_2D74
    }
    /// "transfer-encoding" (17).
    @inline(__always) static func isTransferEncoding(_ p: UnsafeRawPointer, _ i: Int) -> Bool {
        w64(p, i) == 0x7265_6673_6E61_7274 && w64(p, i &+ 8) == 0x6E69_646F_636E_652D && w8(p, i &+ 16) == 0x67
    }
    /// "keep-alive" (10).
    @inline(__always) static func isKeepAlive(_ p: UnsafeRawPointer, _ i: Int) -> Bool {
        w64(p, i) == 0x696C_612D_7065_656B && w16(p, i &+ 8) == 0x6576
    }
    /// "close" (5).
    @inline(__always) static func isClose(_ p: UnsafeRawPointer, _ i: Int) -> Bool {
        w32(p, i) == 0x736F_6C63 && w8(p, i &+ 4) == 0x65
    }
    /// "chunked" (7).
    @inline(__always) static func isChunked(_ p: UnsafeRawPointer, _ i: Int) -> Bool {
        w32(p, i) == 0x6E75_6863 && w32(p, i &+ 3) == 0x6465_6B6E
    }
    /// "100-continue" (12).
    @inline(__always) static func is100Continue(_ p: UnsafeRawPointer, _ i: Int) -> Bool {
        w64(p, i) == 0x746E_6F63_2D30_3031 && w32(p, i &+ 8) == 0x6575_6E69
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

/// How far a bounded scan of field lines got.
enum FieldScan {
    /// The empty line ends at this offset (the head's length).
    case complete(Int)
    /// The bytes ran out inside a line; the cursor says where to go on.
    case incomplete
    case failed(HTTP1ParseError)
}

/// Where a scan of field lines stopped, so the next call goes on from the same byte:
/// a head trickled in byte by byte costs linear time, and the outcome is the one the
/// whole head would give.
struct FieldCursor: Sendable {
    /// Start of the current line.
    var line = 0
    /// 0: at the line start; 1: in the name (bytes `line..<pos` are tchar); 2: in the value
    /// (the colon is at `colon`, bytes after it up to `pos` are field-value bytes).
    var stage: UInt8 = 0
    var pos = 0
    var colon = 0
}

extension HTTP1Lexer {
    enum Side { case request, response }

    /// Strictly parses field lines from `cursor` on, within `p[..<limit]`, where `limit` is
    /// what has arrived (capped at the head size limit), up to and including the empty line.
    /// Never reads at or past `limit`. Appends fields to `headers` and collects framing
    /// facts; errors come in byte order, one line at a time. `.incomplete` leaves `cursor`
    /// at the first byte not yet judged: call again with more bytes and the same
    /// `headers`, `facts` and `cursor`.
    static func scanFields(_ p: UnsafeRawPointer, _ limit: Int, cursor: inout FieldCursor, side: Side,
                           version: HTTPVersion, maxCount: Int, headers: HeaderTable,
                           facts: inout FieldFacts) -> FieldScan {
        let t = classes.pointer
        var ls = cursor.line
        var stage = cursor.stage
        var i = cursor.pos
        var colon = cursor.colon
        while true {
            if stage == 0 {
                if ls >= limit { break }
                let b0 = byte(p, ls)
                if b0 == cr {
                    if ls &+ 1 >= limit { break }
                    if byte(p, ls &+ 1) == lf { return .complete(ls &+ 2) }
                    return .failed(HTTP1ParseError(.bareCR, at: ls))
                }
                if b0 == lf { return .failed(HTTP1ParseError(.bareLF, at: ls)) }
                if isWS(b0) { return .failed(HTTP1ParseError(.obsFold, at: ls)) }
                if headers.count >= maxCount { return .failed(HTTP1ParseError(.tooManyHeaders, at: ls)) }
                i = ls
                stage = 1
            }
            if stage == 1 {
                // field-name ":" — four bytes per step while all are tchar.
                while i &+ 4 <= limit {
                    let k = byte(t, Int(byte(p, i))) & byte(t, Int(byte(p, i &+ 1)))
                        & byte(t, Int(byte(p, i &+ 2))) & byte(t, Int(byte(p, i &+ 3)))
                    if k & tchar == 0 { break }
                    i &+= 4
                }
                while i < limit && byte(t, Int(byte(p, i))) & tchar != 0 { i &+= 1 }
                if i >= limit { break }
                let c = byte(p, i)
                if c != 0x3A {
                    if isWS(c) {
                        var j = i
                        while j < limit && isWS(byte(p, j)) { j &+= 1 }
                        if j >= limit { break }
                        return .failed(HTTP1ParseError(byte(p, j) == 0x3A ? .whitespaceBeforeColon : .badHeaderName, at: i))
                    }
                    if c == cr {
                        if i &+ 1 >= limit { break }
                        if byte(p, i &+ 1) != lf { return .failed(HTTP1ParseError(.bareCR, at: i)) }
                    }
                    if byte(t, Int(c)) & ctl != 0 { return .failed(HTTP1ParseError(.controlCharacter, at: i)) }
                    return .failed(HTTP1ParseError(.badHeaderName, at: i))
                }
                if i == ls { return .failed(HTTP1ParseError(.badHeaderName, at: ls)) }
                colon = i
                i &+= 1
                stage = 2
            }
            // stage 2: OWS field-value OWS CRLF. Eight bytes at a time while none is a CTL
            // (< 0x20, which includes CR, LF and HTAB) or DEL; obs-text (>= 0x80) passes.
            // The lowest flagged byte of a word is exact (borrows only run upward), so the scan
            // lands on the first CTL/DEL; the byte loop settles an HTAB there and the last
            // few bytes of the buffer.
            while i &+ 8 <= limit {
                let w = p.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                let low = (w &- 0x2020_2020_2020_2020) & ~w & 0x8080_8080_8080_8080
                let x = w ^ 0x7F7F_7F7F_7F7F_7F7F
                let del = (x &- 0x0101_0101_0101_0101) & ~x & 0x8080_8080_8080_8080
                let m = low | del
                if m != 0 {
                    i &+= m.trailingZeroBitCount &>> 3
                    break
                }
                i &+= 8
            }
            while i < limit && byte(t, Int(byte(p, i))) & value != 0 { i &+= 1 }
            if i >= limit { break }
            let v = byte(p, i)
            if v == cr {
                if i &+ 1 >= limit { break }
                if byte(p, i &+ 1) != lf { return .failed(HTTP1ParseError(.bareCR, at: i)) }
            } else if v == lf {
                return .failed(HTTP1ParseError(.bareLF, at: i))
            } else {
                return .failed(HTTP1ParseError(.controlCharacter, at: i))
            }
            var vs = colon &+ 1
            while vs < i && isWS(byte(p, vs)) { vs &+= 1 }
            var ve = i
            while ve > vs && isWS(byte(p, ve &- 1)) { ve &-= 1 }

            let index = headers.count
            let name = ByteRange(offset: ls, count: colon &- ls)
            let val = ByteRange(offset: vs, count: ve &- vs)
            if !headers.append(HeaderField(name: name, value: val)) {
                return .failed(HTTP1ParseError(.tooManyHeaders, at: ls))
            }
            if let e = noteField(p, ls, colon, vs, ve, index: index, side: side, version: version, facts: &facts) {
                return .failed(e)
            }
            ls = i &+ 2
            stage = 0
        }
        cursor = FieldCursor(line: ls, stage: stage, pos: i, colon: colon)
        return .incomplete
    }

    /// The field step both head parsers share: `scanFields` within `view` (what has arrived,
    /// capped at the size limit), where running out of bytes past the limit is a 431.
    /// `.incomplete` also records in `scanned` how far the bytes were looked at.
    @inline(__always)
    static func fieldStep(_ p: UnsafeRawPointer, count n: Int, view: Int, limits: HTTP1Limits, side: Side,
                          version: HTTPVersion, headers: HeaderTable, cursor: inout FieldCursor,
                          facts: inout FieldFacts, scanned: inout Int) -> FieldScan {
        let r = scanFields(p, view, cursor: &cursor, side: side, version: version,
                           maxCount: limits.maxHeaderCount, headers: headers, facts: &facts)
        guard case .incomplete = r else { return r }
        scanned = view
        return n > limits.maxHeadBytes ? .failed(HTTP1ParseError(.headTooLarge, at: limits.maxHeadBytes)) : .incomplete
    }

    /// Per-field checks of the fields that decide framing, routing and connection reuse.
    @inline(__always)
    static func noteField(_ p: UnsafeRawPointer, _ ls: Int, _ nameEnd: Int, _ vs: Int, _ ve: Int,
                          index: Int, side: Side, version: HTTPVersion,
                          facts: inout FieldFacts) -> HTTP1ParseError? {
        switch nameEnd &- ls {
        case 4:
            guard side == .request, isHost(p, ls) else { return nil }
            if facts.hostIndex >= 0 { return HTTP1ParseError(.duplicateHost, at: ls) }
            let t = classes.pointer
            var i = vs
            while i < ve {
                if byte(t, Int(byte(p, i))) & host == 0 { return HTTP1ParseError(.badHeaderValue, at: i) }
                i += 1
            }
            facts.hostIndex = index
            facts.hostValue = ByteRange(offset: vs, count: ve &- vs)
        case 6:
            guard side == .request, isExpect(p, ls) else { return nil }
            if ve - vs != 12 || !is100Continue(p, vs) { return HTTP1ParseError(.badExpect, at: vs) }
            // RFC 9110 §10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request.
            facts.expectsContinue = version == .http11
        case 10:
            guard isConnection(p, ls) else { return nil }
            let r = scanConnectionOptions(p, vs, ve)
            if let e = r.error { return e }
            facts.close = facts.close || r.close
            facts.keepAlive = facts.keepAlive || r.keepAlive
            facts.hasConnectionOptions = facts.hasConnectionOptions || r.other
        case 14:
            guard isContentLength(p, ls) else { return nil }
            let (n, e) = parseContentLength(p, vs, ve, previous: facts.contentLength)
            if let e { return e }
            facts.contentLength = n
            facts.contentLengthLine = ls
        case 17:
            guard isTransferEncoding(p, ls) else { return nil }
            if version == .http10 { return HTTP1ParseError(.transferEncodingInHTTP10, at: ls) }
            if facts.transferEncodingLine >= 0 { return HTTP1ParseError(.badTransferEncoding, at: ls) }
            if ve - vs != 7 || !isChunked(p, vs) { return HTTP1ParseError(.badTransferEncoding, at: vs) }
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
