// libFuzzer target: whole client requests (heads and bodies, pipelined) through the strict
// request parser and the chunked decoder, as ClientConnection drives them: one parser per
// connection, bytes arriving in pieces at fuzzer-chosen points.
//
// Input: the control header of FuzzSupport.swift, then the bytes a client sends.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequestParser(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = FuzzInput(data, size)
    let limits = fuzzLimits(input.limitsProfile)
    let stream = input.message
    // The split side keeps one parser, head, table and decoder for the whole "connection".
    var connParser = HTTP1RequestParser(limits: limits)
    var connHead = HTTP1RequestHead()
    let connTable = HeaderTable()
    var connChunks = ChunkedDecoder()
    var start = 0
    for _ in 0..<8 {
        if start >= stream.count { break }
        let b = UnsafeRawBufferPointer(rebasing: stream[start...])
        let n = b.count
        var fresh = HTTP1RequestParser(limits: limits)
        var freshHead = HTTP1RequestHead()
        let whole = feedRequest(&fresh, &freshHead, HeaderTable(), b, [n])
        let split = feedRequest(&connParser, &connHead, connTable, b, arrivals(input, length: n))
        check(whole == split, "split \(split.result) vs whole \(whole.result) for \(describe(b))")
        if input.byteAtATime && n <= 4096 {
            var p = HTTP1RequestParser(limits: limits)
            var h = HTTP1RequestHead()
            let bytewise = feedRequest(&p, &h, HeaderTable(), b, Array(1...n))
            check(whole == bytewise, "byte at a time \(bytewise.result) vs whole \(whole.result)")
        }
        checkRequest(whole, b, limits)
        guard case .complete(let c) = whole.result else { break }
        start += c
        switch whole.framing {
        case .contentLength(let len):
            start += Int(min(Int64(stream.count - start), len))
        case .chunked:
            let body = UnsafeRawBufferPointer(rebasing: stream[start...])
            let o = decodeAllWays(input, body, persistent: &connChunks)
            guard case .end = o.end else { return 0 }
            start += o.consumed
        case .none, .untilClose:
            break
        }
    }
    return 0
}
