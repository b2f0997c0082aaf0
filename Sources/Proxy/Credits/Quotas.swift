import Backends
import CSystem
import Foundation
import Glibc
import Policy
import Runtime
import Synchronization

/// Calendar quotas kept in this process (no Redis): exact across loops (one lock), saved to
/// `quotas.json` in the state directory every second and at stop, so a restart does not give
/// a month's quota back (a crash may lose the last second's counts).
final class LocalQuotas: @unchecked Sendable {
    // SAFETY: `counts` is behind its lock; `thread` is touched by start/stop only.
    private struct State {
        /// "subject|plan|index|periodStart" → requests counted.
        var counts: [String: Int64] = [:]
        /// Period end of each entry, for pruning.
        var ends: [String: Int64] = [:]
        var dirty = false
    }
    private let state = Mutex(State())
    let path: String
    private let running = Atomic<Bool>(false)
    private var thread: pthread_t?

    init(directory: String) {
        path = (directory as NSString).appendingPathComponent("quotas.json")
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        if let data = FileManager.default.contents(atPath: path),
           let o = try? JSONSerialization.jsonObject(with: data) as? [String: [Int64]] {
            let now = Int64(time(nil))
            state.withLock { s in
                for (k, v) in o where v.count == 2 && v[1] > now {
                    s.counts[k] = v[0]
                    s.ends[k] = v[1]
                }
            }
        }
    }

    /// Counts one request against every request quota in `keys` and checks the token ones
    /// (all or nothing). Returns the index of the first quota that is full, or nil when counted.
    func count(_ keys: [QuotaGate.Key]) -> Int? {
        state.withLock { s in
            for (i, k) in keys.enumerated() where (s.counts[k.key] ?? 0) >= k.limit { return i }
            for k in keys where !k.isTokens {
                s.counts[k.key, default: 0] += 1
                s.ends[k.key] = k.end
            }
            s.dirty = true
            return nil
        }
    }

    /// Adds the tokens an exchange used to its token quotas.
    func add(_ keys: [QuotaGate.Key], tokens: Int64) {
        guard tokens > 0 else { return }
        state.withLock { s in
            for k in keys where k.isTokens {
                s.counts[k.key, default: 0] += tokens
                s.ends[k.key] = k.end
            }
            s.dirty = true
        }
    }

    /// Takes back a count (the request was refused by a later phase).
    func giveBack(_ keys: [String]) {
        state.withLock { s in
            for k in keys { if let v = s.counts[k], v > 0 { s.counts[k] = v - 1 } }
            s.dirty = true
        }
    }

    func start() {
        guard !running.exchange(true, ordering: .sequentiallyConsistent) else { return }
        let box = UncheckedBox(self)
        thread = spawnThread(name: "tollgate-quotas") { box.value.run() }
    }

    private func run() {
        while running.load(ordering: .relaxed) {
            var ts = timespec(tv_sec: 1, tv_nsec: 0)
            nanosleep(&ts, nil)
            save()
        }
    }

    func stop() {
        if running.exchange(false, ordering: .sequentiallyConsistent), let t = thread { pthread_join(t, nil) }
        thread = nil
        save()
    }

    /// Writes the counts of live periods (temporary file, fsync, rename).
    func save() {
        let now = Int64(time(nil))
        let snapshot: [String: [Int64]]? = state.withLock { s in
            guard s.dirty else { return nil }
            s.dirty = false
            for (k, end) in s.ends where end <= now {
                s.ends[k] = nil
                s.counts[k] = nil
            }
            var out: [String: [Int64]] = [:]
            for (k, v) in s.counts { out[k] = [v, s.ends[k] ?? now] }
            return out
        }
        guard let snapshot, let data = try? JSONSerialization.data(withJSONObject: snapshot) else { return }
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let ok = data.withUnsafeBytes { LocalLedger.writeAll(fd, $0) } && fsync(fd) == 0
        close(fd)
        if ok { rename(tmp, path) }
    }
}

/// One loop's quota phase: local counters or one Redis script per request.
final class QuotaGate: RedisWaiter {
    let local: LocalQuotas?
    private unowned let context: LoopContext

    init(local: LocalQuotas?, context: LoopContext) {
        self.local = local
        self.context = context
    }

    struct Key {
        var key: String
        var limit: Int64
        var end: Int64
        var isTokens: Bool
    }

    /// Keys of the quotas an exchange counts against (period start in each).
    private func keys(record: KeyRecord, plan: PlanSpec, now: Int64) -> [Key] {
        var out: [Key] = []
        for (i, q) in plan.quotas.enumerated() {
            let (start, end) = QuotaSpec.bounds(q.period, now: now)
            let subject = q.by == .key ? "k:" + record.id : "c:" + record.consumer
            out.append(Key(key: subject + "|" + plan.name + "|" + String(i) + "|" + String(start), limit: q.limit, end: end,
                           isTokens: q.kind == .tokens))
        }
        return out
    }

    func check(_ x: Exchange, plan: PlanSpec) -> PhaseResult {
        guard let record = x.facts.record else { return .next }
        let now = Int64(time(nil))
        let ks = keys(record: record, plan: plan, now: now)
        if ks.isEmpty { return .next }
        if let store = context.store {
            // One script for all of them, tagged by the key's consumer (one slot).
            let tag = RedisCreditScript.tag(record.consumer)
            var cmd: [[UInt8]] = [Array("EVAL".utf8), Array(Self.script.utf8), Array(String(ks.count).utf8)]
            for k in ks { cmd.append(Array("tg:q:{\(tag)}:\(k.key)".utf8)) }
            for k in ks {
                cmd.append(Array(String(k.limit).utf8))
                cmd.append(Array(String(k.end).utf8))
                cmd.append(Array((k.isTokens ? "t" : "r").utf8))
            }
            x.facts.quotaEnds = ks.map(\.end)
            if let failed = store.redis.command(cmd, waiter: x, token: x.facts.token) {
                return complete(x, result: failed)
            }
            return .wait
        }
        guard let local else { return .next }
        if let full = local.count(ks) {
            quotaExhausted(record: record, plan: plan, index: full, key: ks[full])
            return .reply(Denial(.quotaExceeded, retryAfterSeconds: Int(max(1, ks[full].end - now))))
        }
        x.facts.quotaKeys = ks.filter { !$0.isTokens }.map(\.key)
        return .next
    }

    /// The script's answer: `{1}` counted, `{0, i}` quota i (1-based) is full.
    func complete(_ x: Exchange, result: RedisResult) -> PhaseResult {
        guard case .reply(let r) = result, let v = RedisCreditScript.integers(r), !v.isEmpty else {
            switch context.store?.mode ?? .closed {
            case .open, .local:
                x.facts.degraded = .open
                return .next
            case .closed:
                return .reply(Denial(.storeUnavailable, retryAfterSeconds: 1))
            }
        }
        if v[0] == 1 {
            x.facts.quotaCountedInRedis = true
            return .next
        }
        let i = v.count > 1 ? Int(v[1]) - 1 : 0
        let end = i >= 0 && i < x.facts.quotaEnds.count ? x.facts.quotaEnds[i] : Int64(time(nil)) + 1
        if WebhookEvents.isWanted(.quotaExhausted), let record = x.facts.record, let pi = record.planIndex,
           pi < x.facts.snapshot.plans.count, case let plan = x.facts.snapshot.plans[pi], i >= 0,
           case let ks = keys(record: record, plan: plan, now: Int64(time(nil))), i < ks.count {
            quotaExhausted(record: record, plan: plan, index: i, key: ks[i])
        }
        return .reply(Denial(.quotaExceeded, retryAfterSeconds: Int(max(1, end - Int64(time(nil))))))
    }

    /// The first `QUOTA_EXCEEDED` of a key (or consumer) in a quota's period (across instances
    /// with Redis, else per instance):
    /// `quota_exhausted` (the key string names the period, so the next period fires again).
    private func quotaExhausted(record: KeyRecord, plan: PlanSpec, index: Int, key: Key) {
        guard WebhookEvents.isWanted(.quotaExhausted), index < plan.quotas.count else { return }
        let q = plan.quotas[index]
        let left = Int64(time(nil))
        WebhookEvents.emitOnce(key: "quota|" + key.key, every: .seconds(max(1, key.end - left)), .quotaExhausted,
                               consumer: record.consumer, subject: record.id, store: context.store?.redis) {
            [("key_id", .string(record.id)), ("consumer", .string(record.consumer)), ("plan", .string(plan.name)),
             ("quota", .string("\(q.limit) \(q.kind.rawValue)/\(q.period.rawValue) by \(q.by.rawValue)")),
             ("kind", .string(q.kind.rawValue)), ("limit", .int(q.limit)), ("period", .string(q.period.rawValue)),
             ("by", .string(q.by.rawValue)), ("resets", .string(AuditFormat.time(millis: key.end * 1000)))]
        }
    }

    /// A later phase refused a request that was counted: the count is given back.
    func giveBack(_ x: Exchange) {
        if let ks = x.facts.quotaKeys { local?.giveBack(ks); x.facts.quotaKeys = nil }
        if x.facts.quotaCountedInRedis, let store = context.store, let record = x.facts.record,
           let pi = record.planIndex, pi < x.facts.snapshot.plans.count {
            x.facts.quotaCountedInRedis = false
            let plan = x.facts.snapshot.plans[pi]
            let tag = RedisCreditScript.tag(record.consumer)
            for k in keys(record: record, plan: plan, now: Int64(time(nil))) where !k.isTokens {
                _ = store.redis.command([Array("DECR".utf8), Array("tg:q:{\(tag)}:\(k.key)".utf8)], waiter: self, token: 0)
            }
        }
    }

    func redisCompleted(token: UInt64, result: RedisResult) {}

    /// Settle: the tokens a per-token exchange used count against its plan's token quotas.
    func addTokens(_ x: Exchange, _ tokens: Int64) {
        guard tokens > 0, let record = x.facts.record, let pi = record.planIndex, pi < x.facts.snapshot.plans.count else { return }
        let plan = x.facts.snapshot.plans[pi]
        guard plan.quotas.contains(where: { $0.kind == .tokens }) else { return }
        let ks = keys(record: record, plan: plan, now: Int64(time(nil))).filter(\.isTokens)
        if let store = context.store {
            let tag = RedisCreditScript.tag(record.consumer)
            for k in ks {
                _ = store.redis.command([Array("INCRBY".utf8), Array("tg:q:{\(tag)}:\(k.key)".utf8), Array(String(tokens).utf8)],
                                        waiter: self, token: 0)
                _ = store.redis.command([Array("EXPIREAT".utf8), Array("tg:q:{\(tag)}:\(k.key)".utf8), Array(String(k.end + 86_400).utf8)],
                                        waiter: self, token: 0)
            }
        } else {
            local?.add(ks, tokens: tokens)
        }
    }

    /// All or nothing over KEYS: ARGV[3i-2] the limit of KEYS[i], ARGV[3i-1] its period's
    /// end, ARGV[3i] `r` (a request quota: counted here) or `t` (a token quota: only checked;
    /// settle adds the tokens).
    static let script = """
        for i = 1, #KEYS do
          local v = tonumber(redis.call('GET', KEYS[i]) or '0')
          if v >= tonumber(ARGV[3 * i - 2]) then return {0, i} end
        end
        for i = 1, #KEYS do
          if ARGV[3 * i] == 'r' then
            redis.call('INCR', KEYS[i])
            redis.call('EXPIREAT', KEYS[i], tonumber(ARGV[3 * i - 1]) + 86400)
          end
        end
        return {1}
        """
}
