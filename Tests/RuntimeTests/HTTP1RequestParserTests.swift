import Runtime
import Testing

/// What a request case must produce; `nil` fields are not checked.
struct ExpectRequest: Sendable {
    var consumed: Int? = nil
    var method: HTTPMethod? = nil
    var methodText: String? = nil
    var target: String? = nil
    var path: String? = nil
    /// `.some(nil)`: no query at all.
    var query: String?? = nil
    var authority: String? = nil
    var form: HTTP1RequestHead.TargetForm? = nil
    var version: HTTPVersion? = nil
    /// `.some(nil)`: no Host field.
    var host: String?? = nil
    var framing: BodyFraming? = nil
    var wantsClose: Bool? = nil
    var expectsContinue: Bool? = nil
    var fields: [Field]? = nil
}

enum Expectation<Head: Sendable>: Sendable {
    case ok(Head)
    case fail(HTTP1ParseError.Kind, at: Int? = nil)
    case incomplete
}

struct RequestCase: Sendable, CustomTestStringConvertible {
    var name: String
    var raw: [UInt8]
    var expect: Expectation<ExpectRequest>
    var limits = HTTP1Limits()
    var testDescription: String { name }
}

private func limits(head: Int = 16 * 1024, target: Int = 8 * 1024, count: Int = 100) -> HTTP1Limits {
    var l = HTTP1Limits()
    l.maxHeadBytes = head
    l.maxTargetBytes = target
    l.maxHeaderCount = count
    return l
}

private func ok(_ name: String, _ raw: String, _ e: ExpectRequest = ExpectRequest(),
                limits l: HTTP1Limits = HTTP1Limits()) -> RequestCase {
    RequestCase(name: name, raw: bytes(raw), expect: .ok(e), limits: l)
}

private func bad(_ name: String, _ raw: String, _ kind: HTTP1ParseError.Kind, at: Int? = nil,
                 limits l: HTTP1Limits = HTTP1Limits()) -> RequestCase {
    RequestCase(name: name, raw: bytes(raw), expect: .fail(kind, at: at), limits: l)
}

private func bad(_ name: String, bytes raw: [UInt8], _ kind: HTTP1ParseError.Kind, at: Int? = nil) -> RequestCase {
    RequestCase(name: name, raw: raw, expect: .fail(kind, at: at))
}

/// "GET / HTTP/1.1\r\nHost: h\r\n" + fields + "\r\n"
private func get(_ fields: String) -> String { "GET / HTTP/1.1\r\nHost: h\r\n" + fields + "\r\n" }
private func post(_ fields: String) -> String { "POST / HTTP/1.1\r\nHost: h\r\n" + fields + "\r\n" }
/// Offset of the first field line after `get`/`post`'s Host line.
private let getFields = 25
private let postFields = 26

private let pipelined = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"

let validRequests: [RequestCase] = [
    ok("simple GET", "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
       ExpectRequest(consumed: 37, method: .get, methodText: "GET", target: "/", path: "/", query: .some(nil),
                     authority: "", form: .origin, version: .http11, host: "example.com", framing: BodyFraming.none,
                     wantsClose: false, expectsContinue: false, fields: [Field("Host", "example.com")])),
    ok("path and query", "GET /a/b?x=1&y=/2 HTTP/1.1\r\nHost: h\r\n\r\n",
       ExpectRequest(target: "/a/b?x=1&y=/2", path: "/a/b", query: "x=1&y=/2")),
    ok("empty query", "GET /a? HTTP/1.1\r\nHost: h\r\n\r\n", ExpectRequest(path: "/a", query: "")),
    ok("POST with Content-Length leaves the body", "POST /submit HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
       ExpectRequest(consumed: 53, method: .post, framing: .contentLength(5))),
    ok("chunked", post("Transfer-Encoding: chunked\r\n"), ExpectRequest(framing: .chunked)),
    ok("TE value is case-insensitive", post("Transfer-Encoding: ChUnKeD\r\n"), ExpectRequest(framing: .chunked)),
    ok("TE name is case-insensitive", post("transfer-ENCODING: chunked\r\n"), ExpectRequest(framing: .chunked)),
    ok("TE after HTAB is valid", post("Transfer-Encoding:\tchunked\r\n"), ExpectRequest(framing: .chunked)),
    ok("TE with trailing OWS is valid after trim", post("Transfer-Encoding: chunked \t \r\n"),
       ExpectRequest(framing: .chunked, fields: [Field("Host", "h"), Field("Transfer-Encoding", "chunked")])),
    ok("Transfer_Encoding is just another field", post("Transfer_Encoding: chunked\r\n"), ExpectRequest(framing: BodyFraming.none)),
    ok("identical repeated Content-Length", post("Content-Length: 5\r\nContent-Length: 5\r\n"),
       ExpectRequest(framing: .contentLength(5))),
    ok("Content-Length list of equal values", post("Content-Length: 5, 5,5\r\n"), ExpectRequest(framing: .contentLength(5))),
    ok("Content-Length zero", post("Content-Length: 0\r\n"), ExpectRequest(framing: .contentLength(0))),
    ok("Content-Length leading zeros", post("Content-Length: 007\r\n"), ExpectRequest(framing: .contentLength(7))),
    ok("Content-Length of 18 digits", post("Content-Length: 999999999999999999\r\n"),
       ExpectRequest(framing: .contentLength(999_999_999_999_999_999))),
    ok("Content-Length with OWS", post("Content-Length: \t42 \r\n"), ExpectRequest(framing: .contentLength(42))),
    ok("pipelined second request stays unconsumed", pipelined, ExpectRequest(consumed: 28, target: "/1")),
    ok("HTTP/1.0 without Host closes", "GET / HTTP/1.0\r\n\r\n",
       ExpectRequest(consumed: 18, version: .http10, host: .some(nil), wantsClose: true, fields: [])),
    ok("HTTP/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
       ExpectRequest(version: .http10, wantsClose: false)),
    ok("HTTP/1.0 keep-alive in a list, any case", "GET / HTTP/1.0\r\nConnection: Upgrade , Keep-Alive\r\n\r\n",
       ExpectRequest(wantsClose: false)),
    ok("HTTP/1.0 keep-alive and close", "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
       ExpectRequest(wantsClose: true)),
    ok("HTTP/1.1 Connection: close", get("Connection: close\r\n"), ExpectRequest(wantsClose: true)),
    ok("Connection close in a list with empty elements", get("Connection: , keep-alive ,CLOSE,\r\n"),
       ExpectRequest(wantsClose: true)),
    ok("Connection: keep-alive on 1.1", get("Connection: keep-alive\r\n"), ExpectRequest(wantsClose: false)),
    ok("Connection: closed is not close", get("Connection: closed\r\n"), ExpectRequest(wantsClose: false)),
    ok("Expect: 100-continue", post("Content-Length: 3\r\nExpect: 100-continue\r\n"), ExpectRequest(expectsContinue: true)),
    ok("Expect is case-insensitive", post("Expect: 100-Continue\r\nContent-Length: 3\r\n"), ExpectRequest(expectsContinue: true)),
    ok("Expect on HTTP/1.0 is ignored", "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
       ExpectRequest(expectsContinue: false)),
    ok("absolute-form matching Host", "GET http://example.com/p?q HTTP/1.1\r\nHost: example.com\r\n\r\n",
       ExpectRequest(target: "http://example.com/p?q", path: "/p", query: "q", authority: "example.com", form: .absolute)),
    ok("absolute-form, https, port, no path, caseless", "GET HTTPS://Example.COM:8443 HTTP/1.1\r\nHost: example.com:8443\r\n\r\n",
       ExpectRequest(path: "", query: .some(nil), authority: "Example.COM:8443", form: .absolute)),
    ok("absolute-form with query and no path", "GET http://h?x HTTP/1.1\r\nHost: h\r\n\r\n",
       ExpectRequest(path: "", query: "x", authority: "h", form: .absolute)),
    ok("absolute-form in HTTP/1.0 without Host", "GET http://h:80/x HTTP/1.0\r\n\r\n",
       ExpectRequest(path: "/x", authority: "h:80", form: .absolute, host: .some(nil))),
    ok("OPTIONS asterisk-form", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
       ExpectRequest(method: .options, target: "*", path: "*", form: .asterisk)),
    ok("CONNECT authority-form", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
       ExpectRequest(method: .connect, target: "example.com:443", authority: "", form: .authority)),
    ok("CONNECT to an IPv6 literal", "CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n",
       ExpectRequest(method: .connect, form: .authority)),
    ok("HEAD", "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", ExpectRequest(method: .head)),
    ok("PUT", "PUT / HTTP/1.1\r\nHost: h\r\n\r\n", ExpectRequest(method: .put)),
    ok("DELETE", "DELETE / HTTP/1.1\r\nHost: h\r\n\r\n", ExpectRequest(method: .delete)),
    ok("PATCH", "PATCH / HTTP/1.1\r\nHost: h\r\n\r\n", ExpectRequest(method: .patch)),
    ok("TRACE", "TRACE / HTTP/1.1\r\nHost: h\r\n\r\n", ExpectRequest(method: .trace)),
    ok("OPTIONS with a path", "OPTIONS /x HTTP/1.1\r\nHost: h\r\n\r\n", ExpectRequest(method: .options, form: .origin)),
    ok("extension method is .other", "PROPFIND /d HTTP/1.1\r\nHost: h\r\n\r\n",
       ExpectRequest(method: .other, methodText: "PROPFIND")),
    ok("methods are case-sensitive", "get / HTTP/1.1\r\nHost: h\r\n\r\n", ExpectRequest(method: .other, methodText: "get")),
    ok("GETX is not GET", "GETX / HTTP/1.1\r\nHost: h\r\n\r\n", ExpectRequest(method: .other)),
    ok("obs-text in a value", get("X-Name: caf\u{e9} \u{2603}\r\n"),
       ExpectRequest(fields: [Field("Host", "h"), Field("X-Name", "caf\u{e9} \u{2603}")])),
    ok("values are trimmed, inner whitespace kept", get("X-A: \t a \t b \t\r\nX-B:\r\nX-C:   \r\n"),
       ExpectRequest(fields: [Field("Host", "h"), Field("X-A", "a \t b"), Field("X-B", ""), Field("X-C", "")])),
    ok("every tchar in a name", get("!#$%&'*+-.^_`|~0aZ: v\r\n"),
       ExpectRequest(fields: [Field("Host", "h"), Field("!#$%&'*+-.^_`|~0aZ", "v")])),
    ok("empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", ExpectRequest(host: "")),
    ok("Host with port and IPv6", "GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n", ExpectRequest(host: "[2001:db8::1]:8080")),
    ok("target with every visible character class", "GET /a-._~!$&'()*+,;=:@%20/?q=/?@ HTTP/1.1\r\nHost: h\r\n\r\n",
       ExpectRequest(path: "/a-._~!$&'()*+,;=:@%20/", query: "q=/?@")),
    // Any visible ASCII passes the codec; what a path means is the path normaliser's business.
    ok("backslash, braces and pipe in the target", "GET /a\\b?q={|} HTTP/1.1\r\nHost: h\r\n\r\n",
       ExpectRequest(path: "/a\\b", query: "q={|}")),
    ok("Host not first", "GET / HTTP/1.1\r\nAccept: */*\r\nHost: h\r\n\r\n", ExpectRequest(host: "h")),
]

let requestLineRejections: [RequestCase] = [
    bad("leading empty line", "\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", .badRequestLine, at: 0),
    bad("leading bare LF", "\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", .badRequestLine, at: 0),
    bad("leading space", " GET / HTTP/1.1\r\nHost: h\r\n\r\n", .badRequestLine, at: 0),
    bad("two spaces after method", "GET  / HTTP/1.1\r\nHost: h\r\n\r\n", .badRequestLine, at: 4),
    bad("two spaces after target", "GET /  HTTP/1.1\r\nHost: h\r\n\r\n", .badRequestLine, at: 6),
    bad("trailing space", "GET / HTTP/1.1 \r\nHost: h\r\n\r\n", .badRequestLine, at: 14),
    bad("tab after method", "GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", .badRequestLine, at: 3),
    bad("tab after target", "GET /\tHTTP/1.1\r\nHost: h\r\n\r\n", .badRequestLine, at: 5),
    bad("HTTP/0.9 style line", "GET /\r\n\r\n", .badRequestLine, at: 5),
    bad("method only", "GET\r\n\r\n", .badRequestLine, at: 3),
    bad("lowercase version", "GET / http/1.1\r\nHost: h\r\n\r\n", .badVersion, at: 6),
    bad("HTTP/2.0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", .unsupportedVersion, at: 6),
    bad("HTTP/1.2", "GET / HTTP/1.2\r\nHost: h\r\n\r\n", .unsupportedVersion, at: 6),
    bad("HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", .unsupportedVersion, at: 6),
    bad("HTTP/1.10", "GET / HTTP/1.10\r\nHost: h\r\n\r\n", .badVersion, at: 6),
    bad("HTTP/2", "GET / HTTP/2\r\nHost: h\r\n\r\n", .badVersion, at: 6),
    bad("empty version", "GET / \r\nHost: h\r\n\r\n", .badVersion, at: 6),
    bad("bare LF after the request line", "GET / HTTP/1.1\nHost: h\r\n\r\n", .bareLF, at: 14),
    bad("bare CR after the request line", "GET / HTTP/1.1\rHost: h\r\n\r\n", .bareCR, at: 14),
    bad("@ in method", "G@T / HTTP/1.1\r\nHost: h\r\n\r\n", .badMethod, at: 1),
    bad("( in method", "GET( / HTTP/1.1\r\nHost: h\r\n\r\n", .badMethod, at: 3),
    bad("NUL in method", "GE\u{0}T / HTTP/1.1\r\nHost: h\r\n\r\n", .controlCharacter, at: 2),
    bad("UTF-8 in method", "G\u{c9}T / HTTP/1.1\r\nHost: h\r\n\r\n", .badMethod, at: 1),
    bad("TLS ClientHello on a plain port", bytes: [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03], .controlCharacter, at: 0),
    bad("DEL in target", "GET /a\u{7f} HTTP/1.1\r\nHost: h\r\n\r\n", .controlCharacter, at: 6),
    bad("NUL in target", "GET /a\u{0}b HTTP/1.1\r\nHost: h\r\n\r\n", .controlCharacter, at: 6),
    bad("escape in version", "GET / HTTP/1.1\u{1b}\r\nHost: h\r\n\r\n", .controlCharacter, at: 14),
    bad("UTF-8 in target", "GET /caf\u{e9} HTTP/1.1\r\nHost: h\r\n\r\n", .badTarget, at: 8),
    bad("fragment in target", "GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n", .badTarget, at: 6),
    bad("relative target", "GET foo HTTP/1.1\r\nHost: h\r\n\r\n", .badTarget, at: 4),
    bad("asterisk-form with GET", "GET * HTTP/1.1\r\nHost: h\r\n\r\n", .badTarget, at: 4),
    bad("authority-form with GET", "GET example.com:80 HTTP/1.1\r\nHost: example.com\r\n\r\n", .badTarget, at: 4),
    bad("CONNECT with origin-form", "CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n", .badTarget, at: 8),
    bad("CONNECT without port", "CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n", .badTarget, at: 19),
    bad("CONNECT with empty port", "CONNECT example.com: HTTP/1.1\r\nHost: example.com\r\n\r\n", .badTarget, at: 20),
    bad("absolute-form with userinfo", "GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n", .badTarget, at: 12),
    bad("absolute-form with empty authority", "GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", .badTarget, at: 11),
    bad("absolute-form with a fragment", "GET http://h#x HTTP/1.1\r\nHost: h\r\n\r\n", .badTarget, at: 12),
    bad("absolute-form with a bad port", "GET http://h:8x/ HTTP/1.1\r\nHost: h:8x\r\n\r\n", .badTarget, at: 14),
    bad("other scheme", "GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n", .badTarget, at: 4),
]

let fieldRejections: [RequestCase] = [
    bad("HTTP/1.1 without Host", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", .missingHost, at: 29),
    bad("two Host fields", get("Host: h\r\n"), .duplicateHost, at: getFields),
    bad("two Host fields, different case", get("HOST: other\r\n"), .duplicateHost, at: getFields),
    bad("second Host empty", get("Host:\r\n"), .duplicateHost, at: getFields),
    bad("space in Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", .badHeaderValue, at: 23),
    bad("userinfo in Host", "GET / HTTP/1.1\r\nHost: u@h\r\n\r\n", .badHeaderValue, at: 23),
    bad("path in Host", "GET / HTTP/1.1\r\nHost: h/x\r\n\r\n", .badHeaderValue, at: 23),
    bad("absolute-form Host mismatch", "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n", .hostMismatch, at: 38),
    bad("absolute-form Host differs by port", "GET http://h:8080/ HTTP/1.1\r\nHost: h\r\n\r\n", .hostMismatch, at: 35),
    bad("absolute-form without Host on 1.1", "GET http://h/ HTTP/1.1\r\n\r\n", .missingHost, at: 24),
    bad("space before colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", .whitespaceBeforeColon, at: 20),
    bad("tab before colon", get("X-A\t: 1\r\n"), .whitespaceBeforeColon, at: getFields + 3),
    bad("space inside a name", get("X A: 1\r\n"), .badHeaderName, at: getFields + 1),
    bad("( in a name", get("X(A: 1\r\n"), .badHeaderName, at: getFields + 1),
    bad("@ in a name", get("X@A: 1\r\n"), .badHeaderName, at: getFields + 1),
    bad("DEL in a name", get("X\u{7f}: 1\r\n"), .controlCharacter, at: getFields + 1),
    bad("UTF-8 in a name", get("X-\u{e9}: 1\r\n"), .badHeaderName, at: getFields + 2),
    bad("NUL in a name", get("X\u{0}: 1\r\n"), .controlCharacter, at: getFields + 1),
    bad("empty name", get(": 1\r\n"), .badHeaderName, at: getFields),
    bad("no colon", get("X-A\r\n"), .badHeaderName, at: getFields + 3),
    bad("NUL in a value", get("X-A: a\u{0}b\r\n"), .controlCharacter, at: getFields + 6),
    bad("vertical tab in a value", get("X-A: a\u{b}\r\n"), .controlCharacter, at: getFields + 6),
    bad("ESC in a value", get("X-A: \u{1b}[0m\r\n"), .controlCharacter, at: getFields + 5),
    bad("DEL in a value", get("X-A: a\u{7f}\r\n"), .controlCharacter, at: getFields + 6),
    bad("CR inside a value", get("X-A: a\rb\r\n"), .bareCR, at: getFields + 6),
    bad("CR at the end of a value before LF-less text", get("X-A: a\r\r\n"), .bareCR, at: getFields + 6),
    bad("CR in a name", get("X\rA: 1\r\n"), .bareCR, at: getFields + 1),
    bad("bare LF ends a field", get("X-A: 1\nX-B: 2\r\n"), .bareLF, at: getFields + 6),
    bad("bare LF ends the head", "GET / HTTP/1.1\r\nHost: h\r\n\n", .bareLF, at: 25),
    bad("bare LFs everywhere", "GET / HTTP/1.1\nHost: h\n\n", .bareLF, at: 14),
    bad("line starting with bare CR", "GET / HTTP/1.1\r\nHost: h\r\n\rX: 1\r\n\r\n", .bareCR, at: 25),
    bad("obs-fold", get("X-A: 1\r\n 2\r\n"), .obsFold, at: getFields + 8),
    bad("obs-fold with tab", get("X-A: 1\r\n\t2\r\n"), .obsFold, at: getFields + 8),
    bad("whitespace before the first field", "GET / HTTP/1.1\r\n Host: h\r\n\r\n", .obsFold, at: 16),
    bad("Expect other than 100-continue", post("Expect: 200-ok\r\n"), .badExpect, at: postFields + 8),
    bad("Expect list", post("Expect: 100-continue, x\r\n"), .badExpect, at: postFields + 8),
    bad("empty Expect", post("Expect:\r\n"), .badExpect, at: postFields + 7),
    bad("Connection with a non-token", get("Connection: close; x\r\n"), .badHeaderValue, at: getFields + 17),
    bad("Connection with two words", get("Connection: keep alive\r\n"), .badHeaderValue, at: getFields + 17),
]

/// Request smuggling families: CL.TE, TE.CL, TE.TE obfuscation and Content-Length tricks.
let smugglingRejections: [RequestCase] = [
    bad("CL.TE", post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n"), .contentLengthWithTransferEncoding,
        at: postFields + 19),
    bad("TE.CL", post("Transfer-Encoding: chunked\r\nContent-Length: 6\r\n"), .contentLengthWithTransferEncoding,
        at: postFields + 28),
    bad("TE with CL zero", post("Content-Length: 0\r\nTransfer-Encoding: chunked\r\n"), .contentLengthWithTransferEncoding),
    bad("TE space before colon", post("Transfer-Encoding : chunked\r\n"), .whitespaceBeforeColon, at: postFields + 17),
    bad("TE xchunked", post("Transfer-Encoding: xchunked\r\n"), .badTransferEncoding, at: postFields + 19),
    bad("TE chunked then x", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n"), .badTransferEncoding,
        at: postFields + 28),
    bad("TE chunked twice in two fields", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
        .badTransferEncoding, at: postFields + 28),
    bad("TE identity", post("Transfer-encoding: identity\r\n"), .badTransferEncoding, at: postFields + 19),
    bad("TE chunked, chunked", post("Transfer-Encoding: chunked, chunked\r\n"), .badTransferEncoding),
    bad("TE gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n"), .badTransferEncoding),
    bad("TE chunked;x", post("Transfer-Encoding: chunked;x\r\n"), .badTransferEncoding),
    bad("TE quoted", post("Transfer-Encoding: \"chunked\"\r\n"), .badTransferEncoding),
    bad("TE empty", post("Transfer-Encoding:\r\n"), .badTransferEncoding),
    // The empty first line is already a bad Transfer-Encoding before the fold is seen.
    bad("TE obs-folded value", post("Transfer-Encoding:\r\n chunked\r\n"), .badTransferEncoding, at: postFields + 18),
    bad("TE hidden behind obs-fold", post("X-A: 1\r\n Transfer-Encoding: chunked\r\n"), .obsFold, at: postFields + 8),
    bad("TE with vertical tab", post("Transfer-Encoding: chunked\u{b}\r\n"), .controlCharacter, at: postFields + 26),
    bad("TE with form feed before", post("Transfer-Encoding:\u{c}chunked\r\n"), .controlCharacter, at: postFields + 18),
    bad("TE with tab before colon", post("Transfer-Encoding\t: chunked\r\n"), .whitespaceBeforeColon),
    bad("TE with bare LF", post("Transfer-Encoding: chunked\n"), .bareLF),
    bad("TE with NUL", post("Transfer-Encoding: chunked\u{0}\r\n"), .controlCharacter),
    bad("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", .transferEncodingInHTTP10, at: 17),
    bad("CL and TE in HTTP/1.0", "POST / HTTP/1.0\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        .transferEncodingInHTTP10, at: 36),
    bad("TE continued by obs-fold", post("Transfer-Encoding: chunked\r\n , identity\r\n"), .obsFold, at: postFields + 28),
    bad("CL repeated in other case, different value", post("content-length: 5\r\nCONTENT-LENGTH: 6\r\n"),
        .conflictingContentLength, at: postFields + 35),
    bad("CL then different CL", post("Content-Length: 5\r\nContent-Length: 6\r\n"), .conflictingContentLength,
        at: postFields + 35),
    bad("CL list 5, 6", post("Content-Length: 5, 6\r\n"), .conflictingContentLength, at: postFields + 19),
    bad("CL list after an equal field", post("Content-Length: 5\r\nContent-Length: 5, 6\r\n"), .conflictingContentLength),
    bad("CL signed +", post("Content-Length: +5\r\n"), .badContentLength, at: postFields + 16),
    bad("CL negative", post("Content-Length: -1\r\n"), .badContentLength, at: postFields + 16),
    bad("CL empty", post("Content-Length:\r\n"), .badContentLength, at: postFields + 15),
    bad("CL hex", post("Content-Length: 0x5\r\n"), .badContentLength, at: postFields + 17),
    bad("CL trailing letter", post("Content-Length: 5a\r\n"), .badContentLength, at: postFields + 17),
    bad("CL two numbers", post("Content-Length: 5 5\r\n"), .badContentLength, at: postFields + 18),
    bad("CL trailing comma", post("Content-Length: 5,\r\n"), .badContentLength, at: postFields + 18),
    bad("CL leading comma", post("Content-Length: ,5\r\n"), .badContentLength, at: postFields + 16),
    bad("CL exponent", post("Content-Length: 1e3\r\n"), .badContentLength),
    bad("CL of 19 digits", post("Content-Length: 1000000000000000000\r\n"), .badContentLength, at: postFields + 34),
    bad("CL overflowing Int64", post("Content-Length: 99999999999999999999999\r\n"), .badContentLength),
    bad("CL with a space before colon", post("Content-Length : 5\r\n"), .whitespaceBeforeColon),
]

private let smallHead = limits(head: 64)
private let smallTarget = limits(target: 16)
private let fewFields = limits(count: 3)
/// 64 bytes exactly: 25 (request line, Host) + 3 ("X: ") + 32 + 2 + 2 (final CRLF).
private let head64 = "GET / HTTP/1.1\r\nHost: h\r\nX: " + String(repeating: "a", count: 32) + "\r\n\r\n"

let limitCases: [RequestCase] = [
    ok("head exactly at the limit", head64, ExpectRequest(consumed: 64), limits: smallHead),
    bad("head one byte over the limit", "GET / HTTP/1.1\r\nHost: h\r\nX: " + String(repeating: "a", count: 33) + "\r\n\r\n",
        .headTooLarge, at: 64, limits: smallHead),
    bad("unterminated head over the limit", "GET / HTTP/1.1\r\nHost: h\r\nX: " + String(repeating: "a", count: 80),
        .headTooLarge, at: 64, limits: smallHead),
    bad("request line alone over the head limit", "GET /" + String(repeating: "a", count: 70),
        .headTooLarge, at: 64, limits: smallHead),
    bad("bad method wins over the head limit", "GET@ /" + String(repeating: "a", count: 70),
        .badMethod, at: 3, limits: smallHead),
    ok("target exactly at the limit", "GET /" + String(repeating: "a", count: 15) + " HTTP/1.1\r\nHost: h\r\n\r\n",
       ExpectRequest(target: "/" + String(repeating: "a", count: 15)), limits: smallTarget),
    bad("target one byte over the limit", "GET /" + String(repeating: "a", count: 16) + " HTTP/1.1\r\nHost: h\r\n\r\n",
        .uriTooLong, at: 20, limits: smallTarget),
    bad("long target fails before the head completes", "GET /" + String(repeating: "a", count: 40),
        .uriTooLong, at: 20, limits: smallTarget),
    ok("fields exactly at the count limit", get("A: 1\r\nB: 2\r\n"), ExpectRequest(), limits: fewFields),
    bad("one field over the count limit", get("A: 1\r\nB: 2\r\nC: 3\r\n"), .tooManyHeaders, at: getFields + 12,
        limits: fewFields),
]

let incompleteRequests: [RequestCase] = [
    RequestCase(name: "empty input", raw: [], expect: .incomplete),
    RequestCase(name: "head without the final CRLF", raw: bytes("GET / HTTP/1.1\r\nHost: h\r\n"), expect: .incomplete),
    RequestCase(name: "head ending in CR", raw: bytes("GET / HTTP/1.1\r\nHost: h\r\n\r"), expect: .incomplete),
    RequestCase(name: "partial request line", raw: bytes("GET /index.html HT"), expect: .incomplete),
]

private func check(_ c: RequestCase) {
    let o = feedAllWays(c.raw) { RequestHarness(limits: c.limits) }
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
        if let v = x.method { #expect(o.method == v) }
        if let v = x.methodText { #expect(o.methodText == v) }
        if let v = x.target { #expect(o.target == v) }
        if let v = x.path { #expect(o.path == v) }
        if let v = x.query { #expect(o.query == v) }
        if let v = x.authority { #expect(o.authority == v) }
        if let v = x.form { #expect(o.form == v) }
        if let v = x.version { #expect(o.version == v) }
        if let v = x.host { #expect(o.host == v) }
        if let v = x.framing { #expect(o.framing == v) }
        if let v = x.wantsClose { #expect(o.wantsClose == v) }
        if let v = x.expectsContinue { #expect(o.expectsContinue == v) }
        if let v = x.fields { #expect(o.fields == v) }
    }
}

struct HTTP1RequestParserTests {
    @Test(arguments: validRequests)
    func acceptsValidRequest(_ c: RequestCase) { check(c) }

    @Test(arguments: requestLineRejections)
    func rejectsBadRequestLine(_ c: RequestCase) { check(c) }

    @Test(arguments: fieldRejections)
    func rejectsBadField(_ c: RequestCase) { check(c) }

    @Test(arguments: smugglingRejections)
    func rejectsSmugglingVector(_ c: RequestCase) { check(c) }

    @Test(arguments: limitCases)
    func enforcesLimits(_ c: RequestCase) { check(c) }

    @Test(arguments: incompleteRequests)
    func waitsForMoreBytes(_ c: RequestCase) { check(c) }

    @Test func defaultLimitsAre431And414() {
        // Fed whole and one byte at a time only: every split of 16 KiB is slow in debug builds.
        let longTarget = bytes("GET /" + String(repeating: "a", count: 8192) + " HTTP/1.1\r\nHost: h\r\n\r\n")
        let bigHead = bytes("GET / HTTP/1.1\r\nHost: h\r\nX: " + String(repeating: "b", count: 16 * 1024) + "\r\n\r\n")
        let okTarget = bytes("GET /" + String(repeating: "a", count: 8191) + " HTTP/1.1\r\nHost: h\r\n\r\n")
        for (raw, expected) in [(longTarget, HTTP1ParseResult.failed(HTTP1ParseError(.uriTooLong, at: 4 + 8192))),
                                (bigHead, .failed(HTTP1ParseError(.headTooLarge, at: 16 * 1024))),
                                (okTarget, .complete(consumed: okTarget.count))] {
            let region = GuardedBytes(capacity: raw.count)
            var whole = RequestHarness(limits: HTTP1Limits())
            #expect(whole.parse(region.place(raw)).result == expected)
            var h = RequestHarness(limits: HTTP1Limits())
            var r = HTTP1ParseResult.incomplete
            var k = 0
            while r == .incomplete && k < raw.count {
                k += 1
                r = h.parse(region.place(raw, 0..<k)).result
            }
            #expect(r == expected)
        }
    }

    @Test func fullHeaderTableIsTooManyHeaders() {
        let raw = bytes(get("A: 1\r\nB: 2\r\n"))
        let o = feedAllWays(raw) { RequestHarness(limits: HTTP1Limits(), tableCapacity: 2) }
        #expect(o.result == .failed(HTTP1ParseError(.tooManyHeaders, at: getFields + 6)))
    }

    @Test func resetForgetsAPartialMessage() {
        let region = GuardedBytes(capacity: 64)
        var h = RequestHarness(limits: HTTP1Limits())
        let first = bytes("POST /upload HTTP/1.1\r\nHost: h\r\nX-Long-Field: 1")
        #expect(h.parse(region.place(first)).result == .incomplete)
        h.parser.reset()
        let second = bytes("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        let o = h.parse(region.place(second))
        #expect(o.result == .complete(consumed: second.count))
        #expect(o.method == .get)
    }

    @Test func parsesTheNextMessageAfterComplete() {
        // After .complete the parser starts over by itself: the pipelined second request
        // parses from its own start without a reset().
        let raw = bytes(pipelined)
        let region = GuardedBytes(capacity: raw.count)
        var h = RequestHarness(limits: HTTP1Limits())
        let a = h.parse(region.place(raw))
        #expect(a.result == .complete(consumed: 28))
        let b = h.parse(region.place(raw, 28..<raw.count))
        #expect(b.result == .complete(consumed: 28))
        #expect(b.target == "/2")
        // Header ranges are relative to the second message's first byte.
        #expect(b.fields == [Field("Host", "h")])
    }

    @Test func statusOfEachLimitError() {
        #expect(HTTP1ParseError(.headTooLarge, at: 0).status == 431)
        #expect(HTTP1ParseError(.tooManyHeaders, at: 0).status == 431)
        #expect(HTTP1ParseError(.uriTooLong, at: 0).status == 414)
        #expect(HTTP1ParseError(.unsupportedVersion, at: 0).status == 505)
        #expect(HTTP1ParseError(.bareLF, at: 0).status == 400)
    }
}
