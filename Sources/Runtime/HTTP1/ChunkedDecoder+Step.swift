/// Byte-resumable state machine of `ChunkedDecoder` (RFC 9112 §7.1):
///
/// ```
/// chunked-body = *chunk last-chunk trailer-section CRLF
/// chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// chunk-ext    = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
/// ext-val      = token / quoted-string
/// ```
/// Every line ends in CRLF exactly; BWS is SP/HTAB only and is allowed only where the
/// grammar has it (so `5 \r\n` is rejected). Sizes have at most 15 hex digits.
struct ChunkedState: Sendable {
    enum Phase: UInt8, Sendable {
        case size, sizeMore, sizeWS
        case extPreName, extName, extAfterName, extPreValue, extToken, extQuoted, extQuotedEscape
        case extAfterQuoted, extAfterValueWS
        case lineLF
        case data, dataCR, dataLF
        case trailerStart, trailerName, trailerValue, trailerLF, finalLF
        case done, failed
    }

    static let maxSizeDigits = 15
    /// Bytes of chunk extensions allowed on one size line.
    static let maxExtensionBytes = 4096
    /// Bytes of trailer fields allowed in total.
    static let maxTrailerBytes = 4096

    var phase = Phase.size
    var digits = 0
    var size: UInt64 = 0
    var remaining: UInt64 = 0
    var extBytes = 0
    var trailerBytes = 0
    /// Bytes of the chunked body consumed before the current call (error offsets).
    var total = 0
    var error = HTTP1ParseError(.badChunkSize, at: 0)

    mutating func step(_ input: UnsafeRawBufferPointer) -> ChunkedStep {
        if phase == .failed { return .failed(error) }
        if phase == .done { return .end(consumed: 0) }
        guard let p = input.baseAddress, input.count > 0 else { return .needMore(consumed: 0) }
        let n = input.count
        if phase == .data { return emit(p, from: 0, n) }

        let t = HTTP1Lexer.classes.pointer
        var i = 0
        while i < n {
            let c = HTTP1Lexer.byte(p, i)
            let k = HTTP1Lexer.byte(t, Int(c))
            switch phase {
            case .size, .sizeMore:
                if k & HTTP1Lexer.hex != 0 {
                    if digits == ChunkedState.maxSizeDigits { return fail(.badChunkSize, i) }
                    digits += 1
                    size = size << 4 | UInt64(c <= 0x39 ? c &- 0x30 : (c | 0x20) &- 0x57)
                    phase = .sizeMore
                } else if phase == .size {
                    return fail(.badChunkSize, i)
                } else if c == HTTP1Lexer.cr {
                    phase = .lineLF
                } else if c == 0x3B {
                    phase = .extPreName
                } else if HTTP1Lexer.isWS(c) {
                    phase = .sizeWS
                } else if c == HTTP1Lexer.lf {
                    return fail(.badChunkTerminator, i)
                } else {
                    return fail(.badChunkSize, i)
                }
            case .sizeWS:
                // BWS is only allowed before ";".
                if c == 0x3B { phase = .extPreName }
                else if !HTTP1Lexer.isWS(c) { return fail(.badChunkSize, i) }
            case .extPreName:
                if k & HTTP1Lexer.tchar != 0 { phase = .extName }
                else if !HTTP1Lexer.isWS(c) { return fail(.badChunkExtension, i) }
            case .extName:
                if k & HTTP1Lexer.tchar != 0 {}
                else if c == 0x3D { phase = .extPreValue }
                else if c == 0x3B { phase = .extPreName }
                else if HTTP1Lexer.isWS(c) { phase = .extAfterName }
                else if c == HTTP1Lexer.cr { phase = .lineLF }
                else { return fail(c == HTTP1Lexer.lf ? .badChunkTerminator : .badChunkExtension, i) }
            case .extAfterName:
                if c == 0x3D { phase = .extPreValue }
                else if c == 0x3B { phase = .extPreName }
                else if !HTTP1Lexer.isWS(c) { return fail(.badChunkExtension, i) }
            case .extPreValue:
                if k & HTTP1Lexer.tchar != 0 { phase = .extToken }
                else if c == 0x22 { phase = .extQuoted }
                else if !HTTP1Lexer.isWS(c) { return fail(.badChunkExtension, i) }
            case .extToken:
                if k & HTTP1Lexer.tchar != 0 {}
                else if c == 0x3B { phase = .extPreName }
                else if HTTP1Lexer.isWS(c) { phase = .extAfterValueWS }
                else if c == HTTP1Lexer.cr { phase = .lineLF }
                else { return fail(c == HTTP1Lexer.lf ? .badChunkTerminator : .badChunkExtension, i) }
            case .extQuoted:
                if c == 0x22 { phase = .extAfterQuoted }
                else if c == 0x5C { phase = .extQuotedEscape }
                else if k & HTTP1Lexer.qdtext == 0 { return fail(.badChunkExtension, i) }
            case .extQuotedEscape:
                // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
                if k & HTTP1Lexer.value == 0 { return fail(.badChunkExtension, i) }
                phase = .extQuoted
            case .extAfterQuoted:
                if c == 0x3B { phase = .extPreName }
                else if HTTP1Lexer.isWS(c) { phase = .extAfterValueWS }
                else if c == HTTP1Lexer.cr { phase = .lineLF }
                else { return fail(c == HTTP1Lexer.lf ? .badChunkTerminator : .badChunkExtension, i) }
            case .extAfterValueWS:
                if c == 0x3B { phase = .extPreName }
                else if !HTTP1Lexer.isWS(c) { return fail(.badChunkExtension, i) }
            case .lineLF:
                if c != HTTP1Lexer.lf { return fail(.badChunkTerminator, i) }
                i += 1
                if size == 0 {
                    phase = .trailerStart
                    continue
                }
                remaining = size
                size = 0
                digits = 0
                extBytes = 0
                phase = .data
                if i == n {
                    total += i
                    return .needMore(consumed: i)
                }
                return emit(p, from: i, n)
            case .data:
                preconditionFailure("data is emitted before the loop")
            case .dataCR:
                if c != HTTP1Lexer.cr { return fail(.badChunkTerminator, i) }
                phase = .dataLF
            case .dataLF:
                if c != HTTP1Lexer.lf { return fail(.badChunkTerminator, i) }
                phase = .size
            case .trailerStart:
                if c == HTTP1Lexer.cr { phase = .finalLF; i += 1; continue }
                if c == HTTP1Lexer.lf { return fail(.badChunkTerminator, i) }
                if k & HTTP1Lexer.tchar == 0 { return fail(.badTrailer, i) }
                phase = .trailerName
            case .trailerName:
                if c == 0x3A { phase = .trailerValue }
                else if k & HTTP1Lexer.tchar == 0 { return fail(.badTrailer, i) }
            case .trailerValue:
                if c == HTTP1Lexer.cr { phase = .trailerLF }
                else if k & HTTP1Lexer.value == 0 { return fail(.badTrailer, i) }
            case .trailerLF:
                if c != HTTP1Lexer.lf { return fail(.badTrailer, i) }
                phase = .trailerStart
            case .finalLF:
                if c != HTTP1Lexer.lf { return fail(.badChunkTerminator, i) }
                phase = .done
                total += i + 1
                return .end(consumed: i + 1)
            case .done, .failed:
                preconditionFailure("handled before the loop")
            }
            // Limits on extension and trailer bytes.
            switch phase {
            case .sizeWS, .extPreName, .extName, .extAfterName, .extPreValue, .extToken, .extQuoted,
                 .extQuotedEscape, .extAfterQuoted, .extAfterValueWS:
                extBytes += 1
                if extBytes > ChunkedState.maxExtensionBytes { return fail(.badChunkExtension, i) }
            case .trailerName, .trailerValue, .trailerLF, .trailerStart:
                trailerBytes += 1
                if trailerBytes > ChunkedState.maxTrailerBytes { return fail(.badTrailer, i) }
            case .size, .sizeMore, .lineLF, .data, .dataCR, .dataLF, .finalLF, .done, .failed:
                break
            }
            i += 1
        }
        total += n
        return .needMore(consumed: n)
    }

    /// Hands out chunk data from `p[from..<n]` (at least one byte is available).
    @inline(__always)
    mutating func giveBack(_ n: Int) {
        guard n > 0 else { return }
        remaining &+= UInt64(n)
        total -= n
        phase = .data
    }

    private mutating func emit(_ p: UnsafeRawPointer, from: Int, _ n: Int) -> ChunkedStep {
        let available = UInt64(n - from)
        let take = remaining < available ? remaining : available
        remaining -= take
        if remaining == 0 { phase = .dataCR }
        total += from + Int(take)
        return .data(skip: from, count: Int(take))
    }

    private mutating func fail(_ kind: HTTP1ParseError.Kind, _ i: Int) -> ChunkedStep {
        error = HTTP1ParseError(kind, at: total + i)
        phase = .failed
        return .failed(error)
    }
}
