import CNghttp2
import Glibc
import Policy
import Runtime

/// One HTTP/2 stream: one exchange, the same pipeline and upstream pools as HTTP/1.1.
///
/// The request head is rebuilt as HTTP/1.1 text as its fields arrive and then parsed by the
/// strict HTTP/1.1 parser, so an HTTP/2 request can carry nothing upstream that an HTTP/1.1
/// request could not (nghttp2 has already checked pseudo-headers, connection-specific fields,
/// CR/LF/NUL and `content-length` against DATA). The response goes the other way: the same
/// head writers as HTTP/1.1 produce the answer (local or upstream), and its fields become
/// HEADERS. Request and response bodies are copied between DATA frames and the upstream's
/// buffers, each side held back by the other's window.
final class H2Stream: UpstreamRelaying {
    enum Phase: UInt8 {
        /// Fields arriving.
        case head
        /// The pipeline runs (or waits for the store).
        case deciding
        /// Forwarded: an upstream carries it.
        case proxying
        /// A local answer is being sent.
        case replying
        /// Answered (END_STREAM sent) or reset; waiting for nghttp2 to close it.
        case done
    }

    unowned(unsafe) var session: HTTP2Session
    var id: Int32 = 0
    var slot = -1
    var isDirty = false
    let context: LoopContext
    let exchange: Exchange
    let headers: HeaderTable
    /// The request head as HTTP/1.1 text (then parsed in place).
    let inBuf = IOBuffer()
    /// Before forwarding: scratch for pseudo-header values and cookies. After: the answer's
    /// head (turned into HEADERS at once), then de-chunked body bytes or a local reply's body.
    let outBuf = IOBuffer()
    private var workspace: UnsafeMutableRawPointer?
    /// Request-body bytes from DATA frames not yet taken by the upstream (at most one window).
    private var body: IOBuffer?
    var request = HTTP1RequestHead()
    private var parser: HTTP1RequestParser
    var phase: Phase = .head
    var responseBody: HTTP1Session.ResponseBody = .awaitingHead
    var responseChunks = ChunkedDecoder()
    var closeAfterResponse = false
    var decodesChunked: Bool { true }
    var rechunks: Bool { false }
    var headBytes: UnsafeRawBufferPointer { inBuf.readable }
    var peer: PeerAddress { session.peer }

    // Head building.
    private var method = ByteRange.empty
    private var path = ByteRange.empty
    private var authority = ByteRange.empty
    private var cookies = ByteRange.empty
    private var hasRequestLine = false
    private var hasContentLength = false
    private var hostDisagrees = false
    private var decodedBytes = 0
    /// A parsed head waiting for `step` to start its exchange.
    private var pendingHeadLength = 0
    private var fieldCount = 0

    // The exchange.
    var upstream: UpstreamConnection?
    /// The client sent END_STREAM.
    private(set) var requestComplete = false
    private var requestBody: HTTP1Session.RequestBody = .none
    private var requestBodyReceived: Int64 = 0
    private var maxBodyBytes = 0
    private var isRequestSent = false
    /// Response bytes at `upstream.inBuf.readerIndex` not yet copied into DATA frames.
    var responsePass = 0
    private var isAnswerSubmitted = false
    private var isDeferred = false
    private var hasRetried = false
    /// A per-token route waits for the whole body (END_STREAM) before admission.
    private var awaitingBody = false

    init(session: HTTP2Session, context: LoopContext) {
        self.session = session
        self.context = context
        parser = HTTP1RequestParser(limits: context.settings.limits)
        exchange = Exchange(context: context)
        headers = exchange.headers
    }

    private var nghttp2: OpaquePointer? { session.session }

    // MARK: the head

    func beginHead() {
        let w = context.takeWorkspace()
        let l = context.workspaceLayout
        inBuf.attachStorage(w, capacity: l.inBytes - 4096)   // the head limit, and room to say why it was exceeded
        outBuf.attachStorage(w + l.outOffset, capacity: l.outBytes)
        exchange.attachStorage(headers: w + l.headersOffset, path: w + l.pathOffset)
        workspace = w
        phase = .head
        isDirty = false   // a stream object given back mid-work (its connection closed) starts clean
        method = .empty; path = .empty; authority = .empty; cookies = .empty
        hasRequestLine = false; hasContentLength = false; hostDisagrees = false
        decodedBytes = 0; fieldCount = 0; pendingHeadLength = 0
        requestComplete = false
        requestBody = .none
        requestBodyReceived = 0
        isRequestSent = false
        responsePass = 0
        isAnswerSubmitted = false
        isDeferred = false
        hasRetried = false
        awaitingBody = false
        responseBody = .awaitingHead
        closeAfterResponse = false
        exchange.downstream = .h2(self)
    }

    /// One decoded field. Returns nonzero to make nghttp2 fail the connection (an HPACK bomb).
    func header(_ name: UnsafePointer<UInt8>, _ nn: Int, _ value: UnsafePointer<UInt8>, _ vn: Int) -> Int32 {
        decodedBytes += nn + vn + 32
        if decodedBytes > session.maxDecodedHeaderBytes { return Int32(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
        guard phase == .head else { return 0 }   // trailers: dropped
        let n = UnsafeRawPointer(name)
        let v = UnsafeRawPointer(value)
        if nn > 0 && name[0] == 0x3A {
            // Pseudo-headers (nghttp2 checked which, how many, and that they come first).
            if nn == 7 && memcmp(n, ":method", 7) == 0 { method = keep(v, vn) }
            else if nn == 5 && memcmp(n, ":path", 5) == 0 { path = keep(v, vn) }
            else if nn == 10 && memcmp(n, ":authority", 10) == 0 { authority = keep(v, vn) }
            return 0
        }
        if !hasRequestLine { writeRequestLine() }
        fieldCount += 1
        switch nn {
        case 4 where memcmp(n, "host", 4) == 0:
            if !authority.isEmpty {
                // `:authority` is the Host; a `host` field must agree with it (RFC 9113 §8.3.1).
                if vn != Int(authority.count) || !HeaderNames.caselessEqualsMixed(v, outBuf.base + Int(authority.offset), vn) {
                    hostDisagrees = true
                }
                return 0
            }
        case 6 where memcmp(n, "cookie", 6) == 0:
            // Split cookie fields are joined into one line (RFC 9113 §8.2.3).
            if cookies.isEmpty {
                cookies = keep(v, vn)
            } else {
                outBuf.put(byte: 0x3B); outBuf.put(byte: 0x20)
                outBuf.put(v, count: vn)
                cookies = ByteRange(offset: Int(cookies.offset), count: outBuf.writerIndex - Int(cookies.offset))
            }
            return 0
        case 14 where memcmp(n, "content-length", 14) == 0:
            hasContentLength = true
        case 2 where memcmp(n, "te", 2) == 0:
            return 0   // only `trailers` gets this far; it means nothing to an HTTP/1.1 upstream
        default:
            break
        }
        inBuf.put(n, count: nn)
        inBuf.put(byte: 0x3A); inBuf.put(byte: 0x20)
        inBuf.put(v, count: vn)
        inBuf.put(byte: 0x0D); inBuf.put(byte: 0x0A)
        return 0
    }

    /// Copies a value into the scratch area; its range there.
    private func keep(_ v: UnsafeRawPointer, _ n: Int) -> ByteRange {
        let at = outBuf.writerIndex
        outBuf.put(v, count: n)
        if outBuf.isOverflowed { return .empty }
        return ByteRange(offset: at, count: n)
    }

    private func writeRequestLine() {
        hasRequestLine = true
        let o = UnsafeRawPointer(outBuf.base)
        inBuf.put(o + Int(method.offset), count: Int(method.count))
        inBuf.put(byte: 0x20)
        if path.isEmpty {
            inBuf.put(o + Int(authority.offset), count: Int(authority.count))   // CONNECT: authority-form
        } else {
            inBuf.put(o + Int(path.offset), count: Int(path.count))
        }
        inBuf.put(RequestHeadWriter.http11)
        if !authority.isEmpty {
            inBuf.put(RequestHeadWriter.host)
            inBuf.put(o + Int(authority.offset), count: Int(authority.count))
            inBuf.put(RequestHeadWriter.crlf)
        }
    }

    /// END_HEADERS: the HTTP/1.1 text is complete; parse it and start the exchange.
    func headComplete(endStream: Bool) {
        guard phase == .head else { return }
        if !hasRequestLine { writeRequestLine() }
        if !cookies.isEmpty {
            inBuf.put("cookie: ")
            inBuf.put(UnsafeRawPointer(outBuf.base) + Int(cookies.offset), count: Int(cookies.count))
            inBuf.put(RequestHeadWriter.crlf)
        }
        requestComplete = endStream
        if !endStream && !hasContentLength {
            // A body of unknown length: chunked to the HTTP/1.1 upstream.
            inBuf.put(RequestHeadWriter.chunked)
        }
        inBuf.put(RequestHeadWriter.crlf)
        outBuf.clear()
        phase = .deciding
        if inBuf.isOverflowed || outBuf.isOverflowed {
            return fail(status: 431, message: "request head too large")
        }
        if hostDisagrees { return fail(status: 400, message: "request target and Host disagree") }
        switch parser.parse(inBuf.readable, into: &request, headers: headers) {
        case .complete(let consumed):
            // Started once nghttp2 has handed over every frame of this read: a stream the
            // client resets in the same batch (rapid reset) costs no pipeline run and no
            // upstream connection.
            pendingHeadLength = consumed
            session.markDirty(self)
        case .failed(let e):
            fail(status: e.status, message: HTTP1Session.message(for: e))
        case .incomplete:
            fail(status: 400, message: "malformed request")
        }
    }

    /// A head that cannot become a request is answered like HTTP/1.1's.
    private func fail(status: Int, message: String) {
        exchange.open(peer: session.peerIP)
        exchange.assignGeneratedID()
        replyLocal(status: status, code: .badRequest, message: message)
    }

    private func startExchange(headLength: Int) {
        let r = request
        exchange.open(peer: session.peerIP)
        exchange.request.base = UnsafeRawPointer(inBuf.readPointer)
        exchange.request.method = r.method
        exchange.request.methodRange = r.methodRange
        exchange.request.path = r.path
        exchange.request.query = r.query
        exchange.request.hasQuery = r.hasQuery
        exchange.request.isOriginless = r.form == .asterisk || r.form == .authority
        if case .contentLength(let n) = r.framing { exchange.request.declaredBodyLength = n } else { exchange.request.declaredBodyLength = -1 }
        exchange.request.isTLS = session.isTLS
        exchange.begin(headLength: headLength)
        switch r.framing {
        case .none, .untilClose: requestBody = .none
        case .contentLength(let n): requestBody = n == 0 ? .none : .length(remaining: n)
        case .chunked: requestBody = .chunked
        }
        if requestComplete { requestBody = bodyAfterEnd() }
        act(on: Pipeline.run(exchange))
    }

    private func act(on step: Pipeline.Step) {
        switch step {
        case .forward: forward()
        case .wait: phase = .deciding
        case .refuse(let denial): replyLocal(status: denial.code.status, code: denial.code, message: exchange.refusalMessage(denial.code))
        case .bodyTooLarge: replyLocal(status: 413, code: .badRequest, message: "request body larger than the route allows")
        case .needBody:
            phase = .deciding
            if requestComplete { provideBody() } else { awaitingBody = true }
        case .noUpstreamCredential:
            replyLocal(status: 503, code: .upstreamUnavailable, message: Pipeline.noUpstreamCredentialMessage)
        }
    }

    /// The whole body is buffered (END_STREAM came; it fits one window): the phases go on.
    private func provideBody() {
        awaitingBody = false
        if let b = body {
            exchange.request.body = b.readable
        } else {
            exchange.request.body = UnsafeRawBufferPointer(start: nil, count: 0)
        }
        exchange.request.bodyReady = true
        act(on: Pipeline.run(exchange))
    }

    /// An extension of a metered answer's reservation came back (Redis).
    func meterResumed(_ outcome: ExtendOutcome) {
        guard phase == .proxying, upstream != nil else { return }
        meterExtended(outcome)
        session.markDirty(self)
        session.pump()
    }

    /// The store answered the phase this exchange waited in.
    func storeAnswered(_ step: Pipeline.Step) {
        guard phase == .deciding else { return }
        act(on: step)
        session.pump()
    }

    // MARK: the request body

    func bodyData(_ data: UnsafePointer<UInt8>, _ n: Int) {
        guard phase == .deciding || phase == .proxying || phase == .head else {
            // Answered already: the bytes are dropped, and the window given back.
            consume(n)
            return
        }
        if body == nil { body = context.takeBodyBuffer() }
        guard let b = body else { consume(n); return }
        if b.writableBytes < n { _ = b.compact() }
        if b.writableBytes < n {
            // More than the window we granted: nghttp2 enforces it, so this cannot happen.
            consume(n)
            return
        }
        b.write(UnsafeRawPointer(data), count: n)
        if phase == .proxying { session.markDirty(self) }
        if awaitingBody && b.writableBytes == 0 && !requestComplete {
            // A priced request's body must fit one window (it is read whole before admission).
            awaitingBody = false
            replyLocal(status: 413, code: .badRequest, message: "a priced request body may be \(HTTP2Session.streamWindow / 1024) KiB at most")
        }
    }

    func requestEnded() {
        requestComplete = true
        if phase == .deciding || phase == .proxying { requestBody = bodyAfterEnd() }
        if phase == .proxying { session.markDirty(self) }
        if awaitingBody && phase == .deciding { provideBody() }
    }

    /// What is left of the body once END_STREAM came: only buffered bytes.
    private func bodyAfterEnd() -> HTTP1Session.RequestBody {
        switch requestBody {
        case .none, .done: return requestBody
        case .length(let r): return r == 0 ? .done : requestBody   // nghttp2 checked the total
        case .chunked: return .chunked
        }
    }

    @inline(__always)
    private func consume(_ n: Int) {
        if n > 0, let s = nghttp2 { _ = nghttp2_session_consume(s, id, n) }
    }

    /// Moves buffered body bytes into the upstream's buffer (chunk-framed when the length is
    /// unknown) and opens the window by as much.
    private func moveBody(_ up: UpstreamConnection) -> Bool {
        var moved = 0
        let out = up.outBuf
        if let b = body {
            while b.readableBytes > 0 {
                if out.writableBytes < 64 && out.readerIndex > 0 { _ = out.compact() }
                switch requestBody {
                case .length(let remaining):
                    let take = min(b.readableBytes, out.writableBytes, Int(min(remaining, Int64(Int.max))))
                    if take <= 0 { break }
                    out.write(b.readPointer, count: take)
                    b.readerIndex += take
                    moved += take
                    let left = remaining - Int64(take)
                    requestBody = left == 0 ? .done : .length(remaining: left)
                    continue
                case .chunked:
                    let take = min(b.readableBytes, out.writableBytes - 24)
                    if take <= 0 { break }
                    requestBodyReceived += Int64(take)
                    if requestBodyReceived > Int64(maxBodyBytes) {
                        if isAnswerSubmitted { reset(NGHTTP2_CANCEL) } else {
                            replyLocal(status: 413, code: .badRequest, message: "request body larger than the route allows")
                        }
                        return true
                    }
                    out.write(hex: take)
                    out.write(HTTP1Session.crlf)
                    out.write(b.readPointer, count: take)
                    out.write(HTTP1Session.crlf)
                    b.readerIndex += take
                    moved += take
                    continue
                case .none, .done:
                    b.clear()   // bytes past the declared length: nghttp2 resets such a stream
                }
                break
            }
            if b.readableBytes == 0 { b.clear() }
        }
        consume(moved)
        exchange.bytesIn &+= Int64(moved)
        if requestComplete, case .chunked = requestBody, body?.readableBytes ?? 0 == 0, out.writableBytes >= 5 {
            out.write(HTTP1Session.lastChunk)
            requestBody = .done
            moved += 1
        }
        return moved > 0
    }

    // MARK: forwarding

    private func forward() {
        guard let pool = exchange.facts.pool else {
            return replyLocal(status: 502, code: .upstreamUnavailable, message: "no backend")
        }
        let up: UpstreamConnection
        switch pool.acquire() {
        case .success(let c): up = c
        case .failure(let f): return replyLocal(status: f.status, code: .upstreamUnavailable, message: HTTP1Session.message(for: f))
        }
        maxBodyBytes = exchange.facts.route?.maxBodyBytes ?? 0
        up.stream = self
        upstream = up
        up.outBuf.clear()
        up.inBuf.clear()
        up.parser.reset()
        up.sawEOF = false
        up.mustClose = false
        switch RequestHeadWriter.write(self, into: up.outBuf) {
        case .written: exchange.facts.upstreamSent = true
        case .tooLarge:
            drop(up)
            return replyLocal(status: 431, code: .badRequest, message: "request head too large to forward")
        case .tooManyConnectionOptions:
            drop(up)
            return replyLocal(status: 400, code: .badRequest, message: "Connection names more fields than are removed on forwarding")
        }
        phase = .proxying
        if up.state == .active {
            up.deadline.set(context.loop.now &+ up.pool.responseTimeoutNanos, fd: up.fd, loop: context.loop)
            up.isWritable = true
        }
        session.markDirty(self)
    }

    private func drop(_ up: UpstreamConnection) {
        upstream = nil
        up.stream = nil
        up.pool.retire(up)
    }

    func upstreamConnected(_ up: UpstreamConnection) {
        up.deadline.set(context.loop.now &+ up.pool.responseTimeoutNanos, fd: up.fd, loop: context.loop)
        step()
        session.pump()
    }

    func upstreamEvent(_ up: UpstreamConnection) {
        step()
        session.pump()
    }

    func upstreamFailed(_ up: UpstreamConnection, _ failure: UpstreamFailure) {
        guard up === upstream else { return }
        upstreamFailure(failure)
        session.pump()
    }

    /// One round of relaying, both ways (or the start of the exchange).
    func step() {
        if pendingHeadLength > 0 {
            let n = pendingHeadLength
            pendingHeadLength = 0
            if phase == .deciding { startExchange(headLength: n) }
        }
        guard phase == .proxying, let up = upstream else { return }
        var rounds = 0
        while rounds < 64 && phase == .proxying && upstream === up {
            rounds += 1
            var progress = false
            if !isRequestSent {
                if requestBody.isPending && moveBody(up) { progress = true }
                if phase != .proxying { return }
                if up.state == .active && up.isWritable && up.outBuf.readableBytes > 0 {
                    if flushUpstream(up) { progress = true }
                    if upstream !== up { return }
                }
                if up.outBuf.readableBytes == 0 && !requestBody.isPending && (requestComplete || requestBody == .none) {
                    isRequestSent = true
                }
            }
            if up.state == .active && up.isReadable && !responseBody.isDone {
                if readUpstream(up) { progress = true }
                if upstream !== up || phase != .proxying { return }
            } else if !responseBody.isDone && !responseBody.isAwaitingHead && up.inBuf.readableBytes > responsePass {
                // Bytes already read but not framed (de-chunking waited for room).
                let mark = (up.inBuf.readerIndex, responsePass, outBuf.writerIndex)
                frameResponse(up)
                if upstream !== up || phase != .proxying { return }
                if mark != (up.inBuf.readerIndex, responsePass, outBuf.writerIndex) { progress = true }
            }
            if isAnswerSubmitted && isDeferred && hasBodyBytes {
                isDeferred = false
                if let s = nghttp2 { _ = nghttp2_session_resume_data(s, id) }
            }
            if responseBody.isDone && responsePass == 0 && isRequestSent {
                // Everything the upstream sent has been taken: it can serve someone else.
                finishUpstream(up)
                if isDeferred, let s = nghttp2 { isDeferred = false; _ = nghttp2_session_resume_data(s, id) }
                return
            }
            if !progress { return }
        }
    }

    /// Answer bytes are waiting (buffered here or upstream, or still to come).
    private var isAnswerPending: Bool { outBuf.readableBytes > 0 || responsePass > 0 || !responseBody.isDone }

    private var hasBodyBytes: Bool { outBuf.readableBytes > 0 || responsePass > 0 || responseBody.isDone }

    private func flushUpstream(_ up: UpstreamConnection) -> Bool {
        let n = up.outBuf.readableBytes
        do {
            switch try up.transport.write(up.outBuf.readPointer, n, nil, 0) {
            case .wouldBlock:
                up.isWritable = false
                return false
            case .processed(let w):
                up.outBuf.readerIndex += w
                if up.outBuf.readableBytes == 0 { up.outBuf.clear() }
                if w < n { up.isWritable = false }
                return w > 0
            }
        } catch {
            upstreamFailure(.reset(error.code))
            return false
        }
    }

    private func finishUpstream(_ up: UpstreamConnection) {
        upstream = nil
        up.stream = nil
        let reusable = !up.head.wantsClose && !up.sawEOF && !up.mustClose && up.inBuf.readableBytes == 0
        if reusable { up.pool.release(up) } else { up.pool.retire(up) }
    }

    func upstreamFailure(_ failure: UpstreamFailure) {
        guard let up = upstream else { return }
        exchange.facts.metrics.countUpstreamError(backend: up.pool.backendIndex, kind: UpstreamErrorKind(failure))
        // A reused connection closed under an idempotent, body-less request: retry once, fresh.
        if up.isReused && !hasRetried && !isAnswerSubmitted && up.inBuf.readableBytes == 0
            && request.method.isIdempotent && requestBody == .none && responseBody.isAwaitingHead {
            switch failure {
            case .reset, .closedEarly:
                hasRetried = true
                if retry(from: up) { return }
            default: break
            }
        }
        upstream = nil
        up.stream = nil
        up.pool.retire(up)
        responsePass = 0
        if isAnswerSubmitted {
            reset(NGHTTP2_INTERNAL_ERROR)   // the head is out: a cut body is a reset stream
            return
        }
        replyLocal(status: failure.status, code: .upstreamUnavailable, message: HTTP1Session.message(for: failure))
    }

    private func retry(from old: UpstreamConnection) -> Bool {
        let pool = old.pool
        guard case .success(let fresh) = pool.acquire(fresh: true) else { return false }
        upstream = fresh
        fresh.stream = self
        fresh.outBuf.write(old.outBuf.base, count: old.outBuf.writerIndex)
        old.stream = nil
        pool.retire(old)
        isRequestSent = false
        if fresh.state == .active {
            fresh.deadline.set(context.loop.now &+ pool.responseTimeoutNanos, fd: fresh.fd, loop: context.loop)
        }
        session.markDirty(self)
        return true
    }

    // MARK: relay hooks (UpstreamRelaying)

    var isRelaying: Bool { phase == .proxying }

    /// Interim (1xx) answers are not relayed over HTTP/2.
    func relayInterim(_ up: UpstreamConnection) {}

    func answerHeadWritten(_ up: UpstreamConnection) -> Bool { submitAnswer() }

    // MARK: answering

    func replyLocal(status: Int, code: DenialCode, message: String) {
        if let up = upstream { drop(up) }
        exchange.answer(status: status, code: MetricCode.index(code))
        outBuf.clear()
        responsePass = 0
        LocalReply.write(self, status: status, code: code, message: message, into: outBuf)
        responseBody = .done
        phase = .replying
        _ = submitAnswer()
    }

    /// Turns the HTTP/1.1 head at the front of `outBuf` into HEADERS (with a body to follow
    /// unless there is none). False when it could not be sent (the stream is reset).
    private func submitAnswer() -> Bool {
        guard let s = nghttp2 else { return false }
        let nv = context.h2Fields
        let count = H2Fields.fromHead(outBuf, into: nv.array, capacity: H2FieldScratch.capacity,
                                      scratch: nv.names, scratchBytes: H2FieldScratch.nameBytes)
        guard count > 0 else {
            reset(NGHTTP2_INTERNAL_ERROR)
            return false
        }
        isAnswerSubmitted = true
        let noBody = responseBody.isDone && outBuf.readableBytes == 0 && responsePass == 0
        let rv: Int32
        if noBody {
            rv = nghttp2_submit_response(s, id, nv.array, count, nil)
        } else {
            var provider = nghttp2_data_provider()
            provider.source.ptr = Unmanaged.passUnretained(self).toOpaque()
            provider.read_callback = h2ReadBody
            rv = nghttp2_submit_response(s, id, nv.array, count, &provider)
        }
        if rv != 0 { reset(NGHTTP2_INTERNAL_ERROR); return false }
        return true
    }

    /// nghttp2 asks for body bytes (at most `length`, within the client's window).
    func readBody(into buf: UnsafeMutablePointer<UInt8>, _ length: Int, _ flags: UnsafeMutablePointer<UInt32>) -> Int {
        var n = 0
        let a = min(outBuf.readableBytes, length)
        if a > 0 {
            UnsafeMutableRawPointer(buf).copyMemory(from: outBuf.readPointer, byteCount: a)
            outBuf.readerIndex += a
            if outBuf.readableBytes == 0 { outBuf.clear() }
            n = a
        }
        if n < length && responsePass > 0, let up = upstream {
            let b = min(responsePass, length - n)
            UnsafeMutableRawPointer(buf + n).copyMemory(from: up.inBuf.readPointer, byteCount: b)
            up.inBuf.readerIndex += b
            responsePass -= b
            if up.inBuf.readableBytes == 0 { up.inBuf.clear() }
            n += b
            session.markDirty(self)   // room upstream: read on
        } else if phase == .proxying && n > 0 {
            session.markDirty(self)
        }
        exchange.bytesOut &+= Int64(n)
        if responseBody.isDone && outBuf.readableBytes == 0 && responsePass == 0 {
            if exchange.meterState.endsShort {
                // Cut off short of its content-length: END_STREAM would make it look whole
                // (RFC 9113 §8.1.1). What is copied goes out; then nghttp2 resets the stream.
                return n > 0 ? n : Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
            }
            flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
            if let up = upstream, phase == .proxying, isRequestSent { finishUpstream(up) }
            return n
        }
        if n == 0 {
            isDeferred = true
            return Int(NGHTTP2_ERR_DEFERRED.rawValue)
        }
        return n
    }

    /// Our END_STREAM went out: the answer is complete. A request still sending its body is
    /// told to stop (RST_STREAM NO_ERROR, RFC 9113 §8.1).
    func answerSent() {
        phase = .done
        if !requestComplete { reset(NGHTTP2_NO_ERROR) }
    }

    func reset(_ code: nghttp2_error_code) {
        if let up = upstream { drop(up) }
        phase = .done
        if let s = nghttp2 { _ = nghttp2_submit_rst_stream(s, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, code.rawValue) }
    }

    /// The connection-level deadline passed: a stream still waiting for its client is ended.
    /// True when this stream was waiting on the client.
    func timedOut() -> Bool {
        if isAnswerSubmitted && phase != .done && isAnswerPending, let s = nghttp2,
           nghttp2_session_get_stream_remote_window_size(s, id) <= 0 || nghttp2_session_get_remote_window_size(s) <= 0 {
            // An answer the client's flow-control window will not take, and the client sent
            // nothing for a body time-out (nothing opens it): the stream is given up, as
            // HTTP/1.1 closes a client that stops reading.
            reset(NGHTTP2_CANCEL)
            return true
        }
        switch phase {
        case .head:
            reset(NGHTTP2_CANCEL)
            return true
        case .deciding, .proxying:
            guard !requestComplete else { return false }
            if isAnswerSubmitted { reset(NGHTTP2_CANCEL) } else {
                replyLocal(status: 408, code: .badRequest, message: "request body not received in time")
            }
            return true
        case .replying, .done:
            return false
        }
    }

    /// nghttp2 closed the stream (answered, reset by either side, or the connection ended).
    func closed(errorCode: UInt32) {
        if let up = upstream { drop(up) }
        exchange.settle()
        exchange.downstream = .detached
        phase = .done
        if let w = workspace {
            workspace = nil
            inBuf.detachStorage()
            outBuf.detachStorage()
            exchange.detachStorage()
            context.giveBack(w)
        }
        if let b = body { body = nil; context.giveBackBodyBuffer(b) }
    }
}

/// Per-loop scratch for an answer's fields on their way into HEADERS (nghttp2 copies them on
/// submission, so one per loop serves every stream).
final class H2FieldScratch {
    static let capacity = 256
    static let nameBytes = 32 * 1024
    let array = UnsafeMutablePointer<nghttp2_nv>.allocate(capacity: capacity)
    let names = UnsafeMutableRawPointer.allocate(byteCount: nameBytes, alignment: 8)
}

/// HTTP/1.1 answer heads (as our head writers produce them) to HTTP/2 fields.
enum H2Fields {
    /// Reads the head at `buf`'s front (status line, fields, blank line), consumes it, and
    /// fills `nv`: `:status`, then every field but the connection-specific ones, names in
    /// lower case (copied to `scratch`). Returns the count, 0 when it does not fit.
    ///
    /// Values that differ on every answer (`x-request-id`, `ratelimit`, `retry-after`) are
    /// sent "never indexed": added to the HPACK table they would only evict useful entries
    /// (and, all under one name, make every lookup walk a long chain: measured, a third of
    /// the cost of an HTTP/2 answer).
    static func fromHead(_ buf: IOBuffer, into nv: UnsafeMutablePointer<nghttp2_nv>, capacity: Int,
                         scratch: UnsafeMutableRawPointer, scratchBytes: Int) -> Int {
        let p = buf.readPointer
        let n = buf.readableBytes
        // "HTTP/1.1 SSS ..."
        guard n >= 16, p.load(fromByteOffset: 8, as: UInt8.self) == 0x20 else { return 0 }
        var count = 0
        scratch.copyMemory(from: H2Fields.statusName.utf8Start, byteCount: 7)
        var used = 8
        nv[0] = nghttp2_nv(name: scratch.assumingMemoryBound(to: UInt8.self), value: (p + 9).assumingMemoryBound(to: UInt8.self),
                           namelen: 7, valuelen: 3, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
        count = 1
        guard var i = lineEnd(p, from: 9, n) else { return 0 }
        i += 2
        while i + 1 < n {
            if p.load(fromByteOffset: i, as: UInt8.self) == 0x0D {
                buf.readerIndex += i + 2
                if buf.readableBytes == 0 { buf.clear() }
                return count
            }
            guard let colon = memchr(p + i, 0x3A, n - i) else { return 0 }
            let nameStart = i
            let nn = UnsafeMutableRawPointer(colon) - (p + i)
            i += nn + 1
            while i < n, case let c = p.load(fromByteOffset: i, as: UInt8.self), c == 0x20 || c == 0x09 { i += 1 }
            let valueStart = i
            guard let end = lineEnd(p, from: i, n) else { return 0 }
            var ve = end
            while ve > valueStart, case let c = p.load(fromByteOffset: ve - 1, as: UInt8.self), c == 0x20 || c == 0x09 { ve -= 1 }
            i = end + 2
            let kind = HeaderNames.classify(p + nameStart, nn)
            if kind.isHopByHop { continue }
            guard used + nn + 8 <= scratchBytes, count < capacity else { return 0 }
            let lower = scratch + used
            lowercase(p + nameStart, nn, into: lower)
            used += nn
            let perAnswer = kind == .xRequestID || (nn == 9 && memcmp(lower, "ratelimit", 9) == 0)
                || (nn == 11 && memcmp(lower, "retry-after", 11) == 0)
            nv[count] = nghttp2_nv(name: lower.assumingMemoryBound(to: UInt8.self),
                                   value: (p + valueStart).assumingMemoryBound(to: UInt8.self), namelen: nn, valuelen: ve - valueStart,
                                   flags: UInt8(perAnswer ? NGHTTP2_NV_FLAG_NO_INDEX.rawValue : NGHTTP2_NV_FLAG_NONE.rawValue))
            count += 1
        }
        return 0
    }

    /// ASCII lower case, eight bytes at a time (field names are tchar: all below 0x80, so a
    /// byte plus 0x3F or 0x25 never carries into the next). `out` has room for `n` rounded
    /// up to 8.
    @inline(__always)
    static func lowercase(_ p: UnsafeRawPointer, _ n: Int, into out: UnsafeMutableRawPointer) {
        var k = 0
        while k < n {
            var w: UInt64 = 0
            let take = min(8, n - k)
            withUnsafeMutableBytes(of: &w) { $0.baseAddress!.copyMemory(from: p + k, byteCount: take) }
            let aboveA = w &+ 0x3F3F_3F3F_3F3F_3F3F       // high bit set from 'A' (0x41) up
            let aboveZ = w &+ 0x2525_2525_2525_2525       // high bit set from '[' (0x5B) up
            w |= ((aboveA & ~aboveZ) & 0x8080_8080_8080_8080) >> 2
            (out + k).storeBytes(of: w, as: UInt64.self)
            k += 8
        }
    }

    /// The offset of the CR of the CRLF ending the line that `from` is in.
    @inline(__always)
    private static func lineEnd(_ p: UnsafeMutableRawPointer, from: Int, _ n: Int) -> Int? {
        guard from < n, let cr = memchr(p + from, 0x0D, n - from) else { return nil }
        let at = UnsafeMutableRawPointer(cr) - p
        return at + 1 < n ? at : nil
    }

    static let statusName: StaticString = ":status"
}
