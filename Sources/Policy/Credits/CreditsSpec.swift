/// The top-level `credits:` block: which ledger holds the balances and who pays.
public struct CreditsSpec: Sendable, Equatable {
    public enum Ledger: String, Sendable, Equatable {
        /// A durable journal file of this host (the embedded default).
        case local
        /// One atomic Lua script reserves, one settles, on the store's Redis.
        case redis
        /// The accounting service of seed 003 (deduct first, refund the difference).
        case accounting
    }
    /// Whose balance a request draws on.
    public enum Account: String, Sendable, Equatable { case consumer, key }
    /// What a request on a credits route meets when the ledger cannot answer.
    public enum OnError: String, Sendable, Equatable {
        /// 503 `STORE_UNAVAILABLE`: nothing is served unpaid (the default).
        case closed
        /// Admitted and not charged, counted and marked (`X-Tollgate-Degraded`).
        case open
    }

    public var ledger: Ledger = .local
    public var account: Account = .consumer
    /// The local ledger's directory (`credits.path`; default: the policy's state directory).
    public var path: String?
    public var onError: OnError = .closed
    /// How long a reservation holds credits before it returns to the account by itself (a
    /// process that died mid-request strands nothing for longer than this).
    public var reservationTTL: Duration = .seconds(300)
    /// `accounting` ledger: the backend that serves the seed 003 API and the environment
    /// variable holding the service credential.
    public var accountingBackend: String?
    public var accountingTokenEnv: String?

    public init() {}
}

/// A route's `credits:` block: its price and how a failed exchange is refunded.
public struct RouteCredits: Sendable, Equatable {
    public struct TokenPrice: Sendable, Equatable {
        public var input: Int64
        public var output: Int64
        public var per: Int64
        public init(input: Int64, output: Int64, per: Int64) { self.input = input; self.output = output; self.per = per }
    }
    /// When a charge is given back.
    public struct Refunds: OptionSet, Sendable, Equatable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The upstream answered 5xx.
        public static let serverError = Refunds(rawValue: 1)
        /// The upstream answered 4xx.
        public static let clientError = Refunds(rawValue: 2)
        /// No upstream answer at all (connect failure, reset, time-out, a broken answer).
        public static let unavailable = Refunds(rawValue: 4)
    }

    public var perRequest: Int64 = 0
    public var perToken: TokenPrice?
    public var reserveTokens: Int64 = 1024
    public var stream: StreamDialect?
    public var refundOn: Refunds = [.serverError, .unavailable]

    public init() {}
}
