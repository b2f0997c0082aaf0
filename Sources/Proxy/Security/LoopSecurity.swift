import Backends
import Policy
import Runtime

/// One loop's side of `security:`: the checks the request path makes, the per-loop memo of
/// networks each key was seen from, and (with Redis) the batch of counts this loop sends to
/// the store every `flushNanos`, so every instance counts the same refusals and networks.
///
/// Nothing here runs for a request unless the policy has the matching rule, and then:
/// - lock-out: an atomic load (no ban in force) before the credential is read; a refusal of
///   a credential takes the monitor's lock once;
/// - networks: a direct-mapped memo hit (the key was seen from this network lately);
/// - refusals of a valid key: the monitor's lock once.
final class LoopSecurity: RedisWaiter {
    let monitor: SecurityMonitor
    private unowned let context: LoopContext

    private struct Memo {
        var w0: UInt64 = 0
        var w1: UInt64 = 0
        var net = NetKey(hi: 0, lo: 0, bits: 0)
        var until: UInt64 = 0
    }
    private var memo = [Memo](repeating: Memo(), count: 1024)
    /// How long a (key, network) sighting is trusted before it is reported again (refreshes
    /// the network's last-seen time in the window).
    private func memoNanos(_ rule: SecuritySpec.NetworkRule) -> UInt64 {
        UInt64(min(max(1, rule.per.milliseconds / 8), 60_000)) * 1_000_000
    }

    // Counts on their way to Redis.
    private var lockouts: [NetKey: Int] = [:]
    private var refusals: [KeyHash: (KeyRecord, Int)] = [:]
    private var sightings: [KeyHash: (KeyRecord, [NetKey])] = [:]
    private var pendingItems = 0
    private var flushArmed = false
    static let flushNanos: UInt64 = 5_000_000
    static let maxBatch = 2048

    init(monitor: SecurityMonitor, context: LoopContext) {
        self.monitor = monitor
        self.context = context
    }

    // MARK: request path

    /// Before any credential work: the client's network is locked out.
    @inline(__always)
    func lockedOut(_ x: Exchange) -> Denial? {
        guard let left = monitor.banLeft(NetKey.lockout(x.facts.clientIP)) else { return nil }
        return Denial(.lockedOut, retryAfterSeconds: left)
    }

    /// A refusal on its way out: counted when it is one security counts.
    func refused(_ x: Exchange, _ d: Denial) {
        switch d.code {
        case .invalidKey, .invalidToken, .revoked, .expired:
            guard let l = x.facts.snapshot.security?.lockout, !x.facts.clientIP.isUnknown else { return }
            let net = NetKey.lockout(x.facts.clientIP)
            let shared = context.store != nil
            // With Redis the ban is announced (audited, webhooks) by the instance whose batch
            // crosses the shared count; without it, here.
            let now = SecurityMonitor.nowMillis()
            let crossed = monitor.credentialRefused(net, now: now, lockout: l, announce: !shared)
            if shared {
                // Announced by whichever batch crosses the shared count; by this instance if
                // its batch cannot reach the store.
                if crossed { unannounced.append(.lockout(net, until: now + l.banFor.milliseconds, count: Int64(l.invalidKeys))) }
                add { $0.lockouts[net, default: 0] += 1 }
            }
        case .ipDenied, .insufficientScope, .httpsRequired:
            // API keys only: a JWT's identity is its issuer's to revoke (there is no key to disable).
            guard !x.facts.isJWT, let rule = x.facts.snapshot.security?.refusalRule, let r = x.facts.record else { return }
            let shared = context.store != nil
            if monitor.keyRefused(r, code: d.code, now: SecurityMonitor.nowMillis(), rule: rule, act: !shared), shared {
                unannounced.append(.refusals(r, count: Int64(rule.refusals) + 1))
            }
            if shared {
                add { s in
                    if let (rec, n) = s.refusals[r.hash] { s.refusals[r.hash] = (rec, n + 1) } else { s.refusals[r.hash] = (r, 1) }
                }
            }
        default:
            return
        }
    }

    /// A valid key in the authorize phase: `DISABLED` when it was just auto-disabled here (or
    /// this request makes it so); `.wait` while the shared store counts a network this loop
    /// has not seen the key use lately (so the request that crosses the rule is the one
    /// refused, whichever instance it reaches); nil to go on.
    @inline(__always)
    func authorize(_ x: Exchange, _ r: KeyRecord) -> PhaseResult? {
        if x.facts.isJWT { return nil }   // API keys only (see `refused`)
        if monitor.isBlocked(r) { return .reply(Denial(.disabled)) }
        guard r.status == .active, let rule = x.facts.snapshot.security?.networkRule else { return nil }
        let net = NetKey.network(x.facts.clientIP)
        let h = r.hash
        let i = Int(truncatingIfNeeded: h.w0) & (memo.count - 1)
        let now = context.loop.now
        if memo[i].until > now && memo[i].w0 == h.w0 && memo[i].w1 == h.w1 && memo[i].net == net { return nil }
        memo[i] = Memo(w0: h.w0, w1: h.w1, net: net, until: now &+ memoNanos(rule))
        guard let store = context.store, let spec = x.facts.snapshot.security else {
            return monitor.networkSeen(r, net: net, now: SecurityMonitor.nowMillis(), rule: rule, act: true) != nil
                ? .reply(Denial(.disabled)) : nil
        }
        if let nets = monitor.networkSeen(r, net: net, now: SecurityMonitor.nowMillis(), rule: rule, act: false) {
            unannounced.append(.networks(r, nets))
            add { s in s.sightings[h, default: (r, [])].1.append(net) }
            return .reply(Denial(.disabled))
        }
        var args = Self.header(spec)
        args.append(Array("N".utf8)); args.append(Array(h.hex.utf8)); args.append(Array(net.wire.utf8))
        if let failed = store.redis.command(args, waiter: x, token: x.facts.token) {
            return completeSighting(x, result: failed)
        }
        return .wait
    }

    /// The store counted the exchange's network: refused when the key is disabled by it,
    /// else the rest of the authorize phase.
    func completeSighting(_ x: Exchange, result: RedisResult) -> PhaseResult {
        guard let r = x.facts.record else { return .reply(Denial(.invalidKey)) }
        if case .reply(.array(let items)) = result, apply(items, records: [r.hash.hex: r]).contains(r.hash) {
            return .reply(Denial(.disabled))
        }
        return Pipeline.authorizeRecord(x, r)
    }

    /// `ban <net> <until>` or `off <key hex>` from another instance (or this one's script).
    func storeMessage(_ m: [UInt8]) {
        if m.isEmpty {
            if let url = context.snapshot.store?.url { monitor.refreshBans(from: url) }
            return
        }
        let parts = String(decoding: m, as: UTF8.self).split(separator: " ")
        let now = SecurityMonitor.nowMillis()
        if parts.count == 3, parts[0] == "ban", let net = NetKey(wire: parts[1]), let until = Int64(parts[2]) {
            monitor.installBan(net, until: until, now: now)
        } else if parts.count == 2, parts[0] == "unban", let net = NetKey(wire: parts[1]) {
            monitor.liftBan(net)
        } else if parts.count == 2, parts[0] == "off", let h = KeyHash(hex: String(parts[1])) {
            monitor.block(h, now: now)
        }
    }

    // MARK: the batch to Redis

    /// Counts go out at once when the last batch left `flushNanos` ago or more, else with
    /// the next batch: at most one script per loop per `flushNanos` under any flood, and the
    /// shared count sees a crossing within about that time.
    private func add(_ change: (LoopSecurity) -> Void) {
        change(self)
        pendingItems += 1
        let now = context.loop.now
        if pendingItems >= Self.maxBatch || now &- lastFlush >= Self.flushNanos { flush(); return }
        if !flushArmed {
            flushArmed = true
            context.loop.schedule(at: lastFlush &+ Self.flushNanos, handler: flushTimer)
        }
    }
    private var lastFlush: UInt64 = 0

    private lazy var flushTimer = TimerAction { [unowned self] in
        self.flushArmed = false
        self.flush()
    }

    /// One script for everything this loop counted since the last flush.
    func flush() {
        guard pendingItems > 0, let store = context.store, let spec = context.snapshot.security else {
            lockouts.removeAll(); refusals.removeAll(); sightings.removeAll(); pendingItems = 0
            return
        }
        var args = Self.header(spec)
        func a(_ s: String) { args.append(Array(s.utf8)) }
        var records: [String: KeyRecord] = [:]
        if spec.lockout != nil {
            for (net, n) in lockouts { a("L"); a(net.wire); a(String(n)) }
        }
        if spec.refusalRule != nil {
            for (h, (r, n)) in refusals { a("R"); a(h.hex); a(String(n)); records[h.hex] = r }
        }
        if spec.networkRule != nil {
            for (h, (r, nets)) in sightings {
                for net in nets { a("N"); a(h.hex); a(net.wire) }
                records[h.hex] = r
            }
        }
        lockouts.removeAll(); refusals.removeAll(); sightings.removeAll(); pendingItems = 0
        lastFlush = context.loop.now
        flushToken &+= 1
        batchRecords[flushToken] = records
        if !unannounced.isEmpty {
            batchLocal[flushToken] = unannounced
            unannounced = []
        }
        if batchRecords.count > 64 { batchRecords.removeValue(forKey: flushToken &- 64); batchLocal.removeValue(forKey: flushToken &- 64) }
        if let failed = store.redis.command(args, waiter: self, token: flushToken) {
            redisCompleted(token: flushToken, result: failed)
        }
    }
    private var flushToken: UInt64 = 0
    /// Thresholds this loop's own counts crossed with a store configured (the shared count
    /// decides who announces; if a batch cannot reach the store, this instance does).
    enum LocalCrossing {
        case lockout(NetKey, until: Int64, count: Int64)
        case refusals(KeyRecord, count: Int64)
        case networks(KeyRecord, [NetKey])
    }
    private var unannounced: [LocalCrossing] = []
    private var batchLocal: [UInt64: [LocalCrossing]] = [:]
    /// The records behind each batch's key hashes (the instance that wins an auto-disable
    /// names the key in its audit entry and webhook).
    private var batchRecords: [UInt64: [String: KeyRecord]] = [:]

    /// `EVAL <script> 0` and the rules' arguments.
    static func header(_ spec: SecuritySpec) -> [[UInt8]] {
        var args: [[UInt8]] = [Array("EVAL".utf8), Array(SecurityScript.source.utf8), Array("0".utf8)]
        func a(_ s: String) { args.append(Array(s.utf8)) }
        a(String(SecurityMonitor.nowMillis()))
        a(String(spec.lockout?.invalidKeys ?? 0)); a(String(spec.lockout?.per.milliseconds ?? 1)); a(String(spec.lockout?.banFor.milliseconds ?? 1))
        a(String(spec.refusalRule?.refusals ?? 0)); a(String(spec.refusalRule?.per.milliseconds ?? 1))
        a(String(spec.networkRule?.networks ?? 0)); a(String(spec.networkRule?.per.milliseconds ?? 1))
        return args
    }

    /// A batch's answer (counted locally meanwhile if there is none).
    func redisCompleted(token: UInt64, result: RedisResult) {
        let records = batchRecords.removeValue(forKey: token) ?? [:]
        let local = batchLocal.removeValue(forKey: token) ?? []
        guard case .reply(.array(let items)) = result else {
            // The store could not count this batch: what crossed here is acted on here.
            for c in local {
                switch c {
                case .lockout(let net, let until, let count): monitor.announceBan(net, refusals: count, until: until)
                case .refusals(let r, let count):
                    if let rule = context.snapshot.security?.refusalRule { monitor.enqueueRefusals(r, count: count, rule: rule) }
                case .networks(let r, let nets):
                    if let rule = context.snapshot.security?.networkRule { monitor.enqueueNetworks(r, nets: nets.map(\.description), rule: rule) }
                }
            }
            return
        }
        _ = apply(items, records: records)
    }

    /// The script's decisions: bans it made (announced here), bans in force it found, keys it
    /// disables (this instance acts). Returns the keys disabled.
    private func apply(_ items: [RedisReply], records: [String: KeyRecord]) -> [KeyHash] {
        let now = SecurityMonitor.nowMillis()
        var disabled: [KeyHash] = []
        var i = 0
        func text(_ r: RedisReply) -> String { r.text ?? "" }
        while i + 3 < items.count {
            let kind = text(items[i])
            switch kind {
            case "ban", "banned":
                guard let net = NetKey(wire: Substring(text(items[i + 1]))), let until = Int64(text(items[i + 2])),
                      let count = Int64(text(items[i + 3])) else { return disabled }
                monitor.installBan(net, until: until, now: now)
                if kind == "ban" { monitor.announceBan(net, refusals: count, until: until) }
            case "disable":
                guard let r = records[text(items[i + 1])] else { break }
                let reason = text(items[i + 2])
                monitor.block(r.hash, now: now, local: true)
                disabled.append(r.hash)
                if reason == "networks", let rule = context.snapshot.security?.networkRule {
                    let nets = text(items[i + 3]).split(separator: ",").compactMap { NetKey(wire: $0)?.description }
                    monitor.enqueueNetworks(r, nets: nets, rule: rule)
                } else if let rule = context.snapshot.security?.refusalRule {
                    monitor.enqueueRefusals(r, count: Int64(text(items[i + 3])) ?? 0, rule: rule)
                }
            default:
                return disabled
            }
            i += 4
        }
        return disabled
    }
}

/// The shared counts: one script per batch, every key under one hash tag (`{sec}`).
///
/// ARGV: now (ms), lock-out limit/window/ban, refusals limit/window, networks limit/window,
/// then triples: `L <net> <count>` (credential refusals from a network), `R <key hex>
/// <count>` (refusals of a valid key), `N <key hex> <net>` (a network a key was used from).
/// Answers a flat list of quadruples: `ban <net> <until> <count>` (this batch crossed the
/// lock-out: published on `tg:invalidate` as `ban <net> <until>` for every instance),
/// `banned <net> <until> <count>` (a ban already in force), `disable <key hex> <reason>
/// <evidence>` (this batch crossed a rule; the marker `off:<hex>` makes it the only one).
enum SecurityScript {
    static let source = """
    local now = tonumber(ARGV[1])
    local lockLimit, lockPer, banMs = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
    local refLimit, refPer = tonumber(ARGV[5]), tonumber(ARGV[6])
    local netLimit, netPer = tonumber(ARGV[7]), tonumber(ARGV[8])
    local out = {}
    local function sliding(key, per, add)
      local w = now - now % per
      local cur = redis.call('INCRBY', key .. ':' .. w, add)
      redis.call('PEXPIRE', key .. ':' .. w, 2 * per)
      local prev = tonumber(redis.call('GET', key .. ':' .. (w - per)) or '0')
      return cur + math.floor(prev * (per - (now - w)) / per)
    end
    local i = 9
    while i + 2 <= #ARGV do
      local kind, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2]
      if kind == 'L' and lockLimit > 0 then
        local ban = 'tg:sec:{sec}:ban:' .. a
        local held = redis.call('GET', ban)
        if held then
          table.insert(out, 'banned'); table.insert(out, a); table.insert(out, held); table.insert(out, '0')
        else
          local n = sliding('tg:sec:{sec}:lo:' .. a, lockPer, tonumber(b))
          if n >= lockLimit then
            local untilMs = now + banMs
            redis.call('SET', ban, tostring(untilMs), 'PX', banMs)
            local w = now - now % lockPer
            redis.call('DEL', 'tg:sec:{sec}:lo:' .. a .. ':' .. w, 'tg:sec:{sec}:lo:' .. a .. ':' .. (w - lockPer))
            redis.call('PUBLISH', 'tg:invalidate', 'ban ' .. a .. ' ' .. untilMs)
            table.insert(out, 'ban'); table.insert(out, a); table.insert(out, tostring(untilMs)); table.insert(out, tostring(n))
          end
        end
      elseif kind == 'R' and refLimit > 0 then
        local n = sliding('tg:sec:{sec}:rf:' .. a, refPer, tonumber(b))
        if n > refLimit and redis.call('SET', 'tg:sec:{sec}:off:' .. a, '1', 'NX', 'PX', 60000) then
          local w = now - now % refPer
          redis.call('DEL', 'tg:sec:{sec}:rf:' .. a .. ':' .. w, 'tg:sec:{sec}:rf:' .. a .. ':' .. (w - refPer))
          redis.call('PUBLISH', 'tg:invalidate', 'off ' .. a)
          table.insert(out, 'disable'); table.insert(out, a); table.insert(out, 'refusals'); table.insert(out, tostring(n))
        end
      elseif kind == 'N' and netLimit > 0 then
        local key = 'tg:sec:{sec}:nw:' .. a
        redis.call('ZADD', key, now, b)
        redis.call('ZREMRANGEBYSCORE', key, '-inf', now - netPer)
        redis.call('PEXPIRE', key, netPer)
        local n = redis.call('ZCARD', key)
        if n > netLimit and redis.call('SET', 'tg:sec:{sec}:off:' .. a, '1', 'NX', 'PX', 60000) then
          local nets = redis.call('ZRANGE', key, 0, -1)
          redis.call('DEL', key)
          redis.call('PUBLISH', 'tg:invalidate', 'off ' .. a)
          table.insert(out, 'disable'); table.insert(out, a); table.insert(out, 'networks'); table.insert(out, table.concat(nets, ','))
        end
      end
      i = i + 3
    end
    return out
    """

    /// `enable` clears the evidence: the marker and counts of one key.
    static func clearCommands(keyHex h: String) -> [[String]] {
        [["DEL", "tg:sec:{sec}:off:" + h, "tg:sec:{sec}:nw:" + h]]
    }
}
