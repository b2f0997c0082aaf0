import Runtime
import Testing

struct ExpectResponse: Sendable {
    var consumed: Int? = nil
    var status: Int? = nil
    var version: HTTPVersion? = nil
    var reason: String? = nil
    var framing: BodyFraming? = nil
    var wantsClose: Bool? = nil
    var fields: [Field]? = nil
}

struct ResponseCase: Sendable, CustomTestStringConvertible {
    var name: String
    var raw: [UInt8]
    var method: HTTPMethod = .get
    var expect: Expectation<ExpectResponse>
    var limits = HTTP1Limits()
    var testDescription: String { name }
}

private func ok(_ name: String, _ raw: String, for method: HTTPMethod = .get, _ e: ExpectResponse) -> ResponseCase {
    ResponseCase(name: name, raw: bytes(raw), method: method, expect: .ok(e))
}

private func bad(_ name: String, _ raw: String, _ kind: HTTP1ParseError.Kind, at: Int? = nil,
                 limits l: HTTP1Limits = HTTP1Limits()) -> ResponseCase {
    ResponseCase(name: name, raw: bytes(raw), expect: .fail(kind, at: at), limits: l)
}

/// "HTTP/1.1 200 OK\r\n" + fields + "\r\n"; fields start at offset 17.
private func ok200(_ fields: String) -> String { "HTTP/1.1 200 OK\r\n" + fields + "\r\n" }
private let f0 = 17

let validResponses: [ResponseCase] = [
    ok("200 with Content-Length leaves the body", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
       ExpectResponse(consumed: 38, status: 200, version: .http11, reason: "OK", framing: .contentLength(5),
                      wantsClose: false, fields: [Field("Content-Length", "5")])),
    ok("no reason and no SP", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
       ExpectResponse(status: 200, reason: "", framing: .contentLength(0))),
    ok("empty reason after SP", "HTTP/1.1 204 \r\n\r\n", ExpectResponse(status: 204, reason: "", framing: BodyFraming.none)),
    ok("reason with spaces and obs-text", "HTTP/1.1 404 Not  Found \u{e9}\r\nContent-Length: 0\r\n\r\n",
       ExpectResponse(status: 404, reason: "Not  Found \u{e9}")),
    ok("chunked", ok200("Transfer-Encoding: chunked\r\n"), ExpectResponse(framing: .chunked, wantsClose: false)),
    ok("TE with OWS, any case", ok200("transfer-encoding:\tCHUNKED \r\n"), ExpectResponse(framing: .chunked)),
    ok("no framing reads until close", ok200(""), ExpectResponse(framing: .untilClose, wantsClose: true)),
    ok("HEAD response has no body", ok200("Content-Length: 100\r\n"), for: .head,
       ExpectResponse(framing: BodyFraming.none, wantsClose: false)),
    ok("HEAD response with chunked has no body", ok200("Transfer-Encoding: chunked\r\n"), for: .head,
       ExpectResponse(framing: BodyFraming.none)),
    ok("204 has no body", "HTTP/1.1 204 No Content\r\n\r\n", ExpectResponse(status: 204, framing: BodyFraming.none, wantsClose: false)),
    ok("304 ignores Content-Length", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
       ExpectResponse(status: 304, framing: BodyFraming.none)),
    ok("100 Continue then the final response", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
       ExpectResponse(consumed: 25, status: 100, framing: BodyFraming.none)),
    ok("101 Switching Protocols", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
       ExpectResponse(status: 101, framing: BodyFraming.none, wantsClose: false)),
    ok("2xx to CONNECT is a tunnel", "HTTP/1.1 200 Connection Established\r\n\r\n", for: .connect,
       ExpectResponse(framing: BodyFraming.none, wantsClose: false)),
    ok("407 to CONNECT has a body", "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 3\r\n\r\n", for: .connect,
       ExpectResponse(status: 407, framing: .contentLength(3))),
    ok("HTTP/1.0 closes", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
       ExpectResponse(version: .http10, framing: .contentLength(2), wantsClose: true)),
    ok("HTTP/1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n",
       ExpectResponse(version: .http10, wantsClose: false)),
    ok("Connection: close", ok200("Connection: close\r\nContent-Length: 2\r\n"), ExpectResponse(wantsClose: true)),
    ok("identical repeated Content-Length", ok200("Content-Length: 7\r\nContent-Length: 7\r\n"),
       ExpectResponse(framing: .contentLength(7))),
    ok("Host and Expect are not checked on responses", ok200("Host: a\r\nHost: b c\r\nExpect: x\r\nContent-Length: 0\r\n"),
       ExpectResponse(framing: .contentLength(0))),
    ok("status 599", "HTTP/1.1 599 Whatever\r\nContent-Length: 0\r\n\r\n", ExpectResponse(status: 599)),
]

let responseRejections: [ResponseCase] = [
    bad("two-digit status", "HTTP/1.1 20 OK\r\n\r\n", .badStatusLine, at: 11),
    bad("four-digit status", "HTTP/1.1 2000 OK\r\n\r\n", .badStatusLine, at: 12),
    bad("status below 100", "HTTP/1.1 099 Odd\r\n\r\n", .badStatusLine, at: 9),
    bad("lowercase protocol", "http/1.1 200 OK\r\n\r\n", .badStatusLine, at: 0),
    bad("HTML instead of a head", "<html>\r\n\r\n", .badStatusLine, at: 0),
    bad("HTTP/2", "HTTP/2 200 OK\r\n\r\n", .badVersion, at: 5),
    bad("HTTP/2.0", "HTTP/2.0 200 OK\r\n\r\n", .unsupportedVersion, at: 5),
    bad("HTTP/1.1x", "HTTP/1.1x 200 OK\r\n\r\n", .badVersion, at: 5),
    bad("two spaces before the status", "HTTP/1.1  200 OK\r\n\r\n", .badStatusLine, at: 9),
    bad("no status", "HTTP/1.1\r\n\r\n", .badStatusLine, at: 8),
    bad("status glued to reason", "HTTP/1.1 200OK\r\n\r\n", .badStatusLine, at: 12),
    bad("bare LF after the status line", "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", .bareLF, at: 15),
    bad("bare LF after a reasonless status", "HTTP/1.1 200\n\r\n", .bareLF, at: 12),
    bad("NUL in the reason", "HTTP/1.1 200 O\u{0}K\r\n\r\n", .controlCharacter, at: 14),
    bad("CR in the reason", "HTTP/1.1 200 O\rK\r\n\r\n", .bareCR, at: 14),
    bad("CR after a reasonless status", "HTTP/1.1 200\rX\r\n\r\n", .bareCR, at: 12),
    bad("conflicting Content-Length", ok200("Content-Length: 1\r\nContent-Length: 2\r\n"), .conflictingContentLength, at: 52),
    bad("Content-Length list", ok200("Content-Length: 1, 2\r\n"), .conflictingContentLength, at: f0 + 19),
    bad("signed Content-Length", ok200("Content-Length: -1\r\n"), .badContentLength, at: f0 + 16),
    bad("CL with TE", ok200("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), .contentLengthWithTransferEncoding,
        at: f0 + 19),
    bad("TE gzip", ok200("Transfer-Encoding: gzip\r\n"), .badTransferEncoding, at: f0 + 19),
    bad("TE gzip, chunked", ok200("Transfer-Encoding: gzip, chunked\r\n"), .badTransferEncoding, at: f0 + 19),
    bad("TE repeated", ok200("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), .badTransferEncoding,
        at: f0 + 28),
    bad("TE in HTTP/1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", .transferEncodingInHTTP10, at: 17),
    bad("TE space before colon", ok200("Transfer-Encoding : chunked\r\n"), .whitespaceBeforeColon, at: f0 + 17),
    bad("obs-fold", ok200("X-A: 1\r\n 2\r\n"), .obsFold, at: f0 + 8),
    bad("bare LF in fields", ok200("X-A: 1\n"), .bareLF, at: f0 + 6),
    bad("bare CR in a value", ok200("X-A: 1\r2\r\n"), .bareCR, at: f0 + 6),
    bad("NUL in a value", ok200("X-A: \u{0}\r\n"), .controlCharacter, at: f0 + 5),
    bad("bad name", ok200("X{A}: 1\r\n"), .badHeaderName, at: f0 + 1),
    bad("head over the limit", ok200("X-A: " + String(repeating: "x", count: 60) + "\r\n"), .headTooLarge, at: 64,
        limits: { var l = HTTP1Limits(); l.maxHeadBytes = 64; return l }()),
    bad("too many fields", ok200("A: 1\r\nB: 2\r\nC: 3\r\n"), .tooManyHeaders, at: f0 + 12,
        limits: { var l = HTTP1Limits(); l.maxHeaderCount = 2; return l }()),
]

let incompleteResponses: [ResponseCase] = [
    ResponseCase(name: "status line only", raw: bytes("HTTP/1.1 200 OK\r\n"), expect: .incomplete),
    ResponseCase(name: "partial field", raw: bytes("HTTP/1.1 200 OK\r\nContent-Le"), expect: .incomplete),
    ResponseCase(name: "nothing", raw: [], expect: .incomplete),
]

private func check(_ c: ResponseCase) {
    let o = feedAllWays(c.raw) { ResponseHarness(limits: c.limits, method: c.method) }
    switch c.expect {
    case .incomplete:
        #expect(o.result == .incomplete)
    case .fail(let kind, let at):
        guard case .failed(let e) = o.result else {
            Issue.record("expected \(kind), got \(o)")
            return
        }
        #expect(e.kind == kind)
        if let at { #expect(e.offset == at, "\(kind) offset") }
    case .ok(let x):
        guard case .complete(let consumed) = o.result else {
            Issue.record("expected a complete head, got \(o)")
            return
        }
        #expect(consumed == (x.consumed ?? c.raw.count))
        #expect(o.headLength == consumed)
        if let v = x.status { #expect(o.status == v) }
        if let v = x.version { #expect(o.version == v) }
        if let v = x.reason { #expect(o.reason == v) }
        if let v = x.framing { #expect(o.framing == v) }
        if let v = x.wantsClose { #expect(o.wantsClose == v) }
        if let v = x.fields { #expect(o.fields == v) }
    }
}

struct HTTP1ResponseParserTests {
    @Test(arguments: validResponses)
    func acceptsValidResponse(_ c: ResponseCase) { check(c) }

    @Test(arguments: responseRejections)
    func rejectsBadResponse(_ c: ResponseCase) { check(c) }

    @Test(arguments: incompleteResponses)
    func waitsForMoreBytes(_ c: ResponseCase) { check(c) }

    @Test func resetForgetsAPartialHead() {
        let region = GuardedBytes(capacity: 64)
        var h = ResponseHarness(limits: HTTP1Limits(), method: .get)
        #expect(h.parse(region.place(bytes("HTTP/1.1 200 OK\r\nX-Some-Long-Name: 1"))).result == .incomplete)
        h.parser.reset()
        let next = bytes("HTTP/1.1 204 No Content\r\n\r\n")
        let o = h.parse(region.place(next))
        #expect(o.result == .complete(consumed: next.count))
        #expect(o.status == 204)
    }
}
