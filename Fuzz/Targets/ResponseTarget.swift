// libFuzzer target: what an upstream answers (interim 1xx heads, the final head, a chunked
// or sized body, then the next response on a kept connection) through the strict response
// parser and the chunked decoder, bytes arriving in pieces at fuzzer-chosen points.
//
// Input: the control header of FuzzSupport.swift (flags bits 3-4 pick the request method:
// GET, HEAD, CONNECT, POST), then the bytes an upstream sends.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzResponseParser(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = FuzzInput(data, size)
    let limits = fuzzLimits(input.limitsProfile)
    let method: HTTPMethod = [.get, .head, .connect, .post][input.methodSelector]
    let stream = input.message
    var connParser = HTTP1ResponseParser(limits: limits)
    var connHead = HTTP1ResponseHead()
    let connTable = HeaderTable()
    var connChunks = ChunkedDecoder()
    var start = 0
    for _ in 0..<8 {
        if start >= stream.count { break }
        let b = UnsafeRawBufferPointer(rebasing: stream[start...])
        let n = b.count
        var fresh = HTTP1ResponseParser(limits: limits)
        var freshHead = HTTP1ResponseHead()
        let whole = feedResponse(&fresh, &freshHead, HeaderTable(), method: method, b, [n])
        let split = feedResponse(&connParser, &connHead, connTable, method: method, b, arrivals(input, length: n))
        check(whole == split, "split \(split.result) vs whole \(whole.result) for \(describe(b))")
        if input.byteAtATime && n <= 4096 {
            var p = HTTP1ResponseParser(limits: limits)
            var h = HTTP1ResponseHead()
            let bytewise = feedResponse(&p, &h, HeaderTable(), method: method, b, Array(1...n))
            check(whole == bytewise, "byte at a time \(bytewise.result) vs whole \(whole.result)")
        }
        checkResponse(whole, b, limits, method: method)
        guard case .complete(let c) = whole.result else { break }
        start += c
        if whole.status < 200 { continue }   // interim: the final head follows
        switch whole.framing {
        case .contentLength(let len):
            start += Int(min(Int64(stream.count - start), len))
        case .chunked:
            let body = UnsafeRawBufferPointer(rebasing: stream[start...])
            let o = decodeAllWays(input, body, persistent: &connChunks)
            guard case .end = o.end else { return 0 }
            start += o.consumed
        case .untilClose:
            return 0
        case .none:
            break
        }
    }
    return 0
}
