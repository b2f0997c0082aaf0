// libFuzzer target: a chunked body (RFC 9112 §7.1) through the streaming decoder, whole,
// split at fuzzer-chosen points and (flag bit 2) one byte at a time; the decoded bytes,
// the end and the bytes consumed must agree, and every step must make progress.
//
// Input: the control header of FuzzSupport.swift, then the chunked body.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzChunkedDecoder(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = FuzzInput(data, size)
    var decoder = ChunkedDecoder()
    let o = decodeAllWays(input, input.message, persistent: &decoder)
    if case .end = o.end {
        check(o.body.count < o.consumed, "\(o.body.count) data bytes from \(o.consumed) consumed")
    }
    check(o.body.count <= input.message.count, "more data than input")
    return 0
}
