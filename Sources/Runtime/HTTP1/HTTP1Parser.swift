// Interface of the strict HTTP/1.1 codec. Bodies are filled in by the codec work item;
// the signatures are the contract the proxy is written against.

/// Strict, allocation-free request-head parser (RFC 9112). Resumable: call `parse` again
/// with the same message start and more bytes; it does not rescan what it has seen
/// looking for the end of the head.
public struct HTTP1RequestParser: Sendable {
    public var limits: HTTP1Limits
    private var state = RequestParseState()
    public init(limits: HTTP1Limits = HTTP1Limits()) { self.limits = limits }
    /// Forget progress (next message). Also done by `parse` itself after `.complete`/`.failed`.
    public mutating func reset() { state = RequestParseState() }
    /// `bytes` starts at the first byte of the request line. Header ranges go to `headers`
    /// (cleared first). On `.complete`, `head` is filled.
    public mutating func parse(_ bytes: UnsafeRawBufferPointer, into head: inout HTTP1RequestHead,
                                headers: HeaderTable) -> HTTP1ParseResult {
        state.parse(bytes, limits: limits, into: &head, headers: headers)
    }
}

/// Strict response-head parser for what upstreams send.
public struct HTTP1ResponseParser: Sendable {
    public var limits: HTTP1Limits
    private var state = ResponseParseState()
    public init(limits: HTTP1Limits = HTTP1Limits()) { self.limits = limits }
    /// Forget progress (next message). Also done by `parse` itself after `.complete`/`.failed`.
    public mutating func reset() { state = ResponseParseState() }
    /// `requestMethod` decides bodiless responses (HEAD; 1xx, 204, 304 always).
    public mutating func parse(_ bytes: UnsafeRawBufferPointer, requestMethod: HTTPMethod,
                                into head: inout HTTP1ResponseHead, headers: HeaderTable) -> HTTP1ParseResult {
        state.parse(bytes, requestMethod: requestMethod, limits: limits, into: &head, headers: headers)
    }
}

/// Streaming decoder of a chunked body, byte-resumable.
public struct ChunkedDecoder: Sendable {
    private var state = ChunkedState()
    public init() {}
    public mutating func reset() { state = ChunkedState() }
    /// `input` holds only bytes not consumed by earlier steps. After `.end` further steps
    /// return `.end(consumed: 0)`; after `.failed` they repeat the failure.
    public mutating func step(_ input: UnsafeRawBufferPointer) -> ChunkedStep { state.step(input) }
    /// Gives back the last `n` bytes of the data the last step returned (they were not
    /// taken; the next step returns them again).
    public mutating func giveBack(_ n: Int) { state.giveBack(n) }
}
