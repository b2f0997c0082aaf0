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
    var limits = HTTP1Limits()
}

/// Everything one event loop owns: its connections, upstream pools, the policy snapshot it
/// serves with, caches. Touched only on its loop's thread.
final class LoopContext {
    let loop: EventLoop
    let settings: ServerSettings
    private(set) var snapshot: PolicySnapshot
    /// Keys known in-process (declared + embedded store), compiled against `snapshot`.
    var keys: KeyDirectory = .empty
    /// Shared by every loop: per-key cells built for concurrent use.
    let limiter: RateLimiter
    private(set) var pools: [UpstreamPool] = []
    var listeners: [Listener] = []
    private(set) var clients: [ClientConnection] = []
    private(set) var isDraining = false
    /// Called (on the loop) when draining and the last client connection is gone.
    var onDrained: (() -> Void)?

    let headerTimeoutNanos: UInt64
    let idleTimeoutNanos: UInt64
    let bodyTimeoutNanos: UInt64

    private var requestCounter: UInt64 = 0
    private let requestIDSeed: UInt64

    init(loop: EventLoop, snapshot: PolicySnapshot, settings: ServerSettings, limiter: RateLimiter) {
        self.loop = loop
        self.limiter = limiter
        self.snapshot = snapshot
        self.settings = settings
        headerTimeoutNanos = settings.headerTimeout.nanoseconds
        idleTimeoutNanos = settings.idleTimeout.nanoseconds
        bodyTimeoutNanos = settings.bodyTimeout.nanoseconds
        var seed: UInt64 = 0
        seed = UInt64.random(in: .min ... .max)
        requestIDSeed = seed
        for (i, b) in snapshot.backends.enumerated() {
            pools.append(UpstreamPool(loop: loop, backendIndex: i, spec: b))
        }
    }

    /// Installs a new policy snapshot (called on this loop). Pools are matched by backend name.
    func install(_ new: PolicySnapshot) {
        var newPools: [UpstreamPool] = []
        for (i, b) in new.backends.enumerated() {
            if let old = pools.first(where: { snapshot.backends[$0.backendIndex].name == b.name }) {
                // Same name: keep its warm connections only if the address is unchanged.
                let ob = snapshot.backends[old.backendIndex]
                if ob.host == b.host && ob.port == b.port {
                    let p = UpstreamPool(loop: loop, backendIndex: i, spec: b)
                    newPools.append(p)
                    old.closeAll()
                    continue
                }
            }
            newPools.append(UpstreamPool(loop: loop, backendIndex: i, spec: b))
        }
        for p in pools { p.closeAll() }
        pools = newPools
        snapshot = new
    }

    // MARK: store-backed phases

    /// A key not known in-process. The embedded store has every key in memory, so it is unknown.
    func lookupRemote(for c: ClientConnection) -> PhaseResult {
        .reply(Denial(.invalidKey))
    }

    /// Rate limits in-process: exact across loops (the cells are shared).
    func admit(for c: ClientConnection, plan: PlanSpec) -> PhaseResult {
        let v = limiter.admit(key: c.exchange.keyHash, plan: plan, now: loop.now)
        c.exchange.limitPlan = plan.index
        c.exchange.limitReport = v.report
        if !v.isAllowed {
            return .reply(Denial(.rateLimited, retryAfterSeconds: max(1, v.retryAfterSeconds), limit: v.report))
        }
        return .next
    }

    // MARK: connections

    func add(_ c: ClientConnection) {
        c.slot = clients.count
        clients.append(c)
    }

    func remove(_ c: ClientConnection) {
        let i = c.slot
        guard i >= 0, i < clients.count, clients[i] === c else { return }
        let last = clients.removeLast()
        if i < clients.count {
            clients[i] = last
            last.slot = i
        }
        c.slot = -1
        if isDraining && clients.isEmpty { onDrained?() }
    }

    var connectionCount: Int { clients.count }

    /// Stop accepting; close idle connections; let in-flight exchanges finish, then close.
    func beginDrain() {
        if isDraining { return }
        isDraining = true
        for l in listeners { l.close() }
        listeners.removeAll()
        for c in clients { c.drain() }
        for p in pools { p.closeAll() }
        if clients.isEmpty { onDrained?() }
    }

    func closeAll() {
        for c in clients { c.abort() }
        for p in pools { p.closeAll() }
    }

    // MARK: request ids

    /// 16 lowercase hex digits, unique per process run and loop.
    func nextRequestID(into p: UnsafeMutableRawPointer) -> Int {
        requestCounter &+= 1
        var v = (requestIDSeed &+ UInt64(loop.index) << 56) ^ (requestCounter &* 0x9E37_79B9_7F4A_7C15)
        var i = 15
        while i >= 0 {
            let d = UInt8(truncatingIfNeeded: v & 0xF)
            p.storeBytes(of: d < 10 ? 0x30 + d : 0x57 + d, toByteOffset: i, as: UInt8.self)
            v >>= 4
            i -= 1
        }
        return 16
    }
}
