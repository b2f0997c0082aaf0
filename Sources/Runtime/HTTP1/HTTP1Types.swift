/// A view into a message head: `offset` counts from the first byte handed to the parser
/// (the start of the request/status line), so it stays valid if the buffer is compacted.
package struct ByteRange: Equatable, Sendable {
    package var offset: Int32
    package var count: Int32
    package init(offset: Int, count: Int) { self.offset = Int32(offset); self.count = Int32(count) }
    package static let empty = ByteRange(offset: 0, count: 0)
    @inline(__always) package var isEmpty: Bool { count == 0 }
    @inline(__always) package var end: Int { Int(offset) + Int(count) }
}

package enum HTTPMethod: UInt8, Sendable, CaseIterable {
    case get, head, post, put, delete, patch, options, trace, connect, other
    /// RFC 9110 §9.2.2: safe to retry on a fresh upstream connection.
    package var isIdempotent: Bool {
        switch self {
        case .get, .head, .put, .delete, .options, .trace: return true
        case .post, .patch, .connect, .other: return false
        }
    }
}

package enum HTTPVersion: UInt8, Sendable { case http10, http11 }

/// How the body after a head is delimited.
package enum BodyFraming: Equatable, Sendable {
    case none
    case contentLength(Int64)
    case chunked
    /// Response only: the body ends when the upstream closes.
    case untilClose
}

package struct HeaderField: Equatable, Sendable {
    package var name: ByteRange
    /// The field value with leading and trailing OWS removed.
    package var value: ByteRange
    package init(name: ByteRange, value: ByteRange) { self.name = name; self.value = value }
}

/// Fixed-capacity table of header fields, owned by a connection and reused for every
/// message on it: parsing never allocates.
package final class HeaderTable {
    package let capacity: Int
    package private(set) var count = 0
    private let fields: UnsafeMutablePointer<HeaderField>
    package init(capacity: Int = 128) {
        self.capacity = capacity
        fields = .allocate(capacity: capacity)
    }
    deinit { fields.deallocate() }
    @inline(__always) package func removeAll() { count = 0 }
    /// Appends; returns false when full.
    @inline(__always) package func append(_ f: HeaderField) -> Bool {
        if count == capacity { return false }
        fields[count] = f
        count &+= 1
        return true
    }
    @inline(__always) package subscript(i: Int) -> HeaderField {
        get { fields[i] }
        set { fields[i] = newValue }
    }
}

package struct HTTP1Limits: Sendable {
    /// Whole head (request line + fields + final CRLF): over it → 431.
    package var maxHeadBytes = 16 * 1024
    /// Request-target: over it → 414.
    package var maxTargetBytes = 8 * 1024
    /// Number of fields: over it → 431.
    package var maxHeaderCount = 100
    package init() {}
}

package struct HTTP1RequestHead: Sendable {
    package var method: HTTPMethod = .get
    package var methodRange = ByteRange.empty
    /// The raw request-target.
    package var target = ByteRange.empty
    /// Path part of the target: origin-form up to `?`; for absolute-form the part after the
    /// authority (empty range means "/"); for asterisk-form the `*`.
    package var path = ByteRange.empty
    /// The query after `?` (without it); `hasQuery` tells an empty query from none.
    package var query = ByteRange.empty
    package var hasQuery = false
    /// absolute-form (`http://host/p`): the authority; empty otherwise.
    package var authority = ByteRange.empty
    package var form: TargetForm = .origin
    package var version: HTTPVersion = .http11
    /// Index of the Host field in the header table, -1 when absent (HTTP/1.0 only).
    package var hostIndex = -1
    package var framing: BodyFraming = .none
    /// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`.
    package var wantsClose = false
    /// `Expect: 100-continue` (any other expectation is an error → 417 is not used: 400).
    package var expectsContinue = false
    /// A Connection header lists field names (besides close/keep-alive) to drop on forwarding.
    package var hasConnectionOptions = false
    /// Bytes of the head, request line to the final CRLF inclusive.
    package var headLength = 0
    package init() {}

    package enum TargetForm: UInt8, Sendable { case origin, absolute, authority, asterisk }
}

package struct HTTP1ResponseHead: Sendable {
    package var status = 0
    package var version: HTTPVersion = .http11
    package var reason = ByteRange.empty
    package var framing: BodyFraming = .none
    /// `Connection: close`, HTTP/1.0 without keep-alive, or a close-delimited body.
    package var wantsClose = false
    /// A Connection header lists field names (besides close/keep-alive) to drop on forwarding.
    package var hasConnectionOptions = false
    package var headLength = 0
    package init() {}
}

package struct HTTP1ParseError: Error, Equatable, Sendable {
    package enum Kind: UInt8, Sendable {
        case badRequestLine, badMethod, badTarget, badVersion, unsupportedVersion
        case badStatusLine
        case badHeaderName, badHeaderValue, whitespaceBeforeColon, obsFold
        case bareCR, bareLF, controlCharacter
        case missingHost, duplicateHost, hostMismatch
        case badContentLength, conflictingContentLength, contentLengthWithTransferEncoding
        case badTransferEncoding, transferEncodingInHTTP10
        case badExpect
        case badChunkSize, badChunkExtension, badChunkTerminator, badTrailer
        case headTooLarge, uriTooLong, tooManyHeaders
    }
    package var kind: Kind
    /// Offset of the offending byte from the start of the message (or of the chunked body).
    package var offset: Int
    package init(_ kind: Kind, at offset: Int) { self.kind = kind; self.offset = offset }

    /// The status a server answers with.
    package var status: Int {
        switch kind {
        case .headTooLarge, .tooManyHeaders: return 431
        case .uriTooLong: return 414
        case .unsupportedVersion: return 505
        default: return 400
        }
    }
}

package enum HTTP1ParseResult: Equatable, Sendable {
    /// The head is complete and valid; it is `consumed` bytes long.
    case complete(consumed: Int)
    /// More bytes are needed (nothing is wrong so far, limits included).
    case incomplete
    case failed(HTTP1ParseError)
}

/// One step of a streaming chunked-body decoder.
package enum ChunkedStep: Equatable, Sendable {
    /// Body bytes at `input[skip ..< skip + count]`; the caller advances by `skip + count`.
    case data(skip: Int, count: Int)
    /// All `consumed` bytes were framing (sizes, extensions, CRLFs); more input is needed.
    case needMore(consumed: Int)
    /// The body (last chunk and trailers) ended after `consumed` bytes.
    case end(consumed: Int)
    case failed(HTTP1ParseError)
}
