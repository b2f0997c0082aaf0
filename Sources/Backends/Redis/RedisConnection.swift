import CHiredis
import Glibc
import Policy
import Runtime

/// The store client of one event loop: one pipelined hiredis connection for commands (and,
/// once ``subscribeInvalidations(_:)`` is called, a second one in subscribe mode), driven by
/// the loop, never blocking it. Loop-confined: create, call and stop it on its loop.
///
/// ```
///  lookupKey/admit/command ──format──▶ RESPWriter ──redisAsyncFormattedCommand──▶ hiredis obuf
///        │ (immediate .unavailable when the breaker is open)            │ one write per loop turn
///        ▼                                                              ▼
///   FIFO of RedisPending (waiter, token, deadline) ◀──replies in order── Redis
///        │ deadline timer: oldest live entry → .timedOut, late reply dropped
/// ```
///
/// Health is a circuit breaker. It starts `.down` (nothing reported) and reports `.up` once
/// the first handshake (AUTH, SELECT, SCRIPT LOAD) succeeds. It opens (`.down`) on a
/// disconnect or after `failureThreshold` deadline sweeps in a row that timed commands out with
/// no reply at all in between (a late reply means slow, not gone); while open, every
/// command fails fast with `.unavailable`. Recovery: reconnect with exponential back-off
/// (`backoff` range), or, when still connected, a PING probe on each back-off tick; the
/// first on-time answer closes it. `onStateChange` runs once per transition, on the loop.
public final class RedisConnection {
    public struct Options: Sendable {
        /// Consecutive timeouts that open the breaker.
        public var failureThreshold = 3
        /// Reconnect/probe back-off, doubling from the lower to the upper bound.
        public var backoff: ClosedRange<Duration> = .milliseconds(50) ... .seconds(1)
        /// Connect + handshake must finish within this.
        public var connectTimeout: Duration = .seconds(2)
        /// How often this instance announces itself.
        public var heartbeatInterval: Duration = .seconds(1)
        /// Instances not seen for this long no longer count.
        public var instanceWindow: Duration = .seconds(3)
        public init() {}
    }

    enum Phase { case idle, waitingToReconnect, connecting, handshaking, ready, stopped }

    public let loop: EventLoop
    public let url: RedisURL
    public let instanceID: String
    let options: Options
    let deadlineNanos: UInt64
    private let onStateChange: (RedisHealth) -> Void

    /// `.up` / `.down`; see the type's discussion.
    public private(set) var health: RedisHealth = .down
    /// Live instances (this one included) from the last heartbeat; kept through an outage
    /// (that is when `local` mode needs it). ≥ 1.
    public private(set) var liveInstances = 1
    /// The last connection or protocol error, for logs.
    public private(set) var lastError: String?

    var phase: Phase = .idle
    private var link: RedisLink?
    private var fifo = RedisFIFO()
    private let writer = RESPWriter(capacity: 1024)
    private var consecutiveFailures = 0
    private var probeFailures = 0
    private var backoffNanos: UInt64
    private var handshakeLeft = 0
    private var connectDeadline: UInt64 = 0
    private var reconnectAt: UInt64 = 0
    private var probeAt: UInt64 = 0
    private var heartbeatAt: UInt64 = 0
    private var isProbeInFlight = false
    private var isHeartbeatInFlight = false
    /// Redis's clock, for the limiter script's `now` (see `RedisClock`).
    public private(set) var clock = RedisClock()
    private var clockSentAt: UInt64 = 0
    private var isClockInFlight = false
    /// How links and timers reach this connection without a weak reference (see `OwnerRef`).
    let ownerRef = OwnerRef()
    private lazy var ticker = Ticker(ownerRef)
    private var tickArmed: UInt64 = 0
    private lazy var deadlineTimer = DeadlineTimer(ownerRef)
    private var deadlineArmed: UInt64 = 0

    // Invalidation subscription.
    private var onInvalidation: (([UInt8]) -> Void)?
    private var subLink: RedisLink?
    private var subRetryAt: UInt64 = 0
    private var isSubscribed = false

    /// - Parameters:
    ///   - commandDeadline: per-command bound (the policy's `store.deadline`).
    ///   - instanceID: this instance's name in the heartbeat. Connections that share one
    ///     in-process limiter (the loops of one process) announce the same name, so that
    ///     ``liveInstances`` counts limiters.
    ///   - onStateChange: called on the loop once per health transition.
    public init(loop: EventLoop, url: RedisURL, commandDeadline: Duration, instanceID: String,
                 options: Options = Options(), onStateChange: @escaping (RedisHealth) -> Void) {
        self.loop = loop
        self.url = url
        self.instanceID = instanceID
        self.options = options
        self.deadlineNanos = max(1, RedisConnection.nanos(commandDeadline))
        self.onStateChange = onStateChange
        self.backoffNanos = RedisConnection.nanos(options.backoff.lowerBound)
        ownerRef.connection = self
    }

    deinit { ownerRef.connection = nil }

    static func nanos(_ d: Duration) -> UInt64 {
        let (s, a) = d.components
        return UInt64(max(0, s)) &* 1_000_000_000 &+ UInt64(max(0, a / 1_000_000_000))
    }

    // MARK: lifecycle

    /// Connects; reconnects with back-off for as long as the connection is not stopped.
    public func start() {
        loop.assertOnLoop()
        guard phase == .idle else { return }
        connect()
    }

    /// Stops for good. Connected: removes this instance from the heartbeat set and closes
    /// once pending replies are in (waiters get their replies or `.disconnected`).
    /// Otherwise pending waiters get `.disconnected` before this returns.
    public func stop() {
        loop.assertOnLoop()
        guard phase != .stopped else { return }
        let wasReady = phase == .ready
        phase = .stopped
        health = .down   // not reported: stopping is not an outage
        if let l = subLink { subLink = nil; l.closeNow() }
        guard let l = link else { return }
        if wasReady {
            writer.reset()
            writer.arrayHeader(3)
            writer.bulk("ZREM")
            writer.bulk(RedisKeys.instances)
            writer.bulk(instanceID)
            _ = enqueue(.ignored, deadline: loop.now &+ deadlineNanos)
            l.disconnectWhenDrained()
        } else {
            link = nil
            l.closeNow()
        }
    }

    private func connect() {
        let l = RedisLink(role: .command, loop: loop, owner: ownerRef)
        if let err = l.open(url) {
            lastError = err
            scheduleReconnect()
            return
        }
        link = l
        phase = .connecting
        connectDeadline = loop.now &+ RedisConnection.nanos(options.connectTimeout)
        armTick(connectDeadline)
    }

    private func scheduleReconnect() {
        phase = .waitingToReconnect
        reconnectAt = loop.now &+ backoffNanos
        growBackoff()
        armTick(reconnectAt)
    }

    private func growBackoff() {
        backoffNanos = min(backoffNanos &* 2, RedisConnection.nanos(options.backoff.upperBound))
    }

    private func setHealth(_ h: RedisHealth) {
        guard h != health else { return }
        health = h
        onStateChange(h)
    }

    // MARK: link events (called by RedisLink)

    func linkConnected(_ l: RedisLink, ok: Bool) {
        if l === subLink {
            if ok { startSubscription(l) } else { lastError = l.lastError }
            return
        }
        guard l === link, phase == .connecting else { return }
        guard ok else { lastError = l.lastError; return }   // cleanup follows → linkClosed
        phase = .handshaking
        let hsDeadline = connectDeadline
        handshakeLeft = 0
        if formatAuth(), enqueue(.handshake, deadline: hsDeadline) { handshakeLeft += 1 }
        if url.database != 0 {
            writer.reset()
            writer.arrayHeader(2); writer.bulk("SELECT"); writer.bulk(decimal: url.database)
            if enqueue(.handshake, deadline: hsDeadline) { handshakeLeft += 1 }
        }
        for body in [RedisScripts.limiterBody, RedisScripts.heartbeatBody] {
            writer.reset()
            writer.arrayHeader(3); writer.bulk("SCRIPT"); writer.bulk("LOAD"); writer.bulk(body)
            if enqueue(.handshake, deadline: hsDeadline) { handshakeLeft += 1 }
        }
        // No limit is decided before Redis's clock is known (the server may have changed).
        clock = RedisClock()
        if sendClockSample(handshake: true, deadline: hsDeadline) { handshakeLeft += 1 }
    }

    func linkClosed(_ l: RedisLink) {
        if l === subLink {
            subLink = nil
            isSubscribed = false
            if phase != .stopped {
                subRetryAt = loop.now &+ RedisConnection.nanos(options.backoff.lowerBound) &* 4
                armTick(subRetryAt)
            }
            return
        }
        guard l === link else { return }
        link = nil
        if let e = l.lastError { lastError = e }
        // hiredis answered every pending command with NULL before cleanup; anything left
        // (a command hiredis refused mid-close) is failed here.
        while let e = fifo.popFirst() { finish(e, .disconnected) }
        isProbeInFlight = false
        isHeartbeatInFlight = false
        isClockInFlight = false
        consecutiveFailures = 0
        probeFailures = 0
        guard phase != .stopped else { return }
        setHealth(.down)
        scheduleReconnect()
    }

    private func handshakeDone() {
        phase = .ready
        backoffNanos = RedisConnection.nanos(options.backoff.lowerBound)
        consecutiveFailures = 0
        probeFailures = 0
        setHealth(.up)
        heartbeatAt = loop.now
        sendHeartbeat()
        if onInvalidation != nil && subLink == nil { openSubscriber() }
    }

    // MARK: replies

    /// A reply (or NULL: the connection went away) for the oldest pending command.
    func commandReply(_ r: UnsafeMutablePointer<redisReply>?) {
        guard let e = fifo.popFirst() else { return }
        guard let r else { finish(e, .disconnected); return }
        // Any reply, even one past its deadline, shows the server is alive (slow, not gone):
        // it does not count toward opening the breaker.
        consecutiveFailures = 0
        if e.isAbandoned { return }
        switch e.kind {
        case .user(let w, let token):
            w.redisCompleted(token: token, result: .reply(RedisReply(copying: r)))
        case .admit(let w, let token, let hash, let plan):
            if let v = RedisScripts.verdict(from: r, plan: plan) {
                w.redisCompleted(token: token, result: .limit(v))
            } else if RedisConnection.isNoScript(r) {
                // Script cache flushed (restart, failover, SCRIPT FLUSH): EVAL loads it again.
                formatAdmit(hash, plan: plan, evalBody: true)
                if !enqueue(e.kind, deadline: loop.now &+ deadlineNanos) {
                    w.redisCompleted(token: token, result: .disconnected)
                }
            } else {
                w.redisCompleted(token: token, result: .reply(RedisReply(copying: r)))
            }
        case .handshake:
            if r.pointee.type == REDIS_REPLY_ERROR {
                lastError = "handshake: " + (RedisReply(copying: r).text ?? "error")
                link?.closeSoon()
                return
            }
            handshakeLeft -= 1
            if handshakeLeft == 0 && phase == .handshaking { handshakeDone() }
        case .probe:
            isProbeInFlight = false
            probeFailures = 0
            if phase == .ready {
                backoffNanos = RedisConnection.nanos(options.backoff.lowerBound)
                setHealth(.up)
                if heartbeatAt <= loop.now { sendHeartbeat() }
            }
        case .clock(let handshake):
            isClockInFlight = false
            guard let t = RedisConnection.timeMicros(r) else {
                let what = r.pointee.type == REDIS_REPLY_ERROR ? (RedisReply(copying: r).text ?? "error") : "unexpected TIME reply"
                if handshake {
                    lastError = "handshake: " + what
                    link?.closeSoon()
                } else {
                    lastError = "clock: " + what
                }
                return
            }
            clock.add(server: t, sentAt: clockSentAt, receivedAt: monotonicNanos())
            if handshake {
                handshakeLeft -= 1
                if handshakeLeft == 0 && phase == .handshaking { handshakeDone() }
            }
        case .heartbeat:
            isHeartbeatInFlight = false
            if r.pointee.type == REDIS_REPLY_INTEGER {
                liveInstances = max(1, Int(r.pointee.integer))
            } else if RedisConnection.isNoScript(r) {
                formatHeartbeat(evalBody: true)
                if enqueue(.heartbeat, deadline: loop.now &+ deadlineNanos) { isHeartbeatInFlight = true }
            } else {
                lastError = "heartbeat: " + (RedisReply(copying: r).text ?? "unexpected reply")
            }
        case .ignored:
            break
        }
    }

    /// A `TIME` reply (seconds, microseconds) in µs.
    static func timeMicros(_ r: UnsafeMutablePointer<redisReply>) -> Int64? {
        let p = r.pointee
        guard p.type == REDIS_REPLY_ARRAY, p.elements == 2, let el = p.element,
              let s = el[0], let u = el[1], s.pointee.type == REDIS_REPLY_STRING, u.pointee.type == REDIS_REPLY_STRING,
              let sec = Int64(String(decoding: RedisReply.bytes(s.pointee.str, s.pointee.len), as: UTF8.self)),
              let usec = Int64(String(decoding: RedisReply.bytes(u.pointee.str, u.pointee.len), as: UTF8.self))
        else { return nil }
        return sec &* 1_000_000 &+ usec
    }

    /// Queues `TIME` (one in flight at a time).
    @discardableResult
    private func sendClockSample(handshake: Bool, deadline: UInt64) -> Bool {
        guard !isClockInFlight else { return false }
        writer.reset()
        writer.arrayHeader(1)
        writer.bulk("TIME")
        clockSentAt = monotonicNanos()
        guard enqueue(.clock(handshake: handshake), deadline: deadline) else { return false }
        isClockInFlight = true
        return true
    }

    static func isNoScript(_ r: UnsafeMutablePointer<redisReply>) -> Bool {
        guard r.pointee.type == REDIS_REPLY_ERROR, r.pointee.len >= 8, let s = r.pointee.str else { return false }
        return memcmp(s, "NOSCRIPT", 8) == 0
    }

    /// Completes an entry that got no reply.
    private func finish(_ e: RedisPending, _ result: RedisResult) {
        if e.isAbandoned { return }
        switch e.kind {
        case .user(let w, let token), .admit(let w, let token, _, _): w.redisCompleted(token: token, result: result)
        case .probe: isProbeInFlight = false
        case .heartbeat: isHeartbeatInFlight = false
        case .clock: isClockInFlight = false
        case .handshake, .ignored: break
        }
    }

    // MARK: sending

    @inline(__always)
    private var isAccepting: Bool { phase == .ready && health == .up }

    /// Sends the command in `writer`; false when hiredis refused it.
    @inline(__always)
    private func enqueue(_ kind: RedisPending.Kind, deadline: UInt64) -> Bool {
        guard let link, link.send(writer) else { return false }
        fifo.append(RedisPending(kind: kind, deadline: deadline))
        armDeadline(deadline)
        return true
    }

    /// GET `tg:{<hex>}:key`. Completes with `.reply(.string(json))`, `.reply(.nil)` (no such
    /// key), `.timedOut` or `.disconnected`.
    /// - Returns: nil when `waiter` will be called later (always from a later loop callback);
    ///   `.unavailable` at once when the breaker is open (the waiter is then never called).
    public func lookupKey(_ hash: KeyHash, waiter: any RedisWaiter, token: UInt64) -> RedisResult? {
        loop.assertOnLoop()
        guard isAccepting else { return .unavailable }
        writer.reset()
        writer.arrayHeader(2)
        writer.bulk("GET")
        writer.bulkKey(hash, suffix: RedisKeys.recordSuffix)
        return enqueue(.user(waiter, token), deadline: loop.now &+ deadlineNanos) ? nil : .unavailable
    }

    /// One GCRA decision over every window of `plan` for `hash`: a single EVALSHA
    /// (EVAL after a NOSCRIPT). Completes with `.limit(verdict)`; `.reply(.error)` if the
    /// script failed; `.timedOut`/`.disconnected`. A plan without windows answers
    /// `.limit(allowed)` at once.
    /// - Returns: nil when `waiter` will be called later; otherwise the immediate result.
    public func admit(_ hash: KeyHash, plan: PlanSpec, waiter: any RedisWaiter, token: UInt64) -> RedisResult? {
        loop.assertOnLoop()
        if plan.windows.isEmpty { return .limit(RedisScripts.blankVerdict(plan)) }
        guard isAccepting else { return .unavailable }
        formatAdmit(hash, plan: plan, evalBody: false)
        return enqueue(.admit(waiter, token, hash, plan), deadline: loop.now &+ deadlineNanos) ? nil : .unavailable
    }

    /// Any command, arguments as bytes (admin, tests). Same completion rules as `lookupKey`.
    public func command(_ args: [[UInt8]], waiter: any RedisWaiter, token: UInt64) -> RedisResult? {
        loop.assertOnLoop()
        guard isAccepting, !args.isEmpty else { return .unavailable }
        writer.reset()
        writer.arrayHeader(args.count)
        for a in args { writer.bulk(a) }
        return enqueue(.user(waiter, token), deadline: loop.now &+ deadlineNanos) ? nil : .unavailable
    }

    /// A command the caller formats straight into the connection's writer (no argument
    /// arrays on a hot path). Same completion rules as `lookupKey`.
    public func command(waiter: any RedisWaiter, token: UInt64, _ format: (RESPWriter) -> Void) -> RedisResult? {
        loop.assertOnLoop()
        guard isAccepting else { return .unavailable }
        writer.reset()
        format(writer)
        return enqueue(.user(waiter, token), deadline: loop.now &+ deadlineNanos) ? nil : .unavailable
    }

    public func command(_ args: String..., waiter: any RedisWaiter, token: UInt64) -> RedisResult? {
        command(args.map { Array($0.utf8) }, waiter: waiter, token: token)
    }

    private func formatAdmit(_ hash: KeyHash, plan: PlanSpec, evalBody: Bool) {
        let n = plan.windows.count
        writer.reset()
        if !evalBody {
            // The hot path: everything but the key's hex digits comes from text built once.
            let t = admitTemplate(plan)
            let text = t.text.baseAddress!
            writer.raw(text, count: t.headCount)
            var at = t.headCount
            for i in 0..<n {
                let (before, after) = t.keyParts[i]
                writer.raw(text + at, count: Int(before))
                writer.hex(hash)
                writer.raw(text + at + Int(before), count: Int(after))
                at += Int(before) + Int(after)
            }
            writer.raw(text + at, count: t.text.count - at)
            appendNow(plan)
            return
        }
        writer.arrayHeader(3 + n + RedisScripts.argumentCount(plan))
        if evalBody {
            writer.bulk("EVAL"); writer.bulk(RedisScripts.limiterBody)
        } else {
            writer.bulk("EVALSHA"); writer.bulk(RedisScripts.limiterSHA)
        }
        writer.bulk(decimal: n)
        for i in 0..<n { writer.bulkKey(hash, suffix: RedisKeys.limiterSuffix, index: i) }
        writer.raw(windowArguments(plan))
        appendNow(plan)
    }

    /// The script's last arguments: Redis's time now in µs (see `RedisClock`) and, for a
    /// one-window plan, now + T (the TAT a fresh key gets).
    @inline(__always)
    private func appendNow(_ plan: PlanSpec) {
        let now = Int(clock.micros(atLocal: monotonicNanos()))
        writer.bulk(decimal: now)
        if plan.windows.count == 1 { writer.bulk(decimal: now &+ RedisScripts.micros(plan.windows[0]).emission) }
    }

    /// `EVALSHA <sha> <n> tg:{<hex>}:rl:0 … T τ …` for one plan, formatted once except the
    /// key's hex digits and the time: the head (through the key count), then per window the
    /// text before and after the digits, then the window arguments (`appendNow` adds the rest).
    final class AdmitTemplate {
        let plan: PlanSpec
        let text: UnsafeRawBufferPointer
        let headCount: Int
        let keyParts: InlineArray<8, (Int32, Int32)>
        init(plan: PlanSpec, windowArguments: [UInt8]) {
            self.plan = plan
            let n = plan.windows.count
            let w = RESPWriter(capacity: 512)
            w.arrayHeader(3 + n + RedisScripts.argumentCount(plan))
            w.bulk("EVALSHA"); w.bulk(RedisScripts.limiterSHA)
            w.bulk(decimal: n)
            headCount = w.count
            var parts = InlineArray<8, (Int32, Int32)>(repeating: (0, 0))
            for i in 0..<n {
                // `$<len>\r\ntg:{` <hex> `}:rl:<i>\r\n`
                let start = w.count
                w.bulkKey(KeyHash(w0: 0, w1: 0, w2: 0, w3: 0), suffix: RedisKeys.limiterSuffix, index: i)
                let whole = Array(UnsafeRawBufferPointer(start: w.bytes + start, count: w.count - start))
                let open = whole.firstIndex(of: UInt8(ascii: "{"))! + 1
                w.discard(to: start)
                w.raw(whole[..<open])
                w.raw(whole[(open + 64)...])
                parts[i] = (Int32(open), Int32(whole.count - open - 64))
            }
            w.raw(windowArguments)
            keyParts = parts
            let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: w.count, alignment: 1)
            storage.copyMemory(from: UnsafeRawBufferPointer(start: w.bytes, count: w.count))
            text = UnsafeRawBufferPointer(storage)
        }
        deinit { text.deallocate() }
    }
    /// A few plans per policy: a short list searched by identity beats hashing.
    private var admitTemplates: [AdmitTemplate] = []

    private func admitTemplate(_ plan: PlanSpec) -> AdmitTemplate {
        for t in admitTemplates where t.plan === plan { return t }
        let t = AdmitTemplate(plan: plan, windowArguments: windowArguments(plan))
        if admitTemplates.count >= 16 { admitTemplates.removeAll() }   // reloads make new plans
        admitTemplates.append(t)
        return t
    }

    /// The window arguments (interval and capacity per window) of a plan, formatted once.
    /// Keyed by the plan object, which the entry keeps alive (so its identity is not reused).
    private var windowArgumentCache: [ObjectIdentifier: (plan: PlanSpec, bytes: [UInt8])] = [:]

    private func windowArguments(_ plan: PlanSpec) -> [UInt8] {
        if let hit = windowArgumentCache[ObjectIdentifier(plan)] { return hit.bytes }
        let w = RESPWriter(capacity: 256)
        for window in plan.windows {
            let (t, cap) = RedisScripts.micros(window)
            w.bulk(decimal: t)
            w.bulk(decimal: cap)
        }
        if plan.windows.count == 1 {
            w.bulk(decimal: RedisScripts.keepMillis(plan.windows[0]))
        }
        let bytes = Array(UnsafeRawBufferPointer(start: w.bytes, count: w.count))
        if windowArgumentCache.count >= 64 { windowArgumentCache.removeAll() }   // reloads make new plans
        windowArgumentCache[ObjectIdentifier(plan)] = (plan, bytes)
        return bytes
    }

    private func formatHeartbeat(evalBody: Bool) {
        writer.reset()
        writer.arrayHeader(6)
        if evalBody {
            writer.bulk("EVAL"); writer.bulk(RedisScripts.heartbeatBody)
        } else {
            writer.bulk("EVALSHA"); writer.bulk(RedisScripts.heartbeatSHA)
        }
        writer.bulk(decimal: 1)
        writer.bulk(RedisKeys.instances)
        writer.bulk(instanceID)
        writer.bulk(decimal: Int(RedisConnection.nanos(options.instanceWindow) / 1_000_000))
    }

    private func sendHeartbeat() {
        heartbeatAt = loop.now &+ RedisConnection.nanos(options.heartbeatInterval)
        armTick(heartbeatAt)
        guard phase == .ready, health == .up else { return }
        sendClockSample(handshake: false, deadline: loop.now &+ deadlineNanos)
        guard !isHeartbeatInFlight else { return }
        formatHeartbeat(evalBody: false)
        if enqueue(.heartbeat, deadline: loop.now &+ deadlineNanos) { isHeartbeatInFlight = true }
    }

    // MARK: invalidations

    /// Subscribes (on a second, subscribe-mode connection of this loop) to `tg:invalidate`.
    /// `onMessage` gets the 64-hex hash of each key whose record changed, on this loop; and an
    /// empty message each time the subscription is (re)established, meaning "anything may
    /// have changed while unsubscribed: drop every cached record".
    public func subscribeInvalidations(_ onMessage: @escaping ([UInt8]) -> Void) {
        loop.assertOnLoop()
        onInvalidation = onMessage
        if phase == .ready && subLink == nil { openSubscriber() }
    }

    private func openSubscriber() {
        guard phase != .stopped else { return }
        let l = RedisLink(role: .subscriber, loop: loop, owner: ownerRef)
        if let err = l.open(url) {
            lastError = "subscriber: " + err
            subRetryAt = loop.now &+ RedisConnection.nanos(options.backoff.upperBound)
            armTick(subRetryAt)
            return
        }
        subLink = l
    }

    /// `AUTH [user] pass` into the writer when the URL has a password; false (nothing written)
    /// when it has none.
    private func formatAuth() -> Bool {
        guard let pass = url.password else { return false }
        writer.reset()
        if let user = url.username {
            writer.arrayHeader(3); writer.bulk("AUTH"); writer.bulk(user); writer.bulk(pass)
        } else {
            writer.arrayHeader(2); writer.bulk("AUTH"); writer.bulk(pass)
        }
        return true
    }

    private func startSubscription(_ l: RedisLink) {
        if formatAuth() { _ = l.send(writer) }
        writer.reset()
        writer.arrayHeader(2)
        writer.bulk("SUBSCRIBE")
        writer.bulk(RedisKeys.invalidationChannel)
        _ = l.send(writer)
    }

    func subscriberReply(_ r: UnsafeMutablePointer<redisReply>?, link l: RedisLink) {
        guard let r, l === subLink else { return }
        let p = r.pointee
        if p.type == REDIS_REPLY_ERROR {
            lastError = "subscriber: " + (RedisReply(copying: r).text ?? "error")
            l.closeSoon()
            return
        }
        guard p.type == REDIS_REPLY_ARRAY, p.elements == 3, let el = p.element,
              let kind = el[0], kind.pointee.type == REDIS_REPLY_STRING, let k = kind.pointee.str else { return }
        if kind.pointee.len == 7 && memcmp(k, "message", 7) == 0 {
            if let payload = el[2], payload.pointee.type == REDIS_REPLY_STRING {
                onInvalidation?(RedisReply.bytes(payload.pointee.str, payload.pointee.len))
            }
        } else if kind.pointee.len == 9 && memcmp(k, "subscribe", 9) == 0 {
            isSubscribed = true
            onInvalidation?([])
        }
    }

    /// True once the invalidation subscription is confirmed (tests, admin).
    public var isSubscribedToInvalidations: Bool { isSubscribed }

    // MARK: timers

    private func armTick(_ at: UInt64) {
        if tickArmed == 0 || at < tickArmed || tickArmed <= loop.now {
            tickArmed = at
            loop.schedule(at: at, handler: ticker)
        }
    }

    fileprivate func tick() {
        let now = loop.now
        if tickArmed <= now { tickArmed = 0 }
        switch phase {
        case .idle, .stopped:
            return
        case .waitingToReconnect:
            if now >= reconnectAt { connect() } else { armTick(reconnectAt) }
        case .connecting, .handshaking:
            if now >= connectDeadline {
                lastError = lastError ?? "connect timed out"
                link?.closeSoon()
            } else {
                armTick(connectDeadline)
            }
        case .ready:
            if health == .down {
                if now >= probeAt && !isProbeInFlight {
                    writer.reset()
                    writer.arrayHeader(1)
                    writer.bulk("PING")
                    if enqueue(.probe, deadline: now &+ deadlineNanos) { isProbeInFlight = true }
                    probeAt = now &+ backoffNanos
                    growBackoff()
                }
                armTick(max(probeAt, now &+ 1_000_000))
            } else if now >= heartbeatAt {
                sendHeartbeat()
            } else {
                armTick(heartbeatAt)
            }
        }
        if onInvalidation != nil && subLink == nil && phase == .ready {
            if now >= subRetryAt { openSubscriber() } else { armTick(subRetryAt) }
        }
    }

    private func armDeadline(_ at: UInt64) {
        if deadlineArmed == 0 || at < deadlineArmed || deadlineArmed <= loop.now {
            deadlineArmed = at
            loop.schedule(at: at, handler: deadlineTimer)
        }
    }

    /// Times out every live entry whose deadline passed; re-arms for the earliest live one.
    fileprivate func checkDeadlines() {
        // Replies that came in while the loop was busy elsewhere count: read them first.
        link?.readArrived()
        let now = loop.now
        if deadlineArmed <= now { deadlineArmed = 0 }
        var expired: [RedisPending] = []
        var next: UInt64 = .max
        for i in 0..<fifo.count {
            let e = fifo[i]
            if e.isAbandoned { continue }
            if e.deadline <= now {
                // Keep the slot (replies stay aligned) but drop the waiter reference now.
                fifo[i].isAbandoned = true
                fifo[i].kind = .ignored
                expired.append(e)
            } else if e.deadline < next {
                next = e.deadline
            }
        }
        if next != .max { armDeadline(next) }
        if expired.isEmpty { return }
        // One expiry sweep is one failure, however many pipelined commands it times out: a
        // single slow batch under load must not open the breaker; three sweeps with no reply
        // in between (a server silent for about three deadlines) do.
        var handshakeTimedOut = false
        var commandTimedOut = false
        var probeTimedOut = false
        for e in expired {
            switch e.kind {
            case .user, .admit, .heartbeat: commandTimedOut = true
            case .probe: probeTimedOut = true
            case .handshake, .clock(handshake: true): handshakeTimedOut = true
            case .clock(handshake: false): break
            case .ignored: break
            }
        }
        if commandTimedOut { consecutiveFailures += 1 }
        if probeTimedOut { probeFailures += 1 }
        if handshakeTimedOut {
            lastError = "handshake timed out"
            link?.closeSoon()
        } else if phase == .ready {
            if health == .up && consecutiveFailures >= options.failureThreshold {
                lastError = "\(consecutiveFailures) consecutive commands timed out"
                probeAt = now &+ backoffNanos
                setHealth(.down)
                armTick(probeAt)
            } else if health == .down && probeFailures >= options.failureThreshold {
                // Alive socket, dead server (or a partition): start over on a new connection.
                lastError = "breaker probes timed out"
                link?.closeSoon()
            }
        }
        for e in expired { finish(e, .timedOut) }
    }

    /// The connection, for its links and timers, cleared when it goes away. Not a weak
    /// reference: one weak reference moves an object's reference count to a side table for
    /// good, and every retain/release of the connection then takes the slow path (measured:
    /// ≈650 instructions per Redis-limited request).
    final class OwnerRef {
        unowned(unsafe) var connection: RedisConnection?
    }

    final class Ticker: TimerHandler {
        let owner: OwnerRef
        init(_ o: OwnerRef) { owner = o }
        func timerFired(loop: EventLoop) { owner.connection?.tick() }
    }

    final class DeadlineTimer: TimerHandler {
        let owner: OwnerRef
        init(_ o: OwnerRef) { owner = o }
        func timerFired(loop: EventLoop) { owner.connection?.checkDeadlines() }
    }
}
