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
    /// The accounting service of seed 003, when `credits.ledger` is `accounting`.
    let accounting: AccountingLedger?
    let charged: CreditCounters
    /// Settlements sent to Redis and not answered yet, by token; failed ones wait in `retry`.
    private struct PendingSettle {
        var tag: [UInt8]
        var key: [UInt8]
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

    init(spec: CreditsSpec, local: LocalLedger?, accounting: AccountingLedger? = nil, charged: CreditCounters, context: LoopContext) {
        self.context = context
        self.accounting = accounting
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
        var want = price.perRequest
        var minimum = price.perRequest
        if let t = price.perToken {
            // The price, the input estimate, and the output the client asked for (at least one
            // token of it must be affordable).
            want = Self.add(price.perRequest, Self.tokenCredits(input: x.facts.inputEstimate, output: x.facts.outputWanted, price: t))
            minimum = Self.add(price.perRequest, Self.tokenCredits(input: x.facts.inputEstimate, output: 1, price: t))
        }
        x.facts.creditAccount = account
        if spec.ledger == .redis {
            return reserveInRedis(x, account: account, want: want, minimum: minimum, withSource: false)
        }
        if spec.ledger == .accounting {
            guard let accounting else { return unavailable(x) }
            let id = x.context.nextCreditID()
            x.facts.creditID = id
            ask(accounting, x, id: id, account: account, want: want, minimum: minimum)
            return .wait
        }
        guard let local else { return unavailable(x) }
        switch local.reserve(account, want: want, minimum: minimum) {
        case .granted(let amount, let available): return held(x, amount: amount, available: available)
        case .insufficient(let available): return refused(x, available: available)
        }
    }

    /// A reservation was granted: it is held until settle.
    private func held(_ x: Exchange, amount: Int64, available: Int64) -> PhaseResult {
        x.facts.creditReserved = amount
        x.facts.creditState = .held
        x.facts.creditsRemaining = available
        return .next
    }

    /// 402 `INSUFFICIENT_CREDITS`, with what is available.
    private func refused(_ x: Exchange, available: Int64) -> PhaseResult {
        x.facts.creditsRemaining = max(0, available)
        if WebhookEvents.isWanted(.creditsExhausted), let account = x.facts.creditAccount {
            // One event per account per 10 minutes (across instances with Redis), however many
            // 402s follow.
            let route = x.facts.route?.name ?? "-"
            let consumer = x.facts.record?.consumer
            WebhookEvents.emitOnce(key: "credits|" + account, every: .seconds(600), .creditsExhausted,
                                   consumer: consumer, subject: account, store: x.context.store?.redis) {
                [("account", .string(account)), ("balance", .int(max(0, available))), ("route", .string(route)),
                 ("key_id", .optional(x.facts.record?.id))]
            }
        }
        return .reply(Denial(.insufficientCredits))
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
        var charge = Self.charge(x, price: price)
        if !Self.isRefunded(x, price: price), let t = price.perToken {
            let input = x.meterState.reportedInput ?? x.facts.inputEstimate
            let output = x.meterState.outputTokens
            x.facts.tokensIn = input
            x.facts.tokensOut = output
            charge = Self.add(price.perRequest, Self.tokenCredits(input: input, output: output, price: t))
            context.quotas?.addTokens(x, Self.add(input, output))
        }
        if spec.ledger == .accounting {
            x.facts.creditCharged = charge
            guard let id = x.facts.creditID, let accounting else { return }
            accounting.settle(base: id, account: account, held: x.facts.creditReserved, charge: charge)
            charged.add(route: x.facts.route?.name ?? "-", min(charge, x.facts.creditReserved + charge))
            return
        }
        if spec.ledger == .redis {
            x.facts.creditCharged = charge
            guard !x.facts.creditKey.isEmpty else { return }
            send(PendingSettle(tag: x.facts.creditTag, key: x.facts.creditKey, charge: charge, route: x.facts.route?.name ?? "-",
                               attempts: 0, withSource: false))
            return
        }
        guard let local else { return }
        let r = x.withRequestID { local.settle(account, reserved: x.facts.creditReserved, charge: charge, requestID: $0) }
        x.facts.creditCharged = r.charged
        if r.charged > 0 { charged.add(route: x.facts.route?.name ?? "-", r.charged) }
    }

    // MARK: per-token arithmetic

    /// ceil((input × in + output × out) / per): rounded up once per request, saturating.
    static func tokenCredits(input: Int64, output: Int64, price: RouteCredits.TokenPrice) -> Int64 {
        let (a, o1) = max(0, input).multipliedReportingOverflow(by: price.input)
        let (b, o2) = max(0, output).multipliedReportingOverflow(by: price.output)
        let (sum, o3) = a.addingReportingOverflow(b)
        if o1 || o2 || o3 { return Int64.max / 4 }
        let per = max(1, price.per)
        return sum / per + (sum % per == 0 ? 0 : 1)
    }

    static func add(_ a: Int64, _ b: Int64) -> Int64 {
        let (r, o) = a.addingReportingOverflow(b)
        return o ? Int64.max / 4 : r
    }

    /// The output tokens `held` credits pay for, after the flat price and the input.
    static func outputBudget(held: Int64, perRequest: Int64, inputTokens: Int64, price: RouteCredits.TokenPrice) -> Int64 {
        guard price.output > 0 else { return .max }
        let (room, o1) = (held - perRequest).multipliedReportingOverflow(by: max(1, price.per))
        let (inputCost, o2) = max(0, inputTokens).multipliedReportingOverflow(by: price.input)
        if o1 || o2 { return 0 }
        let left = room - inputCost
        return left <= 0 ? 0 : left / price.output
    }

    /// A stream spent what it held: another `reserve_tokens` worth (or what is left, at least
    /// one token's). Local: decided now; Redis: `.pending`, the answer resumes the exchange.
    func extend(_ x: Exchange) -> ExtendOutcome {
        guard x.facts.creditState == .held, let account = x.facts.creditAccount, let price = x.facts.route?.credits,
              let t = price.perToken else { return .refused }
        let want = max(1, Self.tokenCredits(input: 0, output: price.reserveTokens, price: t))
        let minimum = max(1, Self.tokenCredits(input: 0, output: 1, price: t))
        if spec.ledger == .accounting {
            guard let accounting, let id = x.facts.creditID else { return .refused }
            x.facts.extensions += 1
            x.facts.extending = true
            ask(accounting, x, id: id + "~e" + String(x.facts.extensions), account: account, want: want, minimum: minimum)
            return .pending
        }
        if spec.ledger == .redis {
            guard let redis = context.store?.redis, !x.facts.creditKey.isEmpty else { return .refused }
            let ttl = Int64(max(1, spec.reservationTTL.nanoseconds / 1_000_000))
            x.facts.extending = true
            let (tag, key) = (x.facts.creditTag, x.facts.creditKey)
            if let failed = redis.command(waiter: x, token: x.facts.token, { w in
                RedisCreditScript.format(into: w, tag: tag, id: key, op: "reserve", want, minimum, ttl, withSource: true)
            }) {
                x.facts.extending = false
                return completeExtension(x, result: failed)
            }
            return .pending
        }
        guard let local else { return .refused }
        switch local.reserve(account, want: want, minimum: minimum) {
        case .granted(let amount, let available):
            granted(x, amount: amount, available: available)
            return .granted
        case .insufficient:
            return .refused
        }
    }

    private func granted(_ x: Exchange, amount: Int64, available: Int64) {
        x.facts.creditReserved = Self.add(x.facts.creditReserved, amount)
        x.facts.creditsRemaining = available
        if let price = x.facts.route?.credits, let t = price.perToken {
            x.meterState.budget = Self.outputBudget(held: x.facts.creditReserved, perRequest: price.perRequest,
                                                    inputTokens: x.facts.inputEstimate, price: t)
        }
    }

    /// Redis answered an extension.
    func completeExtension(_ x: Exchange, result: RedisResult) -> ExtendOutcome {
        x.facts.extending = false
        guard case .reply(let r) = result, let v = RedisCreditScript.integers(r), v.count >= 2, v[0] == 1, v.count >= 3 else {
            return .refused
        }
        granted(x, amount: v[1], available: v[2])
        return .granted
    }

    // MARK: the accounting ledger

    /// A deduct on the accounting service's worker; its answer comes back on this loop.
    private func ask(_ accounting: AccountingLedger, _ x: Exchange, id: String, account: String, want: Int64, minimum: Int64) {
        let box = UncheckedBox(x)
        let token = x.facts.token
        let loop = context.loop
        accounting.reserve(id: id, account: account, want: want, minimum: minimum) { outcome in
            loop.execute { box.value.ledgerAnswered(token: token, id: id, account: account, outcome) }
        }
    }

    /// The accounting service answered a reservation (admission).
    func completeReserve(_ x: Exchange, outcome: AccountingLedger.Outcome) -> PhaseResult {
        switch outcome {
        case .granted(let amount, let available): return held(x, amount: amount, available: available)
        case .insufficient(let available): return refused(x, available: available)
        case .unavailable:
            return unavailable(x)
        }
    }

    /// The accounting service answered an extension.
    func completeExtension(_ x: Exchange, outcome: AccountingLedger.Outcome) -> ExtendOutcome {
        x.facts.extending = false
        guard case .granted(let amount, let available) = outcome else { return .refused }
        granted(x, amount: amount, available: available)
        return .granted
    }

    // MARK: the redis ledger

    /// Accounts' hash tags (SHA-256 of the name, 32 hex digits), remembered for the accounts
    /// seen lately (bounded: cleared when full).
    private var tags: [String: [UInt8]] = [:]

    private func tag(_ account: String) -> [UInt8] {
        if let t = tags[account] { return t }
        if tags.count >= 8192 { tags.removeAll(keepingCapacity: true) }
        let t = RedisCreditScript.tagBytes(account)
        tags[account] = t
        return t
    }

    private func reserveInRedis(_ x: Exchange, account: String, want: Int64, minimum: Int64, withSource: Bool) -> PhaseResult {
        guard let redis = x.context.store?.redis else { return unavailable(x) }
        if x.facts.creditKey.isEmpty {
            x.facts.creditKey = x.context.nextCreditKey()
            x.facts.creditTag = tag(account)
        }
        x.facts.creditWant = want
        x.facts.creditMinimum = minimum
        let ttl = Int64(max(1, spec.reservationTTL.nanoseconds / 1_000_000))
        let (tag, key) = (x.facts.creditTag, x.facts.creditKey)
        if let failed = redis.command(waiter: x, token: x.facts.token, { w in
            RedisCreditScript.format(into: w, tag: tag, id: key, op: "reserve", want, minimum, ttl, withSource: withSource)
        }) {
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
        if v[0] == 1, v.count >= 3 { return held(x, amount: v[1], available: v[2]) }
        return refused(x, available: v[1])
    }

    /// Sends a settlement; an answer that does not come is retried with the same id (the
    /// script applies an id once), backing off to 5 s, until Redis takes it.
    private func send(_ p: PendingSettle) {
        guard let redis = context.store?.redis else { retry.append(p); scheduleRetry(); return }
        let token = nextToken
        nextToken &+= 1
        pending[token] = p
        if let failed = redis.command(waiter: self, token: token, { w in
            RedisCreditScript.format(into: w, tag: p.tag, id: p.key, op: "settle", p.charge, withSource: p.withSource)
        }) {
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
        isRefunded(x, price: price) ? 0 : price.perRequest
    }

    /// `refund_on` gives this exchange's price back (or nothing was served).
    static func isRefunded(_ x: Exchange, price: RouteCredits) -> Bool {
        let status = x.answerStatus
        if x.answerCode == MetricCode.ok {
            if status >= 500 && price.refundOn.contains(.serverError) { return true }
            if status >= 400 && status < 500 && price.refundOn.contains(.clientError) { return true }
        } else if status != 0 {
            // Tollgate answered itself after admission: the upstream failed or never answered.
            if price.refundOn.contains(.unavailable) { return true }
        } else if !x.facts.upstreamSent {
            // The client left before anything reached the upstream: nothing was served.
            return true
        }
        return false
    }
}
