/// A view into a message head: `offset` counts from the first byte handed to the parser
/// (the start of the request/status line), so it stays valid if the buffer is compacted.
public struct ByteRange: Equatable, Sendable {
    public var offset: Int32
    public var count: Int32
    /// Offsets and counts within one buffer (well under 2 GiB): truncation never happens.
    @inline(__always) public init(offset: Int, count: Int) {
        self.offset = Int32(truncatingIfNeeded: offset)
        self.count = Int32(truncatingIfNeeded: count)
    }
    public static let empty = ByteRange(offset: 0, count: 0)
    @inline(__always) public var isEmpty: Bool { count == 0 }
    @inline(__always) public var end: Int { Int(offset) + Int(count) }
}

public enum HTTPMethod: UInt8, Sendable, CaseIterable {
    case get, head, post, put, delete, patch, options, trace, connect, other
    /// RFC 9110 §9.2.2: safe to retry on a fresh upstream connection.
    public var isIdempotent: Bool {
        switch self {
        case .get, .head, .put, .delete, .options, .trace: return true
        case .post, .patch, .connect, .other: return false
        }
    }
}

public enum HTTPVersion: UInt8, Sendable { case http10, http11 }

/// How the body after a head is delimited.
public enum BodyFraming: Equatable, Sendable {
    case none
    case contentLength(Int64)
    case chunked
    /// Response only: the body ends when the upstream closes.
    case untilClose
}

public struct HeaderField: Equatable, Sendable {
    public var name: ByteRange
    /// The field value with leading and trailing OWS removed.
    public var value: ByteRange
    public init(name: ByteRange, value: ByteRange) { self.name = name; self.value = value }
}

/// Fixed-capacity table of header fields, owned by a connection and reused for every
/// message on it: parsing never allocates.
public final class HeaderTable {
    public private(set) var capacity: Int
    public private(set) var count = 0
    private var fields: UnsafeMutablePointer<HeaderField>
    private var ownsStorage = true
    public init(capacity: Int = 128) {
        self.capacity = capacity
        fields = .allocate(capacity: max(1, capacity))
    }
    /// No storage until `attachStorage` (an idle connection's table): full at once.
    public init(lentCapacity: Int) {
        capacity = 0
        fields = .allocate(capacity: 1)
        ownsStorage = true
        spareCapacity = lentCapacity
    }
    deinit { if ownsStorage { fields.deallocate() } }

    /// The capacity storage is lent with.
    public private(set) var spareCapacity = 0
    public static var fieldBytes: Int { MemoryLayout<HeaderField>.stride }

    /// Lends room for `spareCapacity` fields at `p` (8-byte aligned).
    public func attachStorage(_ p: UnsafeMutableRawPointer) {
        if ownsStorage { fields.deallocate(); ownsStorage = false }
        fields = p.bindMemory(to: HeaderField.self, capacity: spareCapacity)
        capacity = spareCapacity
        count = 0
    }

    /// Takes the lent storage back (the table is empty and full until attached again).
    public func detachStorage() {
        if ownsStorage { return }
        fields = .allocate(capacity: 1)
        ownsStorage = true
        capacity = 0
        count = 0
    }
    @inline(__always) public func removeAll() { count = 0 }
    /// Appends; returns false when full.
    @inline(__always) public func append(_ f: HeaderField) -> Bool {
        if count == capacity { return false }
        fields[count] = f
        count &+= 1
        return true
    }
    @inline(__always) public subscript(i: Int) -> HeaderField {
        get { fields[i] }
        set { fields[i] = newValue }
    }
}

public struct HTTP1Limits: Sendable {
    /// Whole head (request line + fields + final CRLF): over it → 431.
    public var maxHeadBytes = 16 * 1024
    /// Request-target: over it → 414.
    public var maxTargetBytes = 8 * 1024
    /// Number of fields: over it → 431.
    public var maxHeaderCount = 100
    /// The Host field (and an absolute-form authority): over it → 431. A host name is at most
    /// 253 bytes; the proxy writes the host twice (Host, X-Forwarded-Host), so it is capped.
    public var maxHostBytes = 1024
    public init() {}
}

public struct HTTP1RequestHead: Sendable {
    public var method: HTTPMethod = .get
    public var methodRange = ByteRange.empty
    /// The raw request-target.
    public var target = ByteRange.empty
    /// Path part of the target: origin-form up to `?`; for absolute-form the part after the
    /// authority (empty range means "/"); for asterisk-form the `*`.
    public var path = ByteRange.empty
    /// The query after `?` (without it); `hasQuery` tells an empty query from none.
    public var query = ByteRange.empty
    public var hasQuery = false
    /// absolute-form (`http://host/p`): the authority; empty otherwise.
    public var authority = ByteRange.empty
    public var form: TargetForm = .origin
    public var version: HTTPVersion = .http11
    /// Index of the Host field in the header table, -1 when absent (HTTP/1.0 only).
    public var hostIndex = -1
    public var framing: BodyFraming = .none
    /// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`.
    public var wantsClose = false
    /// `Expect: 100-continue` (any other expectation is an error → 417 is not used: 400).
    public var expectsContinue = false
    /// A Connection header lists field names (besides close/keep-alive) to drop on forwarding.
    public var hasConnectionOptions = false
    /// Bytes of the head, request line to the final CRLF inclusive.
    public var headLength = 0
    public init() {}

    public enum TargetForm: UInt8, Sendable { case origin, absolute, authority, asterisk }
}

public struct HTTP1ResponseHead: Sendable {
    public var status = 0
    public var version: HTTPVersion = .http11
    public var reason = ByteRange.empty
    public var framing: BodyFraming = .none
    /// `Connection: close`, HTTP/1.0 without keep-alive, or a close-delimited body.
    public var wantsClose = false
    /// A Connection header lists field names (besides close/keep-alive) to drop on forwarding.
    public var hasConnectionOptions = false
    public var headLength = 0
    public init() {}
}

public struct HTTP1ParseError: Error, Equatable, Sendable {
    public enum Kind: UInt8, Sendable {
        case badRequestLine, badMethod, badTarget, badVersion, unsupportedVersion
        case badStatusLine
        case badHeaderName, badHeaderValue, whitespaceBeforeColon, obsFold
        case bareCR, bareLF, controlCharacter
        case missingHost, duplicateHost, hostMismatch
        case badContentLength, conflictingContentLength, contentLengthWithTransferEncoding
        case badTransferEncoding, transferEncodingInHTTP10
        case badExpect
        case badChunkSize, badChunkExtension, badChunkTerminator, badTrailer
        case headTooLarge, uriTooLong, tooManyHeaders, hostTooLong
    }
    public var kind: Kind
    /// Offset of the offending byte from the start of the message (or of the chunked body).
    public var offset: Int
    public init(_ kind: Kind, at offset: Int) { self.kind = kind; self.offset = offset }

    /// The status a server answers with.
    public var status: Int {
        switch kind {
        case .headTooLarge, .tooManyHeaders, .hostTooLong: return 431
        case .uriTooLong: return 414
        case .unsupportedVersion: return 505
        default: return 400
        }
    }
}

public enum HTTP1ParseResult: Equatable, Sendable {
    /// The head is complete and valid; it is `consumed` bytes long.
    case complete(consumed: Int)
    /// More bytes are needed (nothing is wrong so far, limits included).
    case incomplete
    case failed(HTTP1ParseError)
}

/// One step of a streaming chunked-body decoder.
public enum ChunkedStep: Equatable, Sendable {
    /// Body bytes at `input[skip ..< skip + count]`; the caller advances by `skip + count`.
    case data(skip: Int, count: Int)
    /// All `consumed` bytes were framing (sizes, extensions, CRLFs); more input is needed.
    case needMore(consumed: Int)
    /// The body (last chunk and trailers) ended after `consumed` bytes.
    case end(consumed: Int)
    case failed(HTTP1ParseError)
}
