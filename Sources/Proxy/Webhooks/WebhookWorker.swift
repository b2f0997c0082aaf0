import CSystem
import Glibc
import Policy
import Runtime
import Synchronization

/// One endpoint's delivery thread: POSTs each due delivery (blocking HTTP/1.1, kept alive,
/// every wait bounded by the endpoint's `timeout`), so a slow or dead endpoint never holds
/// the others. A 2xx is delivered; anything else waits `first_retry`, doubling, up to
/// `tries` attempts, then goes to the dead-letter file.
final class WebhookWorker: @unchecked Sendable {
    // SAFETY: `state` is a Mutex (the writer thread adds, this thread takes and updates);
    // `client` belongs to this thread.
    private struct State {
        var spec: WebhookSpec
        var queue: [WebhookDelivery] = []
    }
    private let state: Mutex<State>
    unowned let outbox: WebhookOutbox
    private let wakeFD = WakeFD()
    private var thread: pthread_t?
    private let stopAt = Atomic<UInt64>(0)   // monotonic deadline once stopping; 0 = running
    private var client: BlockingHTTPClient?
    private var clientFor = ""

    var spec: WebhookSpec { state.withLock { $0.spec } }

    init(spec: WebhookSpec, outbox: WebhookOutbox) {
        state = Mutex(State(spec: spec))
        self.outbox = outbox
    }

    deinit { wakeFD.close() }

    func start() {
        let box = UncheckedBox(self)
        thread = spawnThread(name: "tollgate-whsend") { box.value.run() }
    }

    func update(_ s: WebhookSpec) { state.withLock { $0.spec = s }; wake() }

    func add(_ d: WebhookDelivery) {
        state.withLock { $0.queue.append(d) }
        wake()
    }

    func snapshot() -> [WebhookDelivery] { state.withLock { $0.queue } }

    func takeAll() -> [WebhookDelivery] {
        state.withLock { s in
            let q = s.queue
            s.queue = []
            return q
        }
    }

    /// Delivers what is due for up to `grace`, then stops (what is left stays spooled).
    func stop(grace: Duration) {
        stopAt.store((monotonicNanos() &+ UInt64(max(0, grace.nanoseconds))) | 1, ordering: .sequentiallyConsistent)
        wake()
        if let t = thread { pthread_join(t, nil) }
        thread = nil
    }

    private func wake() {
        wakeFD.wake()
    }

    private func waitForWork(_ ms: Int32) {
        wakeFD.wait(ms)
    }

    private func run() {
        while true {
            let deadline = stopAt.load(ordering: .sequentiallyConsistent)
            if deadline != 0 && monotonicNanos() >= deadline { return }
            let now = AuditFormat.nowMillis()
            // The first due delivery (in the order they came), or how long until one is.
            let (next, spec, wait) = state.withLock { s -> (WebhookDelivery?, WebhookSpec, Int64) in
                var soonest = Int64.max
                for d in s.queue {
                    if d.due <= now { return (d, s.spec, 0) }
                    soonest = min(soonest, d.due)
                }
                return (nil, s.spec, soonest == .max ? 1000 : soonest - now)
            }
            guard let d = next else {
                if deadline != 0 { return }   // stopping: what backs off stays spooled
                waitForWork(Int32(max(1, min(wait, 1000))))
                continue
            }
            let error = attempt(d, spec: spec)
            let attempts = d.attempts + 1
            if error == nil {
                WebhookEvents.delivered.add(1, ordering: .relaxed)
                outbox.record(JournalLine(op: .done, id: d.event.id, endpoint: spec.id, attempts: attempts, due: 0)) {
                    remove(d.event.id)
                }
                continue
            }
            let why = error ?? ""
            WebhookEvents.failedAttempts.add(1, ordering: .relaxed)
            if attempts >= spec.tries {
                var last = d
                last.attempts = attempts
                remove(d.event.id)
                outbox.deadLetter(last, spec: spec, error: why)
                continue
            }
            let backoff = Int64(clamping: spec.firstRetry.nanoseconds / 1_000_000) << Int64(min(attempts - 1, 30))
            let due = AuditFormat.nowMillis() + max(1, backoff)
            outbox.record(JournalLine(op: .attempt, id: d.event.id, endpoint: spec.id, attempts: attempts, due: due)) {
                state.withLock { s in
                    if let i = s.queue.firstIndex(where: { $0.event.id == d.event.id }) {
                        s.queue[i].attempts = attempts
                        s.queue[i].due = due
                    }
                }
            }
            if attempts == 1 {
                Log.warn("webhooks: \(d.event.type.rawValue) \(d.event.id) to \(spec.url) failed (\(why)); retrying up to \(spec.tries - 1) more time(s)")
            }
        }
    }

    private func remove(_ id: String) {
        state.withLock { s in s.queue.removeAll { $0.event.id == id } }
    }

    /// One POST; nil when the endpoint answered 2xx, else why not (no secret in it).
    private func attempt(_ d: WebhookDelivery, spec: WebhookSpec) -> String? {
        let key = "\(spec.host):\(spec.port):\(spec.timeout):\(spec.isTLS):\(spec.caFile ?? "")"
        if client == nil || clientFor != key {
            var tls: BlockingTLS?
            if spec.isTLS {
                var why = ""
                tls = BlockingTLS(caFile: spec.caFile, error: &why)
                if tls == nil { return "TLS: " + why }
            }
            client = BlockingHTTPClient(host: spec.host, port: spec.port, timeout: spec.timeout, tls: tls)
            clientFor = key
        }
        guard let client else { return "no client" }
        let ts = wallClockSeconds()
        let headers = [
            ("Content-Type", "application/json"),
            ("User-Agent", "tollgate-webhooks/1"),
            ("webhook-id", d.event.id),
            ("webhook-timestamp", String(ts)),
            ("webhook-signature", WebhookSignature.header(id: d.event.id, timestamp: ts, body: d.event.body, secrets: spec.secrets)),
        ]
        guard let a = client.request("POST", spec.path, headers: headers, body: d.event.body, keepBody: 0) else {
            let tls = client.lastTLSError
            client.close()
            return tls ?? "no answer (connect, send or read failed or timed out)"
        }
        if a.status >= 200 && a.status < 300 { return nil }
        return "HTTP \(a.status)"
    }
}
