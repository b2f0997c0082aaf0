import Backends
import Foundation
import Glibc
import Policy
import Runtime
import Synchronization

/// One loop's view of the shared store (Redis): its connection, a TTL cache of key records,
/// a bounded negative cache, and the outage behaviour of `store.on_error`.
///
/// Key records: a cache hit costs nothing; a miss suspends the exchange until Redis answers.
/// If Redis cannot answer, a cached record (even a stale one) is used; an unknown key is never
/// admitted unverified — it gets 503 STORE_UNAVAILABLE whatever the mode.
/// Rate limits: one EVALSHA per request; when Redis cannot answer, `closed` answers 503,
/// `open` admits (counted, marked), `local` uses the in-process limiter with each window's
/// limit divided by the number of live instances (processes: the in-process limiter is shared
/// by all loops of one) last announced through Redis.
final class SharedStore {
    let redis: RedisConnection
    let mode: StoreFailMode
    private let loop: EventLoop
    private struct Cached {
        var record: KeyRecord
        var expires: UInt64
    }
    /// Records of keys Redis holds. A `KeyHashMap` (no hashing per lookup): only issued keys
    /// get in.
    private var positive = KeyHashMap<Cached>(minimumCapacity: 1024)
    /// Expiry of each hash Redis said it does not hold. A seeded `Dictionary`, not a
    /// `KeyHashMap`: these are digests of keys an attacker chose, who could grind them into
    /// one probe cluster of an unseeded table. Asked only when `positive` misses.
    private var negative: [KeyHash: UInt64] = [:]
    let positiveTTL: UInt64 = 30_000_000_000      // invalidation is pushed; the TTL bounds a missed message
    let negativeTTL: UInt64 = 2_000_000_000
    let maxEntries = 100_000
    let maxNegative = 10_000
    private var scaledPlans: [Int: (Int, PlanSpec)] = [:]
    /// Refusals that still hold (see `RefusalMemo`).
    var refusals = RefusalMemo()
    /// Security news on the invalidation channel (`ban <net> <until>`, `off <key hex>`).
    var onSecurityMessage: (([UInt8]) -> Void)?
    static let banPrefix = Array("ban ".utf8)
    static let offPrefix = Array("off ".utf8)
    static let unbanPrefix = Array("unban ".utf8)

    /// Whether the connection has reported any health yet (it reports nothing until it first
    /// comes up, so a store that is unreachable from the start would otherwise never be logged).
    private final class Reported { var any = false }
    private let reported: Reported
    /// How long a store that never came up may take before it is logged as unavailable.
    static let startupGrace: UInt64 = 1_000_000_000

    init(loop: EventLoop, url: RedisURL, deadline: Duration, mode: StoreFailMode, instanceID: String, gauges: LoopGauges) {
        self.loop = loop
        self.mode = mode
        let loopIndex = loop.index
        let reported = Reported()
        self.reported = reported
        redis = RedisConnection(loop: loop, url: url, commandDeadline: deadline, instanceID: instanceID) { health in
            reported.any = true
            gauges.set(.storeUp, health == .up ? 1 : 0)
            StoreHealthLog.report(health, loop: loopIndex, mode: mode)
        }
        redis.subscribeInvalidations { [unowned self] message in
            self.invalidate(message)
        }
        redis.start()
        let check = StartupCheck(self)
        startupCheck = check
        loop.schedule(at: loop.now &+ SharedStore.startupGrace, handler: check)
    }

    /// Still not up after the grace period, and never was: that is an outage too (counted like
    /// one, so the connection's first `.up` logs the recovery).
    fileprivate func checkStartup() {
        guard !reported.any, redis.health != .up else { return }
        reported.any = true
        StoreHealthLog.report(.down, loop: loop.index, mode: mode)
    }

    /// Not a weak reference to the store (that would send every retain/release of it, one
    /// per request, down the side-table slow path): a box the store clears when it goes.
    private final class StartupCheck: TimerHandler {
        unowned(unsafe) var owner: SharedStore?
        init(_ o: SharedStore) { owner = o }
        func timerFired(loop: EventLoop) { owner?.checkStartup() }
    }
    private var startupCheck: StartupCheck?

    deinit { startupCheck?.owner = nil }

    func stop() { redis.stop() }

    // MARK: key records

    enum CacheAnswer { case hit(KeyRecord), negative, miss }

    func cached(_ hash: KeyHash, now: UInt64, allowStale: Bool) -> CacheAnswer {
        if let i = positive.index(forKey: hash) {
            let c = positive[slot: i]
            return c.expires > now || allowStale ? .hit(c.record) : .miss
        }
        if negative.isEmpty { return .miss }
        guard let expires = negative[hash] else { return .miss }
        return expires > now ? .negative : .miss
    }

    func remember(_ hash: KeyHash, record: KeyRecord?, now: UInt64) {
        if let record {
            if !negative.isEmpty { negative[hash] = nil }
            if positive.count >= maxEntries {
                positive = positive.filter { _, c in c.expires > now }
                if positive.count >= maxEntries { positive = KeyHashMap(minimumCapacity: 1024) }
            }
            positive.insert(hash, Cached(record: record, expires: now &+ positiveTTL))
        } else {
            positive.removeValue(forKey: hash)
            if negative.count >= maxNegative {
                negative = negative.filter { $0.value > now }
                if negative.count >= maxNegative { return }   // a random-key flood must not grow memory
            }
            negative[hash] = now &+ negativeTTL
        }
    }

    /// A key changed somewhere (hex of its hash), or "" after a resubscribe: drop it (or all).
    func invalidate(_ message: [UInt8]) {
        if message.count > 4 && (message.starts(with: Self.banPrefix) || message.starts(with: Self.offPrefix)
                                 || message.starts(with: Self.unbanPrefix)) {
            onSecurityMessage?(message)
            return
        }
        if message.isEmpty {
            onSecurityMessage?([])   // (re)subscribed: bans published meanwhile are read again
            positive = KeyHashMap(minimumCapacity: 1024)
            negative.removeAll()
            return
        }
        guard let h = KeyHash(hex: String(decoding: message, as: UTF8.self)) else { return }
        positive.removeValue(forKey: h)
        negative[h] = nil
    }

    // MARK: limits

    /// The plan with every window's limit divided among `n` live instances.
    func localPlan(_ plan: PlanSpec) -> PlanSpec {
        let n = max(1, redis.liveInstances)
        if n == 1 { return plan }
        if let (count, p) = scaledPlans[plan.index], count == n { return p }
        let windows = plan.windows.map {
            RateWindow(plan: plan.name, requests: max(1, $0.requests / n), per: $0.per, burst: max(1, $0.burst / n))
        }
        let p = PlanSpec(index: plan.index, name: plan.name, windows: windows)
        scaledPlans[plan.index] = (n, p)
        return p
    }

}

/// Logs store health once per transition, not per request (every loop reports; one line each way).
enum StoreHealthLog {
    private static let state = Mutex<(down: Int, total: Int)>((0, 0))

    static func report(_ health: RedisHealth, loop: Int, mode: StoreFailMode) {
        switch health {
        case .down:
            let first = state.withLock { s -> Bool in s.down += 1; return s.down == 1 }
            if first {
                Log.warn("store unavailable: on_error=\(mode) (closed: 503 STORE_UNAVAILABLE; open: admit; local: in-process limits)")
                WebhookEvents.emit(.storeDegraded, consumer: nil, subject: "redis", data: [
                    ("store", .string("redis")), ("state", .string("down")), ("on_error", .string(mode.rawValue)),
                    ("recovered", .bool(false)),
                ])
            }
        case .up:
            let last = state.withLock { s -> Bool in
                if s.down == 0 { return false }
                s.down -= 1
                return s.down == 0
            }
            if last {
                Log.info("store recovered")
                WebhookEvents.emit(.storeDegraded, consumer: nil, subject: "redis", data: [
                    ("store", .string("redis")), ("state", .string("up")), ("on_error", .string(mode.rawValue)),
                    ("recovered", .bool(true)),
                ])
            }
        }
    }
}
