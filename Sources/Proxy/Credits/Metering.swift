import Backends
import Policy
import Runtime

/// A priced answer's body as it passes: output tokens counted event by event (SSE), or its
/// bytes (any other answer on a per-token route), against what the reservation pays for.
struct MeterState {
    enum Mode: UInt8 {
        case off
        /// `text/event-stream` on a route with `stream:`: counted by the stream meter.
        case sse
        /// Any other answer of a per-token route: output tokens ≈ ceil(body bytes / 4).
        case bytes
    }
    var mode: Mode = .off
    var meter = StreamMeter(dialect: .flowise)
    /// Output tokens the held credits pay for.
    var budget: Int64 = .max
    var bytes: Int64 = 0
    /// Waiting for an extension of the reservation (Redis): nothing more is framed.
    var paused = false
    /// Ended for want of credits: the cut-off event was sent.
    var cutOff = false
    /// Cut off in an answer framed by Content-Length: it ends short of that length (HTTP/1:
    /// the connection closes; HTTP/2: the stream is reset, never ended as if whole).
    var endsShort = false

    /// Output tokens to charge: the backend's figure when it sent one, never 0 when tokens
    /// passed.
    var outputTokens: Int64 {
        switch mode {
        case .off: return 0
        case .bytes: return (bytes + 3) / 4
        case .sse:
            let counted = meter.outputTokens
            if let r = meter.reportedOutput, r > 0 || counted == 0 { return r }
            return counted
        }
    }
    var reportedInput: Int64? { mode == .sse ? meter.reportedInput : nil }

    /// Room kept in `outBuf` beyond the metered bytes: a chunk's size line and CRLF, and the
    /// cut-off event (with its own chunk and the last chunk).
    static let headroom = 256
}

/// How an extension of a reservation went.
enum ExtendOutcome { case granted, pending, refused }

extension Exchange {
    /// The answer's head is about to be written: is its body metered, and how?
    func beginMetering(_ up: UpstreamConnection) {
        if meterState.mode != .off { meterState = MeterState() }
        guard facts.creditState == .held, let price = facts.route?.credits, let tokens = price.perToken,
              up.head.status >= 200 && up.head.status < 300 else { return }
        if let dialect = price.stream, Self.isEventStream(up) {
            meterState.mode = .sse
            meterState.meter = StreamMeter(dialect: dialect)
        } else {
            meterState.mode = .bytes
        }
        meterState.budget = CreditGate.outputBudget(held: facts.creditReserved, perRequest: price.perRequest,
                                                   inputTokens: facts.inputEstimate, price: tokens)
    }

    private static let contentType: StaticString = "content-type"
    private static let eventStream: StaticString = "text/event-stream"

    static func isEventStream(_ up: UpstreamConnection) -> Bool {
        let base = up.inBuf.readPointer
        for i in 0..<up.headers.count {
            let f = up.headers[i]
            guard f.name.count == 12, HeaderNames.lowerEquals(base + Int(f.name.offset), 12, contentType) else { continue }
            let n = eventStream.utf8CodeUnitCount
            return Int(f.value.count) >= n && HeaderNames.lowerEquals(base + Int(f.value.offset), n, eventStream)
        }
        return false
    }
}

extension UpstreamRelaying {
    /// Passes `n` body bytes at `p` through the meter into `outBuf` (framed as a chunk when
    /// the client gets chunks again). Returns how many were taken: fewer when the reservation
    /// ran out at an event's end and an extension is pending (`paused`) or was refused (cut
    /// off: the rest is never sent), or the rest did not fit after an extension (it waits).
    func meterBody(_ p: UnsafeRawPointer, _ n: Int) -> Int {
        let x = exchange
        switch x.meterState.mode {
        case .off:
            writeMetered(p, n)
            return n
        case .bytes:
            writeMetered(p, n)
            x.meterState.bytes &+= Int64(n)
            return n
        case .sse:
            var off = 0
            while off < n {
                let used = x.meterState.meter.scan(UnsafeRawBufferPointer(start: p + off, count: n - off), budget: x.meterState.budget)
                writeMetered(p + off, used)
                off += used
                guard x.meterState.meter.stoppedAtBudget else { continue }
                switch x.context.credits?.extend(x) ?? .refused {
                case .granted:
                    // The rest is written as another piece (an HTTP/1.1 client: another chunk,
                    // another size line): when it does not fit with the headroom, it waits.
                    if outBuf.writableBytes < n - off + MeterState.headroom { return off }
                    continue
                case .pending:
                    x.meterState.paused = true
                    return off
                case .refused:
                    cutOff()
                    return off
                }
            }
            return off
        }
    }

    func writeMetered(_ p: UnsafeRawPointer, _ n: Int) {
        guard n > 0 else { return }
        if rechunks {
            outBuf.write(hex: n)
            outBuf.write(HTTP1Session.crlf)
            outBuf.write(p, count: n)
            outBuf.write(HTTP1Session.crlf)
        } else {
            outBuf.write(p, count: n)
        }
    }

    /// The account is empty: the stream's own error event, then the end of the answer; the
    /// upstream connection is closed (so the backend stops generating).
    func cutOff() {
        let x = exchange
        x.meterState.cutOff = true
        x.meterState.paused = false
        upstream?.mustClose = true
        if case .length = responseBody {
            // A length-framed answer cannot take an event it did not announce: it ends short
            // (HTTP/1: the connection closes; HTTP/2: the stream is reset).
            x.meterState.endsShort = true
            closeAfterResponse = true
            responseBody = .done
            return
        }
        let event = CutOffEvent.bytes(x.meterState.meter.dialect, message: "Credits ran out; the answer was cut off.")
        event.withUnsafeBytes { writeMetered($0.baseAddress!, $0.count) }
        if rechunks { outBuf.write(HTTP1Session.lastChunk) }
        responseBody = .done
    }

    /// An extension arrived (or was refused) while the answer waited.
    func meterExtended(_ outcome: ExtendOutcome) {
        exchange.meterState.paused = false
        if outcome == .refused { cutOff() }
    }
}
