import Backends
import CSystem
import Foundation
import Glibc
import Policy
import Runtime
import Synchronization

/// The `accounting` ledger: balances live in the accounting service of seed 003, spoken to
/// with a service credential (a JWT with `role: admin`). Never check-then-deduct:
///
/// - A reservation is a deduct (`POST /api/credits/deduct {"credits", "userId"}`); when the
///   service answers 402 with the balance and that still covers the minimum, a second deduct
///   takes what is there. A stream's extension is one more deduct.
/// - Settle gives back what was held beyond the charge (`POST /api/credits/allocate`, credits
///   that never expire), or deducts the one event of overshoot.
/// - Every call carries an `Idempotency-Key` derived from the reservation id, and every
///   deduct is written (fsync'd) to `accounting-holds.jsonl` in the state directory before
///   it is sent. A hold never settled (the process died, the service was down) is recovered
///   at the next start: the same deduct is sent again (the service applies a key once: it
///   replays the first answer, or performs it now) and then given back in full, so a crash
///   never leaves a reservation taken.
///
/// Calls run on a few worker threads (blocking HTTP, keep-alive); answers go back to the
/// exchange's loop. The credential is never logged.
final class AccountingLedger: @unchecked Sendable {
    // SAFETY: `journalFD` is written under `journalLock`; the queue under its own lock;
    // workers own their clients.
    enum Outcome: Sendable {
        case granted(amount: Int64, available: Int64)
        case insufficient(available: Int64)
        case unavailable
    }

    private enum Job {
        case reserve(key: String, base: String, account: String, want: Int64, minimum: Int64,
                     done: @Sendable (Outcome) -> Void)
        case settle(base: String, account: String, held: Int64, charge: Int64, attempts: Int)
        case recover(base: String, account: String, holds: [(String, Int64)])
    }

    let host: String
    let port: UInt16
    private let token: String
    private let path: String
    private let journalFD: Int32
    private let journalLock = Mutex<Void>(())
    private let queue = Mutex<[Job]>([])
    private let pending = Atomic<Int>(0)
    private let signal = DispatchSemaphore(value: 0)
    private let running = Atomic<Bool>(true)
    private var threads: [pthread_t] = []
    static let workers = 4
    static let fileName = "accounting-holds.jsonl"

    /// TLS to an `https://` accounting service (its backend's `tls.ca`, else the system's CAs).
    private let tls: BlockingTLS?

    init(host: String, port: UInt16, token: String, directory: String, tls: BackendTLS? = nil) throws(LedgerError) {
        self.host = host
        self.port = port
        self.token = token
        if let t = tls {
            var why = ""
            guard let context = BlockingTLS(caFile: t.caFile, error: &why) else {
                throw LedgerError(message: "the accounting service's TLS: \(why)")
            }
            self.tls = context
        } else {
            self.tls = nil
        }
        path = (directory as NSString).appendingPathComponent(Self.fileName)
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw LedgerError.errno(path, "open") }
        journalFD = fd
        for job in recoveryJobs() { enqueue(job) }
    }

    deinit { close(journalFD) }

    func start() {
        for i in 0..<Self.workers {
            let box = UncheckedBox(self)
            threads.append(spawnThread(name: "tollgate-acct-\(i)") { box.value.work() })
        }
    }

    /// Waits up to `timeout` for queued settlements, then stops the workers (what is left is
    /// recovered from the journal at the next start).
    func stop(timeout: Duration = .seconds(2)) {
        let deadline = monotonicNanos() &+ timeout.nanoseconds
        while pending.load(ordering: .acquiring) > 0 && monotonicNanos() < deadline { usleep(5_000) }
        running.store(false, ordering: .releasing)
        for _ in threads { signal.signal() }
        for t in threads { pthread_join(t, nil) }
        threads = []
    }

    // MARK: the request path (any loop)

    func reserve(id: String, account: String, want: Int64, minimum: Int64, done: @escaping @Sendable (Outcome) -> Void) {
        enqueue(.reserve(key: id, base: Self.base(of: id), account: account, want: want, minimum: minimum, done: done))
    }

    func settle(base: String, account: String, held: Int64, charge: Int64) {
        enqueue(.settle(base: base, account: account, held: held, charge: charge, attempts: 0))
    }

    /// `<base>` of `<base>~e<n>` (an extension's key).
    static func base(of id: String) -> String {
        if let r = id.range(of: "~") { return String(id[..<r.lowerBound]) }
        return id
    }

    private func enqueue(_ job: Job) {
        pending.add(1, ordering: .releasing)
        queue.withLock { $0.append(job) }
        signal.signal()
    }

    // MARK: workers

    private func work() {
        let client = BlockingHTTPClient(host: host, port: port, timeout: .seconds(5), tls: tls)
        while true {
            signal.wait()
            guard let job = queue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else {
                if !running.load(ordering: .acquiring) { return }
                continue
            }
            run(job, client)
            pending.subtract(1, ordering: .releasing)
        }
    }

    private func run(_ job: Job, _ client: BlockingHTTPClient) {
        switch job {
        case .reserve(let key, let base, let account, let want, let minimum, let done):
            done(reserve(client, key: key, base: base, account: account, want: want, minimum: minimum))
        case .settle(let base, let account, let held, let charge, let attempts):
            if !settle(client, base: base, account: account, held: held, charge: charge) {
                // Retried with the same keys (backing off), while the process lives; else the
                // journal recovers it at the next start.
                if attempts < 50 && running.load(ordering: .acquiring) {
                    usleep(UInt32(min(5_000_000, 100_000 << min(5, attempts))))
                    enqueue(.settle(base: base, account: account, held: held, charge: charge, attempts: attempts + 1))
                } else {
                    Log.error("credits: the accounting service did not take settlement \(base); it is recovered at the next start")
                }
            }
        case .recover(let base, let account, let holds):
            recover(client, base: base, account: account, holds: holds)
        }
    }

    private var authHeaders: [(String, String)] {
        [("Authorization", "Bearer " + token), ("Content-Type", "application/json")]
    }

    private func post(_ client: BlockingHTTPClient, _ path: String, key: String, _ body: [String: Any]) -> (Int, [String: Any])? {
        guard let data = try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys]) else { return nil }
        guard let a = client.request("POST", path, headers: authHeaders + [("Idempotency-Key", key)], body: Array(data)) else { return nil }
        let o = (try? JSONSerialization.jsonObject(with: Data(a.body))) as? [String: Any] ?? [:]
        return (a.status, o)
    }

    private static func int(_ v: Any?) -> Int64? { (v as? NSNumber)?.int64Value }

    private func reserve(_ client: BlockingHTTPClient, key: String, base: String, account: String,
                         want: Int64, minimum: Int64) -> Outcome {
        var amount = want
        var attemptKey = key
        for attempt in 0..<2 {
            guard journal(["op": "hold", "key": attemptKey, "base": base, "account": account, "amount": amount]) else { return .unavailable }
            guard let (status, o) = post(client, "/api/credits/deduct", key: attemptKey, ["credits": amount, "userId": account]) else {
                return .unavailable   // the journal recovers this hold if it was taken
            }
            if status == 200 {
                return .granted(amount: amount, available: Self.int(o["newBalance"]) ?? 0)
            }
            _ = journal(["op": "void", "key": attemptKey, "base": base])   // not taken
            if status == 402 {
                let balance = max(0, Self.int(o["balance"]) ?? 0)
                if attempt == 0, balance >= minimum, balance > 0 {
                    amount = min(want, balance)
                    attemptKey = key + "b"
                    continue
                }
                return .insufficient(available: balance)
            }
            Log.warn("credits: the accounting service answered \(status) to a deduct")
            return .unavailable
        }
        return .unavailable
    }

    private func settle(_ client: BlockingHTTPClient, base: String, account: String, held: Int64, charge: Int64) -> Bool {
        if held > charge {
            guard let (status, _) = post(client, "/api/credits/allocate", key: "r-" + base, ["userId": account, "credits": held - charge]),
                  status == 200 || status == 422 else { return false }
        } else if charge > held {
            // One event of overshoot: taken if the balance has it (the ledger never goes below 0).
            guard let (status, _) = post(client, "/api/credits/deduct", key: "x-" + base, ["credits": charge - held, "userId": account]),
                  status == 200 || status == 402 || status == 422 else { return false }
        }
        _ = journal(["op": "settled", "base": base])
        return true
    }

    /// A hold never settled: each deduct sent again under its key (applied once by the
    /// service), then all of it given back under the settlement's key (a 422 means the
    /// settlement was made before the process died).
    private func recover(_ client: BlockingHTTPClient, base: String, account: String, holds: [(String, Int64)]) {
        var taken: Int64 = 0
        for (key, amount) in holds {
            guard let (status, _) = post(client, "/api/credits/deduct", key: key, ["credits": amount, "userId": account]) else {
                Log.error("credits: accounting service unreachable; reservation \(base) stays to recover at the next start")
                return
            }
            if status == 200 { taken += amount }
        }
        if taken > 0 {
            guard let (status, _) = post(client, "/api/credits/allocate", key: "r-" + base, ["userId": account, "credits": taken]),
                  status == 200 || status == 422 else { return }
        }
        _ = journal(["op": "settled", "base": base])
        Log.info("credits: recovered reservation \(base) (\(taken) credits given back)")
    }

    // MARK: the journal

    private func journal(_ o: [String: Any]) -> Bool {
        guard var data = try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]) else { return false }
        data.append(0x0A)
        return journalLock.withLock { _ in
            let ok = data.withUnsafeBytes { LocalLedger.writeAll(journalFD, $0) }
            return ok && fdatasync(journalFD) == 0
        }
    }

    /// Holds in the journal never settled, grouped by reservation; the journal is emptied
    /// when nothing is left to recover.
    private func recoveryJobs() -> [Job] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        var holds: [String: (account: String, list: [(String, Int64)])] = [:]
        var order: [String] = []
        var voided = Set<String>()
        var settled = Set<String>()
        for line in text.split(separator: "\n") {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let op = o["op"] as? String else { continue }
            switch op {
            case "hold":
                guard let key = o["key"] as? String, let base = o["base"] as? String, let account = o["account"] as? String,
                      let amount = Self.int(o["amount"]) else { continue }
                if holds[base] == nil { order.append(base); holds[base] = (account, []) }
                holds[base]!.list.append((key, amount))
            case "void": if let k = o["key"] as? String { voided.insert(k) }
            case "settled": if let b = o["base"] as? String { settled.insert(b) }
            default: continue
            }
        }
        var jobs: [Job] = []
        for base in order where !settled.contains(base) {
            guard let h = holds[base] else { continue }
            let live = h.list.filter { !voided.contains($0.0) }
            if live.isEmpty { continue }
            jobs.append(.recover(base: base, account: h.account, holds: live))
        }
        if jobs.isEmpty { _ = ftruncate(journalFD, 0) }
        return jobs
    }
}
