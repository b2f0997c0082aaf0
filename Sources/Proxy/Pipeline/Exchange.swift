import Policy
import Runtime

/// The request phases, in the one order they run (declaration order is the contract).
/// Nothing is consumed by a request a phase refuses: the limiter runs last.
enum Phase: UInt8 {
    case route, resolveClient, extractCredential, lookupKey, authorize, admit, forward
}

/// What a phase did: go on, park the exchange until `resume`, or answer locally.
enum PhaseResult {
    case next
    case wait
    case reply(Denial)
    /// The phase already wrote a local reply (a status no Denial carries, e.g. 413).
    case replied
}

/// Where the credential was found.
enum CredentialSource: UInt8 { case none, header, bearer, query }

/// Per-exchange facts the phases fill in (reset for every request on a connection).
struct ExchangeFacts {
    var phase: Phase = .route
    var headLength = 0
    /// The policy the exchange started under: every phase reads this one, so a reload while
    /// it waits (on Redis) never changes its scopes, plan or route. Kept from one exchange to
    /// the next on a connection until the loop's snapshot changes (no retain per request).
    var snapshot: PolicySnapshot
    /// The counters of that snapshot on this loop.
    var metrics: RequestMetrics
    /// Index of the matched route in `snapshot.routes`, -1 before one matched.
    var routeIndex = -1
    var route: RouteSpec?
    /// The upstream pool the route chose (kept across a reload while the exchange runs, and
    /// from one exchange to the next on a connection until another route is chosen).
    var pool: UpstreamPool?
    /// Normalised path, in the connection's `pathBuffer`.
    var pathCount = 0
    var clientIP = IPAddress(hi: 0, lo: 0)
    var isPeerTrusted = false
    var isHTTPS = false
    var credentialSource: CredentialSource = .none
    /// Header index of the credential (header or bearer).
    var credentialHeader = -1
    /// The key's bytes, relative to the start of the head.
    var credential = ByteRange.empty
    var keyHash = KeyHash(w0: 0, w1: 0, w2: 0, w3: 0)
    var record: KeyRecord?
    /// Rate-limit state for the response headers (-1: none).
    var limitPlan = -1
    var limitReport = LimitReport(planIndex: 0, windowIndex: 0, remaining: 0, resetSeconds: 0)
    var retryAfterSeconds = 0
    /// When the limit decision was queued for the shared store (loop clock).
    var storeAskedAt: UInt64 = 0
    /// Decided without the shared store (see `SharedStore`): marked on the response.
    var degraded: Degraded = .none
    /// Bumped per exchange so a late completion for an old one is ignored.
    var token: UInt64 = 0

    init(snapshot: PolicySnapshot, metrics: RequestMetrics) {
        self.snapshot = snapshot
        self.metrics = metrics
    }

    mutating func reset(headLength: Int) {
        phase = .route
        routeIndex = -1
        self.headLength = headLength
        // `route` and `pool` stay until the route phase replaces them (see `routePhase`).
        pathCount = 0
        credentialSource = .none
        credentialHeader = -1
        credential = .empty
        record = nil
        limitPlan = -1
        retryAfterSeconds = 0
        degraded = .none
        token &+= 1
    }
}

enum Degraded: UInt8 {
    case none, open, local, staleKey
    var headerValue: StaticString? {
        switch self {
        case .none: return nil
        case .open: return Degraded.open_
        case .local: return Degraded.local_
        case .staleKey: return Degraded.stale_
        }
    }
    static let open_: StaticString = "X-Tollgate-Degraded: store-unavailable; limits=open\r\n"
    static let local_: StaticString = "X-Tollgate-Degraded: store-unavailable; limits=local\r\n"
    static let stale_: StaticString = "X-Tollgate-Degraded: store-unavailable; key=cached\r\n"
}
