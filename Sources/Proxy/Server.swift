import Backends
import Glibc
import Policy
import Runtime
import Synchronization

/// N event loops, each on its own thread with its own listeners, connections and pools.
final class Server: @unchecked Sendable {
    // SAFETY: `contexts` is built in `start()` before any loop thread runs and never
    // mutated afterwards; each context is touched only on its own loop (via `execute`).
    let settings: ServerSettings
    private(set) var loops: [EventLoop] = []
    private var contexts: [LoopContext] = []
    private var threads: [pthread_t] = []
    private let drained = DrainCounter()
    let limiter = RateLimiter()
    /// The access log's writer, when `access_log` is set (its target is fixed at start).
    private(set) var accessLog: AccessLogWriter?
    private(set) var usage: UsageSpool?
    /// The embedded ledger, when the policy's `credits.ledger` is `local`.
    private(set) var ledger: LocalLedger?
    private(set) var localQuotas: LocalQuotas?
    private(set) var accounting: AccountingLedger?

    init(settings: ServerSettings) {
        self.settings = settings
    }

    /// Lock-out and auto-disable state, shared by every loop of this server.
    let security = SecurityMonitor()

    /// Binds every listener on every loop (so a bind error surfaces before anything runs).
    func start(snapshot: PolicySnapshot, keys: KeyDirectory, accessLog: AccessLogWriter? = nil, usage: UsageSpool? = nil,
               ledger: LocalLedger? = nil, quotas: LocalQuotas? = nil, accounting: AccountingLedger? = nil,
               secrets: SecretTable = .empty, instanceID: String = Server.instanceID()) throws {
        self.accounting = accounting
        localQuotas = quotas
        self.accessLog = accessLog
        self.usage = usage
        self.ledger = ledger
        security.configure(snapshot.security)
        let tls = try Self.buildTLS(snapshot)
        for i in 0..<max(1, settings.threads) {
            let loop = try EventLoop(index: i)
            let ctx = LoopContext(loop: loop, snapshot: snapshot, settings: settings, limiter: limiter,
                                  backendTLS: tls.backends)
            ctx.keys = keys
            ctx.secrets = secrets
            if let accessLog { ctx.accessLog = AccessLogBuffer(writer: accessLog) }
            if let usage, i < usage.queues.count { ctx.usage = usage.queues[i] }
            ctx.quotas = QuotaGate(local: quotas, context: ctx)
            ctx.security = LoopSecurity(monitor: security, context: ctx)
            if let spec = snapshot.credits {
                ctx.credits = CreditGate(spec: spec, local: ledger, accounting: accounting, charged: MetricsRegistry.shared.credits,
                                         context: ctx)
            }
            ctx.tlsContexts = tls.listeners
            for (index, spec) in snapshot.listeners.enumerated() {
                do {
                    ctx.listeners.append(try Listener(spec: spec, index: index, context: ctx))
                } catch {
                    throw ServerError.bind(address: "\(spec.host):\(spec.port)", reason: error.description)
                }
            }
            let counter = drained
            ctx.onDrained = {
                counter.value.add(1, ordering: .sequentiallyConsistent)
                loop.stop()
            }
            loops.append(loop)
            contexts.append(ctx)
        }
        for (i, loop) in loops.enumerated() {
            let ctx = UncheckedBox(contexts[i])
            loop.execute { ctx.value.startStore(instanceID: instanceID) }
            threads.append(spawnThread(name: "tollgate-loop-\(i)") { loop.run() })
        }
    }

    /// host-pid-random: names this process among the instances sharing a store.
    static func instanceID() -> String {
        var host = [CChar](repeating: 0, count: 64)
        gethostname(&host, 63)
        return "\(String(cString: host))-\(getpid())-\(UInt32.random(in: 0 ... .max))"
    }

    /// A policy's TLS, built once and shared by every loop (an SSL_CTX is safe to share for
    /// SSL_new): the listeners' contexts and the https backends' (by index; nil for plain ones).
    struct TLSContexts {
        var listeners: [TLSContext?]
        var backends: [BackendTLSContext?]
    }

    /// Throws the first file that cannot be loaded: nothing is half-built.
    static func buildTLS(_ snapshot: PolicySnapshot) throws(TLSContext.LoadError) -> TLSContexts {
        var out = TLSContexts(listeners: [], backends: [])
        for l in snapshot.listeners {
            out.listeners.append(try l.tls.map { s throws(TLSContext.LoadError) in try TLSContext(spec: s) })
        }
        for b in snapshot.backends {
            out.backends.append(try b.tls.map { t throws(TLSContext.LoadError) in try BackendTLSContext(backend: b, tls: t) })
        }
        return out
    }

    /// Publishes a new snapshot, the key directory compiled against it and its TLS contexts
    /// (new certificates for new connections; live ones keep theirs) to every loop. The
    /// listeners' contexts only when the listeners are the ones bound at start.
    func install(_ snapshot: PolicySnapshot, keys: KeyDirectory, tls: TLSContexts, listenersUnchanged: Bool) {
        security.configure(snapshot.security)
        for (i, loop) in loops.enumerated() {
            let ctx = UncheckedBox(contexts[i])
            let snap = snapshot
            let contexts = UncheckedBox(tls)
            loop.execute {
                ctx.value.install(snap, backendTLS: contexts.value.backends)
                ctx.value.keys = keys
                if listenersUnchanged { ctx.value.tlsContexts = contexts.value.listeners }
            }
        }
    }

    /// Publishes a new key directory (store changed, policy unchanged).
    func install(keys: KeyDirectory) {
        for (i, loop) in loops.enumerated() {
            let ctx = UncheckedBox(contexts[i])
            loop.execute { ctx.value.keys = keys }
        }
    }

    /// Publishes newly decrypted provider secrets to every loop (exchanges that chose a value
    /// keep the table it came from until they end).
    func install(secrets: SecretTable) {
        for (i, loop) in loops.enumerated() {
            let ctx = UncheckedBox(contexts[i])
            loop.execute { ctx.value.secrets = secrets }
        }
    }

    /// New TLS contexts for every loop (new connections; live ones keep theirs).
    func installTLS(_ tls: [TLSContext?]) {
        for (i, loop) in loops.enumerated() {
            let ctx = UncheckedBox(contexts[i])
            let contexts = UncheckedBox(tls)
            loop.execute { ctx.value.tlsContexts = contexts.value }
        }
    }

    /// Stops accepting, lets in-flight exchanges finish for up to `timeout`, then stops.
    /// Returns true when every loop drained in time.
    func drain(timeout: Duration) -> Bool {
        for (i, loop) in loops.enumerated() {
            let ctx = UncheckedBox(contexts[i])
            loop.execute { ctx.value.beginDrain() }
        }
        let deadline = monotonicNanos() &+ timeout.nanoseconds
        while drained.value.load(ordering: .sequentiallyConsistent) < loops.count && monotonicNanos() < deadline {
            usleep(5_000)
        }
        let clean = drained.value.load(ordering: .sequentiallyConsistent) >= loops.count
        for loop in loops { loop.stop() }
        for t in threads { pthread_join(t, nil) }
        // The loops are gone: their last access log lines are handed in and written.
        for ctx in contexts { ctx.accessLog?.flush() }
        accessLog?.stop()
        // …their last charges are fsync'd…
        ledger?.stop()
        accounting?.stop()
        localQuotas?.stop()
        // …and their last usage records are spooled and fsync'd.
        usage?.stop()
        return clean
    }
}

enum ServerError: Error, CustomStringConvertible {
    case bind(address: String, reason: String)
    var description: String {
        switch self {
        case .bind(let a, let r): return "cannot listen on \(a): \(r)"
        }
    }
}

/// Carries a loop-confined value into `loop.execute`.
struct UncheckedBox<T>: @unchecked Sendable {
    // SAFETY: the value is only used inside a closure that runs on its owning loop.
    let value: T
    init(_ v: T) { value = v }
}

final class DrainCounter: Sendable {
    let value = Atomic<Int>(0)
}
