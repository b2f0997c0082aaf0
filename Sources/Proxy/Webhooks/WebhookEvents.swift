import Backends
import Glibc
import Policy
import Runtime
import Synchronization

/// The process-wide door to webhooks. `emit` is called from event-loop threads (and the
/// admin thread): it never waits on I/O (a Mutex append; a background thread spools and
/// delivers) and is a no-op when no configured webhook wants that type/consumer.
///
/// Data never holds a plain key or secret: ids, prefixes, consumers, counts.
enum WebhookEvents {
    private static let outbox = Mutex<WebhookOutbox?>(nil)
    /// A bit per `WebhookEventType` some endpoint wants: the no-webhook case costs one load.
    private static let wanted = Atomic<UInt32>(0)
    /// `emitOnce` keys and when (monotonic ns) each may fire again.
    private static let recent = Mutex<[String: UInt64]>([:])
    static let maxRecent = 10_000

    /// Counters for `/metrics` (`tollgate_webhook_events_total`, `…_deliveries_total{result}`).
    static let emitted = Atomic<UInt64>(0)
    static let delivered = Atomic<UInt64>(0)
    static let failedAttempts = Atomic<UInt64>(0)
    static let deadLettered = Atomic<UInt64>(0)
    /// Whether this process ever had webhooks configured (the metrics are shown then).
    static var isConfigured: Bool { outbox.withLock { $0 != nil } }

    static func emit(_ type: WebhookEventType, consumer: String?, subject: String, data: [(String, AuditValue)]) {
        guard isWanted(type) else { return }
        emitted.add(1, ordering: .relaxed)
        outbox.withLock { $0 }?.emit(type, consumer: consumer, subject: subject, data: data)
    }

    /// Whether any configured endpoint takes events of `type` (so a caller can skip building
    /// the data).
    @inline(__always)
    static func isWanted(_ type: WebhookEventType) -> Bool {
        wanted.load(ordering: .relaxed) & bit(type) != 0
    }

    /// `emit`, at most once per `key` per `every` in this process (a flood of 402s is one
    /// `credits_exhausted` per account per window). `data` is only built when it fires.
    /// With `store` (the loop's Redis connection), once per `every` across every instance
    /// sharing it: the first to `SET NX` its marker sends the event (if Redis cannot say,
    /// this instance sends it: at least once rather than none).
    static func emitOnce(key: String, every: Duration, _ type: WebhookEventType, consumer: String?, subject: String,
                         store: RedisConnection? = nil, data: () -> [(String, AuditValue)]) {
        guard isWanted(type) else { return }
        let now = monotonicNanos()
        let fires = recent.withLock { r -> Bool in
            if let until = r[key], until > now { return false }
            if r.count >= maxRecent {
                r = r.filter { $0.value > now }
                if r.count >= maxRecent { r.removeAll(keepingCapacity: true) }
            }
            r[key] = now &+ UInt64(max(0, every.nanoseconds))
            return true
        }
        guard fires else { return }
        let payload = data()
        guard let store else { emit(type, consumer: consumer, subject: subject, data: payload); return }
        let ms = max(1, every.nanoseconds / 1_000_000)
        let marker = "tg:wh:once:" + String(KeyHash.sha256(type.rawValue + "|" + key).hex.prefix(32))
        let waiter = OnceWaiter { sends in
            if sends { emit(type, consumer: consumer, subject: subject, data: payload) }
        }
        if let failed = store.command(["SET", marker, "1", "NX", "PX", String(ms)].map { Array($0.utf8) }, waiter: waiter, token: 0) {
            waiter.redisCompleted(token: 0, result: failed)
        }
    }

    /// The answer to an `emitOnce` marker: `OK` (this instance sends), nil (another did), or
    /// no answer (send: at least once).
    private final class OnceWaiter: RedisWaiter {
        let then: (Bool) -> Void
        init(_ then: @escaping (Bool) -> Void) { self.then = then }
        func redisCompleted(token: UInt64, result: RedisResult) {
            switch result {
            case .reply(.nil): then(false)
            default: then(true)
            }
        }
    }

    private static func bit(_ t: WebhookEventType) -> UInt32 {
        1 << UInt32(WebhookEventType.allCases.firstIndex(of: t) ?? 31)
    }

    private static func mask(_ specs: [WebhookSpec]) -> UInt32 {
        specs.reduce(0) { m, s in s.events.reduce(m) { $0 | bit($1) } }
    }

    /// Where events wait: `security.webhook_spool`, or `webhooks` under the state directory.
    static func spoolDirectory(_ snapshot: PolicySnapshot, policies: String) -> String {
        snapshot.security?.webhookSpool ?? EmbeddedKeyLog.defaultDirectory(forPolicies: policies) + "/webhooks"
    }

    /// `serve`: opens the spool (replaying what a previous run left) and starts delivering.
    /// A policy without webhooks still opens an existing spool, so nothing left there is lost
    /// (what has no endpoint any more is dead-lettered).
    static func start(snapshot: PolicySnapshot, policies: String) throws(UsageError) {
        let specs = snapshot.security?.webhooks ?? []
        let dir = spoolDirectory(snapshot, policies: policies)
        if specs.isEmpty && access(dir + "/journal.jsonl", F_OK) != 0 && access(dir + "/inbox", F_OK) != 0 { return }
        let o = try WebhookOutbox(directory: dir, specs: specs)
        outbox.withLock { $0 = o }
        wanted.store(mask(specs), ordering: .relaxed)
        o.start()
        if !specs.isEmpty { Log.info("webhooks: \(specs.count) endpoint(s), spool \(dir)") }
    }

    /// A policy reload: new endpoints, secrets, events, retry settings (the spool stays where
    /// it was opened; a new `webhook_spool` takes effect at the next start).
    static func reconfigure(_ snapshot: PolicySnapshot, policies: String) {
        let specs = snapshot.security?.webhooks ?? []
        if let o = outbox.withLock({ $0 }) {
            o.reconfigure(specs)
            wanted.store(mask(specs), ordering: .relaxed)
        } else if !specs.isEmpty {
            do { try start(snapshot: snapshot, policies: policies) } catch { Log.error("\(error)") }
        }
    }

    /// SIGTERM: deliver what is due within `grace`; the rest stays spooled.
    static func shutDown(grace: Duration) {
        wanted.store(0, ordering: .relaxed)
        let o = outbox.withLock { o -> WebhookOutbox? in
            let x = o
            o = nil
            return x
        }
        o?.stop(grace: grace)
    }

    /// A command (`tollgate keys revoke|rotate`): a separate, short-lived process. The event
    /// is written into the spool's inbox (durably, before the command reports success); the
    /// running instance that owns the spool delivers it within a second, or the next one to
    /// start does, with the same retry and dead-letter discipline.
    static func spoolFromCommand(_ snapshot: PolicySnapshot, policies: String, _ type: WebhookEventType,
                                 consumer: String?, subject: String, data: [(String, AuditValue)]) {
        let eps = (snapshot.security?.webhooks ?? []).filter { $0.wants(type, consumer: consumer) }.map(\.id)
        if eps.isEmpty { return }
        let e = WebhookEvent(type: type, consumer: consumer, subject: subject, data: data, endpoints: eps)
        WebhookOutbox.writeToInbox(e, directory: spoolDirectory(snapshot, policies: policies))
    }
}
