import Backends
import CSystem
import Foundation
import Glibc
import Policy
import Runtime
import Synchronization

/// The process's security state (`security:`), shared by every loop: lock-out counters and
/// bans per client network, refusal counts and networks per key, keys just auto-disabled.
///
/// The request path touches it only where something happens: a credential refusal counts
/// (one lock), a ban or a block is looked up only while one is in force (an atomic says so),
/// and a key's network is reported only when its loop has not seen that network lately
/// (`LoopSecurity`). Actions (audit entries, webhooks, disabling a key in its store) run on
/// this monitor's own thread, never on a loop.
///
/// Memory is bounded whatever the traffic: at most `lockout.max_tracked` networks and as many
/// keys. When the network table is full, what goes first is what matters least: networks
/// whose window has passed, then those with the fewest refusals, and bans in force last
/// (the soonest-ending first).
final class SecurityMonitor: @unchecked Sendable {
    struct NetEntry {
        var count = SlidingCount()
        /// Ban end (ms since the epoch); 0: none.
        var bannedUntil: Int64 = 0
        var lastSeen: Int64 = 0

        /// Counts one refusal; the estimate when it reaches `limit` (then banned from now).
        /// `wasBanned`: an expired ban was cleared.
        mutating func refused(now: Int64, per: Int64, limit: Int64, banMillis: Int64, wasBanned: inout Bool) -> Int64? {
            lastSeen = now
            if bannedUntil > now { return nil }
            if bannedUntil != 0 { bannedUntil = 0; wasBanned = true }
            count.roll(now: now, per: per)
            count.current += 1
            let estimate = count.estimate(now: now, per: per)
            guard estimate >= limit else { return nil }
            bannedUntil = now + banMillis
            count = SlidingCount()
            return estimate
        }
    }

    struct KeyEntry {
        var id: String
        var consumer: String
        var refusals = SlidingCount()
        /// Refusals by code in the current evidence (audit).
        var codes: [String: Int] = [:]
        /// Networks seen (at most `networks + 1` kept), with when each was last seen (ms).
        var networks: [(NetKey, Int64)] = []
        var lastSeen: Int64 = 0
    }

    /// A key auto-disabled here: refused until its store says so too (then `confirmed`), or
    /// until `until`; a confirmed key seen active again was enabled by an operator.
    struct Block {
        var until: Int64
        var confirmed = false
        /// When this instance's disable reached the store (0: not yet, or another instance's).
        var storedAt: Int64 = 0
    }

    struct State {
        var spec: SecuritySpec?
        var nets: [NetKey: NetEntry] = [:]
        var keys: [KeyHash: KeyEntry] = [:]
        var blocks: [KeyHash: Block] = [:]
        var bans = 0
        var nextSweep: Int64 = 0
    }

    private let state = Mutex(State())
    /// Bans possibly in force (the lookup is skipped while 0).
    private let banCount = Atomic<Int>(0)
    /// Keys blocked after an auto-disable (likewise).
    private let blockCount = Atomic<Int>(0)
    /// How long a block waits for the store to confirm the disable.
    static let blockMillis: Int64 = 10_000

    /// Set by `serve`: where actions go. Without a policies path (an in-process server in a
    /// test) keys are blocked here but not disabled in a store.
    struct Wiring: Sendable {
        var policies: String?
        var snapshot: (@Sendable () -> PolicySnapshot)?
        var audit: AuditLog?
        var instance: String
    }
    private let wiring = Mutex(Wiring(policies: nil, snapshot: nil, audit: nil, instance: "tollgate"))

    // Actions run on the monitor's thread.
    enum Job: Sendable {
        case lockout(net: NetKey, refusals: Int64, until: Int64)
        case disable(hash: KeyHash, id: String, consumer: String, reason: String, details: [(String, AuditValue)])
    }
    private let jobs = Mutex<[Job]>([])
    /// Disables whose store change failed, waiting for another try: (job, try number, when).
    private var retries: [(Job, Int, Int64)] = []   // the monitor's thread only
    static let disableTries = 6
    private let signal = DispatchSemaphore(value: 0)
    private let started = Atomic<Bool>(false)
    /// Actions done (tests wait on this rather than on time).
    let actionsDone = Atomic<Int>(0)
    /// Lock-outs this instance announced (each ban once per cluster), keys it disabled.
    let lockoutsAnnounced = Atomic<UInt64>(0)
    let disabledForRefusals = Atomic<UInt64>(0)
    let disabledForNetworks = Atomic<UInt64>(0)

    init() {}

    func configure(_ spec: SecuritySpec?) {
        state.withLock { $0.spec = spec }
    }

    func wire(policies: String, snapshot: @escaping @Sendable () -> PolicySnapshot, audit: AuditLog?, instance: String) {
        wiring.withLock { $0 = Wiring(policies: policies, snapshot: snapshot, audit: audit, instance: instance) }
    }

    var spec: SecuritySpec? { state.withLock { $0.spec } }

    static func nowMillis() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    // MARK: lock-out

    /// Seconds of ban left for `net` (at least 1), or nil. Costs one atomic load while no ban
    /// is in force.
    @inline(__always)
    func banLeft(_ net: NetKey) -> Int? {
        if banCount.load(ordering: .relaxed) == 0 { return nil }
        let now = Self.nowMillis()
        return state.withLock { s -> Int? in
            if now >= s.nextSweep { sweep(&s, now: now) }
            guard let e = s.nets[net], e.bannedUntil > now else { return nil }
            return Int(max(1, (e.bannedUntil - now + 999) / 1000))
        }
    }

    /// Expired bans and blocks leave the counts (so the request path skips its lookups again).
    private func sweep(_ s: inout State, now: Int64) {
        s.nextSweep = now + 1000
        if s.bans > 0 { Self.clearExpiredBans(&s, now: now) }
        if !s.blocks.isEmpty { s.blocks = s.blocks.filter { $0.value.until > now } }
        publishCounts(s)
    }

    @inline(__always)
    private func publishCounts(_ s: State) {
        banCount.store(s.bans, ordering: .relaxed)
        blockCount.store(s.blocks.count, ordering: .relaxed)
    }

    /// A credential refusal from `net`. True when it just crossed the threshold (banned now).
    /// One hash of `net` (the entry is updated in place), no allocation once the table is warm.
    func credentialRefused(_ net: NetKey, now: Int64, lockout l: SecuritySpec.LockoutSpec, announce: Bool) -> Bool {
        let per = Int64(l.per.milliseconds)
        let banMillis = Int64(l.banFor.milliseconds)
        let limit = Int64(l.invalidKeys)
        let crossed = state.withLock { s -> Int64? in
            if s.nets.count >= l.maxTracked && s.nets[net] == nil { Self.prune(&s, now: now, per: per, cap: l.maxTracked) }
            var wasBanned = false
            let crossed = s.nets[net, default: NetEntry()].refused(now: now, per: per, limit: limit, banMillis: banMillis,
                                                                   wasBanned: &wasBanned)
            if wasBanned { s.bans -= 1 }
            if crossed != nil { s.bans += 1 }
            if wasBanned || crossed != nil { publishCounts(s) }
            return crossed
        }
        guard let refusals = crossed else { return false }
        if announce { enqueue(.lockout(net: net, refusals: refusals, until: now + banMillis)) }
        return true
    }

    /// A ban this instance's batch made in the shared store: audited and announced here.
    func announceBan(_ net: NetKey, refusals: Int64, until: Int64) {
        enqueue(.lockout(net: net, refusals: refusals, until: until))
    }

    /// A ban decided elsewhere (another instance, through Redis): installed here too.
    func installBan(_ net: NetKey, until: Int64, now: Int64) {
        guard until > now, let l = spec?.lockout else { return }
        state.withLock { s in
            if s.nets[net] == nil && s.nets.count >= l.maxTracked {
                Self.prune(&s, now: now, per: Int64(l.per.milliseconds), cap: l.maxTracked)
            }
            var e = s.nets[net] ?? NetEntry()
            let wasBanned = e.bannedUntil > 0
            e.bannedUntil = max(e.bannedUntil, until)
            e.lastSeen = now
            e.count = SlidingCount()
            s.nets[net] = e
            if !wasBanned { s.bans += 1 }
            publishCounts(s)
        }
    }

    /// Bans in force in the shared store, read into this process: at start and after each
    /// resubscription (a ban published while this instance was away was missed). On its own
    /// thread (a blocking client, SCAN and MGET under the `{sec}` tag), at most once per 5 s,
    /// at most `max_tracked` bans.
    func refreshBans(from url: RedisURL) {
        guard let l = spec?.lockout else { return }
        let now = Self.nowMillis()
        guard now - lastBanRefresh.load(ordering: .relaxed) >= 5000,
              refreshingBans.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        lastBanRefresh.store(now, ordering: .relaxed)
        let box = UncheckedBox(self)
        _ = spawnThreadDetached(name: "tollgate-bans") {
            let m = box.value
            defer { m.refreshingBans.store(false, ordering: .releasing) }
            do {
                let loaded = try m.loadBans(url, limit: l.maxTracked)
                if loaded > 0 { Log.info("security: \(loaded) lock-out(s) in force read from the store") }
            } catch {
                Log.warn("security: could not read the lock-outs in force from the store: \(error)")
            }
        }
    }
    private let refreshingBans = Atomic<Bool>(false)
    private let lastBanRefresh = Atomic<Int64>(0)

    private func loadBans(_ url: RedisURL, limit: Int) throws -> Int {
        let r = try RedisKeyDirectory(url: url, timeout: .seconds(2))
        let prefix = "tg:sec:{sec}:ban:"
        var cursor = "0"
        var seen = 0
        var loaded = 0
        repeat {
            guard case .array(let parts) = try r.run(["SCAN", cursor, "MATCH", prefix + "*", "COUNT", "500"]), parts.count == 2,
                  let next = parts[0].text, case .array(let keys) = parts[1] else { break }
            cursor = next
            let names = keys.compactMap(\.text)
            seen += names.count
            if !names.isEmpty, case .array(let values) = try r.run(["MGET"] + names) {
                let now = Self.nowMillis()
                for (name, v) in zip(names, values) {
                    guard let until = v.text.flatMap({ Int64($0) }), until > now,
                          let net = NetKey(wire: Substring(name.dropFirst(prefix.count))) else { continue }
                    installBan(net, until: until, now: now)
                    loaded += 1
                }
            }
        } while cursor != "0" && seen < limit
        return loaded
    }

    /// Room for new networks: see the type's comment for the order.
    private static func prune(_ s: inout State, now: Int64, per: Int64, cap: Int) {
        let target = cap - max(1, cap / 8)
        // 1. Networks whose window has passed and that are not banned.
        s.nets = s.nets.filter { _, e in e.bannedUntil > now || now - e.lastSeen < per }
        // 2. The fewest refusals first (not banned).
        if s.nets.count > target {
            var counts = s.nets.compactMap { $0.value.bannedUntil > now ? nil : $0.value.count.estimate(now: now, per: per) }
            counts.sort()
            let excess = s.nets.count - target
            if excess > 0 && !counts.isEmpty {
                let threshold = counts[min(counts.count - 1, excess - 1)]
                s.nets = s.nets.filter { _, e in e.bannedUntil > now || e.count.estimate(now: now, per: per) > threshold }
            }
        }
        // 3. Bans, soonest-ending first.
        if s.nets.count > target {
            let ends = s.nets.values.map(\.bannedUntil).sorted()
            let threshold = ends[min(ends.count - 1, s.nets.count - target - 1)]
            s.nets = s.nets.filter { _, e in e.bannedUntil > threshold }
        }
        clearExpiredBans(&s, now: now)
    }

    /// Ended bans leave their networks (the counts start again); `bans` counts what is left.
    private static func clearExpiredBans(_ s: inout State, now: Int64) {
        for (k, e) in s.nets where e.bannedUntil != 0 && e.bannedUntil <= now { s.nets[k]?.bannedUntil = 0 }
        s.bans = s.nets.values.reduce(0) { $0 + ($1.bannedUntil > 0 ? 1 : 0) }
    }

    /// Networks tracked now (tests: bounded under a flood).
    var trackedNetworks: Int { state.withLock { $0.nets.count } }

    /// Lifts a ban (an operator, or another instance's `unban`); true when one was in force.
    @discardableResult
    func liftBan(_ net: NetKey) -> Bool {
        let now = Self.nowMillis()
        return state.withLock { s -> Bool in
            guard var e = s.nets[net], e.bannedUntil > now else { return false }
            e.bannedUntil = 0
            e.count = SlidingCount()
            s.nets[net] = e
            s.bans -= 1
            publishCounts(s)
            return true
        }
    }

    /// Bans in force now.
    var bansInForce: Int { banCount.load(ordering: .relaxed) }

    /// Bans in force (the admin page, tests).
    func bans(now: Int64) -> [(NetKey, Int64)] {
        state.withLock { s in s.nets.compactMap { $0.value.bannedUntil > now ? ($0.key, $0.value.bannedUntil) : nil } }
    }

    // MARK: auto-disable

    /// A valid key refused for scope, IP or HTTPS. True when that makes it more than the
    /// rule allows (the key is blocked here, and disabled when `act`).
    func keyRefused(_ r: KeyRecord, code: DenialCode, now: Int64, rule: SecuritySpec.RefusalRule, act: Bool) -> Bool {
        let per = Int64(rule.per.milliseconds)
        let evidence = state.withLock { s -> (Int64, [String: Int])? in
            guard s.blocks[r.hash] == nil else { return nil }
            var e = s.keys[r.hash] ?? KeyEntry(id: r.id, consumer: r.consumer)
            e.lastSeen = now
            e.refusals.roll(now: now, per: per)
            if e.refusals.current == 0 && e.refusals.previous == 0 { e.codes = [:] }
            e.refusals.current += 1
            e.codes[code.rawValue, default: 0] += 1
            let n = e.refusals.estimate(now: now, per: per)
            if n > Int64(rule.refusals) {
                let codes = e.codes
                s.keys[r.hash] = nil
                s.blocks[r.hash] = Block(until: now + Self.blockMillis)
                publishCounts(s)
                return (n, codes)
            }
            Self.boundKeys(&s, now: now)
            s.keys[r.hash] = e
            return nil
        }
        guard let (n, codes) = evidence else { return false }
        if act {
            enqueue(.disable(hash: r.hash, id: r.id, consumer: r.consumer, reason: "refusals", details: [
                ("refusals", .int(n)), ("per", .string(Self.text(rule.per))),
                ("codes", .object(codes.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) })),
            ]))
        }
        return true
    }

    /// The key was used from `net`. The networks (the evidence) when that makes more distinct
    /// networks in `per` than the rule allows (blocked here, disabled when `act`), else nil.
    func networkSeen(_ r: KeyRecord, net: NetKey, now: Int64, rule: SecuritySpec.NetworkRule, act: Bool) -> [NetKey]? {
        let per = Int64(rule.per.milliseconds)
        let evidence = state.withLock { s -> [NetKey]? in
            guard s.blocks[r.hash] == nil else { return nil }
            var e = s.keys[r.hash] ?? KeyEntry(id: r.id, consumer: r.consumer)
            e.lastSeen = now
            e.networks.removeAll { now - $0.1 >= per }
            if let i = e.networks.firstIndex(where: { $0.0 == net }) {
                e.networks[i].1 = now
            } else {
                e.networks.append((net, now))
            }
            if e.networks.count > rule.networks {
                let nets = e.networks.map(\.0)
                s.keys[r.hash] = nil
                s.blocks[r.hash] = Block(until: now + Self.blockMillis)
                publishCounts(s)
                return nets
            }
            Self.boundKeys(&s, now: now)
            s.keys[r.hash] = e
            return nil
        }
        guard let nets = evidence else { return nil }
        if act { enqueueNetworks(r, nets: nets.map(\.description), rule: rule) }
        return nets
    }

    func enqueueNetworks(_ r: KeyRecord, nets: [String], rule: SecuritySpec.NetworkRule) {
        enqueue(.disable(hash: r.hash, id: r.id, consumer: r.consumer, reason: "networks", details: [
            ("networks", .strings(nets)), ("count", .int(Int64(nets.count))), ("per", .string(Self.text(rule.per))),
        ]))
    }

    func enqueueRefusals(_ r: KeyRecord, count: Int64, rule: SecuritySpec.RefusalRule) {
        enqueue(.disable(hash: r.hash, id: r.id, consumer: r.consumer, reason: "refusals", details: [
            ("refusals", .int(count)), ("per", .string(Self.text(rule.per))),
        ]))
    }

    /// A key disabled by another instance's decision: blocked here at once, for as long as
    /// its store change takes to arrive.
    func block(_ hash: KeyHash, now: Int64, local: Bool = false) {
        state.withLock { s in
            if s.blocks[hash] != nil { return }
            s.blocks[hash] = Block(until: now + (local ? Self.blockMillis : 2000))
            s.keys[hash] = nil
            publishCounts(s)
        }
    }

    /// Whether a key with this record must be refused `DISABLED` although its record says
    /// active (auto-disabled here, the store not caught up). One atomic load while no key is
    /// blocked.
    @inline(__always)
    func isBlocked(_ r: KeyRecord) -> Bool {
        if blockCount.load(ordering: .relaxed) == 0 { return false }
        return blockedSlow(r, now: Self.nowMillis())
    }

    private func blockedSlow(_ r: KeyRecord, now: Int64) -> Bool {
        state.withLock { s -> Bool in
            if now >= s.nextSweep { sweep(&s, now: now) }
            guard var b = s.blocks[r.hash] else { return false }
            if r.status != .active {
                b.confirmed = true
                s.blocks[r.hash] = b
                return false
            }
            // Active: enabled again after the store confirmed (seen here, or written by this
            // instance a second ago: every loop has picked the change up since), or the block
            // ran out.
            if b.confirmed || (b.storedAt > 0 && now - b.storedAt >= 1000) || b.until <= now {
                s.blocks[r.hash] = nil
                publishCounts(s)
                return false
            }
            return true
        }
    }

    private static func boundKeys(_ s: inout State, now: Int64) {
        guard s.keys.count >= 65_536 else { return }
        let oldest = s.keys.values.map(\.lastSeen).sorted()[s.keys.count / 8]
        s.keys = s.keys.filter { $0.value.lastSeen > oldest }
    }

    // MARK: actions

    private func enqueue(_ job: Job) {
        switch job {
        case .lockout: lockoutsAnnounced.add(1, ordering: .relaxed)
        case .disable(_, _, _, let reason, _):
            if reason == "networks" { disabledForNetworks.add(1, ordering: .relaxed) } else { disabledForRefusals.add(1, ordering: .relaxed) }
        }
        startIfNeeded()
        jobs.withLock { $0.append(job) }
        signal.signal()
    }

    private func startIfNeeded() {
        guard started.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        let box = UncheckedBox(self)
        _ = spawnThreadDetached(name: "tollgate-security") { box.value.run() }
    }

    private func run() {
        while true {
            if let next = retries.map(\.2).min() {
                let wait = max(0, next - Self.nowMillis())
                _ = signal.wait(timeout: .now() + .milliseconds(Int(wait)))
            } else {
                signal.wait()
            }
            let batch = jobs.withLock { j -> [Job] in let b = j; j.removeAll(); return b }
            for job in batch {
                perform(job, attempt: 1)
                actionsDone.add(1, ordering: .relaxed)
            }
            let now = Self.nowMillis()
            let due = retries.filter { $0.2 <= now }
            retries.removeAll { $0.2 <= now }
            for (job, attempt, _) in due { perform(job, attempt: attempt) }
        }
    }

    private func perform(_ job: Job, attempt: Int) {
        let w = wiring.withLock { $0 }
        switch job {
        case .lockout(let net, let refusals, let until):
            // A flood from many networks must not become a flood of audit entries and
            // webhooks: at most `maxLockoutEvents` a minute are recorded one by one; the rest
            // are counted and the next recorded one says how many were left out.
            let now = Self.nowMillis()
            if now - eventWindowStart >= 60_000 { eventWindowStart = now; eventsInWindow = 0 }
            eventsInWindow += 1
            if eventsInWindow > Self.maxLockoutEvents { suppressedLockouts += 1; return }
            let untilText = AuditFormat.time(millis: until)
            Log.warn("security: \(net) locked out until \(untilText) after \(refusals) credential refusals")
            var details: [(String, AuditValue)] = [
                ("network", .string(net.description)), ("refusals", .int(refusals)), ("until", .string(untilText)),
                ("instance", .string(w.instance)),
            ]
            if suppressedLockouts > 0 {
                details.append(("unrecorded_before", .int(suppressedLockouts)))
                Log.warn("security: \(suppressedLockouts) more lock-outs were not recorded one by one (over \(Self.maxLockoutEvents) a minute)")
                suppressedLockouts = 0
            }
            record(w.audit, AuditEvent(.securityLockout, actor: .security, subject: net.description, details: details))
            WebhookEvents.emit(.lockout, consumer: nil, subject: net.description, data: details)
        case .disable(let hash, let id, let consumer, let reason, let details):
            if attempt == 1 { Log.warn("security: key \(id) (\(consumer)) auto-disabled: \(reason)") }
            var result = "disabled"
            if let policies = w.policies, let current = w.snapshot {
                do {
                    let snapshot = current()
                    let store = try KeyStoreAccess(snapshot: snapshot, policies: policies)
                    let ops = KeyOperations(store: store, caller: KeyCaller(kind: .security, name: "security"))
                    _ = try ops.setStatus(id, .disabled)
                    let now = Self.nowMillis()
                    state.withLock { if $0.blocks[hash] != nil { $0.blocks[hash]!.storedAt = now } }
                } catch {
                    // The store could not take it (Redis down, a locked log): the key stays
                    // blocked here and the change is tried again (1 s, 2 s, 4 s …); the
                    // event is recorded once, when it is settled either way.
                    if attempt < Self.disableTries {
                        let delay = Int64(1000) << (attempt - 1)
                        let now = Self.nowMillis()
                        state.withLock { s in
                            if s.blocks[hash] != nil { s.blocks[hash]!.until = max(s.blocks[hash]!.until, now + delay + Self.blockMillis) }
                        }
                        retries.append((job, attempt + 1, now + delay))
                        Log.error("security: key \(id) could not be disabled in its store (try \(attempt)): \(error); trying again")
                        return
                    }
                    result = "not disabled in the store after \(attempt) tries: \(error)"
                    Log.error("security: key \(id) could not be disabled in its store: \(error)")
                }
            } else {
                result = "blocked in this process only"
            }
            let all: [(String, AuditValue)] = [("key_id", .string(id)), ("consumer", .string(consumer)),
                                               ("reason", .string(reason))] + details
                + [("result", .string(result)), ("instance", .string(w.instance))]
            record(w.audit, AuditEvent(.securityAutoDisable, actor: .security, subject: id, details: all))
            WebhookEvents.emit(.autoDisable, consumer: consumer, subject: id, data: all)
        }
    }

    /// Lock-outs recorded one by one per minute at most (audit entries, webhooks); the monitor's thread only.
    static let maxLockoutEvents = 100
    private var eventWindowStart: Int64 = 0
    private var eventsInWindow = 0
    private var suppressedLockouts: Int64 = 0

    private func record(_ audit: AuditLog?, _ e: AuditEvent) {
        guard let audit else { return }
        do { try audit.record(e) } catch { Log.error("audit: \(error)") }
    }

    static func text(_ d: Duration) -> String {
        let ms = d.milliseconds
        if ms % 3_600_000 == 0 { return "\(ms / 3_600_000)h" }
        if ms % 60_000 == 0 { return "\(ms / 60_000)m" }
        if ms % 1000 == 0 { return "\(ms / 1000)s" }
        return "\(ms)ms"
    }
}
