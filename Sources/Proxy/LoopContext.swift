import CSystem
import Backends
import Glibc
import Policy
import Runtime
import Synchronization

/// Settings that are not part of the policy files (command line).
struct ServerSettings: Sendable {
    var threads = 1
    var headerTimeout: Duration = .seconds(10)
    var idleTimeout: Duration = .seconds(60)
    var bodyTimeout: Duration = .seconds(30)
    var drainTimeout: Duration = .seconds(10)
    var maxConnectionsPerLoop = 16_384
    /// A request body must arrive at least this fast (bytes per second) once its first
    /// `bodyTimeout` of credit is spent.
    var bodyMinRate = 1024
    /// TLS session ticket keys (and the session cache) are replaced this often.
    var ticketKeyRotation: Duration = .seconds(12 * 3600)
    var limits = HTTP1Limits()
}

/// What a session needs while a request is in flight, as one block: read buffer, write
/// buffer, header table, normalised path. Lent by the loop (`takeWorkspace`) when a head
/// starts arriving and taken back once the connection has idled a while, so idle keep-alive
/// connections cost no buffers.
struct WorkspaceLayout {
    let inBytes: Int
    let outBytes: Int
    let headerBytes: Int
    let pathBytes: Int
    var outOffset: Int { inBytes }
    var headersOffset: Int { inBytes + outBytes }
    var pathOffset: Int { inBytes + outBytes + headerBytes }
    var total: Int { inBytes + outBytes + headerBytes + pathBytes }

    init(_ limits: HTTP1Limits) {
        inBytes = (limits.maxHeadBytes + 4096 + 15) & ~15
        outBytes = 24 * 1024
        headerBytes = (Exchange.headerCapacity(limits) * HeaderTable.fieldBytes + 15) & ~15
        pathBytes = limits.maxTargetBytes + 16
    }
}

/// Everything one event loop owns: its connections, upstream pools, the policy snapshot it
/// serves with, caches. Touched only on its loop's thread.
final class LoopContext {
    let loop: EventLoop
    let settings: ServerSettings
    private(set) var snapshot: PolicySnapshot {
        didSet { hasClientRules = Self.hasClientRules(snapshot) }
    }
    /// The policy has trusted proxies or a deny/allow list (else the client phase is a no-op).
    private(set) var hasClientRules = false
    /// Keys known in-process (declared + embedded store), compiled against `snapshot`.
    var keys: KeyDirectory = .empty
    /// Provider secrets, decrypted (`backends.*.inject`); replaced whole when the store changes.
    var secrets: SecretTable = .empty
    /// The shared store (Redis), when the policy names one.
    private(set) var store: SharedStore?
    /// SHA-256 of recently seen keys (see `KeyHashMemo`).
    let keyHashes = KeyHashMemo()
    /// JWT verification, its scratch buffer and caches (made on the first JWT this loop sees).
    private(set) lazy var jwt = JWTGate()
    /// Shared by every loop: per-key cells built for concurrent use.
    let limiter: RateLimiter
    private(set) var pools: [UpstreamPool] = []
    var listeners: [Listener] = []
    private(set) var clients: [HTTP1Session] = []
    private(set) var h2Sessions: [HTTP2Session] = []
    /// HTTP/2 streams (each with its exchange) and request-body buffers given back, for reuse.
    private var spareStreams: [H2Stream] = []
    private var spareBodies: [IOBuffer] = []
    private(set) lazy var h2Fields = H2FieldScratch()
    /// Request counters under the current snapshot (an exchange keeps the block of the
    /// snapshot it started under).
    private(set) var metrics: RequestMetrics
    /// Connection gauges, degraded admits, store health.
    let gauges = LoopGauges()
    /// This loop's access log lines, when `access_log` is set.
    var accessLog: AccessLogBuffer?
    /// This loop's usage records on their way to the spool, when `usage` is set.
    var usage: UsageQueue?
    /// The ledger for priced routes, when the policy has `credits`.
    var credits: CreditGate?
    /// Calendar quotas (always present; counters local or in Redis).
    var quotas: QuotaGate?
    /// Lock-out and auto-disable (`security:`): this loop's side of the process's monitor.
    var security: LoopSecurity?
    /// The TLS context of each listener (by its index in `listen`), nil for plain ones.
    /// Replaced whole by a reload; connections keep the context they started with.
    var tlsContexts: [TLSContext?] = []
    private(set) var isDraining = false
    /// Called (on the loop) when draining and the last client connection is gone.
    var onDrained: (() -> Void)?

    let headerTimeoutNanos: UInt64
    let idleTimeoutNanos: UInt64
    let bodyTimeoutNanos: UInt64
    /// 1 s / `bodyMinRate`: how far each body byte moves the body deadline.
    let nanosPerBodyByte: UInt64

    /// Workspace blocks given back, ready to lend (bounded: a burst does not keep its memory).
    private var spareWorkspaces: [UnsafeMutableRawPointer] = []
    static let maxSpareWorkspaces = 64
    let workspaceLayout: WorkspaceLayout

    private var requestCounter: UInt64 = 0
    private var creditCounter: UInt64 = 0
    private(set) var instanceID = "tollgate"

    /// `<instance>-<loop>-`, the start of every reservation id of this loop.
    private lazy var creditKeyPrefix: [UInt8] = Array("\(instanceID)-\(loop.index)-".utf8)

    /// The next reservation id as bytes (Redis ledger).
    func nextCreditKey() -> [UInt8] {
        creditCounter &+= 1
        var k = creditKeyPrefix
        LocalLedger.appendDecimal(Int64(truncatingIfNeeded: creditCounter), to: &k)
        return k
    }

    /// A reservation id unique across instances and restarts (the instance id is per run).
    func nextCreditID() -> String {
        creditCounter &+= 1
        return "\(instanceID)-\(loop.index)-\(creditCounter)"
    }
    private let requestIDSeed: UInt64
    /// First half of the trace ids this loop starts (16 hex digits, random per run); the
    /// second half is the request's own id.
    let traceSeedHex: (UInt64, UInt64)

    init(loop: EventLoop, snapshot: PolicySnapshot, settings: ServerSettings, limiter: RateLimiter,
         backendTLS: [BackendTLSContext?] = []) {
        self.loop = loop
        self.limiter = limiter
        hasClientRules = Self.hasClientRules(snapshot)
        self.snapshot = snapshot
        self.settings = settings
        metrics = RequestMetrics(snapshot: snapshot)
        MetricsRegistry.shared.register(metrics)
        MetricsRegistry.shared.register(gauges)
        headerTimeoutNanos = settings.headerTimeout.nanoseconds
        idleTimeoutNanos = settings.idleTimeout.nanoseconds
        bodyTimeoutNanos = settings.bodyTimeout.nanoseconds
        nanosPerBodyByte = 1_000_000_000 / UInt64(max(1, settings.bodyMinRate))
        workspaceLayout = WorkspaceLayout(settings.limits)
        var seed: UInt64 = 0
        seed = UInt64.random(in: .min ... .max)
        requestIDSeed = seed
        var trace: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &trace) { Hex.write16(UInt64.random(in: 1 ... .max), to: $0.baseAddress!) }
        traceSeedHex = trace
        for (i, b) in snapshot.backends.enumerated() {
            pools.append(UpstreamPool(loop: loop, backendIndex: i, spec: b, tls: i < backendTLS.count ? backendTLS[i] : nil))
        }
    }

    static func hasClientRules(_ s: PolicySnapshot) -> Bool {
        !(s.clients.trustedProxies.isEmpty && s.clients.deny.isEmpty && s.clients.allow.isEmpty)
    }

    /// Connects this loop to the shared store (on the loop's thread, before it serves).
    /// Every loop announces the same `instanceID` (the process's): the heartbeat counts
    /// processes, because that is what shares one in-process limiter in `local` mode.
    func startStore(instanceID: String) {
        self.instanceID = instanceID
        guard let spec = snapshot.store else { return }
        gauges.set(.storeConfigured, 1)
        store = SharedStore(loop: loop, url: spec.url, deadline: spec.deadline, mode: spec.onError,
                            instanceID: instanceID, gauges: gauges)
        store?.onSecurityMessage = { [unowned self] m in self.security?.storeMessage(m) }
    }

    /// Installs a new policy snapshot (called on this loop). The old pools are retired: their
    /// idle connections close now, the ones lent to in-flight exchanges when they come back.
    /// An exchange keeps the pool its route chose (`ExchangeFacts.pool`), so it is served as
    /// the policy it started under said.
    func install(_ new: PolicySnapshot, backendTLS: [BackendTLSContext?] = []) {
        for p in pools {
            p.isRetired = true
            p.closeAll()
        }
        pools = new.backends.enumerated().map {
            UpstreamPool(loop: loop, backendIndex: $0.offset, spec: $0.element,
                         tls: $0.offset < backendTLS.count ? backendTLS[$0.offset] : nil)
        }
        snapshot = new
        if let g = credits, let spec = new.credits {
            // Same ledger (a change of ledger is refused by the reload); who pays and the
            // outage answer may change.
            g.spec = spec
        }
        metrics = RequestMetrics(snapshot: new)
        MetricsRegistry.shared.register(metrics)
        // Cached store records were compiled against the old snapshot (scope bits, plan
        // indexes): drop them all; they are fetched and compiled again on the next request.
        store?.invalidate([])
    }

    // MARK: store-backed phases

    /// The key's record: in-process (declared + embedded store), or through the shared store's
    /// cache, then Redis, then the declared keys.
    func lookup(for c: Exchange) -> PhaseResult {
        let h = c.facts.keyHash
        guard let store else {
            if let r = keys.lookup(h, in: snapshot) {
                c.facts.record = r
                return .next
            }
            return .reply(Denial(.invalidKey))
        }
        switch store.cached(h, now: loop.now, allowStale: false) {
        case .hit(let r):
            c.facts.record = r
            // While Redis is down no invalidation can arrive: say the record is a cached one.
            if store.redis.health == .down { c.facts.degraded = .staleKey }
            return .next
        case .negative:
            return .reply(Denial(.invalidKey))
        case .miss:
            break
        }
        if let failed = store.redis.lookupKey(h, waiter: c, token: c.facts.token) {
            return keyLookupFailed(c, store, failed)
        }
        return .wait
    }

    /// Rate limits: Redis (one script, every window) when configured, else in-process (exact
    /// across loops: the cells are shared).
    func admit(for c: Exchange, plan: PlanSpec) -> PhaseResult {
        if let store {
            if let refused = store.refusals.refusal(c.facts.keyHash, plan: plan, now: loop.now) {
                c.facts.limitPlan = plan.index
                c.facts.limitReport = refused.limit!
                return .reply(refused)
            }
            c.facts.storeAskedAt = loop.now
            if let failed = store.redis.admit(c.facts.keyHash, plan: plan, waiter: c, token: c.facts.token) {
                return limitFailed(c, store, plan, failed)
            }
            return .wait
        }
        return admitLocally(c, plan: plan)
    }

    private func admitLocally(_ c: Exchange, plan: PlanSpec) -> PhaseResult {
        let v = limiter.admit(key: c.facts.keyHash, plan: plan, now: loop.now)
        return apply(v, to: c, plan: plan)
    }

    private func apply(_ v: LimitVerdict, to c: Exchange, plan: PlanSpec) -> PhaseResult {
        c.facts.limitPlan = plan.index
        c.facts.limitReport = v.report
        if !v.isAllowed {
            return .reply(Denial(.rateLimited, retryAfterSeconds: max(1, v.retryAfterSeconds), limit: v.report))
        }
        return .next
    }

    /// A store reply (or failure) for the phase the exchange is parked in.
    func completeStore(for c: Exchange, result: RedisResult) -> PhaseResult {
        guard let store else { return .reply(Denial(.storeUnavailable)) }
        let h = c.facts.keyHash
        switch c.facts.phase {
        case .lookupKey:
            switch result {
            case .reply(.string(let json)):
                guard let entry = try? RedisKeyDirectory.decode(json), let hash = entry.hash.flatMap({ KeyHash(hex: $0.hasPrefix("sha256:") ? String($0.dropFirst(7)) : $0) }), hash == h else {
                    return keyLookupFailed(c, store, .reply(.nil))
                }
                // Compiled against the snapshot the exchange started under (a reload during the
                // wait changes neither its scopes nor its plan); cached only if that is current.
                let pinned = c.facts.snapshot
                var warnings: [String] = []
let local = pinned === snapshot ? keys.lookup(h, in: snapshot) : pinned.declaredKey(h)
                let r = RedisKeyDirectory.record(from: entry, hash: h, local: local, snapshot: pinned, warnings: &warnings)
                if pinned === snapshot { store.remember(h, record: r, now: loop.now) }
                c.facts.record = r
                return .next
            case .reply(.nil):
                let pinned = c.facts.snapshot
                let declared = pinned === snapshot ? keys.lookup(h, in: snapshot) : pinned.declaredKey(h)
                if pinned === snapshot { store.remember(h, record: declared, now: loop.now) }
                guard let declared else { return .reply(Denial(.invalidKey)) }
                c.facts.record = declared
                return .next
            default:
                return keyLookupFailed(c, store, result)
            }
        case .quota:
            return quotas?.complete(c, result: result) ?? .next
        case .reserve:
            return credits?.completeReserve(c, result: result) ?? .reply(Denial(.storeUnavailable, retryAfterSeconds: 1))
        case .admit:
            let pinned = c.facts.snapshot
            guard let record = c.facts.record, let pi = record.planIndex, pi < pinned.plans.count else { return .next }
            let plan = pinned.plans[pi]
            guard case .limit(let v) = result else { return limitFailed(c, store, plan, result) }
            if !v.isAllowed { store.refusals.remember(h, plan: plan, askedAt: c.facts.storeAskedAt, verdict: v) }
            return apply(v, to: c, plan: plan)
        default:
            return .next
        }
    }

    /// Redis could not say: a cached record (even stale) is used; an unknown key is refused 503.
    private func keyLookupFailed(_ c: Exchange, _ store: SharedStore, _ result: RedisResult) -> PhaseResult {
        if case .hit(let r) = store.cached(c.facts.keyHash, now: loop.now, allowStale: true) {
            c.facts.record = r
            c.facts.degraded = .staleKey
            return .next
        }
        if case .reply(.nil) = result { return .reply(Denial(.invalidKey)) }
        return .reply(Denial(.storeUnavailable, retryAfterSeconds: 1))
    }

    /// Redis could not decide a limit: `store.on_error` says what happens.
    private func limitFailed(_ c: Exchange, _ store: SharedStore, _ plan: PlanSpec, _ result: RedisResult) -> PhaseResult {
        switch store.mode {
        case .closed:
            return .reply(Denial(.storeUnavailable, retryAfterSeconds: 1))
        case .open:
            gauges.add(.degradedOpen)
            c.facts.degraded = .open
            return .next
        case .local:
            gauges.add(.degradedLocal)
            c.facts.degraded = .local
            let scaled = store.localPlan(plan)
            let v = limiter.admit(key: c.facts.keyHash, plan: scaled, now: loop.now)
            c.facts.limitPlan = plan.index
            c.facts.limitReport = v.report
            if !v.isAllowed {
                return .reply(Denial(.rateLimited, retryAfterSeconds: max(1, v.retryAfterSeconds), limit: v.report))
            }
            return .next
        }
    }

    // MARK: workspaces

    /// Every second: workspaces of connections idle for a second or more go back to the pool.
    private lazy var idleSweeper = TimerAction { [unowned self] in self.sweepIdle() }
    private var isSweepScheduled = false
    static let idleSweepNanos: UInt64 = 1_000_000_000

    func scheduleSweep() {
        if isSweepScheduled { return }
        isSweepScheduled = true
        loop.schedule(at: loop.now &+ Self.idleSweepNanos, handler: idleSweeper)
    }

    private func sweepIdle() {
        isSweepScheduled = false
        let cutoff = loop.now &- Self.idleSweepNanos
        var holding = 0
        for c in clients {
            c.releaseIfIdle(before: cutoff)
            if c.hasWorkspace { holding += 1 }
        }
        for s in h2Sessions {
            s.releaseIfIdle(before: cutoff)
            if s.hasBuffers { holding += 1 }
        }
        if spareStreams.count > 256 { spareStreams.removeLast(spareStreams.count - 256) }
        if holding > 0 { scheduleSweep() }
    }

    func takeWorkspace() -> UnsafeMutableRawPointer {
        scheduleSweep()
        if let w = spareWorkspaces.popLast() { return w }
        return .allocate(byteCount: workspaceLayout.total, alignment: 16)
    }

    func giveBack(_ w: UnsafeMutableRawPointer) {
        if spareWorkspaces.count < Self.maxSpareWorkspaces {
            spareWorkspaces.append(w)
            return
        }
        w.deallocate()
        if !isTrimScheduled {
            // A burst is over: once its workspaces are freed, hand the memory back to the
            // system (malloc keeps freed heap pages resident otherwise).
            isTrimScheduled = true
            loop.schedule(at: loop.now &+ 1_000_000_000, handler: trimmer)
        }
    }

    private var isTrimScheduled = false
    private lazy var trimmer = TimerAction { [unowned self] in
        self.isTrimScheduled = false
        _ = malloc_trim(0)
    }

    // MARK: connections

    func add(_ c: HTTP1Session) {
        c.slot = clients.count
        clients.append(c)
        gauges.add(.http1Connections)
    }

    func remove(_ c: HTTP1Session) {
        let i = c.slot
        guard i >= 0, i < clients.count, clients[i] === c else { return }
        gauges.subtract(.http1Connections)
        let last = clients.removeLast()
        if i < clients.count {
            clients[i] = last
            last.slot = i
        }
        c.slot = -1
        if isDraining && clients.isEmpty && h2Sessions.isEmpty { finishDrain() }
    }

    var connectionCount: Int { clients.count + h2Sessions.count }

    func add(_ s: HTTP2Session) {
        s.slot = h2Sessions.count
        h2Sessions.append(s)
        gauges.add(.h2Connections)
    }

    func remove(_ s: HTTP2Session) {
        let i = s.slot
        guard i >= 0, i < h2Sessions.count, h2Sessions[i] === s else { return }
        gauges.subtract(.h2Connections)
        let last = h2Sessions.removeLast()
        if i < h2Sessions.count {
            h2Sessions[i] = last
            last.slot = i
        }
        s.slot = -1
        if isDraining && clients.isEmpty && h2Sessions.isEmpty { finishDrain() }
    }

    /// An HTTP/1.1 connection that turned out to speak HTTP/2 (ALPN `h2`, or the h2c preface):
    /// the same socket gets an HTTP/2 session, with the bytes already read.
    func upgrade(_ c: HTTP1Session, transport: Transport, initial: UnsafeRawBufferPointer) {
        let h2 = HTTP2Session(fd: c.fd, transport: transport, peer: c.peer, peerIP: c.peerIP, context: self, initial: initial)
        remove(c)
        loop.deregister(fd: c.fd)
        do {
            try loop.register(fd: c.fd, handler: h2)
        } catch {
            loop.close(fd: c.fd)
            return
        }
        add(h2)
        if !h2.start() { h2.close() }
    }

    func takeStream(session: HTTP2Session, id: Int32) -> H2Stream {
        let s = spareStreams.popLast() ?? H2Stream(session: session, context: self)
        s.session = session
        s.id = id
        return s
    }

    /// Always kept (a stream may be given back inside one of its own calls); the sweep trims
    /// the spares to 256.
    func giveBackStream(_ s: H2Stream) {
        spareStreams.append(s)
        if spareStreams.count > 256 { scheduleSweep() }
    }

    /// A request-body buffer for one HTTP/2 stream: one stream window.
    func takeBodyBuffer() -> IOBuffer {
        spareBodies.popLast() ?? IOBuffer(capacity: HTTP2Session.streamWindow + 1)
    }

    func giveBackBodyBuffer(_ b: IOBuffer) {
        b.clear()
        if spareBodies.count < 64 { spareBodies.append(b) }
    }

    /// Stop accepting; close idle connections; let in-flight exchanges finish, then close.
    func beginDrain() {
        if isDraining { return }
        isDraining = true
        for l in listeners { l.close() }
        listeners.removeAll()
        for c in clients { c.drain() }
        for s in h2Sessions { s.drain() }
        for p in pools { p.closeAll() }
        if clients.isEmpty && h2Sessions.isEmpty { finishDrain() }
    }

    /// The last connection is gone: settlements still on their way to the shared ledger get
    /// up to 2 s more (each is retried with its id until Redis takes it), then the loop stops.
    private var drainSettleDeadline: UInt64 = 0
    private lazy var drainCheck = TimerAction { [unowned self] in self.finishDrain() }
    private func finishDrain() {
        if let g = credits, g.unsettled > 0 {
            if drainSettleDeadline == 0 { drainSettleDeadline = loop.now &+ 2_000_000_000 }
            if loop.now < drainSettleDeadline {
                loop.schedule(at: loop.now &+ 20_000_000, handler: drainCheck)
                return
            }
            Log.error("credits: stopping with \(g.unsettled) settlement(s) redis did not take; their reservations expire back to the accounts")
        }
        onDrained?()
        onDrained = nil
    }

    // MARK: request ids

    /// 16 lowercase hex digits, unique per process run and loop.
    func nextRequestID(into p: UnsafeMutableRawPointer) -> Int {
        requestCounter &+= 1
        let v = (requestIDSeed &+ UInt64(loop.index) << 56) ^ (requestCounter &* 0x9E37_79B9_7F4A_7C15)
        Hex.write16(v, to: p)
        return 16
    }
}


/// Runs a closure when its timer fires.
final class TimerAction: TimerHandler {
    let action: () -> Void
    init(_ action: @escaping () -> Void) { self.action = action }
    func timerFired(loop: EventLoop) { action() }
}
