// Drivers shared by the HTTP/1 targets: feed a message to a resumable parser as bytes
// "arrive" (each arrival a fresh exact-size copy of everything so far, as the proxy's
// buffer would hold it), capture everything observable, and check the invariants.

/// Head parser limits chosen by the input: small limits reach the 414/431 paths with
/// short inputs.
func fuzzLimits(_ profile: Int) -> HTTP1Limits {
    var l = HTTP1Limits()
    switch profile {
    case 1: l.maxHeadBytes = 64; l.maxTargetBytes = 32; l.maxHeaderCount = 3
    case 2: l.maxHeadBytes = 256; l.maxTargetBytes = 96; l.maxHeaderCount = 8
    case 3: l.maxHeadBytes = 1024; l.maxTargetBytes = 16; l.maxHeaderCount = 1
    default: break
    }
    return l
}

/// Arrival points for one message of `n` bytes: the fuzzer's split points, then all of it.
func arrivals(_ input: FuzzInput, length n: Int) -> [Int] { input.splitPoints(length: n) + [n] }

/// Everything a request parse produced, as plain values.
struct RequestOutcome: Equatable {
    var result: HTTP1ParseResult
    var method = HTTPMethod.get
    var methodRange = ByteRange.empty
    var target = ByteRange.empty
    var path = ByteRange.empty
    var query = ByteRange.empty
    var hasQuery = false
    var authority = ByteRange.empty
    var form = HTTP1RequestHead.TargetForm.origin
    var version = HTTPVersion.http11
    var hostIndex = -1
    var framing = BodyFraming.none
    var wantsClose = false
    var expectsContinue = false
    var hasConnectionOptions = false
    var headLength = 0
    var fields: [HeaderField] = []

    init(_ result: HTTP1ParseResult, _ h: HTTP1RequestHead, _ t: HeaderTable) {
        self.result = result
        guard case .complete = result else { return }
        method = h.method; methodRange = h.methodRange; target = h.target; path = h.path; query = h.query
        hasQuery = h.hasQuery; authority = h.authority; form = h.form; version = h.version; hostIndex = h.hostIndex
        framing = h.framing; wantsClose = h.wantsClose; expectsContinue = h.expectsContinue
        hasConnectionOptions = h.hasConnectionOptions; headLength = h.headLength
        fields = (0..<t.count).map { t[$0] }
    }
}

struct ResponseOutcome: Equatable {
    var result: HTTP1ParseResult
    var status = 0
    var version = HTTPVersion.http11
    var reason = ByteRange.empty
    var framing = BodyFraming.none
    var wantsClose = false
    var hasConnectionOptions = false
    var headLength = 0
    var fields: [HeaderField] = []

    init(_ result: HTTP1ParseResult, _ h: HTTP1ResponseHead, _ t: HeaderTable) {
        self.result = result
        guard case .complete = result else { return }
        status = h.status; version = h.version; reason = h.reason; framing = h.framing; wantsClose = h.wantsClose
        hasConnectionOptions = h.hasConnectionOptions; headLength = h.headLength
        fields = (0..<t.count).map { t[$0] }
    }
}

/// Parses `bytes` arriving at `points` (increasing; the last is the whole); stops at the
/// first answer that is not `.incomplete`. Checks the byte-order contract on the way: a
/// complete head ends within what had arrived, a failure points at a byte that had.
func feedRequest(_ parser: inout HTTP1RequestParser, _ head: inout HTTP1RequestHead, _ table: HeaderTable,
                 _ bytes: UnsafeRawBufferPointer, _ points: [Int]) -> RequestOutcome {
    for k in points {
        let r = withExactCopy(bytes, count: k) { parser.parse($0, into: &head, headers: table) }
        switch r {
        case .incomplete: continue
        case .complete(let c): check(c > 0 && c <= k, "complete(\(c)) with \(k) bytes")
        case .failed(let e): check(e.offset >= 0 && e.offset < k, "failed \(e) with \(k) bytes")
        }
        return RequestOutcome(r, head, table)
    }
    return RequestOutcome(.incomplete, head, table)
}

func feedResponse(_ parser: inout HTTP1ResponseParser, _ head: inout HTTP1ResponseHead, _ table: HeaderTable,
                  method: HTTPMethod, _ bytes: UnsafeRawBufferPointer, _ points: [Int]) -> ResponseOutcome {
    for k in points {
        let r = withExactCopy(bytes, count: k) { parser.parse($0, requestMethod: method, into: &head, headers: table) }
        switch r {
        case .incomplete: continue
        case .complete(let c): check(c > 0 && c <= k, "complete(\(c)) with \(k) bytes")
        case .failed(let e): check(e.offset >= 0 && e.offset < k, "failed \(e) with \(k) bytes")
        }
        return ResponseOutcome(r, head, table)
    }
    return ResponseOutcome(.incomplete, head, table)
}

// MARK: invariants of a complete head

/// Checks what every complete head (request or response) satisfies.
func checkFields(_ b: UnsafeRawBufferPointer, _ fields: [HeaderField], headLength c: Int, firstLineEnd: Int,
                 maxCount: Int) {
    check(fields.count <= maxCount, "\(fields.count) fields over the limit \(maxCount)")
    var previousEnd = firstLineEnd
    for f in fields {
        let no = Int(f.name.offset), nc = Int(f.name.count), vo = Int(f.value.offset), vc = Int(f.value.count)
        check(nc > 0 && no >= previousEnd && no + nc < c, "field name range \(f.name) outside the head (\(c))")
        check(b[no + nc] == UInt8(ascii: ":"), "field name not followed by ':'")
        for i in no..<(no + nc) { check(Oracle.isTchar(b[i]), "non-tchar 0x\(String(b[i], radix: 16)) in a name") }
        check(vo > no + nc && vc >= 0 && vo + vc <= c - 2, "field value range \(f.value) outside the head")
        for i in vo..<(vo + vc) { check(Oracle.isFieldValueByte(b[i]), "byte 0x\(String(b[i], radix: 16)) in a value") }
        if vc > 0 {
            check(b[vo] != 0x20 && b[vo] != 0x09 && b[vo + vc - 1] != 0x20 && b[vo + vc - 1] != 0x09,
                  "value not trimmed")
        }
        // Between the colon and the value start only OWS; the line ends in CRLF after OWS.
        for i in (no + nc + 1)..<vo { check(b[i] == 0x20 || b[i] == 0x09, "non-OWS before a value") }
        var e = vo + vc
        while b[e] == 0x20 || b[e] == 0x09 { e += 1 }
        check(b[e] == 0x0D && b[e + 1] == 0x0A, "field line does not end in CRLF after the value")
        previousEnd = e + 2
    }
    check(previousEnd == c - 2, "fields do not run up to the empty line (\(previousEnd) vs \(c - 2))")
    check(b[c - 2] == 0x0D && b[c - 1] == 0x0A, "head does not end in CRLF")
}

func caselessEquals(_ b: UnsafeRawBufferPointer, _ r: ByteRange, _ lower: String) -> Bool {
    let l = Array(lower.utf8)
    guard Int(r.count) == l.count else { return false }
    for i in 0..<l.count {
        var c = b[Int(r.offset) + i]
        if c >= 0x41 && c <= 0x5A { c |= 0x20 }
        if c != l[i] { return false }
    }
    return true
}

func checkRequest(_ o: RequestOutcome, _ b: UnsafeRawBufferPointer, _ limits: HTTP1Limits) {
    guard case .complete(let c) = o.result else { return }
    check(c == o.headLength && c <= b.count && c <= limits.maxHeadBytes, "consumed \(c), headLength \(o.headLength)")
    let m = o.methodRange
    check(m.offset == 0 && m.count > 0 && b[Int(m.count)] == 0x20, "method range \(m)")
    for i in 0..<Int(m.count) { check(Oracle.isTchar(b[i]), "method byte") }
    let t = o.target
    check(Int(t.offset) == Int(m.count) + 1 && t.count > 0 && Int(t.count) <= limits.maxTargetBytes
          && b[t.end] == 0x20, "target range \(t)")
    for i in Int(t.offset)..<t.end { check(b[i] > 0x20 && b[i] < 0x7F, "target byte") }
    let versionStart = t.end + 1
    let lineEnd = versionStart + 10   // "HTTP/1.x\r\n"
    check(lineEnd <= c && b[versionStart + 8] == 0x0D && b[versionStart + 9] == 0x0A, "request line end")
    let expected: [UInt8] = Array((o.version == .http11 ? "HTTP/1.1" : "HTTP/1.0").utf8)
    for i in 0..<8 { check(b[versionStart + i] == expected[i], "version text") }
    for r in [o.path, o.query, o.authority] where !r.isEmpty {
        check(r.offset >= t.offset && r.end <= t.end, "range \(r) outside the target \(t)")
    }
    if o.hasQuery { check(o.query.offset > 0 && b[Int(o.query.offset) - 1] == UInt8(ascii: "?"), "query not after '?'") }
    switch o.form {
    case .origin: check(!o.path.isEmpty && b[Int(o.path.offset)] == UInt8(ascii: "/"), "origin-form path")
    case .absolute: check(!o.authority.isEmpty, "absolute-form without authority")
    case .authority: check(o.method == .connect, "authority-form for a method other than CONNECT")
    case .asterisk: check(o.method == .options && t.count == 1, "asterisk-form")
    }
    let names: [(String, HTTPMethod)] = [("GET", .get), ("HEAD", .head), ("POST", .post), ("PUT", .put),
                                         ("DELETE", .delete), ("PATCH", .patch), ("OPTIONS", .options),
                                         ("TRACE", .trace), ("CONNECT", .connect)]
    let text = Array(UnsafeRawBufferPointer(rebasing: b[0..<Int(m.count)]))
    let named = names.first { Array($0.0.utf8) == text }?.1 ?? .other
    check(named == o.method, "method \(o.method) for \(describe(UnsafeRawBufferPointer(rebasing: b[0..<Int(m.count)])))")
    checkFields(b, o.fields, headLength: c, firstLineEnd: lineEnd, maxCount: limits.maxHeaderCount)
    check(o.hostIndex >= -1 && o.hostIndex < o.fields.count, "host index \(o.hostIndex)")
    if o.hostIndex >= 0 { check(caselessEquals(b, o.fields[o.hostIndex].name, "host"), "host index names another field") }
    if o.version == .http11 { check(o.hostIndex >= 0, "HTTP/1.1 head without Host accepted") }
    let hosts = o.fields.filter { caselessEquals(b, $0.name, "host") }.count
    check(hosts <= 1, "\(hosts) Host fields accepted")
    let te = o.fields.contains { caselessEquals(b, $0.name, "transfer-encoding") }
    let cl = o.fields.contains { caselessEquals(b, $0.name, "content-length") }
    check(!(te && cl), "Content-Length with Transfer-Encoding accepted")
    switch o.framing {
    case .chunked: check(te, "chunked framing without Transfer-Encoding")
    case .contentLength(let v): check(cl && v >= 0, "Content-Length framing \(v)")
    case .none: check(!te && !cl, "framing none with a framing field")
    case .untilClose: check(false, "a request framed until close")
    }
}

func checkResponse(_ o: ResponseOutcome, _ b: UnsafeRawBufferPointer, _ limits: HTTP1Limits, method: HTTPMethod) {
    guard case .complete(let c) = o.result else { return }
    check(c == o.headLength && c <= b.count && c <= limits.maxHeadBytes, "consumed \(c), headLength \(o.headLength)")
    check(o.status >= 100 && o.status <= 999, "status \(o.status)")
    let expected: [UInt8] = Array((o.version == .http11 ? "HTTP/1.1 " : "HTTP/1.0 ").utf8)
    for i in 0..<9 { check(b[i] == expected[i], "status line start") }
    var status = 0
    for i in 9..<12 { status = status * 10 + Int(b[i] - 0x30) }
    check(status == o.status, "status \(o.status) vs text \(status)")
    var lineEnd = 12
    if !o.reason.isEmpty {
        check(o.reason.offset == 13 && b[12] == 0x20, "reason range \(o.reason)")
        for i in 13..<o.reason.end { check(Oracle.isFieldValueByte(b[i]), "reason byte") }
        lineEnd = o.reason.end
    } else if b[12] == 0x20 {
        lineEnd = 13
    }
    check(b[lineEnd] == 0x0D && b[lineEnd + 1] == 0x0A, "status line end")
    checkFields(b, o.fields, headLength: c, firstLineEnd: lineEnd + 2, maxCount: limits.maxHeaderCount)
    let bodiless = method == .head || o.status < 200 || o.status == 204 || o.status == 304
        || (method == .connect && o.status < 300)
    if bodiless { check(o.framing == .none, "a bodiless response framed \(o.framing)") }
    if case .untilClose = o.framing { check(o.wantsClose, "close-delimited body on a kept connection") }
    let te = o.fields.contains { caselessEquals(b, $0.name, "transfer-encoding") }
    let cl = o.fields.contains { caselessEquals(b, $0.name, "content-length") }
    check(!(te && cl), "Content-Length with Transfer-Encoding accepted")
}

// MARK: chunked bodies

struct ChunkedOutcome: Equatable {
    enum End: Equatable { case end, failed(HTTP1ParseError), needMore }
    var body: [UInt8] = []
    var end = End.needMore
    /// Input bytes consumed (framing and data); 0 after a failure.
    var consumed = 0
}

/// Decodes `bytes` arriving at `points` as the proxy does: every step sees only the bytes
/// not consumed yet (an exact copy of them), and steps go on until one needs more input.
func feedChunked(_ decoder: inout ChunkedDecoder, _ bytes: UnsafeRawBufferPointer, _ points: [Int]) -> ChunkedOutcome {
    var out = ChunkedOutcome()
    var pos = 0
    for avail in points where avail >= pos {
        var steps = 0
        let budget = avail - pos + 2   // every step but the last consumes a byte or more
        while true {
            steps += 1
            check(steps <= budget, "chunked decoder makes no progress")
            let len = avail - pos
            let (step, data) = withExactCopy(bytes, from: pos, count: len) { input -> (ChunkedStep, [UInt8]) in
                let s = decoder.step(input)
                if case .data(let skip, let count) = s, skip >= 0, count >= 0, skip + count <= len {
                    return (s, Array(input[skip..<(skip + count)]))
                }
                return (s, [])
            }
            switch step {
            case .data(let skip, let count):
                check(skip >= 0 && count > 0 && skip + count <= len, "data(skip: \(skip), count: \(count)) of \(len)")
                out.body += data
                pos += skip + count
                if pos == avail { break }
                continue
            case .needMore(let consumed):
                // The proxy returns to the loop on needMore: bytes left unconsumed would wait
                // for the next read, which may never come.
                check(consumed == len, "needMore(consumed: \(consumed)) of \(len) bytes")
                pos += consumed
            case .end(let consumed):
                check(consumed > 0 && consumed <= len, "end(consumed: \(consumed)) of \(len)")
                pos += consumed
                out.end = .end
                out.consumed = pos
                let again = withExactCopy(bytes, from: pos, count: bytes.count - pos) { decoder.step($0) }
                check(again == .end(consumed: 0), "step after the end: \(again)")
                return out
            case .failed(let e):
                check(e.offset >= 0 && e.offset < avail, "failed at \(e.offset) with \(avail) bytes")
                out.end = .failed(e)
                out.consumed = 0   // how far steps got before the failure depends on the pieces
                let again = withExactCopy(bytes, from: pos, count: len) { decoder.step($0) }
                check(again == .failed(e), "step after a failure: \(again)")
                return out
            }
            break
        }
    }
    out.consumed = pos
    return out
}

/// Whole vs split vs byte-at-a-time decoding of one chunked body; returns the whole outcome.
func decodeAllWays(_ input: FuzzInput, _ body: UnsafeRawBufferPointer, persistent: inout ChunkedDecoder) -> ChunkedOutcome {
    let n = body.count
    var fresh = ChunkedDecoder()
    let whole = feedChunked(&fresh, body, [n])
    persistent.reset()
    let split = feedChunked(&persistent, body, arrivals(input, length: n))
    check(whole == split, "chunked split \(split.end) \(split.consumed) vs whole \(whole.end) \(whole.consumed)")
    if input.byteAtATime && n <= 4096 {
        var d = ChunkedDecoder()
        let bytewise = feedChunked(&d, body, Array(0...n))
        check(whole == bytewise, "chunked byte at a time \(bytewise.end) vs whole \(whole.end)")
    }
    if case .end = whole.end { check(whole.consumed <= n, "consumed past the input") }
    return whole
}
