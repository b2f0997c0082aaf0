import Runtime
import Testing

// Drivers shared by the HTTP/1 codec tests. Every input goes through `GuardedBytes`, and
// every case is fed whole, split at every offset (prefix then whole, same parser) and one
// byte at a time (a growing buffer, the same parser), and all three must agree.

/// Bytes from a string literal ("\r\n", "\u{0}" …); UTF-8 for non-ASCII characters.
func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Text of a range of a parsed message (tests only).
func text(_ raw: UnsafeRawBufferPointer, _ r: ByteRange) -> String {
    String(decoding: UnsafeRawBufferPointer(rebasing: raw[Int(r.offset)..<r.end]), as: UTF8.self)
}

struct Field: Equatable, Sendable, CustomStringConvertible {
    var name: String
    var value: String
    init(_ name: String, _ value: String) { self.name = name; self.value = value }
    var description: String { "\(name): \(value)" }
}

/// Everything observable about one request parse, as plain values.
struct RequestOutcome: Equatable, CustomStringConvertible {
    var result: HTTP1ParseResult
    var method: HTTPMethod = .get
    var methodText = ""
    var target = ""
    var path = ""
    var query: String? = nil
    var authority = ""
    var form: HTTP1RequestHead.TargetForm = .origin
    var version: HTTPVersion = .http11
    var host: String? = nil
    var framing: BodyFraming = .none
    var wantsClose = false
    var expectsContinue = false
    var headLength = 0
    var fields: [Field] = []

    init(_ result: HTTP1ParseResult, _ head: HTTP1RequestHead, _ headers: HeaderTable, _ raw: UnsafeRawBufferPointer) {
        self.result = result
        guard case .complete = result else { return }
        method = head.method
        methodText = text(raw, head.methodRange)
        target = text(raw, head.target)
        path = text(raw, head.path)
        query = head.hasQuery ? text(raw, head.query) : nil
        authority = text(raw, head.authority)
        form = head.form
        version = head.version
        host = head.hostIndex >= 0 ? text(raw, headers[head.hostIndex].value) : nil
        framing = head.framing
        wantsClose = head.wantsClose
        expectsContinue = head.expectsContinue
        headLength = head.headLength
        fields = (0..<headers.count).map { Field(text(raw, headers[$0].name), text(raw, headers[$0].value)) }
    }
    var description: String { "\(result) \(methodText) \(target) fields=\(fields)" }
}

struct ResponseOutcome: Equatable, CustomStringConvertible {
    var result: HTTP1ParseResult
    var status = 0
    var version: HTTPVersion = .http11
    var reason = ""
    var framing: BodyFraming = .none
    var wantsClose = false
    var headLength = 0
    var fields: [Field] = []

    init(_ result: HTTP1ParseResult, _ head: HTTP1ResponseHead, _ headers: HeaderTable, _ raw: UnsafeRawBufferPointer) {
        self.result = result
        guard case .complete = result else { return }
        status = head.status
        version = head.version
        reason = text(raw, head.reason)
        framing = head.framing
        wantsClose = head.wantsClose
        headLength = head.headLength
        fields = (0..<headers.count).map { Field(text(raw, headers[$0].name), text(raw, headers[$0].value)) }
    }
    var description: String { "\(result) \(status) fields=\(fields)" }
}

/// A head parser under test, with its own header table.
protocol HeadParserHarness {
    associatedtype Outcome: Equatable & CustomStringConvertible
    mutating func parse(_ raw: UnsafeRawBufferPointer) -> Outcome
    static func result(_ o: Outcome) -> HTTP1ParseResult
}

struct RequestHarness: HeadParserHarness {
    var parser: HTTP1RequestParser
    let headers: HeaderTable
    init(limits: HTTP1Limits, tableCapacity: Int = 128) {
        parser = HTTP1RequestParser(limits: limits)
        headers = HeaderTable(capacity: tableCapacity)
    }
    mutating func parse(_ raw: UnsafeRawBufferPointer) -> RequestOutcome {
        var head = HTTP1RequestHead()
        let r = parser.parse(raw, into: &head, headers: headers)
        return RequestOutcome(r, head, headers, raw)
    }
    static func result(_ o: RequestOutcome) -> HTTP1ParseResult { o.result }
}

struct ResponseHarness: HeadParserHarness {
    var parser: HTTP1ResponseParser
    let method: HTTPMethod
    let headers: HeaderTable
    init(limits: HTTP1Limits, method: HTTPMethod) {
        parser = HTTP1ResponseParser(limits: limits)
        self.method = method
        headers = HeaderTable(capacity: 128)
    }
    mutating func parse(_ raw: UnsafeRawBufferPointer) -> ResponseOutcome {
        var head = HTTP1ResponseHead()
        let r = parser.parse(raw, requestMethod: method, into: &head, headers: headers)
        return ResponseOutcome(r, head, headers, raw)
    }
    static func result(_ o: ResponseOutcome) -> HTTP1ParseResult { o.result }
}

/// Feeds `raw` whole, split at every offset and one byte at a time; checks that the three
/// agree and returns the whole-input outcome.
func feedAllWays<H: HeadParserHarness>(_ raw: [UInt8], _ make: () -> H,
                                       sourceLocation: SourceLocation = #_sourceLocation) -> H.Outcome {
    let region = GuardedBytes(capacity: raw.count)
    var whole = make()
    let expected = whole.parse(region.place(raw))
    let n = raw.count

    // (b) prefix, then the whole message, on the same parser.
    for k in 0..<n {
        var h = make()
        let first = h.parse(region.place(raw, 0..<k))
        if H.result(first) != .incomplete {
            #expect(first == expected, "prefix of \(k) bytes: \(first), whole: \(expected)",
                    sourceLocation: sourceLocation)
            continue
        }
        let second = h.parse(region.place(raw))
        #expect(second == expected, "after a prefix of \(k) bytes: \(second), whole: \(expected)",
                sourceLocation: sourceLocation)
    }

    // (c) one byte at a time into a growing buffer, same parser.
    var h = make()
    var k = 1
    var last: H.Outcome? = nil
    while k <= n {
        let o = h.parse(region.place(raw, 0..<k))
        if H.result(o) != .incomplete {
            last = o
            break
        }
        k += 1
    }
    if let last {
        #expect(last == expected, "byte by byte, stopped at \(k) bytes: \(last), whole: \(expected)",
                sourceLocation: sourceLocation)
        switch H.result(last) {
        case .complete(let consumed):
            #expect(consumed == k, "byte by byte: completed at \(k) bytes, consumed \(consumed)",
                    sourceLocation: sourceLocation)
        case .failed(let e):
            #expect(e.offset < k, "byte by byte: failed at \(k) bytes on offset \(e.offset)",
                    sourceLocation: sourceLocation)
        case .incomplete:
            break
        }
    } else {
        #expect(H.result(expected) == .incomplete, "byte by byte never finished; whole: \(expected)",
                sourceLocation: sourceLocation)
    }
    return expected
}

// MARK: Chunked bodies

struct ChunkedOutcome: Equatable, CustomStringConvertible {
    enum End: Equatable { case end(consumed: Int), failed(HTTP1ParseError), incomplete }
    var body: [UInt8] = []
    var end: End = .incomplete
    var description: String { "\(end) body=\(String(decoding: body, as: UTF8.self).debugDescription)" }
}

/// Decodes `raw` fed as consecutive pieces; each `step` sees only bytes not yet consumed,
/// each piece placed against a guard page on its own.
func decodeChunked(_ raw: [UInt8], pieces: [Range<Int>], sourceLocation: SourceLocation = #_sourceLocation) -> ChunkedOutcome {
    var decoder = ChunkedDecoder()
    var out = ChunkedOutcome()
    let region = GuardedBytes(capacity: raw.count)
    for piece in pieces where !piece.isEmpty {
        var pos = piece.lowerBound
        while pos < piece.upperBound {
            let input = region.place(raw, pos..<piece.upperBound)
            switch decoder.step(input) {
            case .data(let skip, let count):
                #expect(count > 0 && skip >= 0 && skip + count <= input.count, sourceLocation: sourceLocation)
                out.body += Array(UnsafeRawBufferPointer(rebasing: input[skip..<skip + count]))
                pos += skip + count
            case .needMore(let consumed):
                #expect(consumed == input.count, "needMore must consume all framing bytes", sourceLocation: sourceLocation)
                pos += consumed
            case .end(let consumed):
                out.end = .end(consumed: pos + consumed)
                #expect(decoder.step(input) == .end(consumed: 0), sourceLocation: sourceLocation)
                return out
            case .failed(let e):
                out.end = .failed(e)
                #expect(decoder.step(input) == .failed(e), "a failure repeats", sourceLocation: sourceLocation)
                return out
            }
        }
    }
    return out
}

/// Decodes whole, split at every offset into two calls, and one byte per call; all agree.
func decodeChunkedAllWays(_ raw: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) -> ChunkedOutcome {
    let n = raw.count
    let whole = decodeChunked(raw, pieces: [0..<n], sourceLocation: sourceLocation)
    for k in 0...n {
        let split = decodeChunked(raw, pieces: [0..<k, k..<n], sourceLocation: sourceLocation)
        #expect(split == whole, "split at \(k): \(split), whole: \(whole)", sourceLocation: sourceLocation)
    }
    let single = decodeChunked(raw, pieces: (0..<n).map { $0..<($0 + 1) }, sourceLocation: sourceLocation)
    #expect(single == whole, "byte by byte: \(single), whole: \(whole)", sourceLocation: sourceLocation)
    return whole
}
