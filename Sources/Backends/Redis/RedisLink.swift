import CHiredis
import Policy
import Runtime

/// One hiredis async context driven by our ``EventLoop``: the custom adapter.
///
/// hiredis asks for interest through `ac.ev.addRead/delRead/addWrite/delWrite` and tells us
/// it is done with the fd through `ac.ev.cleanup`; each hook is a capture-free closure that
/// recovers this object from `ev.data`. The fd is registered level-triggered (hiredis reads
/// at most 16 KiB per `redisAsyncHandleRead`, so edge-triggered reads could strand data).
///
/// Writes are coalesced: a command only appends to hiredis's output buffer and asks for a
/// flush; the flush runs from a zero-deadline timer, i.e. once, at the end of the current
/// loop iteration, so a batch of pipelined commands costs one `write(2)` and no `epoll_ctl`.
/// `EPOLLOUT` is polled only while connecting or when the socket buffer is full.
///
/// Lifetime: hiredis holds an unretained pointer to this object in `ac.data`/`ac.ev.data`,
/// so the link retains itself from `open` until a timer tick after `cleanup` (hiredis still
/// runs callbacks between `cleanup` and the end of `redisAsyncFree`).
final class RedisLink: EventHandler, TimerHandler {
    enum Role { case command, subscriber }

    let role: Role
    let loop: EventLoop
    let ownerRef: RedisConnection.OwnerRef
    var owner: RedisConnection? { ownerRef.connection }
    private(set) var ac: UnsafeMutablePointer<redisAsyncContext>?
    private(set) var isConnected = false
    private var fd: Int32 = -1
    private var wantsRead = false
    private var wantsWrite = false
    private var pollsWrite = false
    /// Inside `redisAsyncHandleWrite`: a new addWrite then means the socket buffer is full.
    private var inWrite = false
    private var mask: EventSet = []
    private var isFlushScheduled = false
    private var isCloseScheduled = false
    private var isReleaseScheduled = false
    private var selfRef: Unmanaged<RedisLink>?
    /// hiredis's last error text, kept when the context goes away.
    private(set) var lastError: String?

    init(role: Role, loop: EventLoop, owner: RedisConnection.OwnerRef) {
        self.role = role
        self.loop = loop
        self.ownerRef = owner
    }

    @inline(__always)
    static func from(_ p: UnsafeRawPointer?) -> RedisLink {
        // hiredis hands back the pointer we stored in `ev.data`/`data`; the link is retained
        // (`selfRef`) for as long as the context can call us.
        Unmanaged<RedisLink>.fromOpaque(p!).takeUnretainedValue()
    }

    /// Starts a non-blocking connect. Returns an error text when it failed at once.
    func open(_ url: RedisURL) -> String? {
        let made: UnsafeMutablePointer<redisAsyncContext>?
        switch url.endpoint {
        case .tcp(let host, let port): made = redisAsyncConnect(host, Int32(port))
        case .unix(let path): made = redisAsyncConnectUnix(path)
        }
        guard let ctx = made else { return "cannot allocate a hiredis context" }
        if ctx.pointee.err != 0 {
            let msg = ctx.pointee.errstr.map { String(cString: $0) } ?? "connect failed"
            redisAsyncFree(ctx)
            return msg
        }
        let fd = ctx.pointee.c.fd
        do {
            try loop.register(fd: fd, handler: self, events: [])
        } catch {
            redisAsyncFree(ctx)
            return "epoll registration failed: \(error)"
        }
        let me = Unmanaged.passRetained(self)
        selfRef = me
        self.ac = ctx
        self.fd = fd
        ctx.pointee.data = me.toOpaque()
        ctx.pointee.ev.data = me.toOpaque()
        ctx.pointee.ev.addRead = { RedisLink.from($0).setInterest(read: true) }
        ctx.pointee.ev.delRead = { RedisLink.from($0).setInterest(read: false) }
        ctx.pointee.ev.addWrite = { RedisLink.from($0).setInterest(write: true) }
        ctx.pointee.ev.delWrite = { RedisLink.from($0).setInterest(write: false) }
        ctx.pointee.ev.cleanup = { RedisLink.from($0).cleanedUp() }
        // Setting the connect callback asks for a write event: connect(2) completion.
        _ = redisAsyncSetConnectCallback(ctx) { ac, status in
            guard let ac else { return }
            RedisLink.from(ac.pointee.data).connected(ok: status == REDIS_OK)
        }
        return nil
    }

    /// Appends one pre-formatted command; its reply goes to the role's reply callback.
    /// False when hiredis refused it (the context is closing).
    @inline(__always)
    func send(_ w: RESPWriter) -> Bool {
        guard let ac else { return false }
        w.terminate()
        let cmd = UnsafeRawPointer(w.bytes).assumingMemoryBound(to: CChar.self)
        let rc: Int32
        switch role {
        case .command:
            rc = redisAsyncFormattedCommand(ac, { ac, reply, _ in
                guard let ac else { return }
                RedisLink.from(ac.pointee.data).owner?.commandReply(reply?.assumingMemoryBound(to: redisReply.self))
            }, nil, cmd, w.count)
        case .subscriber:
            rc = redisAsyncFormattedCommand(ac, { ac, reply, _ in
                guard let ac else { return }
                let link = RedisLink.from(ac.pointee.data)
                link.owner?.subscriberReply(reply?.assumingMemoryBound(to: redisReply.self), link: link)
            }, nil, cmd, w.count)
        }
        return rc == REDIS_OK
    }

    /// Frees the context from a clean stack (a timer tick), never from inside a hiredis callback.
    /// Pending commands are answered with a NULL reply (disconnected).
    func closeSoon() {
        guard ac != nil, !isCloseScheduled else { return }
        isCloseScheduled = true
        loop.schedule(at: 0, handler: self)
    }

    /// Frees the context now (pending callbacks run before this returns). Not from a callback.
    func closeNow() {
        if let ac { redisAsyncFree(ac) }
    }

    /// Graceful: hiredis closes once every pending reply has arrived.
    func disconnectWhenDrained() {
        if let ac { redisAsyncDisconnect(ac) }
    }

    // MARK: hiredis hooks

    private func connected(ok: Bool) {
        if ok {
            isConnected = true
        } else {
            lastError = ac.flatMap { $0.pointee.errstr.map { String(cString: $0) } } ?? "connect failed"
        }
        owner?.linkConnected(self, ok: ok)
    }

    private func setInterest(read: Bool) {
        wantsRead = read
        updateMask()
    }

    private func setInterest(write: Bool) {
        wantsWrite = write
        if !write {
            pollsWrite = false
        } else if !isConnected || inWrite {
            // Connecting (writability = connect done), or a flush left bytes behind (buffer full).
            pollsWrite = true
        } else if !isFlushScheduled {
            isFlushScheduled = true
            loop.afterEvents(self)
        }
        updateMask()
    }

    private func updateMask() {
        guard fd >= 0 else { return }
        // Raw bits: SetAlgebra's generic insert is not specialised here (callgrind).
        var bits: UInt32 = 0
        if wantsRead { bits |= EventSet.readable.rawValue }
        if wantsWrite && pollsWrite { bits |= EventSet.writable.rawValue }
        let m = EventSet(rawValue: bits)
        if m != mask {
            mask = m
            loop.modify(fd: fd, events: m)
        }
    }

    private func cleanedUp() {
        if let ac, ac.pointee.err != 0, let s = ac.pointee.errstr { lastError = String(cString: s) }
        if fd >= 0 { loop.deregister(fd: fd) }   // hiredis closes the fd itself
        fd = -1
        ac = nil
        isConnected = false
        wantsRead = false; wantsWrite = false; pollsWrite = false; mask = []
        isReleaseScheduled = true
        loop.schedule(at: 0, handler: self)
        owner?.linkClosed(self)
    }

    /// Reads whatever replies have arrived, without waiting for the loop to report the socket
    /// (before commands are timed out: a reply already here is an answer, not a timeout).
    func readArrived() {
        if let ac, isConnected { redisAsyncHandleRead(ac) }
    }

    // MARK: loop callbacks

    func handleEvent(_ events: EventSet, loop: EventLoop) {
        if events.hasInput, let ac {
            redisAsyncHandleRead(ac)
        }
        if events.hasOutput, let ac {
            inWrite = true
            redisAsyncHandleWrite(ac)
            inWrite = false
        }
    }

    func timerFired(loop: EventLoop) {
        if isFlushScheduled {
            isFlushScheduled = false
            if let ac, isConnected, wantsWrite, !pollsWrite {
                inWrite = true
                redisAsyncHandleWrite(ac)
                inWrite = false
            }
        }
        if isCloseScheduled {
            isCloseScheduled = false
            if let ac { redisAsyncFree(ac) }
        }
        if isReleaseScheduled && ac == nil {
            isReleaseScheduled = false
            if let r = selfRef {
                selfRef = nil
                r.release()
            }
        }
    }
}
