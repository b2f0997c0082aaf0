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
final class CreditGate {
    let spec: CreditsSpec
    let local: LocalLedger?
    let charged: CreditCounters

    init(spec: CreditsSpec, local: LocalLedger?, charged: CreditCounters) {
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
        guard let local else { return }
        let r = x.withRequestID { local.settle(account, reserved: x.facts.creditReserved, charge: charge, requestID: $0) }
        x.facts.creditCharged = r.charged
        if r.charged > 0 { charged.add(route: x.facts.route?.name ?? "-", r.charged) }
    }

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
