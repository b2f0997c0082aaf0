import CNghttp2
import Glibc
import Policy
import Runtime

/// One downstream HTTP/2 connection (h2 over TLS by ALPN, or h2c with prior knowledge):
/// nghttp2 does the framing, HPACK and flow-control bookkeeping; our loop does every read
/// and write. Each stream is an `H2Stream` carrying one `Exchange` through the same pipeline
/// as HTTP/1.1, to the same HTTP/1.1 upstream pools.
///
/// nghttp2 is driven, never driving: bytes read go in with `nghttp2_session_mem_recv`; frames
/// come out through `nghttp2_session_send` into `outBuf` (its send callback copies what fits
/// and says WOULDBLOCK when full), and `outBuf` is written from the loop. Callbacks only touch
/// streams and queue work (`dirty`); nothing re-enters nghttp2's send or receive.
///
/// Limits (see README, "HTTP/2"): concurrent streams, the header list (decoded bytes and
/// fields), CONTINUATION frames per header block, incoming RST_STREAM rate (rapid reset),
/// SETTINGS entries and queued SETTINGS/PING acknowledgements (floods). A client that trips one
/// gets GOAWAY and the connection closes; others are served as usual.
final class HTTP2Session: EventHandler, TimerHandler {
    let fd: Int32
    let transport: Transport
    let mayHoldMore: Bool
    let peer: PeerAddress
    let peerIP: IPAddress
    let isTLS: Bool
    let context: LoopContext
    var slot = -1
    private(set) var session: OpaquePointer?
    /// Read and write buffers: held while the connection is busy, given back by the loop's
    /// sweep once it has been idle a second (an idle HTTP/2 connection holds nghttp2's state only).
    let inBuf = IOBuffer()
    let outBuf = IOBuffer()
    private var buffers: UnsafeMutableRawPointer?
    private var inCapacity = 0
    static let outCapacity = 32 * 1024
    /// When the last stream closed (loop clock); 0 while streams are open.
    private var idleSince: UInt64 = 0
    var hasBuffers: Bool { buffers != nil }
    private(set) var streams: [H2Stream] = []
    /// Streams with work to do once the current nghttp2 call returns.
    var dirty: [H2Stream] = []
    private var isReadable = true
    private var isWritable = true
    private var sawEOF = false
    private var hasHungUp = false
    private var isClosed = false
    private var isDraining = false
    /// Inside `nghttp2_session_mem_recv` or `_send`: `pump` waits until it returns.
    private var inNghttp2 = false
    var deadline = Deadline()

    // Limits.
    static let maxConcurrentStreams: UInt32 = 100
    /// The stream window we advertise (the default), and the request-body buffer behind it.
    static let streamWindow = 65_535
    static let maxContinuations = 8
    /// Decoded header bytes per header block past which the connection is treated as an
    /// HPACK bomb and closed (a block within the head limit is answered 431 instead).
    var maxDecodedHeaderBytes: Int { 4 * context.settings.limits.maxHeadBytes }

    init(fd: Int32, transport: Transport, peer: PeerAddress, peerIP: IPAddress, context: LoopContext, initial: UnsafeRawBufferPointer) {
        self.fd = fd
        self.transport = transport
        mayHoldMore = transport.mayHoldMore
        self.peer = peer
        self.peerIP = peerIP
        if case .tls = transport { isTLS = true } else { isTLS = false }
        self.context = context
        inCapacity = max(16 * 1024, initial.count)
        attachBuffers()
        if initial.count > 0 { inBuf.write(initial) }
    }

    deinit {
        if let s = session { nghttp2_session_del(s) }
        detachBuffers()
    }

    @inline(__always)
    private func attachBuffers() {
        if buffers != nil { return }
        let b = UnsafeMutableRawPointer.allocate(byteCount: inCapacity + Self.outCapacity, alignment: 16)
        inBuf.attachStorage(b, capacity: inCapacity)
        outBuf.attachStorage(b + inCapacity, capacity: Self.outCapacity)
        buffers = b
        context.scheduleSweep()
    }

    private func detachBuffers() {
        guard let b = buffers else { return }
        buffers = nil
        inBuf.detachStorage()
        outBuf.detachStorage()
        b.deallocate()
    }

    /// The loop's sweep: a connection without streams since before `cutoff` gives its buffers back.
    func releaseIfIdle(before cutoff: UInt64) {
        guard buffers != nil, streams.isEmpty, idleSince != 0, idleSince < cutoff,
              inBuf.readableBytes == 0, outBuf.readableBytes == 0 else { return }
        detachBuffers()
    }

    /// Sets up nghttp2 and our SETTINGS; false when nghttp2 could not be set up.
    func start() -> Bool {
        var callbacks: OpaquePointer?
        guard nghttp2_session_callbacks_new(&callbacks) == 0, let cbs = callbacks else { return false }
        defer { nghttp2_session_callbacks_del(cbs) }
        nghttp2_session_callbacks_set_send_callback(cbs, h2Send)
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, h2BeginHeaders)
        nghttp2_session_callbacks_set_on_header_callback(cbs, h2Header)
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2FrameRecv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2DataChunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2StreamClose)
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs, h2FrameSend)

        var option: OpaquePointer?
        guard nghttp2_option_new(&option) == 0, let opt = option else { return false }
        defer { nghttp2_option_del(opt) }
        // Windows open as the upstream takes the bytes (H2Stream.moveBody), not on receipt.
        nghttp2_option_set_no_auto_window_update(opt, 1)
        nghttp2_option_set_max_continuations(opt, Self.maxContinuations)
        // Rapid reset (CVE-2023-44487): a client resetting streams faster than this is sent
        // GOAWAY. Generous for browsers (navigation cancels), far below a flood.
        nghttp2_option_set_stream_reset_rate_limit(opt, 200, 50)
        nghttp2_option_set_max_outbound_ack(opt, 64)
        nghttp2_option_set_max_settings(opt, 16)
        nghttp2_option_set_no_closed_streams(opt, 1)

        let me = Unmanaged.passUnretained(self).toOpaque()
        var s: OpaquePointer?
        guard nghttp2_session_server_new2(&s, cbs, me, opt) == 0, let session = s else { return false }
        self.session = session
        let limits = context.settings.limits
        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: Self.maxConcurrentStreams),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(limits.maxHeadBytes)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(Self.streamWindow)),
        ]
        guard nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count) == 0 else { return false }
        // The connection window covers every stream's window: one stalled stream (its body
        // waiting for the store or a slow upstream) never holds the others back.
        _ = nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0,
                                                  Int32(Int(Self.maxConcurrentStreams) * Self.streamWindow))
        idleSince = context.loop.now
        lastWriteProgress = context.loop.now
        armDeadline()
        if inBuf.readableBytes > 0 { feed() }
        pump()
        return true
    }

    // MARK: events

    func handleEvent(_ events: EventSet, loop: EventLoop) {
        if events.hasInput { isReadable = true }
        if events.hasOutput { isWritable = true }
        if events.hasHangup { hasHungUp = true }
        if isTLS && events.hasOutput, case .tls(let s) = transport, s.readWantsWrite { isReadable = true }
        drive()
    }

    func handleTimer(loop: EventLoop) {
        guard !isClosed, deadline.expired(fd: fd, loop: loop) else { return }
        if closeSoon {
            close()   // a GOAWAY the client never read
            return
        }
        if outBuf.readableBytes > 0 && context.loop.now &- lastWriteProgress >= context.bodyTimeoutNanos {
            // The client reads nothing of what we owe it (its TCP window is shut): as HTTP/1.1
            // closes a client that stops reading.
            close()
            return
        }
        if streams.isEmpty {
            // Idle (or a client that never finished its preface): GOAWAY, then close.
            goAway(NGHTTP2_NO_ERROR)
            closeSoon = true
        } else {
            // No bytes from the client for a body time-out while streams wait for theirs.
            for s in streams { _ = s.timedOut() }
            armDeadline()
        }
        pump()
    }

    private var closeSoon = false
    /// When bytes last went out to the client (loop clock).
    private var lastWriteProgress: UInt64 = 0

    /// Reads and feeds until the socket is drained (or output backs up), then pumps.
    func drive() {
        if isClosed { return }
        var rounds = 0
        while isReadable && !isClosed && rounds < 64 {
            rounds += 1
            attachBuffers()
            // A client that does not read its answers is not read either: its PINGs and
            // SETTINGS cannot pile up output.
            if outBuf.readableBytes > outBuf.capacity / 2 { break }
            if inBuf.writableBytes == 0 { _ = inBuf.compact() }
            let want = inBuf.writableBytes
            if want == 0 { break }
            do {
                switch try transport.read(into: inBuf.writePointer, count: want) {
                case .processed(let n):
                    if n == 0 { sawEOF = true; isReadable = false; break }
                    inBuf.writerIndex += n
                    if n < want && !hasHungUp && !mayHoldMore { isReadable = false }
                    armDeadline()
                    feed()
                case .wouldBlock:
                    isReadable = false
                }
            } catch {
                sawEOF = true
                isReadable = false
            }
            if sawEOF { break }
        }
        if sawEOF && !isClosed {
            // The client is gone: nothing can be delivered.
            close()
            return
        }
        pump()
    }

    /// Hands the bytes read to nghttp2.
    private func feed() {
        guard let session, inBuf.readableBytes > 0 else { return }
        inNghttp2 = true
        let rv = nghttp2_session_mem_recv(session, inBuf.readPointer.assumingMemoryBound(to: UInt8.self), inBuf.readableBytes)
        inNghttp2 = false
        if rv < 0 {
            // A bad preface, a flood, a protocol error: nghttp2 queued GOAWAY where it could.
            closeSoon = true
            inBuf.clear()
            return
        }
        inBuf.readerIndex += rv
        if inBuf.readableBytes == 0 { inBuf.clear() }
    }

    /// Runs queued stream work, lets nghttp2 write its frames, writes them out; closes when
    /// nghttp2 wants nothing more.
    func pump() {
        if isClosed || inNghttp2 { return }
        guard let session else { close(); return }
        var rounds = 0
        while !isClosed && rounds < 256 {
            rounds += 1
            while let s = dirty.popLast() {
                s.isDirty = false
                s.step()
            }
            inNghttp2 = true
            let rv = nghttp2_session_send(session)
            inNghttp2 = false
            if rv != 0 { closeSoon = true }
            let flushed = flush()
            if isClosed { return }
            if !dirty.isEmpty { continue }
            // Output was cut short by a full buffer that has since drained: send again.
            if flushed && nghttp2_session_want_write(session) != 0 && isWritable { continue }
            break
        }
        if isClosed { return }
        let wantsIO = nghttp2_session_want_read(session) != 0 || nghttp2_session_want_write(session) != 0
        if (!wantsIO || closeSoon || (isDraining && streams.isEmpty)) && outBuf.readableBytes == 0 {
            close()
            return
        }
        if closeSoon && !isWritable && outBuf.readableBytes > 0 {
            // Waiting to flush a GOAWAY to a client that does not read: the deadline ends it.
            deadline.set(context.loop.now &+ context.headerTimeoutNanos, fd: fd, loop: context.loop)
        }
        // Reading resumes once queued output has gone out.
        if isReadable && outBuf.readableBytes <= outBuf.capacity / 2 && !inNghttp2 { drive() }
    }

    /// Writes `outBuf`; true when something went out.
    @discardableResult
    private func flush() -> Bool {
        let n = outBuf.readableBytes
        if n == 0 || !isWritable { return false }
        do {
            switch try transport.write(outBuf.readPointer, n, nil, 0) {
            case .wouldBlock:
                isWritable = false
                return false
            case .processed(let w):
                if w > 0 { lastWriteProgress = context.loop.now }
                outBuf.readerIndex += w
                if outBuf.readableBytes == 0 { outBuf.clear() } else { _ = outBuf.compact() }
                if w < n { isWritable = false }
                return w > 0
            }
        } catch {
            close()
            return false
        }
    }

    /// nghttp2's send callback: copy what fits.
    func send(_ data: UnsafePointer<UInt8>, _ length: Int) -> Int {
        attachBuffers()
        if outBuf.writableBytes == 0 && outBuf.readerIndex > 0 { _ = outBuf.compact() }
        let n = min(length, outBuf.writableBytes)
        if n == 0 { return Int(NGHTTP2_ERR_WOULDBLOCK.rawValue) }
        outBuf.write(UnsafeRawPointer(data), count: n)
        return n
    }

    private func armDeadline() {
        let wait = streams.isEmpty ? context.idleTimeoutNanos : context.bodyTimeoutNanos
        deadline.set(context.loop.now &+ wait, fd: fd, loop: context.loop)
    }

    // MARK: streams

    /// The stream the last lookup found: a header block's fields all ask for the same one.
    private var lastStream: H2Stream?
    private var lastStreamRef: Unmanaged<H2Stream>?
    private var lastStreamID: Int32 = 0

    @inline(__always)
    func stream(_ id: Int32) -> H2Stream? {
        streamRef(id)?.takeUnretainedValue()
    }

    /// The stream, unretained (the callbacks run once per field and frame: no retain/release
    /// pair each time). Valid while the stream is open; `lastStream` keeps it alive.
    @inline(__always)
    func streamRef(_ id: Int32) -> Unmanaged<H2Stream>? {
        if id == lastStreamID, let l = lastStreamRef { return l }
        guard let session, let p = nghttp2_session_get_stream_user_data(session, id) else { return nil }
        let u = Unmanaged<H2Stream>.fromOpaque(p)
        lastStream = u.takeUnretainedValue()
        lastStreamRef = u
        lastStreamID = id
        return u
    }

    func openStream(_ id: Int32) -> H2Stream? {
        guard let session, !isDraining else { return nil }
        let s = context.takeStream(session: self, id: id)
        s.slot = streams.count
        streams.append(s)
        nghttp2_session_set_stream_user_data(session, id, Unmanaged.passUnretained(s).toOpaque())
        if streams.count == 1 { idleSince = 0; armDeadline() }
        return s
    }

    func streamClosed(_ s: H2Stream, errorCode: UInt32) {
        s.closed(errorCode: errorCode)
        let i = s.slot
        if i >= 0 && i < streams.count && streams[i] === s {
            let last = streams.removeLast()
            if i < streams.count { streams[i] = last; last.slot = i }
        }
        s.slot = -1
        if lastStream === s { lastStream = nil; lastStreamRef = nil; lastStreamID = 0 }
        if let session { nghttp2_session_set_stream_user_data(session, s.id, nil) }
        if s.isDirty, let k = dirty.firstIndex(where: { $0 === s }) { dirty.remove(at: k); s.isDirty = false }
        context.giveBackStream(s)
        if streams.isEmpty { idleSince = context.loop.now; armDeadline() }
    }

    func markDirty(_ s: H2Stream) {
        if s.isDirty { return }
        s.isDirty = true
        dirty.append(s)
    }

    // MARK: shutting down

    private func goAway(_ code: nghttp2_error_code) {
        guard let session else { return }
        _ = nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nghttp2_session_get_last_proc_stream_id(session),
                                  code.rawValue, nil, 0)
    }

    /// Graceful shutdown: GOAWAY naming the last stream taken; streams in flight finish.
    func drain() {
        if isDraining || isClosed { return }
        isDraining = true
        goAway(NGHTTP2_NO_ERROR)
        pump()
    }

    func close() {
        if isClosed { return }
        isClosed = true
        for s in dirty { s.isDirty = false }
        dirty.removeAll()
        for s in streams {
            s.closed(errorCode: NGHTTP2_CANCEL.rawValue)
            s.slot = -1
            s.isDirty = false
            context.giveBackStream(s)
        }
        streams.removeAll()
        lastStream = nil
        lastStreamRef = nil
        lastStreamID = 0
        if let s = session { nghttp2_session_del(s); session = nil }
        detachBuffers()
        if case .tls(let s) = transport { s.shutdown() }
        context.loop.close(fd: fd)
        // Held until this loop turn ends: close may run under a call that reached us through
        // an unowned reference (a stream's upstream event).
        context.loop.afterEvents(self)
        context.remove(self)
    }

    func timerFired(loop: EventLoop) {}
}

// MARK: nghttp2 callbacks (capture-free: the session is the user data)
//
// The session and its streams are reached unretained (`_withUnsafeGuaranteedRef`): nghttp2
// calls back only from inside our own calls into it, while the session is alive (close()
// deletes nghttp2's state first), and a stream is alive while nghttp2 knows its id. Measured:
// a retain/release pair per callback was ~1,000 instructions per request.

@inline(__always)
private func withSession<R>(_ user: UnsafeMutableRawPointer?, _ body: (HTTP2Session) -> R) -> R {
    Unmanaged<HTTP2Session>.fromOpaque(user!)._withUnsafeGuaranteedRef(body)
}

@inline(__always)
private func withStream(_ s: HTTP2Session, _ id: Int32, _ body: (H2Stream) -> Void) {
    s.streamRef(id)?._withUnsafeGuaranteedRef(body)
}

private func h2Send(_: OpaquePointer?, _ data: UnsafePointer<UInt8>?, _ length: Int, _: Int32, _ user: UnsafeMutableRawPointer?) -> Int {
    guard let data else { return 0 }
    return withSession(user) { $0.send(data, length) }
}

private func h2BeginHeaders(_: OpaquePointer?, _ frame: UnsafePointer<nghttp2_frame>?, _ user: UnsafeMutableRawPointer?) -> Int32 {
    guard let frame else { return 0 }
    let hd = frame.pointee.hd
    guard hd.type == UInt8(NGHTTP2_HEADERS.rawValue), frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST else { return 0 }
    return withSession(user) { s in
        guard let stream = s.openStream(hd.stream_id) else { return Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        stream.beginHead()
        return 0
    }
}

private func h2Header(_: OpaquePointer?, _ frame: UnsafePointer<nghttp2_frame>?, _ name: UnsafePointer<UInt8>?, _ nameLength: Int,
                      _ value: UnsafePointer<UInt8>?, _ valueLength: Int, _: UInt8, _ user: UnsafeMutableRawPointer?) -> Int32 {
    guard let frame, let name, let value else { return 0 }
    let id = frame.pointee.hd.stream_id
    return withSession(user) { s in
        guard let stream = s.streamRef(id) else { return 0 }
        return stream._withUnsafeGuaranteedRef { $0.header(name, nameLength, value, valueLength) }
    }
}

private func h2FrameRecv(_: OpaquePointer?, _ frame: UnsafePointer<nghttp2_frame>?, _ user: UnsafeMutableRawPointer?) -> Int32 {
    guard let frame else { return 0 }
    let hd = frame.pointee.hd
    let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
    if hd.type == UInt8(NGHTTP2_HEADERS.rawValue) {
        let isRequest = frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST
        withSession(user) { s in
            withStream(s, hd.stream_id) { stream in
                if isRequest {
                    stream.headComplete(endStream: endStream)
                } else if endStream {
                    stream.requestEnded()   // trailers (dropped) end the body
                }
            }
        }
    } else if hd.type == UInt8(NGHTTP2_DATA.rawValue) && endStream {
        withSession(user) { s in withStream(s, hd.stream_id) { $0.requestEnded() } }
    }
    return 0
}

private func h2DataChunk(_ session: OpaquePointer?, _: UInt8, _ id: Int32, _ data: UnsafePointer<UInt8>?, _ length: Int,
                         _ user: UnsafeMutableRawPointer?) -> Int32 {
    let delivered = withSession(user) { s -> Bool in
        guard let data, let stream = s.streamRef(id) else { return false }
        stream._withUnsafeGuaranteedRef { $0.bodyData(data, length) }
        return true
    }
    // A stream we no longer track: its bytes still count against the connection window.
    if !delivered, let session { _ = nghttp2_session_consume_connection(session, length) }
    return 0
}

private func h2StreamClose(_: OpaquePointer?, _ id: Int32, _ errorCode: UInt32, _ user: UnsafeMutableRawPointer?) -> Int32 {
    withSession(user) { s in
        if let stream = s.stream(id) { s.streamClosed(stream, errorCode: errorCode) }
    }
    return 0
}

private func h2FrameSend(_: OpaquePointer?, _ frame: UnsafePointer<nghttp2_frame>?, _ user: UnsafeMutableRawPointer?) -> Int32 {
    guard let frame else { return 0 }
    let hd = frame.pointee.hd
    guard hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0,
          hd.type == UInt8(NGHTTP2_DATA.rawValue) || hd.type == UInt8(NGHTTP2_HEADERS.rawValue) else { return 0 }
    withSession(user) { s in withStream(s, hd.stream_id) { $0.answerSent() } }
    return 0
}

/// The data source of every response body: the stream is the source's pointer.
func h2ReadBody(_: OpaquePointer?, _ id: Int32, _ buf: UnsafeMutablePointer<UInt8>?, _ length: Int,
                _ flags: UnsafeMutablePointer<UInt32>?, _ source: UnsafeMutablePointer<nghttp2_data_source>?,
                _ user: UnsafeMutableRawPointer?) -> Int {
    guard let buf, let flags, let p = source?.pointee.ptr else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
    return Unmanaged<H2Stream>.fromOpaque(p)._withUnsafeGuaranteedRef { $0.readBody(into: buf, length, flags) }
}
