import Backends
import Glibc
import Policy
import Runtime

/// One downstream HTTP/1.1 connection: bytes to exchanges (one at a time; pipelined requests
/// wait, unread, in `inBuf`) and their answers back to bytes, with keep-alive, framing and
/// the relay of both bodies to and from the upstream.
///
/// Every event (its own, or its upstream's) lands in `drive()`, which pumps the state
/// machine until no step makes progress: no callback nests another, and pipelined
/// requests are served in a loop, not by recursion.
///
/// An idle connection holds no buffers and no exchange: they are lent by the loop when the
/// first byte of a head arrives and given back when the connection goes idle again.
final class HTTP1Session: EventHandler, TimerHandler, UpstreamRelaying {
    enum State: UInt8 {
        /// A TLS handshake is under way (TLS listeners only).
        case handshaking
        /// Waiting for (the rest of) a request head.
        case readingHead
        /// Forwarding an exchange to an upstream (or running its phases).
        case proxying
        /// A phase waits for a store (Redis) reply; nothing is read meanwhile.
        case waiting
        /// A per-token route: the whole request body is read (into `sideBody`) before admission.
        case collectingBody
        /// Writing a locally generated response.
        case replying
        case closed
    }
    enum RequestBody: Equatable {
        case none
        case length(remaining: Int64)
        case chunked
        case done
        /// Body bytes are still to come from the client.
        var isPending: Bool {
            switch self {
            case .length, .chunked: return true
            case .none, .done: return false
            }
        }
    }
    enum ResponseBody: Equatable {
        /// No head yet.
        case awaitingHead
        case length(remaining: Int64)
        /// Chunked, validated and passed through as is.
        case chunkedPass
        /// Chunked from upstream, de-chunked for an HTTP/1.0 client (then close).
        case chunkedDecode
        case untilClose
        case done
        var isDone: Bool { if case .done = self { return true } else { return false } }
        var isAwaitingHead: Bool { if case .awaitingHead = self { return true } else { return false } }
    }

    let fd: Int32
    let transport: Transport
    let peer: PeerAddress
    let peerIP: IPAddress
    let isTLS: Bool
    // Strong: calls through an unowned(unsafe) reference retain and release it around
    // every call (measured); the context outlives every connection anyway.
    let context: LoopContext
    var slot = -1

    /// Storage lent by the loop while a request is in flight (`attachWorkspace`); none while
    /// idle.
    let inBuf = IOBuffer()
    let outBuf = IOBuffer()
    let exchange: Exchange
    /// The exchange's header table, held here too (a `let` of the session: no retain per use).
    let headers: HeaderTable
    private var workspace: UnsafeMutableRawPointer?
    var hasWorkspace: Bool { workspace != nil }
    var headBytes: UnsafeRawBufferPointer { inBuf.readable }
    var decodesChunked: Bool { request.version != .http11 || exchange.meterState.mode != .off }
    /// Only an answer that came chunked: one framed by Content-Length or by close passes framed
    /// as its head says (a cut-off ends it short: the connection closes).
    var rechunks: Bool { request.version == .http11 && exchange.meterState.mode != .off && responseBody == .chunkedDecode }
    /// `transport.mayHoldMore`, read once (a stored Bool on the read path, not a switch).
    let mayHoldMore: Bool
    /// When the connection last went idle holding its workspace (loop clock); the loop's
    /// sweep takes the workspace back once it has been idle a while (`releaseIfIdle`).
    var idleSince: UInt64 = 0
    var parser: HTTP1RequestParser
    var request = HTTP1RequestHead()
    var state: State = .readingHead
    var deadline = Deadline()
    var isReadable = false
    var isWritable = true
    var sawEOF = false
    var closeAfterResponse = false
    var isDrainRequested = false
    /// epoll reported the client's FIN (or an error): read until a read says so.
    var hasHungUp = false
    /// Empty lines skipped before the current request line (bounded).
    var emptyLines = 0
    /// No request yet: the connection may still turn out to be HTTP/2 (h2c prior knowledge).
    var isFresh = true

    // The exchange in progress.
    var upstream: UpstreamConnection?
    var maxBodyBytes = 0
    var requestBody: RequestBody = .none
    var requestBodyReceived: Int64 = 0
    var requestChunks = ChunkedDecoder()
    /// Request-body bytes at `inBuf.readerIndex` to be written raw to the upstream.
    var requestPass = 0
    var isRequestSent = false
    var responseBody: ResponseBody = .awaitingHead
    var responseChunks = ChunkedDecoder()
    /// Response bytes at `upstream.inBuf.readerIndex` to be written raw to the client.
    var responsePass = 0
    var isResponseHeadSent = false
    var hasRetried = false
    /// When the current request body's deadline falls (it moves with the bytes received).
    var bodyDeadline: UInt64 = 0
    /// A per-token request's body, read whole before admission and then sent on from here.
    private var sideBody: IOBuffer?
    private var sideBodyTarget = 0
    /// The largest body a per-token request may have (it is read whole before admission).
    static let maxPricedBody = HTTP2Session.streamWindow

    init(fd: Int32, peer: PeerAddress, tls: TLSStream?, context: LoopContext) {
        self.fd = fd
        self.transport = tls.map { .tls($0) } ?? .plain(fd)
        mayHoldMore = transport.mayHoldMore
        let isTLS = tls != nil
        if isTLS { state = .handshaking }
        self.peer = peer
        self.peerIP = peer.text.withUnsafeBytes { IPAddress.parse($0) } ?? IPAddress(hi: 0, lo: 0)
        self.isTLS = isTLS
        self.context = context
        parser = HTTP1RequestParser(limits: context.settings.limits)
        exchange = Exchange(context: context)
        headers = exchange.headers
        exchange.downstream = .h1(self)   // the cycle is broken in close()
    }

    /// Storage from the loop, for a request that is arriving.
    @inline(__always)
    private func attachWorkspace() {
        if hasWorkspace { return }
        let w = context.takeWorkspace()
        let l = context.workspaceLayout
        inBuf.attachStorage(w, capacity: l.inBytes)
        outBuf.attachStorage(w + l.outOffset, capacity: l.outBytes)
        exchange.attachStorage(headers: w + l.headersOffset, path: w + l.pathOffset)
        workspace = w
    }

    /// The loop's sweep: a keep-alive connection idle since before `cutoff` gives its
    /// workspace back (not at every idle moment: a busy connection would pay for the round
    /// trip to the pool on every request).
    func releaseIfIdle(before cutoff: UInt64) {
        guard hasWorkspace, state == .readingHead, idleSince != 0, idleSince < cutoff,
              inBuf.readableBytes == 0, outBuf.readableBytes == 0 else { return }
        detachWorkspace()
    }

    /// Gives the buffers and the exchange back (idle keep-alive, or closed).
    private func detachWorkspace() {
        guard let w = workspace else { return }
        workspace = nil
        inBuf.detachStorage()
        outBuf.detachStorage()
        exchange.detachStorage()
        context.giveBack(w)
    }

    func start() {
        // A handshake has the header time-out; a plain connection the idle one.
        let wait = state == .handshaking ? context.headerTimeoutNanos : context.idleTimeoutNanos
        deadline.set(context.loop.now &+ wait, fd: fd, loop: context.loop)
    }

    /// Drives the TLS handshake; true when it made progress (done: heads may be read).
    private func stepHandshake() -> Bool {
        guard case .tls(let stream) = transport else { state = .readingHead; return true }
        switch stream.handshake() {
        case .done:
            if stream.isH2 {
                becomeHTTP2()
                return false
            }
            state = .readingHead
            deadline.set(context.loop.now &+ context.idleTimeoutNanos, fd: fd, loop: context.loop)
            isReadable = true   // the first request may have come with the last handshake flight
            return true
        case .wantRead:
            isReadable = false
            return false
        case .wantWrite:
            isWritable = false
            return false
        case .failed(let reason):
            context.gauges.countHandshakeFailure(reason)
            close()
            return false
        }
    }

    // MARK: events

    func handleEvent(_ events: EventSet, loop: EventLoop) {
        if events.hasInput { isReadable = true }
        if events.hasOutput { isWritable = true }
        if events.hasHangup { hasHungUp = true }
        // A TLS read that wanted a write goes again once the socket can take it.
        if isTLS && events.hasOutput, case .tls(let s) = transport, s.readWantsWrite { isReadable = true }
        drive()
    }

    func handleTimer(loop: EventLoop) {
        guard state != .closed, deadline.expired(fd: fd, loop: loop) else { return }
        switch state {
        case .readingHead:
            if inBuf.readableBytes == 0 { close() } else { replyAndClose(status: 408, code: .badRequest, message: "request head not received in time") }
        case .proxying:
            if requestBody != .done && requestBody != .none {
                // The client stopped sending its body.
                if isResponseHeadSent { abort() } else { replyAndClose(status: 408, code: .badRequest, message: "request body not received in time") }
            }
        case .replying:
            close()   // the client does not read what we write
        case .handshaking:
            context.gauges.countHandshakeFailure("timeout")
            close()
        case .collectingBody:
            replyAndClose(status: 408, code: .badRequest, message: "request body not received in time")
        case .waiting, .closed:
            break
        }
        drive()
    }

    func upstreamConnected(_ up: UpstreamConnection) {
        up.deadline.set(context.loop.now &+ up.pool.responseTimeoutNanos, fd: up.fd, loop: context.loop)
        drive()
    }

    func upstreamEvent(_ up: UpstreamConnection) { drive() }

    func upstreamFailed(_ up: UpstreamConnection, _ failure: UpstreamFailure) {
        guard up === upstream else { return }
        upstreamFailure(failure)
        drive()
    }

    // MARK: the pump

    func drive() {
        var spins = 0
        while state != .closed {
            spins += 1
            if spins > 10_000 { break }   // defensive: a bug must not spin the loop forever
            switch state {
            case .readingHead:
                if !stepReadingHead() { return }
            case .proxying:
                if !stepProxying() { return }
            case .replying:
                if !flushClient() { return }
                if outBuf.readableBytes == 0 { finishLocalReply() } else { return }
            case .handshaking:
                if !stepHandshake() { return }
            case .waiting:
                return
            case .collectingBody:
                if !stepCollectingBody() { return }
            case .closed:
                return
            }
        }
    }

    /// Returns true when it made progress (call again).
    private func stepReadingHead() -> Bool {
        var isParseable = inBuf.readableBytes > 0
        if isParseable && inBuf.readPointer.load(as: UInt8.self) == 0x0D {
            isParseable = skipEmptyLines()
            if state == .closed { return false }
        }
        if isFresh && isParseable && inBuf.readPointer.load(as: UInt8.self) == 0x50 {
            // `PRI * HTTP/2.0`: HTTP/2 with prior knowledge (h2c) on a plain listener.
            switch Self.matchPreface(inBuf.readable) {
            case .yes: becomeHTTP2(); return false
            case .partial: isParseable = false
            case .no: break
            }
        }
        if isParseable && inBuf.readableBytes > 0 {
            switch parser.parse(inBuf.readable, into: &request, headers: headers) {
            case .complete(let consumed):
                startExchange(headLength: consumed)
                return true
            case .failed(let e):
                replyAndClose(status: e.status, code: .badRequest, message: Self.message(for: e))
                return true
            case .incomplete:
                break
            }
        }
        if sawEOF { close(); return false }
        if !isReadable { return false }
        attachWorkspace()
        idleSince = 0
        if inBuf.writableBytes == 0 { inBuf.compact() }
        if inBuf.writableBytes == 0 {
            replyAndClose(status: 431, code: .badRequest, message: "request head too large")
            return true
        }
        let hadBytes = inBuf.readableBytes > 0
        let n = readClient()
        if n > 0 && !hadBytes {
            // First bytes of a head: the header deadline replaces the idle one.
            deadline.set(context.loop.now &+ context.headerTimeoutNanos, fd: fd, loop: context.loop)
        }
        return n > 0 || sawEOF
    }

    /// RFC 9112 §2.2: empty lines (CRLF) before a request line are ignored (older clients
    /// send one after a POST body), a few of them; false when a lone CR must wait for its LF.
    private func skipEmptyLines() -> Bool {
        while inBuf.readableBytes > 0 && inBuf.readPointer.load(as: UInt8.self) == 0x0D {
            if inBuf.readableBytes < 2 {
                if sawEOF { close() }
                return false
            }
            guard inBuf.readPointer.load(fromByteOffset: 1, as: UInt8.self) == 0x0A, emptyLines < 8 else {
                return true   // the parser refuses it
            }
            inBuf.readerIndex += 2
            emptyLines += 1
        }
        if inBuf.readableBytes == 0 { inBuf.clear() }
        return true
    }

    /// Reads from the client into `inBuf`; returns bytes read (0 on EOF/EAGAIN/error).
    @inline(__always)
    private func readClient() -> Int {
        let want = inBuf.writableBytes
        do {
            switch try transport.read(into: inBuf.writePointer, count: want) {
            case .processed(let n):
                if n == 0 { sawEOF = true; isReadable = false; return 0 }
                inBuf.writerIndex += n
                // Drained (edge-triggered: a new edge will come), unless the FIN came in
                // the same edge as the data.
                if n < want && !hasHungUp && !mayHoldMore { isReadable = false }
                return n
            case .wouldBlock:
                isReadable = false
                return 0
            }
        } catch {
            sawEOF = true
            isReadable = false
            return 0
        }
    }

    // MARK: starting an exchange

    private func startExchange(headLength: Int) {
        state = .proxying
        isFresh = false
        emptyLines = 0
        exchange.open(peer: peerIP)
        exchange.request.base = UnsafeRawPointer(inBuf.readPointer)
        exchange.request.method = request.method
        exchange.request.methodRange = request.methodRange
        exchange.request.path = request.path
        exchange.request.query = request.query
        exchange.request.hasQuery = request.hasQuery
        exchange.request.isOriginless = request.form == .asterisk || request.form == .authority
        if case .contentLength(let n) = request.framing {
            exchange.request.declaredBodyLength = n
        } else {
            exchange.request.declaredBodyLength = -1
        }
        exchange.request.isTLS = isTLS
        exchange.begin(headLength: headLength)
        deadline.clear()
        closeAfterResponse = request.wantsClose || isDrainRequested
        requestBodyReceived = 0
        isRequestSent = false
        isResponseHeadSent = false
        responseBody = .awaitingHead
        responsePass = 0
        requestPass = 0
        hasRetried = false

        switch request.framing {
        case .none, .untilClose: requestBody = .none
        case .contentLength(let n): requestBody = n == 0 ? .none : .length(remaining: n)
        case .chunked:
            requestBody = .chunked
            requestChunks.reset()
        }
        act(on: Pipeline.run(exchange))
    }

    /// Carries out what the pipeline decided.
    private func act(on step: Pipeline.Step) {
        switch step {
        case .forward:
            state = .proxying
            maxBodyBytes = exchange.facts.route?.maxBodyBytes ?? 0
            forward(headLength: exchange.facts.headLength)
        case .wait:
            state = .waiting
        case .refuse(let denial):
            state = .proxying
            deny(denial.code, headLength: exchange.facts.headLength)
        case .bodyTooLarge:
            state = .proxying
            replyLocal(status: 413, code: .badRequest, message: "request body larger than the route allows",
                       headLength: exchange.facts.headLength, forceClose: true)
        case .needBody:
            beginCollectingBody()
        case .noUpstreamCredential:
            state = .proxying
            replyLocal(status: 503, code: .upstreamUnavailable, message: Pipeline.noUpstreamCredentialMessage,
                       headLength: exchange.facts.headLength, forceClose: requestBody != .none)
        }
    }

    // MARK: per-token requests: the body before admission

    private func beginCollectingBody() {
        let headLength = exchange.facts.headLength
        switch request.framing {
        case .none, .untilClose:
            exchange.request.bodyReady = true
            state = .proxying
            act(on: Pipeline.run(exchange))
        case .chunked:
            state = .proxying
            replyLocal(status: 411, code: .badRequest, message: "a priced request needs a Content-Length body",
                       headLength: headLength, forceClose: true)
        case .contentLength(let n):
            guard n <= Int64(Self.maxPricedBody), n <= Int64(exchange.facts.route?.maxBodyBytes ?? 0) else {
                state = .proxying
                return replyLocal(status: 413, code: .badRequest,
                                  message: "a priced request body may be \(Self.maxPricedBody / 1024) KiB at most",
                                  headLength: headLength, forceClose: true)
            }
            let b = context.takeBodyBuffer()
            b.clear()
            sideBody = b
            sideBodyTarget = Int(n)
            state = .collectingBody
            if request.expectsContinue && inBuf.readableBytes == headLength { outBuf.write(Self.continue100) }
            bodyDeadline = context.loop.now &+ context.bodyTimeoutNanos
            deadline.set(bodyDeadline, fd: fd, loop: context.loop)
            takeCollectedBytes()
        }
    }

    /// Moves body bytes that follow the head in `inBuf` into `sideBody` (the head stays in
    /// place: the exchange's ranges point into it); the body complete, the phases go on.
    private func takeCollectedBytes() {
        guard let b = sideBody else { return }
        let headEnd = inBuf.readerIndex + exchange.facts.headLength
        let avail = inBuf.writerIndex - headEnd
        let take = min(avail, sideBodyTarget - b.readableBytes)
        if take > 0 {
            b.write(UnsafeRawPointer(inBuf.base + headEnd), count: take)
            let tail = avail - take
            if tail > 0 { memmove(inBuf.base + headEnd, inBuf.base + headEnd + take, tail) }
            inBuf.writerIndex = headEnd + tail
        }
        guard b.readableBytes == sideBodyTarget, state == .collectingBody else { return }
        exchange.request.body = b.readable
        exchange.request.bodyReady = true
        exchange.bytesIn &+= Int64(sideBodyTarget)
        requestBody = .none      // read whole; `sideBody` goes upstream after the head
        deadline.clear()
        state = .proxying
        act(on: Pipeline.run(exchange))
    }

    private func stepCollectingBody() -> Bool {
        if outBuf.readableBytes > 0 && isWritable { _ = flushClient() }
        if state != .collectingBody { return false }
        guard isReadable, inBuf.writableBytes > 0 else {
            if sawEOF { close() }
            return false
        }
        let n = readClient()
        if n > 0 {
            extendBodyDeadline(by: n)
            takeCollectedBytes()
            return true
        }
        if sawEOF { close() }
        return false
    }

    private func releaseSideBody() {
        if let b = sideBody {
            sideBody = nil
            context.giveBackBodyBuffer(b)
        }
    }

    /// An extension of a metered answer's reservation came back (Redis).
    func meterResumed(_ outcome: ExtendOutcome) {
        guard state == .proxying, upstream != nil else { return }
        meterExtended(outcome)
        drive()
    }

    /// The exchange's store wait ended (its completion ran the pipeline on).
    func storeAnswered(_ step: Pipeline.Step) {
        guard state == .waiting else { return }
        state = .proxying
        act(on: step)
        drive()
    }

    // MARK: forwarding

    func forward(headLength: Int) {
        guard let pool = exchange.facts.pool else {
            return replyLocal(status: 502, code: .upstreamUnavailable, message: "no backend", headLength: headLength,
                              forceClose: true)
        }
        let up: UpstreamConnection
        switch pool.acquire() {
        case .success(let c): up = c
        case .failure(let f):
            return replyLocal(status: f.status, code: .upstreamUnavailable, message: Self.message(for: f), headLength: headLength,
                              forceClose: requestBody != .none)
        }
        up.client = self
        upstream = up
        up.outBuf.clear()
        up.inBuf.clear()
        up.parser.reset()
        up.sawEOF = false
        up.mustClose = false
        switch RequestHeadWriter.write(self, into: up.outBuf) {
        case .written:
            exchange.facts.upstreamSent = true
        case .tooLarge:
            up.pool.retire(up)
            upstream = nil
            return replyLocal(status: 431, code: .badRequest, message: "request head too large to forward", headLength: headLength, forceClose: true)
        case .tooManyConnectionOptions:
            up.pool.retire(up)
            upstream = nil
            return replyLocal(status: 400, code: .badRequest, message: "Connection names more fields than are removed on forwarding",
                              headLength: headLength, forceClose: true)
        }
        inBuf.readerIndex += headLength
        if request.expectsContinue && requestBody != .none && inBuf.readableBytes == 0 {
            outBuf.write(Self.continue100)
        }
        if up.state == .active {
            up.deadline.set(context.loop.now &+ up.pool.responseTimeoutNanos, fd: up.fd, loop: context.loop)
            up.isWritable = true
        }
        if requestBody != .none {
            bodyDeadline = context.loop.now &+ context.bodyTimeoutNanos
            deadline.set(bodyDeadline, fd: fd, loop: context.loop)
        }
    }

    /// One round of the exchange; true when something moved.
    private func stepProxying() -> Bool {
        guard let up = upstream else {
            // A local reply replaced the exchange, or it finished.
            return false
        }
        var progress = false

        // Request side: client → upstream.
        if !isRequestSent {
            if let sb = sideBody {
                let out = up.outBuf
                if out.writableBytes == 0 && out.readerIndex > 0 { _ = out.compact() }
                let take = min(sb.readableBytes, out.writableBytes)
                if take > 0 {
                    out.write(sb.readPointer, count: take)
                    sb.readerIndex += take
                    progress = true
                }
                if sb.readableBytes == 0 { releaseSideBody() }
            }
            if requestBody.isPending {
                if frameRequestBody(up) { progress = true }
                if case .closed = state { return false }
            }
            if up.state == .active && up.isWritable && (up.outBuf.readableBytes > 0 || requestPass > 0) {
                if flushUpstream(up) { progress = true }
                if state == .closed || upstream !== up { return true }
            }
            if up.outBuf.readableBytes == 0 && requestPass == 0 && !requestBody.isPending && sideBody == nil {
                isRequestSent = true
                progress = true
            }
        } else if !requestBody.isPending {
            // Pipelined bytes may wait; only watch for the client going away.
        }

        // Response side: upstream → client.
        if up.state == .active && up.isReadable && !responseBody.isDone {
            if readUpstream(up) { progress = true }
            if state == .closed || upstream !== up { return true }
        } else if (responseBody == .chunkedDecode || exchange.meterState.mode != .off) && !responseBody.isDone
                    && up.inBuf.readableBytes > 0 {
            // Chunks already read wait for room in outBuf (an HTTP/1.0 client reading slowly).
            let mark = up.inBuf.readerIndex
            frameResponse(up)
            if state == .closed || upstream !== up { return true }
            if up.inBuf.readerIndex != mark { progress = true }
        }
        if isWritable && (outBuf.readableBytes > 0 || responsePass > 0) {
            if flushClient() { progress = true }
            if state == .closed { return false }
        }
        if responseBody.isDone && outBuf.readableBytes == 0 && responsePass == 0 {
            finishExchange(up)
            return true
        }
        // A client that hung up while we wait: nothing can be delivered.
        if isReadable && !sawEOF && !requestBody.isPending && inBuf.writableBytes > 0 {
            _ = readClient()   // pipelined bytes, or EOF
            if sawEOF { closeAfterResponse = true }
            progress = progress || isReadable
        }
        return progress
    }

    /// Moves request-body bytes from `inBuf` toward the upstream (raw for Content-Length,
    /// re-encoded for chunked). Reads more from the client when there is room.
    private func frameRequestBody(_ up: UpstreamConnection) -> Bool {
        var progress = false
        if isReadable && inBuf.writableBytes == 0 && inBuf.readerIndex > 0 && requestPass == 0 { inBuf.compact() }
        if isReadable && inBuf.writableBytes > 0 {
            let n = readClient()
            if n > 0 {
                progress = true
                extendBodyDeadline(by: n)
            }
            if sawEOF && n == 0 {
                // The client went away in the middle of its body.
                abort()
                return false
            }
        }
        switch requestBody {
        case .length(let remaining):
            let avail = inBuf.readableBytes - requestPass
            if avail > 0 {
                let take = Int(min(Int64(avail), remaining))
                requestPass += take
                exchange.bytesIn &+= Int64(take)
                let left = remaining - Int64(take)
                requestBody = left == 0 ? .done : .length(remaining: left)
                if left == 0 { deadline.clear() }
                progress = true
            }
        case .chunked:
            chunkLoop: while inBuf.readableBytes > 0 {
                // Room for a size line, the data and its CRLF.
                let room = up.outBuf.writableBytes - 24
                if room <= 0 {
                    if up.outBuf.readerIndex > 0 { up.outBuf.compact(); continue }
                    break
                }
                let input = UnsafeRawBufferPointer(rebasing: inBuf.readable[0..<min(inBuf.readableBytes, room)])
                switch requestChunks.step(input) {
                case .data(let skip, let count):
                    requestBodyReceived += Int64(count)
                    exchange.bytesIn &+= Int64(count)
                    if requestBodyReceived > Int64(maxBodyBytes) {
                        if isResponseHeadSent { abort() } else { replyAndClose(status: 413, code: .badRequest, message: "request body larger than the route allows") }
                        return false
                    }
                    up.outBuf.write(hex: count)
                    up.outBuf.write(Self.crlf)
                    up.outBuf.write(input.baseAddress! + skip, count: count)
                    up.outBuf.write(Self.crlf)
                    inBuf.readerIndex += skip + count
                    progress = true
                case .needMore(let consumed):
                    inBuf.readerIndex += consumed
                    if consumed == 0 { break chunkLoop }
                    progress = true
                case .end(let consumed):
                    inBuf.readerIndex += consumed
                    up.outBuf.write(Self.lastChunk)
                    requestBody = .done
                    deadline.clear()
                    progress = true
                    break chunkLoop
                case .failed:
                    if isResponseHeadSent { abort() } else { replyAndClose(status: 400, code: .badRequest, message: "malformed chunked request body") }
                    return false
                }
            }
        case .none, .done:
            break
        }
        return progress
    }

    /// The body deadline is a minimum rate, not "a byte per time-out": it starts a body
    /// time-out away, each byte received moves it on by 1/`body_min_rate` s, and it is never
    /// further than a whole time-out from now (a burst buys no long stall).
    @inline(__always)
    private func extendBodyDeadline(by n: Int) {
        let now = context.loop.now
        let cap = now &+ context.bodyTimeoutNanos
        let next = bodyDeadline &+ UInt64(n) &* context.nanosPerBodyByte
        bodyDeadline = next < cap ? next : cap
        deadline.set(bodyDeadline, fd: fd, loop: context.loop)
    }

    /// writev(upstream head/re-encoded chunks, raw body bytes from inBuf).
    private func flushUpstream(_ up: UpstreamConnection) -> Bool {
        let a = up.outBuf.readableBytes
        let total = a + requestPass
        if total == 0 { return false }
        let result: IOResult
        do {
            result = try up.transport.write(up.outBuf.readPointer, a, inBuf.readPointer, requestPass)
        } catch {
            upstreamFailure(.reset(error.code))
            return true
        }
        switch result {
        case .wouldBlock:
            up.isWritable = false
            return false
        case .processed(let n):
            let fromOut = min(n, a)
            up.outBuf.readerIndex += fromOut
            let fromIn = n - fromOut
            inBuf.readerIndex += fromIn
            requestPass -= fromIn
            if n < total { up.isWritable = false }
            return n > 0
        }
    }

    /// writev(outBuf, raw response bytes from the upstream's buffer) to the client.
    @discardableResult
    private func flushClient() -> Bool {
        let a = outBuf.readableBytes
        // The upstream's buffer as a bare pointer (no reference held across the write: that
        // would cost a retain/release pair per flush); `upstream` is read again afterwards.
        var b = 0
        var bp: UnsafeMutableRawPointer? = nil
        if upstream != nil {
            b = responsePass
            bp = upstream!.inBuf.readPointer
        }
        if a + b == 0 { return false }
        if !isWritable { return false }
        let result: IOResult
        do {
            result = try transport.write(outBuf.readPointer, a, bp, b)
        } catch {
            abort()
            return false
        }
        switch result {
        case .wouldBlock:
            isWritable = false
            return false
        case .processed(let n):
            exchange.bytesOut &+= Int64(n)
            let fromOut = min(n, a)
            outBuf.readerIndex += fromOut
            if outBuf.readerIndex == outBuf.writerIndex { outBuf.clear() }
            let fromUp = n - fromOut
            if fromUp > 0, let up = upstream {
                up.inBuf.readerIndex += fromUp
                responsePass -= fromUp
                if up.inBuf.readableBytes == 0 { up.inBuf.clear() }
            }
            if n < a + b { isWritable = false }
            return n > 0
        }
    }

    // MARK: relay hooks (UpstreamRelaying)

    var isRelaying: Bool { state != .closed }

    /// 100 and 103 to an HTTP/1.1 client (not 100 itself: we answered Expect ourselves).
    func relayInterim(_ up: UpstreamConnection) {
        if request.version == .http11 && up.head.status != 100 {
            _ = ResponseHeadWriter.writeInterim(self, up, into: outBuf)
        }
    }

    func answerHeadWritten(_ up: UpstreamConnection) -> Bool {
        isResponseHeadSent = true
        return true
    }

    // MARK: ending an exchange

    private func finishExchange(_ up: UpstreamConnection) {
        upstream = nil
        exchange.settle()
        let reusable = isRequestSent && !up.head.wantsClose && !up.sawEOF && !up.mustClose && up.inBuf.readableBytes == 0
        if reusable { up.pool.release(up) } else { up.pool.retire(up) }
        if !isRequestSent {
            // The response ended before the request body did: the rest of it can't be framed.
            closeAfterResponse = true
        }
        nextRequest()
    }

    private func nextRequest() {
        releaseSideBody()
        if closeAfterResponse || isDrainRequested && inBuf.readableBytes == 0 {
            close()
            return
        }
        state = .readingHead
        parser.reset()
        upstream = nil
        if inBuf.readableBytes == 0 {
            inBuf.clear()
            // Idle: the loop's sweep takes the workspace back if it stays so.
            idleSince = context.loop.now
            deadline.set(context.loop.now &+ context.idleTimeoutNanos, fd: fd, loop: context.loop)
        } else {
            inBuf.compact()
            deadline.set(context.loop.now &+ context.headerTimeoutNanos, fd: fd, loop: context.loop)
        }
    }

    func upstreamFailure(_ failure: UpstreamFailure) {
        guard let up = upstream else { return }
        exchange.facts.metrics.countUpstreamError(backend: up.pool.backendIndex, kind: UpstreamErrorKind(failure))
        // A reused connection closed under an idempotent, body-less request: retry once, fresh.
        if up.isReused && !hasRetried && !isResponseHeadSent && up.inBuf.readableBytes == 0
            && request.method.isIdempotent && request.framing == .none && responseBody.isAwaitingHead {
            switch failure {
            case .reset, .closedEarly:
                hasRetried = true
                if retry(from: up) { return }
            default: break
            }
        }
        upstream = nil
        up.pool.retire(up)
        if isResponseHeadSent {
            abort()    // the head is out: a truncated body is signalled by closing
            return
        }
        // Interim heads still queued: if part of one has gone out, a reply would follow a
        // cut-off head; the connection is closed instead. Otherwise they are dropped.
        if outBuf.readableBytes > 0 && outBuf.readerIndex > 0 {
            abort()
            return
        }
        outBuf.clear()
        replyLocal(status: failure.status, code: .upstreamUnavailable, message: Self.message(for: failure), headLength: 0,
                   forceClose: requestBody.isPending)
    }

    private func retry(from old: UpstreamConnection) -> Bool {
        let head = old.outBuf
        let pool = old.pool
        guard case .success(let fresh) = pool.acquire(fresh: true) else { return false }
        upstream = fresh
        fresh.client = self
        fresh.outBuf.write(head.base, count: head.writerIndex)   // the same head again
        old.client = nil
        pool.retire(old)
        isRequestSent = false
        if fresh.state == .active {
            fresh.deadline.set(context.loop.now &+ pool.responseTimeoutNanos, fd: fresh.fd, loop: context.loop)
        }
        return true
    }

    // MARK: local replies

    func deny(_ code: DenialCode, headLength: Int) {
        replyLocal(status: code.status, code: code, message: exchange.refusalMessage(code), headLength: headLength,
                   forceClose: requestBody != .none)
    }

    /// Answers locally; the head (and any body: we close instead of reading it) is skipped.
    func replyLocal(status: Int, code: DenialCode, message: String, headLength: Int, forceClose: Bool) {
        if forceClose { closeAfterResponse = true }
        exchange.answer(status: status, code: MetricCode.index(code))
        inBuf.readerIndex += headLength
        LocalReply.write(self, status: status, code: code, message: message, into: outBuf)
        state = .replying
        deadline.set(context.loop.now &+ context.headerTimeoutNanos, fd: fd, loop: context.loop)
    }

    func replyAndClose(status: Int, code: DenialCode, message: String) {
        if let up = upstream { upstream = nil; up.pool.retire(up) }
        closeAfterResponse = true
        // A head that failed (or never completed) is an exchange too: it is answered.
        attachWorkspace()
        if !exchange.isOpen {
            exchange.open(peer: peerIP)
            exchange.assignGeneratedID()
        }
        exchange.answer(status: status, code: MetricCode.index(code))
        outBuf.clear()
        LocalReply.write(self, status: status, code: code, message: message, into: outBuf)
        state = .replying
        deadline.set(context.loop.now &+ context.headerTimeoutNanos, fd: fd, loop: context.loop)
    }

    private func finishLocalReply() {
        if let up = upstream { upstream = nil; up.pool.retire(up) }
        exchange.settle()
        nextRequest()
    }

    // MARK: HTTP/2

    enum PrefaceMatch { case yes, partial, no }
    static let h2Preface: StaticString = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    static func matchPreface(_ b: UnsafeRawBufferPointer) -> PrefaceMatch {
        let n = min(b.count, 24)
        if memcmp(b.baseAddress!, h2Preface.utf8Start, n) != 0 { return .no }
        return n == 24 ? .yes : .partial
    }

    /// Hands the socket (and the bytes read so far) to an HTTP/2 session.
    private func becomeHTTP2() {
        state = .closed
        deadline.clear()
        exchange.downstream = .detached
        let initial = [UInt8](inBuf.readable)
        detachWorkspace()
        initial.withUnsafeBytes { context.upgrade(self, transport: transport, initial: $0) }
    }

    // MARK: closing

    func drain() {
        isDrainRequested = true
        if state == .readingHead && inBuf.readableBytes == 0 { close() } else { closeAfterResponse = true }
    }

    func abort() {
        if let up = upstream { upstream = nil; up.pool.retire(up) }
        close()
    }

    func close() {
        if state == .closed { return }
        if let up = upstream { upstream = nil; up.pool.retire(up) }
        state = .closed
        releaseSideBody()
        exchange.settle()   // a client that left, a cut response, a time-out: settled all the same
        exchange.downstream = .detached
        detachWorkspace()
        if case .tls(let s) = transport { s.shutdown() }
        context.loop.close(fd: fd)
        // Closing may start inside a call that reached us through an unowned reference (an
        // upstream's event): the loop holds us until this turn ends, so nothing below that
        // call runs on a freed session.
        context.loop.afterEvents(self)
        context.remove(self)
    }

    func timerFired(loop: EventLoop) {}

    // MARK: constants

    static let crlf: StaticString = "\r\n"
    static let lastChunk: StaticString = "0\r\n\r\n"
    static let continue100: StaticString = "HTTP/1.1 100 Continue\r\n\r\n"

    static func message(for e: HTTP1ParseError) -> String {
        switch e.kind {
        case .headTooLarge, .tooManyHeaders: return "request head too large"
        case .uriTooLong: return "request target too long"
        case .unsupportedVersion: return "HTTP version not supported"
        case .contentLengthWithTransferEncoding: return "Content-Length together with Transfer-Encoding"
        case .conflictingContentLength, .badContentLength: return "invalid Content-Length"
        case .badTransferEncoding, .transferEncodingInHTTP10: return "unsupported Transfer-Encoding"
        case .missingHost: return "missing Host header"
        case .duplicateHost: return "more than one Host header"
        case .hostMismatch: return "request target and Host disagree"
        case .obsFold: return "obsolete line folding"
        case .bareCR, .bareLF: return "line ending is not CRLF"
        default: return "malformed request"
        }
    }

    static func message(for f: UpstreamFailure) -> String {
        switch f {
        case .connect: return "backend refused the connection"
        case .connectTimeout: return "backend connection timed out"
        case .responseTimeout: return "backend did not answer in time"
        case .reset: return "backend connection was reset"
        case .closedEarly: return "backend closed the connection"
        case .badResponse: return "backend sent an invalid response"
        case .tls: return "TLS with the backend failed (its certificate, or the handshake)"
        }
    }
}
