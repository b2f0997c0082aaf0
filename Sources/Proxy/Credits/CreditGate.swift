import Backends
import Policy
import Runtime

/// Where a request's credits stand.
enum CreditState: UInt8 {
    /// Nothing held (a free route, or refused before the reservation).
    case none
    /// `creditReserved` is held on `creditAccount` until settle.
    case held
    /// Settled: charged or given back, once.
    case settled
}

/// One loop's door to the ledger the policy names: the reservation in admission, the one
/// settlement at the end of every exchange that holds credits.
final class CreditGate: RedisWaiter {
    /// Replaced by a reload (who pays, the outage answer); the ledger stays.
    var spec: CreditsSpec
    let local: LocalLedger?
    let charged: CreditCounters
    /// Settlements sent to Redis and not answered yet, by token; failed ones wait in `retry`.
    private struct PendingSettle {
        var account: String
        var id: String
        var charge: Int64
        var route: String
        var attempts: Int
        var withSource: Bool
    }
    private var pending: [UInt64: PendingSettle] = [:]
    private var retry: [PendingSettle] = []
    private var nextToken: UInt64 = 1
    private var retryScheduled = false
    private unowned let context: LoopContext

    init(spec: CreditsSpec, local: LocalLedger?, charged: CreditCounters, context: LoopContext) {
        self.context = context
        self.spec = spec
        self.local = local
        self.charged = charged
    }

    /// Whose balance pays for this exchange.
    @inline(__always)
    func account(of record: KeyRecord) -> String {
        spec.account == .consumer ? record.consumer : record.id
    }

    /// Admission's last step: hold the route's price (or refuse 402).
    func reserve(_ x: Exchange, price: RouteCredits) -> PhaseResult {
        guard let record = x.facts.record else { return .reply(Denial(.invalidKey)) }
        let account = account(of: record)
        let want = price.perRequest
        let minimum = price.perRequest
        x.facts.creditAccount = account
        if spec.ledger == .redis {
            return reserveInRedis(x, account: account, want: want, minimum: minimum, withSource: false)
        }
        guard let local else { return unavailable(x) }
        switch local.reserve(account, want: want, minimum: minimum) {
        case .granted(let amount, let available):
            x.facts.creditReserved = amount
            x.facts.creditState = .held
            x.facts.creditsRemaining = available
            return .next
        case .insufficient(let available):
            x.facts.creditsRemaining = available
            return .reply(Denial(.insufficientCredits))
        }
    }

    private func unavailable(_ x: Exchange) -> PhaseResult {
        switch spec.onError {
        case .closed: return .reply(Denial(.storeUnavailable, retryAfterSeconds: 1))
        case .open:
            x.facts.degraded = .open
            return .next
        }
    }

    /// The exchange ended (`Exchange.settle`): charge what it cost, give back the rest.
    func settle(_ x: Exchange) {
        guard x.facts.creditState == .held, let account = x.facts.creditAccount,
              let price = x.facts.route?.credits else { return }
        x.facts.creditState = .settled
        let charge = Self.charge(x, price: price)
        if spec.ledger == .redis {
            x.facts.creditCharged = charge
            guard let id = x.facts.creditID else { return }
            send(PendingSettle(account: account, id: id, charge: charge, route: x.facts.route?.name ?? "-", attempts: 0,
                               withSource: false))
            return
        }
        guard let local else { return }
        let r = x.withRequestID { local.settle(account, reserved: x.facts.creditReserved, charge: charge, requestID: $0) }
        x.facts.creditCharged = r.charged
        if r.charged > 0 { charged.add(route: x.facts.route?.name ?? "-", r.charged) }
    }

    // MARK: the redis ledger

    private func reserveInRedis(_ x: Exchange, account: String, want: Int64, minimum: Int64, withSource: Bool) -> PhaseResult {
        guard let redis = x.context.store?.redis else { return unavailable(x) }
        let id = x.facts.creditID ?? x.context.nextCreditID()
        x.facts.creditID = id
        x.facts.creditWant = want
        x.facts.creditMinimum = minimum
        let ttl = max(1, spec.reservationTTL.nanoseconds / 1_000_000)
        let cmd = RedisCreditScript.command(account: account, id: id, op: "reserve",
                                            [String(want), String(minimum), String(ttl)], withSource: withSource)
        if let failed = redis.command(cmd, waiter: x, token: x.facts.token) {
            return completeReserve(x, result: failed)
        }
        return .wait
    }

    /// The reservation's answer from Redis.
    func completeReserve(_ x: Exchange, result: RedisResult) -> PhaseResult {
        guard case .reply(let r) = result else { return unavailable(x) }
        if RedisCreditScript.isNoScript(r), let account = x.facts.creditAccount {
            return reserveInRedis(x, account: account, want: x.facts.creditWant, minimum: x.facts.creditMinimum, withSource: true)
        }
        guard let v = RedisCreditScript.integers(r), v.count >= 2 else {
            Log.error("credits: unexpected answer from the redis ledger: \(r)")
            return unavailable(x)
        }
        if v[0] == 1, v.count >= 3 {
            x.facts.creditReserved = v[1]
            x.facts.creditState = .held
            x.facts.creditsRemaining = v[2]
            return .next
        }
        x.facts.creditsRemaining = max(0, v[1])
        return .reply(Denial(.insufficientCredits))
    }

    /// Sends a settlement; an answer that does not come is retried with the same id (the
    /// script applies an id once), backing off to 5 s, until Redis takes it.
    private func send(_ p: PendingSettle) {
        guard let redis = context.store?.redis else { retry.append(p); scheduleRetry(); return }
        let token = nextToken
        nextToken &+= 1
        let cmd = RedisCreditScript.command(account: p.account, id: p.id, op: "settle", [String(p.charge)], withSource: p.withSource)
        pending[token] = p
        if let failed = redis.command(cmd, waiter: self, token: token) {
            redisCompleted(token: token, result: failed)
        }
    }

    func redisCompleted(token: UInt64, result: RedisResult) {
        guard var p = pending.removeValue(forKey: token) else { return }
        if case .reply(let r) = result {
            if RedisCreditScript.isNoScript(r) {
                p.withSource = true
                send(p)
                return
            }
            if let v = RedisCreditScript.integers(r), v.count >= 2 {
                if v[0] == 1 { charged.add(route: p.route, v[1]) }
                return
            }
        }
        p.attempts += 1
        if p.attempts == 1 || p.attempts % 50 == 0 {
            Log.warn("credits: a settlement is waiting for redis (\(retry.count + 1) waiting); retrying with the same id")
        }
        retry.append(p)
        scheduleRetry()
    }

    private lazy var retryTimer = TimerAction { [unowned self] in self.retryNow() }

    private func scheduleRetry() {
        guard !retryScheduled else { return }
        let loop = context.loop
        retryScheduled = true
        let attempts = retry.map(\.attempts).min() ?? 1
        let delay = UInt64(min(5_000, 100 << min(6, max(0, attempts - 1)))) * 1_000_000
        loop.schedule(at: loop.now &+ delay, handler: retryTimer)
    }

    private func retryNow() {
        retryScheduled = false
        let batch = retry
        retry.removeAll()
        for p in batch { send(p) }
    }

    /// Settlements not yet taken by Redis (drain waits for them, bounded).
    var unsettled: Int { pending.count + retry.count }

    /// What an exchange that held credits owes: its price, unless `refund_on` gives it back.
    static func charge(_ x: Exchange, price: RouteCredits) -> Int64 {
        let status = x.answerStatus
        if x.answerCode == MetricCode.ok {
            if status >= 500 && price.refundOn.contains(.serverError) { return 0 }
            if status >= 400 && status < 500 && price.refundOn.contains(.clientError) { return 0 }
        } else if status != 0 {
            // Tollgate answered itself after admission: the upstream failed or never answered.
            if price.refundOn.contains(.unavailable) { return 0 }
        } else if !x.facts.upstreamSent {
            // The client left before anything reached the upstream: nothing was served.
            return 0
        }
        return price.perRequest
    }
}
