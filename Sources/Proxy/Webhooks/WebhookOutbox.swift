import CSystem
import Glibc
import Policy
import Runtime
import Synchronization

/// Webhook events, spool first (the usage spool's discipline, at webhook volume):
///
/// ```
/// emit (any thread) ── Mutex append ──► incoming
///   writer thread, woken by emit: journal.jsonl += event lines, fdatasync (group commit),
///   then each event is queued on the workers of the endpoints that want it
///   ──► one worker thread per endpoint: POST, then `done`, or `try` (attempts, next due),
///       or `dead` (+ dead-letter.jsonl) appended to the journal and fdatasync'd
/// ```
///
/// - An event is on disk before any endpoint sees it; its `webhook-id` and body are fixed at
///   emit and kept in the journal, so every attempt (and every attempt after a restart)
///   sends the same id and bytes. At least once: a crash between a 2xx and its `done` line
///   sends that event once more, with the same id.
/// - On start the journal is replayed in order: acknowledged (`done`) and dead-lettered
///   deliveries are dropped, the rest resume with their attempt count and next due time; the
///   journal is then rewritten with only what is pending (temporary file, fsync, rename).
/// - `spool/inbox/*.json`: events from other processes (`tollgate keys revoke|rotate`, or a
///   second instance on the same spool): one event per file, written whole (rename). The
///   journal's owner (an exclusive `flock` on `spool/journal.lock`) takes them into its
///   journal and deletes the file; an id already in the journal is not taken twice.
final class WebhookOutbox: @unchecked Sendable {
    // SAFETY: `incoming` and `dedupe` are Mutex-guarded; `specs` is a Mutex; the journal fd
    // and its size are only touched under `journalLock`; `workers` is guarded by
    // `workersLock`; `isOwner`, `lockFD` and the timers belong to the writer thread (and to
    // `init`, before it starts).
    let directory: String
    private let incoming = Mutex<[WebhookEvent]>([])
    let specs: Mutex<[WebhookSpec]>
    private let journalLock = Mutex<JournalFile>(JournalFile())
    private let workersLock = Mutex<[String: WebhookWorker]>([:])
    private var isOwner = false
    private var lockFD: Int32 = -1
    private let wakeFD: Int32
    private var thread: pthread_t?
    private let stopAt = Atomic<UInt64>(0)
    static let compactBytes = 4 << 20

    var journalPath: String { directory + "/journal.jsonl" }
    var inboxPath: String { directory + "/inbox" }
    var deadLetterPath: String { directory + "/dead-letter.jsonl" }

    struct JournalFile {
        var fd: Int32 = -1
        var size = 0
    }

    init(directory: String, specs: [WebhookSpec]) throws(UsageError) {
        self.directory = directory
        self.specs = Mutex(specs)
        wakeFD = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        if wakeFD < 0 { throw UsageError("webhooks: eventfd: \(Errno.current)") }
        try UsageSpool.makeDirectory(directory)
        try UsageSpool.makeDirectory(inboxPath)
        lockFD = Glibc.open(directory + "/journal.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o640)
        if lockFD < 0 { throw UsageError("webhooks: cannot open \(directory)/journal.lock: \(Errno.current)") }
        for s in specs { startWorker(s) }
        tryToOwn()
    }

    func start() {
        let box = UncheckedBox(self)
        thread = spawnThread(name: "tollgate-webhook") { box.value.run() }
    }

    /// Which endpoints want an event (empty: nobody; the event is not spooled).
    func endpoints(for type: WebhookEventType, consumer: String?) -> [String] {
        specs.withLock { $0.filter { $0.wants(type, consumer: consumer) }.map(\.id) }
    }

    /// Any thread, never waits on I/O: the event joins `incoming` and the writer is woken.
    func emit(_ type: WebhookEventType, consumer: String?, subject: String, data: [(String, AuditValue)]) {
        let eps = endpoints(for: type, consumer: consumer)
        if eps.isEmpty { return }
        let e = WebhookEvent(type: type, consumer: consumer, subject: subject, data: data, endpoints: eps)
        incoming.withLock { $0.append(e) }
        wake()
    }

    private func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }

    /// A reload: endpoints keep their queues; new ones start; removed ones dead-letter what
    /// they still hold (nobody is left to deliver it to).
    func reconfigure(_ next: [WebhookSpec]) {
        specs.withLock { $0 = next }
        let ids = Set(next.map(\.id))
        for s in next {
            if let w = workersLock.withLock({ $0[s.id] }) { w.update(s) } else { startWorker(s) }
        }
        let gone = workersLock.withLock { ws -> [WebhookWorker] in
            let g = ws.filter { !ids.contains($0.key) }.map(\.value)
            for w in g { ws[w.spec.id] = nil }
            return g
        }
        for w in gone {
            w.stop(grace: .zero)
            for d in w.takeAll() { deadLetter(d, spec: w.spec, error: "endpoint removed from the policy") }
        }
    }

    private func startWorker(_ s: WebhookSpec) {
        let w = WebhookWorker(spec: s, outbox: self)
        workersLock.withLock { $0[s.id] = w }
        w.start()
    }

    /// SIGTERM: spools what was emitted, lets each endpoint deliver what is due within
    /// `grace`, and stops; the rest stays spooled for the next start.
    func stop(grace: Duration) {
        stopAt.store(monotonicNanos() &+ UInt64(max(0, grace.nanoseconds)) | 1, ordering: .sequentiallyConsistent)
        wake()
        if let t = thread { pthread_join(t, nil) }
        thread = nil
        let ws = workersLock.withLock { Array($0.values) }
        let end = stopAt.load(ordering: .relaxed), now = monotonicNanos()
        let left = end > now ? Duration.nanoseconds(Int64(clamping: end - now)) : .zero
        for w in ws { w.stop(grace: left) }
        journalLock.withLock { j in
            if j.fd >= 0 { _ = fsync(j.fd); Glibc.close(j.fd); j.fd = -1 }
        }
    }

    // MARK: the writer thread

    private func run() {
        var p = pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)
        var lastInbox: UInt64 = 0
        while true {
            // `emit` wakes it: an event is synced as soon as it comes (those that come while a
            // sync runs share the next one); idle, it looks at the inbox twice a second.
            _ = poll(&p, 1, 500)
            var counter: UInt64 = 0
            _ = Glibc.read(wakeFD, &counter, 8)
            let stopping = stopAt.load(ordering: .sequentiallyConsistent) != 0
            let events = incoming.withLock { e -> [WebhookEvent] in
                let out = e
                e.removeAll(keepingCapacity: true)
                return out
            }
            let now = monotonicNanos()
            if !isOwner && (now &- lastInbox >= 1_000_000_000 || stopping) { tryToOwn() }
            if isOwner {
                if !events.isEmpty { spool(events) }
                if now &- lastInbox >= 500_000_000 || stopping {
                    lastInbox = now
                    ingestInbox()
                }
            } else if !events.isEmpty {
                for e in events { _ = Self.writeToInbox(e, directory: directory) }
            }
            if stopping { return }
            if isOwner, journalLock.withLock({ $0.size }) > Self.compactBytes { compact() }
        }
    }

    /// The journal's owner: the one process that delivers from this spool.
    private func tryToOwn() {
        guard !isOwner, flock(lockFD, LOCK_EX | LOCK_NB) == 0 else { return }
        isOwner = true
        replay()
    }

    /// Appends event lines (fdatasync once), then queues them.
    private func spool(_ events: [WebhookEvent]) {
        var bytes: [UInt8] = []
        for e in events { bytes += e.line + [0x0A] }
        journalLock.withLock { j in
            if !append(&j, bytes) { Log.error("webhooks: cannot write the spool \(journalPath) (\(Errno.current))") }
        }
        for e in events { enqueue(e, attempts: 0, due: 0) }
    }

    private func enqueue(_ e: WebhookEvent, attempts: Int, due: Int64) {
        for ep in e.endpoints {
            guard let w = workersLock.withLock({ $0[ep] }) else { continue }
            w.add(WebhookDelivery(event: e, attempts: attempts, due: due))
        }
    }

    /// Writes and syncs; a torn write is cut off again (the next line must start clean).
    private func append(_ j: inout JournalFile, _ bytes: [UInt8]) -> Bool {
        if j.fd < 0 {
            j.fd = Glibc.open(journalPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            if j.fd < 0 { return false }
            j.size = max(0, Int(lseek(j.fd, 0, SEEK_END)))
        }
        guard SpoolFile.writeAll(j.fd, bytes), fdatasync(j.fd) == 0 else {
            _ = ftruncate(j.fd, off_t(j.size))
            return false
        }
        j.size += bytes.count
        return true
    }

    /// A worker's outcome for one delivery (under the journal lock, so compaction sees each
    /// queue and the journal agree).
    func record(_ line: JournalLine, update: () -> Void) {
        journalLock.withLock { j in
            if !append(&j, line.line + [0x0A]) { Log.error("webhooks: cannot write the spool \(journalPath) (\(Errno.current))") }
            update()
        }
    }

    func deadLetter(_ d: WebhookDelivery, spec: WebhookSpec, error: String) {
        WebhookEvents.deadLettered.add(1, ordering: .relaxed)
        var out = Array(#"{"id":"#.utf8)
        AuditFormat.appendString(d.event.id, to: &out)
        out += Array(#","endpoint":"#.utf8); AuditFormat.appendString(spec.url, to: &out)
        out += Array(#","endpoint_id":"#.utf8); AuditFormat.appendString(spec.id, to: &out)
        out += Array(#","type":"#.utf8); AuditFormat.appendString(d.event.type.rawValue, to: &out)
        out += Array(",\"attempts\":\(d.attempts),\"last_error\":".utf8); AuditFormat.appendString(error, to: &out)
        out += Array(#","time":"#.utf8); AuditFormat.appendString(AuditFormat.time(millis: AuditFormat.nowMillis()), to: &out)
        out += WebhookEvent.bodyMember + d.event.body + Array("}\n".utf8)
        if !SpoolFile.append(deadLetterPath, out) { Log.error("webhooks: cannot write \(deadLetterPath) (\(Errno.current))") }
        Log.warn("webhooks: \(d.event.type.rawValue) \(d.event.id) to \(spec.url) dead-lettered after \(d.attempts) attempt(s): \(error)")
        record(JournalLine(op: .dead, id: d.event.id, endpoint: spec.id, attempts: d.attempts, due: 0)) {}
    }

    // MARK: replay, inbox, compaction

    /// Every event in the journal with its deliveries' state; the pending ones are queued,
    /// those for an endpoint no longer configured are dead-lettered; the journal is rewritten
    /// with only what is pending.
    private func replay() {
        let bytes = SpoolFile.readAll(journalPath) ?? []
        var events: [WebhookEvent] = []
        var index: [String: Int] = [:]
        var state: [String: (attempts: Int, due: Int64, closed: Bool)] = [:]   // "id endpoint"
        for line in SpoolFile.lines(bytes) {
            if let e = WebhookEvent.parse(line) {
                if index[e.id] == nil { index[e.id] = events.count; events.append(e) }
            } else if let l = JournalLine.parse(line) {
                let k = l.id + " " + l.endpoint
                switch l.op {
                case .attempt: state[k] = (l.attempts, l.due, false)
                case .done, .dead: state[k] = (l.attempts, 0, true)
                }
            }
        }
        known = Set(index.keys)
        journalLock.withLock { j in
            if j.fd >= 0 { Glibc.close(j.fd); j.fd = -1 }
        }
        let configured = specs.withLock { Dictionary($0.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a }) }
        var pending: [(WebhookEvent, [String: (Int, Int64)])] = []
        for e in events {
            var open: [String: (Int, Int64)] = [:]
            for ep in e.endpoints {
                let s = state[e.id + " " + ep]
                if s?.closed == true { continue }
                open[ep] = (s?.attempts ?? 0, s?.due ?? 0)
            }
            if !open.isEmpty { pending.append((e, open)) }
        }
        // Only what is pending is kept.
        var out: [UInt8] = []
        for (e, open) in pending {
            out += e.line + [0x0A]
            for (ep, s) in open.sorted(by: { $0.key < $1.key }) where s.0 > 0 {
                out += JournalLine(op: .attempt, id: e.id, endpoint: ep, attempts: s.0, due: s.1).line + [0x0A]
            }
        }
        if !bytes.isEmpty && !SpoolFile.replace(journalPath, out, directory: directory) {
            Log.error("webhooks: cannot rewrite \(journalPath) (\(Errno.current)); appending to it as it is")
        }
        var resumed = 0
        for (e, open) in pending {
            for (ep, s) in open {
                guard let spec = configured[ep] else {
                    deadLetter(WebhookDelivery(event: e, attempts: s.0, due: 0), spec: WebhookSpec(
                        host: "", port: 0, url: "(endpoint \(ep) no longer configured)", secrets: WebhookSecrets([]),
                        events: [], id: ep), error: "endpoint no longer in the policy")
                    continue
                }
                var one = e
                one.endpoints = [ep]
                workersLock.withLock { $0[spec.id] }?.add(WebhookDelivery(event: one, attempts: s.0, due: s.1))
                resumed += 1
            }
        }
        if resumed > 0 { Log.info("webhooks: \(resumed) pending deliver(ies) resumed from \(journalPath)") }
        ingestInbox()
    }

    /// Event ids this journal holds (since the last start): an inbox file taken twice (a
    /// crash between the journal write and its deletion) is not sent twice.
    private var known = Set<String>()

    private func ingestInbox() {
        let names = SpoolFile.names(in: inboxPath).filter { $0.hasSuffix(".json") }
        if names.isEmpty { return }
        var fresh: [WebhookEvent] = []
        for n in names {
            let path = inboxPath + "/" + n
            guard let bytes = SpoolFile.readAll(path) else { continue }
            if var e = SpoolFile.lines(bytes).first.flatMap(WebhookEvent.parse) {
                if !known.contains(e.id) {
                    e.endpoints = endpoints(for: e.type, consumer: e.consumer)
                    if !e.endpoints.isEmpty { fresh.append(e); known.insert(e.id) }
                }
            } else {
                Log.warn("webhooks: \(path) is not an event; removed")
            }
            if !fresh.isEmpty { spool(fresh); fresh.removeAll() }
            unlink(path)
        }
        UsageSpool.syncDirectory(inboxPath)
    }

    /// The journal rewritten with only what is pending (it grew past `compactBytes`).
    private func compact() {
        let ws = workersLock.withLock { Array($0.values) }
        journalLock.withLock { j in
            var out: [UInt8] = []
            var byEvent: [String: (event: WebhookEvent, endpoints: [(String, Int, Int64)])] = [:]
            var order: [String] = []
            for w in ws {
                for d in w.snapshot() {
                    if byEvent[d.event.id] == nil { byEvent[d.event.id] = (d.event, []); order.append(d.event.id) }
                    byEvent[d.event.id]?.endpoints.append((w.spec.id, d.attempts, d.due))
                }
            }
            for id in order {
                guard let (event, eps) = byEvent[id] else { continue }
                var e = event
                e.endpoints = eps.map(\.0)
                out += e.line + [0x0A]
                for (ep, a, due) in eps where a > 0 {
                    out += JournalLine(op: .attempt, id: id, endpoint: ep, attempts: a, due: due).line + [0x0A]
                }
            }
            guard SpoolFile.replace(journalPath, out, directory: directory) else { return }
            if j.fd >= 0 { Glibc.close(j.fd) }
            j.fd = -1
            j.size = out.count
        }
    }

    // MARK: other processes

    /// `tollgate keys …` (a short-lived process) or a second instance on the same spool: the
    /// event is written whole into `spool/inbox/`, for the journal's owner (now, or at its
    /// next start) to deliver. True when it is on disk.
    @discardableResult
    static func writeToInbox(_ e: WebhookEvent, directory: String) -> Bool {
        let inbox = directory + "/inbox"
        do { try UsageSpool.makeDirectory(inbox) } catch {
            Log.error("\(error)")
            return false
        }
        let name = String(e.millis) + "-" + e.id + ".json"
        let ok = SpoolFile.replace(inbox + "/" + name, e.line + [0x0A], directory: inbox)
        if !ok { Log.error("webhooks: cannot write \(inbox)/\(name) (\(Errno.current))") }
        return ok
    }
}

/// One event's delivery to one endpoint.
struct WebhookDelivery: Sendable {
    var event: WebhookEvent
    /// Attempts made so far.
    var attempts: Int
    /// Wall clock, milliseconds: not before (0: now).
    var due: Int64
}
