import Runtime

/// The upstream half of an exchange, shared by the HTTP/1.1 session and HTTP/2 streams:
/// reading the upstream's answer and framing it (head, interim heads, body by length,
/// chunks or close). Each carrier says what "relaying" means for it and what becomes of a
/// head; the rest is one code path, specialised per carrier (generic, no existential).
protocol UpstreamRelaying: ExchangeCarrier {
    var upstream: UpstreamConnection? { get }
    /// Where answer bytes that are not passed raw go (heads, de-chunked body).
    var outBuf: IOBuffer { get }
    /// Answer bytes at `upstream.inBuf.readerIndex` framed and waiting to be passed on raw.
    var responsePass: Int { get set }
    /// The exchange is still being relayed (not closed, not replaced by a local answer).
    var isRelaying: Bool { get }
    func upstreamFailure(_ failure: UpstreamFailure)
    /// An interim (1xx, not 101) head was parsed (`up.head`, `up.headers`).
    func relayInterim(_ up: UpstreamConnection)
    /// The final head has been written to `outBuf`; false stops framing (the exchange failed).
    func answerHeadWritten(_ up: UpstreamConnection) -> Bool
}

extension UpstreamRelaying {
    /// Reads upstream bytes and frames them (head, then body) for the client. True when
    /// something moved (or the exchange failed: the caller looks again).
    func readUpstream(_ up: UpstreamConnection) -> Bool {
        let buf = up.inBuf
        // De-chunked bytes wait in outBuf: keep room for them before reading more.
        if responseBody == .chunkedDecode && outBuf.writableBytes < 1024 && outBuf.readerIndex == 0 { return false }
        // Bytes read earlier that wait to be de-chunked or metered into outBuf (for room, or an
        // extension): frame what fits, and read on only once all are. Otherwise a full buffer is
        // never looked at again while the upstream stays readable (the answer stalls), and an
        // EOF read meanwhile would end the answer without them.
        if buf.readableBytes > 0
            && (responseBody == .chunkedDecode || exchange.meterState.mode != .off && !responseBody.isAwaitingHead) {
            let mark = (buf.readerIndex, outBuf.writerIndex)
            frameResponse(up)
            if !isRelaying || upstream !== up { return true }
            if buf.readableBytes > 0 || responseBody.isDone { return mark != (buf.readerIndex, outBuf.writerIndex) }
        }
        if buf.writableBytes == 0 {
            if buf.readerIndex > 0 { _ = buf.compact() } else if responsePass > 0 { return false }
        }
        if buf.writableBytes == 0 {
            if responseBody.isAwaitingHead { upstreamFailure(.badResponse) ; return true }
            return false
        }
        let want = buf.writableBytes
        var got = 0
        do {
            switch try up.transport.read(into: buf.writePointer, count: want) {
            case .processed(let n):
                if n == 0 { up.sawEOF = true; up.isReadable = false } else {
                    buf.writerIndex += n
                    got = n
                    if n < want && !up.hasHungUp && !up.mayHoldMore { up.isReadable = false }
                }
            case .wouldBlock:
                up.isReadable = false
            }
        } catch {
            upstreamFailure(.reset(error.code))
            return true
        }
        if got > 0 {
            up.deadline.set(context.loop.now &+ (responseBody.isAwaitingHead ? up.pool.responseTimeoutNanos : up.pool.idleTimeoutNanos),
                            fd: up.fd, loop: context.loop)
        }
        frameResponse(up)
        if up.sawEOF && !responseBody.isDone && isRelaying && upstream === up {
            if responseBody == .untilClose {
                responseBody = .done
            } else {
                upstreamFailure(up.inBuf.readableBytes == 0 && responseBody.isAwaitingHead ? .closedEarly : .badResponse)
            }
            return true
        }
        return got > 0
    }

    /// Frames what `up.inBuf` holds: the head (interim heads go to `relayInterim`), then the
    /// body (passed raw by `responsePass`, or de-chunked into `outBuf`).
    func frameResponse(_ up: UpstreamConnection) {
        let buf = up.inBuf
        while true {
            if exchange.meterState.mode != .off && !responseBody.isAwaitingHead {
                if exchange.meterState.paused || !frameMetered(up) { return }
                continue
            }
            switch responseBody {
            case .awaitingHead:
                if buf.readableBytes == 0 { return }
                switch up.parser.parse(buf.readable, requestMethod: request.method, into: &up.head, headers: up.headers) {
                case .incomplete:
                    return
                case .failed:
                    upstreamFailure(.badResponse)
                    return
                case .complete(let consumed):
                    if up.head.status >= 100 && up.head.status < 200 {
                        if up.head.status == 101 { upstreamFailure(.badResponse); return }
                        relayInterim(up)
                        buf.readerIndex += consumed
                        up.parser.reset()
                        continue
                    }
                    guard ResponseHeadWriter.write(self, up, into: outBuf) else {
                        upstreamFailure(.badResponse)
                        return
                    }
                    exchange.answer(status: up.head.status, code: MetricCode.ok)
                    buf.readerIndex += consumed
                    if !answerHeadWritten(up) { return }
                }
            case .length(let remaining):
                let avail = buf.readableBytes - responsePass
                if avail <= 0 { return }
                let take = Int(min(Int64(avail), remaining))
                responsePass += take
                let left = remaining - Int64(take)
                responseBody = left == 0 ? .done : .length(remaining: left)
                return
            case .chunkedPass:
                let avail = buf.readableBytes - responsePass
                if avail <= 0 { return }
                let input = UnsafeRawBufferPointer(start: buf.readPointer + responsePass, count: avail)
                switch responseChunks.step(input) {
                case .data(let skip, let count): responsePass += skip + count
                case .needMore(let consumed): responsePass += consumed; return
                case .end(let consumed): responsePass += consumed; responseBody = .done; return
                case .failed: upstreamFailure(.badResponse); return
                }
            case .chunkedDecode:
                if buf.readableBytes == 0 { return }
                let room = outBuf.writableBytes
                if room == 0 { if outBuf.readerIndex > 0 { _ = outBuf.compact(); continue }; return }
                let input = UnsafeRawBufferPointer(rebasing: buf.readable[0..<min(buf.readableBytes, room)])
                switch responseChunks.step(input) {
                case .data(let skip, let count):
                    outBuf.write(input.baseAddress! + skip, count: count)
                    buf.readerIndex += skip + count
                case .needMore(let consumed): buf.readerIndex += consumed; if consumed == 0 || buf.readableBytes == 0 { return }
                case .end(let consumed): buf.readerIndex += consumed; responseBody = .done; return
                case .failed: upstreamFailure(.badResponse); return
                }
            case .untilClose:
                responsePass = buf.readableBytes
                return
            case .done:
                return
            }
        }
    }

    /// One step of a metered answer's body: every byte goes through the meter into `outBuf`
    /// (chunks de-chunked, and framed again for an HTTP/1.1 client). False when nothing more
    /// can be done now (no bytes, no room, paused, or the answer ended).
    func frameMetered(_ up: UpstreamConnection) -> Bool {
        let buf = up.inBuf
        if responseBody.isDone || buf.readableBytes == 0 { return false }
        // Room for a chunk's size line and CRLF and for the cut-off event besides the data.
        var room = outBuf.writableBytes - MeterState.headroom
        if room <= 0 {
            if outBuf.readerIndex > 0 { _ = outBuf.compact(); room = outBuf.writableBytes - MeterState.headroom }
            if room <= 0 { return false }
        }
        switch responseBody {
        case .length(let remaining):
            let take = Int(min(Int64(min(buf.readableBytes, room)), remaining))
            let used = meterBody(buf.readPointer, take)
            buf.readerIndex += used
            if case .length = responseBody {
                let left = remaining - Int64(used)
                responseBody = left == 0 ? .done : .length(remaining: left)
            }
            return used == take && used > 0 && !responseBody.isDone
        case .untilClose:
            let take = min(buf.readableBytes, room)
            let used = meterBody(buf.readPointer, take)
            buf.readerIndex += used
            return used == take && used > 0 && !responseBody.isDone
        case .chunkedDecode, .chunkedPass:
            let input = UnsafeRawBufferPointer(rebasing: buf.readable[0..<min(buf.readableBytes, room)])
            switch responseChunks.step(input) {
            case .data(let skip, let count):
                let used = meterBody(input.baseAddress! + skip, count)
                if used < count { responseChunks.giveBack(count - used) }
                buf.readerIndex += skip + used
                return used == count && !responseBody.isDone
            case .needMore(let consumed):
                buf.readerIndex += consumed
                return consumed > 0 && buf.readableBytes > 0
            case .end(let consumed):
                buf.readerIndex += consumed
                if rechunks { outBuf.write(HTTP1Session.lastChunk) }
                responseBody = .done
                return false
            case .failed:
                upstreamFailure(.badResponse)
                return false
            }
        case .awaitingHead, .done:
            return false
        }
    }
}
