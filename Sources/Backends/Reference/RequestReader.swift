/// How a request body is framed (RFC 9112 §6).
enum BodyFraming: Equatable {
    case none
    case length(Int)
    case chunked
}

/// A request head that passed the strict checks.
struct RequestHead {
    var method: String
    var target: String
    var path: String
    var rawQuery: String
    var version: String
    var headers: [(name: String, value: String)]
    var framing: BodyFraming
    /// The client asked to close after this exchange (or spoke HTTP/1.0 without keep-alive).
    var wantsClose: Bool
    var expectsContinue: Bool
}

/// A request the server refuses; answered with `status` and the connection closed.
struct RequestRejection: Error {
    var status: Int
    var reason: String
}

/// Reads requests off one blocking connection: the head (strictly parsed),
/// then a `Content-Length` or chunked body. Bytes past the current request
/// stay buffered for the next one (pipelining works).
struct RequestReader {
    static let maximumHeadBytes = 64 * 1024
    static let maximumBodyBytes = 64 * 1024 * 1024
    static let readSize = 16 * 1024

    enum HeadOutcome {
        case head(RequestHead)
        case endOfStream
        case rejected(RequestRejection)
    }

    let socket: ReferenceSocket
    private var buffer: [UInt8] = []
    private var start = 0

    init(socket: ReferenceSocket) { self.socket = socket }

    private var available: Int { buffer.count - start }

    /// Reads more bytes; `false` at end of stream or on a socket error.
    private mutating func fill() -> Bool {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        } else if start > 64 * 1024 {
            buffer.removeSubrange(0..<start)
            start = 0
        }
        guard let bytes = try? socket.receive(maximum: Self.readSize), !bytes.isEmpty else { return false }
        buffer.append(contentsOf: bytes)
        return true
    }

    mutating func readHead() -> HeadOutcome {
        // Bytes after `start` already searched for the blank line (fill() may move `start`).
        var searched = 0
        while true {
            // Ignore empty lines before a request line (RFC 9112 §2.2).
            while available >= 2 && buffer[start] == 13 && buffer[start + 1] == 10 {
                start += 2
                searched = 0
            }
            if let end = Self.find(crlfcrlfIn: buffer, from: start + max(0, searched - 3)) {
                let head = Array(buffer[start..<end])
                start = end + 4
                do {
                    return .head(try Self.parseHead(head))
                } catch {
                    return .rejected(error)
                }
            }
            if available > Self.maximumHeadBytes {
                return .rejected(RequestRejection(status: 431, reason: "request head too large"))
            }
            searched = available
            guard fill() else {
                return available == 0 ? .endOfStream
                    : .rejected(RequestRejection(status: 400, reason: "incomplete request head"))
            }
        }
    }

    mutating func readBody(_ framing: BodyFraming) throws(RequestRejection) -> [UInt8] {
        switch framing {
        case .none:
            return []
        case .length(let count):
            return try readExactly(count)
        case .chunked:
            var body: [UInt8] = []
            while true {
                let line = try readLine()
                let sizeText = line.split(separator: UInt8(ascii: ";"), maxSplits: 1,
                                          omittingEmptySubsequences: false)[0]
                guard !sizeText.isEmpty, sizeText.count <= 16,
                      sizeText.allSatisfy({ PercentCoding.hexValue($0) != nil }),
                      let size = Int(String(decoding: sizeText, as: UTF8.self), radix: 16) else {
                    throw RequestRejection(status: 400, reason: "bad chunk size")
                }
                if size == 0 { break }
                guard body.count + size <= Self.maximumBodyBytes else {
                    throw RequestRejection(status: 413, reason: "body too large")
                }
                body.append(contentsOf: try readExactly(size))
                guard try readLine().isEmpty else { throw RequestRejection(status: 400, reason: "missing CRLF after chunk") }
            }
            // Trailer section: ignored, ends with an empty line.
            var trailerBytes = 0
            while true {
                let line = try readLine()
                if line.isEmpty { break }
                trailerBytes += line.count
                guard trailerBytes <= Self.maximumHeadBytes else {
                    throw RequestRejection(status: 431, reason: "trailers too large")
                }
            }
            return body
        }
    }

    private mutating func readExactly(_ count: Int) throws(RequestRejection) -> [UInt8] {
        guard count <= Self.maximumBodyBytes else { throw RequestRejection(status: 413, reason: "body too large") }
        while available < count {
            guard fill() else { throw RequestRejection(status: 400, reason: "body ended early") }
        }
        let bytes = Array(buffer[start..<start + count])
        start += count
        return bytes
    }

    /// One CRLF-terminated line (without the CRLF); a bare LF is refused.
    private mutating func readLine() throws(RequestRejection) -> [UInt8] {
        var scanned = start
        while true {
            while scanned < buffer.count {
                if buffer[scanned] == 10 {
                    guard scanned > start, buffer[scanned - 1] == 13 else {
                        throw RequestRejection(status: 400, reason: "bare LF")
                    }
                    let line = Array(buffer[start..<scanned - 1])
                    start = scanned + 1
                    return line
                }
                scanned += 1
            }
            guard scanned - start <= 4096 else { throw RequestRejection(status: 400, reason: "line too long") }
            // fill() may move `start` (it drops consumed bytes): keep the scan relative to it.
            let seen = scanned - start
            guard fill() else { throw RequestRejection(status: 400, reason: "body ended early") }
            scanned = start + seen
        }
    }

    static func find(crlfcrlfIn bytes: [UInt8], from: Int) -> Int? {
        guard bytes.count >= 4 else { return nil }
        var index = max(0, from)
        while index + 3 < bytes.count {
            if bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
                return index
            }
            index += 1
        }
        return nil
    }

    // MARK: - Strict head parsing

    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        default:
            Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }

    static func parseHead(_ head: [UInt8]) throws(RequestRejection) -> RequestHead {
        func reject(_ reason: String) -> RequestRejection { RequestRejection(status: 400, reason: reason) }
        // Split on CRLF; a bare CR or LF anywhere is refused.
        var lines: [[UInt8]] = []
        var lineStart = 0
        var index = 0
        while index < head.count {
            let byte = head[index]
            if byte == 13 {
                guard index + 1 < head.count, head[index + 1] == 10 else { throw reject("bare CR") }
                lines.append(Array(head[lineStart..<index]))
                index += 2
                lineStart = index
                continue
            }
            if byte == 10 { throw reject("bare LF") }
            if byte == 0 { throw reject("NUL in head") }
            index += 1
        }
        lines.append(Array(head[lineStart..<head.count]))

        // Request line: method SP target SP version.
        let parts = lines[0].split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy(isTokenByte) else {
            throw reject("malformed request line")
        }
        let method = String(decoding: parts[0], as: UTF8.self)
        let version = String(decoding: parts[2], as: UTF8.self)
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else {
            if version.hasPrefix("HTTP/") { throw RequestRejection(status: 505, reason: "unsupported HTTP version") }
            throw reject("malformed request line")
        }
        guard !parts[1].isEmpty, parts[1].allSatisfy({ $0 > 32 && $0 < 127 }) else { throw reject("bad request target") }
        var target = String(decoding: parts[1], as: UTF8.self)
        if target.hasPrefix("http://") || target.hasPrefix("https://") {
            // Absolute form: keep the path and query.
            let afterScheme = target.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
            // ["http:", "", "authority/path?query"]
            let rest = afterScheme.count == 3 ? afterScheme[2] : ""
            target = rest.firstIndex(of: "/").map { String(rest[$0...]) } ?? "/"
        } else if !(target.hasPrefix("/") || (target == "*" && method == "OPTIONS")) {
            throw reject("bad request target")
        }
        let path: String
        let rawQuery: String
        if let question = target.firstIndex(of: "?") {
            path = String(target[..<question])
            rawQuery = String(target[target.index(after: question)...])
        } else {
            path = target
            rawQuery = ""
        }

        // Header fields.
        var headers: [(name: String, value: String)] = []
        for line in lines.dropFirst() {
            guard let first = line.first else { throw reject("empty header line") }
            if first == 32 || first == 9 { throw reject("obsolete line folding") }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0,
                  line[..<colon].allSatisfy(isTokenByte) else {
                throw reject("malformed header field")
            }
            var value = line[(colon + 1)...]
            while let byte = value.first, byte == 32 || byte == 9 { value = value.dropFirst() }
            while let byte = value.last, byte == 32 || byte == 9 { value = value.dropLast() }
            guard value.allSatisfy({ $0 == 9 || ($0 >= 32 && $0 != 127) }) else { throw reject("control byte in field value") }
            headers.append((String(decoding: line[..<colon], as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
        func values(_ name: String) -> [String] {
            headers.filter { $0.name.lowercased() == name }.map(\.value)
        }

        if version == "HTTP/1.1" {
            let hosts = values("host")
            guard hosts.count == 1 else { throw reject("HTTP/1.1 requires exactly one Host") }
        }

        // Framing: Transfer-Encoding wins only when alone; both is ambiguous.
        let transferEncodings = values("transfer-encoding")
        let contentLengths = values("content-length")
        let framing: BodyFraming
        if !transferEncodings.isEmpty {
            guard contentLengths.isEmpty else { throw reject("Content-Length with Transfer-Encoding") }
            guard version == "HTTP/1.1" else { throw reject("Transfer-Encoding in HTTP/1.0") }
            let codings = transferEncodings.joined(separator: ",").split(separator: ",")
                .map { $0.trimmed(of: " \t").lowercased() }
            guard codings == ["chunked"] else {
                throw RequestRejection(status: 501, reason: "unsupported transfer coding")
            }
            framing = .chunked
        } else if !contentLengths.isEmpty {
            let all = contentLengths.joined(separator: ",").split(separator: ",", omittingEmptySubsequences: false)
                .map { $0.trimmed(of: " \t") }
            guard let first = all.first, Set(all).count == 1, !first.isEmpty, first.count <= 18,
                  first.allSatisfy({ $0.isASCII && $0.isNumber }), let length = Int(first) else {
                throw reject("bad Content-Length")
            }
            guard length <= maximumBodyBytes else { throw RequestRejection(status: 413, reason: "body too large") }
            framing = length == 0 ? .none : .length(length)
        } else {
            framing = .none
        }

        let connectionTokens = values("connection").joined(separator: ",").split(separator: ",")
            .map { $0.trimmed(of: " \t").lowercased() }
        let wantsClose = version == "HTTP/1.0"
            ? !connectionTokens.contains("keep-alive")
            : connectionTokens.contains("close")
        let expectsContinue = version == "HTTP/1.1"
            && values("expect").contains { $0.lowercased() == "100-continue" }

        return RequestHead(method: method, target: target, path: path, rawQuery: rawQuery, version: version,
                           headers: headers, framing: framing, wantsClose: wantsClose,
                           expectsContinue: expectsContinue)
    }
}

extension Substring {
    func trimmed(of set: String) -> String {
        var view = self[...]
        while let first = view.first, set.contains(first) { view = view.dropFirst() }
        while let last = view.last, set.contains(last) { view = view.dropLast() }
        return String(view)
    }
}
