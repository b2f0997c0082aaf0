import Runtime
import Testing

struct ChunkedCase: Sendable, CustomTestStringConvertible {
    enum Result: Sendable {
        /// The body ends after `consumed` bytes (nil: all of the input) with this payload.
        case body(String, consumed: Int? = nil)
        case fail(HTTP1ParseError.Kind, at: Int? = nil)
        /// Not finished; the payload so far.
        case partial(String)
    }
    var name: String
    var raw: [UInt8]
    var result: Result
    var testDescription: String { name }
    init(_ name: String, _ raw: String, _ result: Result) {
        self.name = name
        self.raw = bytes(raw)
        self.result = result
    }
    init(_ name: String, raw: [UInt8], _ result: Result) {
        self.name = name
        self.raw = raw
        self.result = result
    }
}

private let longExtension = "1;" + String(repeating: "a", count: 4095) + "\r\nx\r\n0\r\n\r\n"
private let tooLongExtension = "1;" + String(repeating: "a", count: 4096) + "\r\nx\r\n0\r\n\r\n"
private let bigTrailer = "0\r\nX: " + String(repeating: "t", count: 4100) + "\r\n\r\n"

let validChunkedBodies: [ChunkedCase] = [
    ChunkedCase("one chunk", "5\r\nhello\r\n0\r\n\r\n", .body("hello")),
    ChunkedCase("two chunks", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", .body("hello world")),
    ChunkedCase("empty body", "0\r\n\r\n", .body("")),
    ChunkedCase("uppercase hex", "A\r\n0123456789\r\n0\r\n\r\n", .body("0123456789")),
    ChunkedCase("lowercase hex", "a\r\n0123456789\r\n0\r\n\r\n", .body("0123456789")),
    ChunkedCase("two-digit hex", "1f\r\n" + String(repeating: "z", count: 31) + "\r\n0\r\n\r\n",
                .body(String(repeating: "z", count: 31))),
    ChunkedCase("leading zeros", "005\r\nhello\r\n000\r\n\r\n", .body("hello")),
    ChunkedCase("15 hex digits", "000000000000005\r\nhello\r\n0\r\n\r\n", .body("hello")),
    ChunkedCase("data containing CRLF", "4\r\n\r\n\r\n\r\n0\r\n\r\n", .body("\r\n\r\n")),
    ChunkedCase("extension name", "5;ext\r\nhello\r\n0\r\n\r\n", .body("hello")),
    ChunkedCase("extension with token value", "5;a=b\r\nhello\r\n0;last\r\n\r\n", .body("hello")),
    ChunkedCase("extensions with BWS", "5 \t; a = b ;c\t=\td\r\nhello\r\n0\r\n\r\n", .body("hello")),
    ChunkedCase("quoted extension value", "5;a=\"q \\\" ; x\"\r\nhello\r\n0\r\n\r\n", .body("hello")),
    ChunkedCase("quoted value then BWS then another", "5;a=\"v\" ;b\r\nhello\r\n0\r\n\r\n", .body("hello")),
    ChunkedCase("several extensions", "5;a;b;c=1\r\nhello\r\n0\r\n\r\n", .body("hello")),
    ChunkedCase("extension bytes at the limit", longExtension, .body("x")),
    ChunkedCase("trailer field", "5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n", .body("hello")),
    ChunkedCase("trailers with empty value and obs-text", "0\r\nA:\r\nB: caf\u{e9}\r\n\r\n", .body("")),
    ChunkedCase("bytes after the body stay unconsumed", "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
                .body("abc", consumed: 13)),
    ChunkedCase("incomplete data", "5\r\nhel", .partial("hel")),
    ChunkedCase("incomplete size line", "5;a=", .partial("")),
    ChunkedCase("incomplete after the last chunk", "2\r\nab\r\n0\r\n", .partial("ab")),
    ChunkedCase("incomplete trailer", "0\r\nX: 1\r\n", .partial("")),
]

let chunkedRejections: [ChunkedCase] = [
    ChunkedCase("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n", .fail(.badChunkSize, at: 1)),
    ChunkedCase("plus sign", "+5\r\nhello\r\n0\r\n\r\n", .fail(.badChunkSize, at: 0)),
    ChunkedCase("minus sign", "-5\r\nhello\r\n0\r\n\r\n", .fail(.badChunkSize, at: 0)),
    ChunkedCase("leading space", " 5\r\nhello\r\n0\r\n\r\n", .fail(.badChunkSize, at: 0)),
    ChunkedCase("trailing space without extension", "5 \r\nhello\r\n0\r\n\r\n", .fail(.badChunkSize, at: 2)),
    ChunkedCase("trailing tab without extension", "5\t\r\nhello\r\n0\r\n\r\n", .fail(.badChunkSize, at: 2)),
    ChunkedCase("empty size line", "\r\nhello\r\n0\r\n\r\n", .fail(.badChunkSize, at: 0)),
    ChunkedCase("non-hex digit", "g\r\n", .fail(.badChunkSize, at: 0)),
    ChunkedCase("hex then junk", "5z\r\nhello\r\n", .fail(.badChunkSize, at: 1)),
    ChunkedCase("16 hex digits", "1000000000000000\r\n", .fail(.badChunkSize, at: 15)),
    ChunkedCase("overflowing size", "ffffffffffffffffff\r\n", .fail(.badChunkSize, at: 15)),
    ChunkedCase("16 digits with leading zeros", "0000000000000005\r\nhello\r\n0\r\n\r\n", .fail(.badChunkSize, at: 15)),
    ChunkedCase("size after data is signed", "5\r\nhello\r\n-1\r\n", .fail(.badChunkSize, at: 10)),
    ChunkedCase("quoted extension name", "5;\"bad\"\r\nhello\r\n0\r\n\r\n", .fail(.badChunkExtension, at: 2)),
    ChunkedCase("empty extension name", "5;=x\r\nhello\r\n0\r\n\r\n", .fail(.badChunkExtension, at: 2)),
    ChunkedCase("empty extension", "5;\r\nhello\r\n0\r\n\r\n", .fail(.badChunkExtension, at: 2)),
    ChunkedCase("empty extension value", "5;a=\r\nhello\r\n0\r\n\r\n", .fail(.badChunkExtension, at: 4)),
    ChunkedCase("BWS before CRLF after a name", "5;a \r\nhello\r\n0\r\n\r\n", .fail(.badChunkExtension, at: 4)),
    ChunkedCase("two words in a value", "5;a=b c\r\nhello\r\n0\r\n\r\n", .fail(.badChunkExtension, at: 6)),
    ChunkedCase("unterminated quoted value", "5;a=\"x\r\nhello\r\n0\r\n\r\n", .fail(.badChunkExtension, at: 6)),
    ChunkedCase("NUL in a quoted value", "5;a=\"\u{0}\"\r\nhello\r\n0\r\n\r\n", .fail(.badChunkExtension, at: 5)),
    ChunkedCase("NUL in an extension name", "5;a\u{0}\r\nhello\r\n0\r\n\r\n", .fail(.badChunkExtension, at: 3)),
    ChunkedCase("extension bytes over the limit", tooLongExtension, .fail(.badChunkExtension, at: 4097)),
    ChunkedCase("LF-only line ends", "5\nhello\n0\n\n", .fail(.badChunkTerminator, at: 1)),
    ChunkedCase("LF after an extension", "5;a\nhello\r\n0\r\n\r\n", .fail(.badChunkTerminator, at: 3)),
    ChunkedCase("bare CR after the size", "5\rhello\r\n0\r\n\r\n", .fail(.badChunkTerminator, at: 2)),
    ChunkedCase("missing CRLF after data", "5\r\nhelloX\r\n0\r\n\r\n", .fail(.badChunkTerminator, at: 8)),
    ChunkedCase("LF only after data", "5\r\nhello\n0\r\n\r\n", .fail(.badChunkTerminator, at: 8)),
    ChunkedCase("CR only after data", "5\r\nhello\r0\r\n\r\n", .fail(.badChunkTerminator, at: 9)),
    ChunkedCase("data longer than its size", "3\r\nhello\r\n0\r\n\r\n", .fail(.badChunkTerminator, at: 6)),
    ChunkedCase("bare LF as the final line", "0\r\n\n", .fail(.badChunkTerminator, at: 3)),
    ChunkedCase("bare CR as the final line", "0\r\n\rX", .fail(.badChunkTerminator, at: 4)),
    ChunkedCase("trailer with space before colon", "0\r\nX : v\r\n\r\n", .fail(.badTrailer, at: 4)),
    ChunkedCase("obs-folded trailer", "0\r\nX: v\r\n w\r\n\r\n", .fail(.badTrailer, at: 9)),
    ChunkedCase("trailer without colon", "0\r\nX\r\n\r\n", .fail(.badTrailer, at: 4)),
    ChunkedCase("trailer with empty name", "0\r\n: v\r\n\r\n", .fail(.badTrailer, at: 3)),
    ChunkedCase("NUL in a trailer value", "0\r\nX: a\u{0}\r\n\r\n", .fail(.badTrailer, at: 7)),
    ChunkedCase("bare LF in a trailer", "0\r\nX: v\n\r\n", .fail(.badTrailer, at: 7)),
    ChunkedCase("bare CR in a trailer", "0\r\nX: v\rw\r\n\r\n", .fail(.badTrailer, at: 8)),
    ChunkedCase("trailer bytes over the limit", bigTrailer, .fail(.badTrailer)),
]

struct ChunkedDecoderTests {
    @Test(arguments: validChunkedBodies)
    func decodesValidBody(_ c: ChunkedCase) { check(c) }

    @Test(arguments: chunkedRejections)
    func rejectsBadFraming(_ c: ChunkedCase) { check(c) }

    private func check(_ c: ChunkedCase) {
        let o = decodeChunkedAllWays(c.raw)
        switch c.result {
        case .body(let body, let consumed):
            #expect(o.end == .end(consumed: consumed ?? c.raw.count))
            #expect(o.body == bytes(body))
        case .partial(let body):
            #expect(o.end == .incomplete)
            #expect(o.body == bytes(body))
        case .fail(let kind, let at):
            guard case .failed(let e) = o.end else {
                Issue.record("expected \(kind), got \(o)")
                return
            }
            #expect(e.kind == kind)
            if let at { #expect(e.offset == at) }
        }
    }

    @Test func largeChunkIsHandedOutAsTheBytesArrive() {
        // 0x10000 bytes of data fed in 1000-byte pieces: data steps never exceed a piece.
        let payload = (0..<0x10000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let raw = bytes("10000\r\n") + payload + bytes("\r\n0\r\n\r\n")
        let pieces = stride(from: 0, to: raw.count, by: 1000).map { $0..<min($0 + 1000, raw.count) }
        let o = decodeChunked(raw, pieces: pieces)
        #expect(o.end == .end(consumed: raw.count))
        #expect(o.body == payload)
    }

    @Test func errorOffsetsCountFromTheStartOfTheBody() {
        let raw = bytes("5\r\nhello\r\n5\r\nworld\r\nZ\r\n")
        let o = decodeChunked(raw, pieces: [0..<7, 7..<13, 13..<raw.count])
        #expect(o.end == .failed(HTTP1ParseError(.badChunkSize, at: 20)))
    }

    @Test func resetStartsANewBody() {
        let region = GuardedBytes(capacity: 64)
        var d = ChunkedDecoder()
        #expect(d.step(region.place(bytes("zz"))) == .failed(HTTP1ParseError(.badChunkSize, at: 0)))
        d.reset()
        let raw = bytes("0\r\n\r\n")
        #expect(d.step(region.place(raw)) == .end(consumed: 5))
        d.reset()
        #expect(d.step(region.place(bytes("3\r\n"))) == .needMore(consumed: 3))
        #expect(d.step(region.place(bytes("abc"))) == .data(skip: 0, count: 3))
        #expect(d.step(UnsafeRawBufferPointer(start: nil, count: 0)) == .needMore(consumed: 0))
    }
}
