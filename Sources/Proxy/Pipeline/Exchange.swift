import Backends
import Policy
import Runtime

/// The request phases, in the one order they run (declaration order is the contract).
/// Nothing is consumed by a request a phase refuses: the limiter runs last.
enum Phase: UInt8 {
    case route, resolveClient, extractCredential, lookupKey, authorize, body, admit, quota, reserve, forward
}

/// What a phase did: go on, park the exchange until the store answers, or refuse.
enum PhaseResult {
    case next
    case wait
    case reply(Denial)
    /// A declared body over the route's limit: 413 before any credential work.
    case bodyTooLarge
    /// The route prices tokens: the whole request body must be read before admission.
    case needBody
    /// The backend injects a provider secret and neither the consumer nor the system has one.
    case noUpstreamCredential
}

/// Where the credential was found.
enum CredentialSource: UInt8 { case none, header, bearer, query }

/// How an exchange answers: the session that carries it. An enum, not an existential.
enum Downstream {
    case h1(HTTP1Session)
    /// An HTTP/2 stream (its session is `stream.session`).
    case h2(H2Stream)
    /// The session is gone (closed); late completions find nobody to answer.
    case detached
}

/// The request as a protocol-neutral view: what the phases read. Ranges are offsets into
/// `base` (the head's bytes, which the session keeps in place until the head is forwarded).
struct RequestView {
    var base: UnsafeRawPointer = UnsafeRawPointer(bitPattern: 1)!
    var method: HTTPMethod = .get
    var methodRange = ByteRange.empty
    /// The raw path (before normalisation) and the query after `?`.
    var path = ByteRange.empty
    var query = ByteRange.empty
    var hasQuery = false
    /// `*` or `host:port` targets: no route can match.
    var isOriginless = false
    /// A body length announced up front (Content-Length), -1 when unknown or none.
    var declaredBodyLength: Int64 = -1
    /// The listener the request came in on is TLS.
    var isTLS = false
    /// The whole request body is in `body` (per-token routes read it before admission).
    var bodyReady = false
    var body = UnsafeRawBufferPointer(start: nil, count: 0)
}

/// One request, whatever protocol brought it: its view of the head, the facts the phases find,
/// the policy snapshot it started under (pinned), its answer, its end. The session reuses one
/// per connection (HTTP/1) or stream (HTTP/2): no allocation per request.
///
/// It is what waits for Redis, not the connection: a store completion resumes the pipeline
/// here and tells the downstream to carry on.
final class Exchange: RedisWaiter {
    let context: LoopContext
    var downstream: Downstream = .detached
    var request = RequestView()
    let headers: HeaderTable
    var facts: ExchangeFacts
    /// The normalised path (valid for the whole exchange, logs included); lent with the
    /// session's workspace (`attachStorage`).
    private(set) var pathBuffer: UnsafeMutableRawPointer
    private(set) var pathCapacity = 0
    let pathBytes: Int

    // The request id: the client's when sane (≤ 64 of [A-Za-z0-9._:-]), else ours.
    var requestIDBytes = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
    var requestIDCount = 0
    /// The request id is ours (16 hex digits), not the client's.
    var requestIDGenerated = false

    // Settlement state.
    /// Began (a head was parsed or refused) and not settled yet.
    private(set) var isOpen = false
    /// When the head was complete (loop clock).
    var startedAt: UInt64 = 0
    /// What the client is told: the status (0 until an answer has begun) and the decision
    /// code (`MetricCode`, OK when forwarded).
    var answerStatus = 0
    var answerCode = MetricCode.ok
    var bytesIn: Int64 = 0
    var bytesOut: Int64 = 0
    /// The head parsed (method and path are known).
    var hasParsedHead = false
    /// A priced answer's metering (per-token routes).
    var meterState = MeterState()
    /// An extension method's bytes (up to 16), for the access log.
    private var otherMethod: (UInt64, UInt64) = (0, 0)
    private var otherMethodCount = 0

    /// Storage (header table, path) comes with the session's workspace: see `attachStorage`.
    init(context: LoopContext) {
        self.context = context
        let limits = context.settings.limits
        headers = HeaderTable(lentCapacity: Self.headerCapacity(limits))
        pathBytes = limits.maxTargetBytes + 16
        pathBuffer = Self.noPath
        facts = ExchangeFacts(snapshot: context.snapshot, metrics: context.metrics)
    }

    static func headerCapacity(_ limits: HTTP1Limits) -> Int { limits.maxHeaderCount + 28 }
    nonisolated(unsafe) private static let noPath = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 8)

    /// Lends the header table and the path buffer their storage.
    func attachStorage(headers h: UnsafeMutableRawPointer, path: UnsafeMutableRawPointer) {
        headers.attachStorage(h)
        pathBuffer = path
        pathCapacity = pathBytes
    }

    func detachStorage() {
        headers.detachStorage()
        pathBuffer = Self.noPath
        pathCapacity = 0
    }

    // MARK: beginning

    /// An exchange begins: its clock, its policy snapshot (pinned), its counters.
    func open(peer: IPAddress) {
        isOpen = true
        hasParsedHead = false
        startedAt = context.loop.now
        answerStatus = 0
        answerCode = MetricCode.ok
        bytesIn = 0
        bytesOut = 0
        if meterState.mode != .off { meterState = MeterState() }
        request.bodyReady = false
        request.body = UnsafeRawBufferPointer(start: nil, count: 0)
        if facts.snapshot !== context.snapshot {
            facts.snapshot = context.snapshot
            facts.metrics = context.metrics
        }
        facts.reset(headLength: 0)
        facts.clientIP = peer
    }

    /// The head parsed: what the phases read, and the request id.
    func begin(headLength: Int) {
        hasParsedHead = true
        facts.headLength = headLength
        bytesIn = Int64(headLength)
        if request.method == .other && context.accessLog != nil {
            otherMethodCount = min(16, Int(request.methodRange.count))
            let from = request.base + Int(request.methodRange.offset)
            withUnsafeMutableBytes(of: &otherMethod) { $0.baseAddress!.copyMemory(from: from, byteCount: otherMethodCount) }
        }
        assignRequestID()
    }

    /// A head that never parsed still gets an id of its own for its answer.
    func assignGeneratedID() {
        requestIDCount = withUnsafeMutableBytes(of: &requestIDBytes) { context.nextRequestID(into: $0.baseAddress!) }
        requestIDGenerated = true
    }

    private func assignRequestID() {
        let base = request.base
        for i in 0..<headers.count {
            let f = headers[i]
            if f.name.count == 12, HeaderNames.lowerEquals(base + Int(f.name.offset), 12, HeaderNames.xRequestID) {
                let n = Int(f.value.count)
                if n >= 1 && n <= 64 && Self.isSafeID(base + Int(f.value.offset), n) {
                    withUnsafeMutableBytes(of: &requestIDBytes) { $0.baseAddress!.copyMemory(from: base + Int(f.value.offset), byteCount: n) }
                    requestIDCount = n
                    requestIDGenerated = false
                    return
                }
            }
        }
        assignGeneratedID()
    }

    private static func isSafeID(_ p: UnsafeRawPointer, _ n: Int) -> Bool {
        for i in 0..<n {
            let c = p.load(fromByteOffset: i, as: UInt8.self)
            let ok = (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7A) || c == 0x2D || c == 0x5F || c == 0x2E || c == 0x3A
            if !ok { return false }
        }
        return true
    }

    func withRequestID<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        withUnsafeBytes(of: &requestIDBytes) { body(UnsafeRawBufferPointer(rebasing: $0[0..<requestIDCount])) }
    }

    // MARK: answering

    /// The answer begins: a local reply or the upstream's head.
    @inline(__always)
    func answer(status: Int, code: Int) {
        answerStatus = status
        answerCode = code
    }

    // MARK: waiting

    /// The store answered the phase this exchange waits in (never from inside the call that
    /// started the wait: the Redis client defers every completion).
    func redisCompleted(token: UInt64, result: RedisResult) {
        if isOpen, token == facts.token, facts.phase == .forward, facts.extending {
            let outcome = context.credits?.completeExtension(self, result: result) ?? .refused
            switch downstream {
            case .h1(let session): session.meterResumed(outcome)
            case .h2(let stream): stream.meterResumed(outcome)
            case .detached: break
            }
            return
        }
        guard isOpen, token == facts.token, facts.phase == .lookupKey || facts.phase == .authorize || facts.phase == .admit || facts.phase == .quota || facts.phase == .reserve else { return }
        switch downstream {
        case .h1(let session): session.storeAnswered(Pipeline.resume(self, with: result))
        case .h2(let stream): stream.storeAnswered(Pipeline.resume(self, with: result))
        case .detached: break
        }
    }

    /// The accounting ledger answered (on this loop): a reservation in admission, or an
    /// extension while the answer waits.
    func ledgerAnswered(token: UInt64, id: String, account: String, _ outcome: AccountingLedger.Outcome) {
        guard isOpen, token == facts.token, let gate = context.credits,
              facts.phase == .reserve || (facts.phase == .forward && facts.extending) else {
            // The exchange ended first: a granted deduct is given back (under its own key).
            if case .granted(let amount, _) = outcome {
                context.credits?.accounting?.settle(base: id, account: account, held: amount, charge: 0)
            }
            return
        }
        if facts.phase == .reserve {
            let step = Pipeline.resume(self, result: gate.completeReserve(self, outcome: outcome))
            switch downstream {
            case .h1(let session): session.storeAnswered(step)
            case .h2(let stream): stream.storeAnswered(step)
            case .detached: break
            }
        } else if facts.phase == .forward && facts.extending {
            let r = gate.completeExtension(self, outcome: outcome)
            switch downstream {
            case .h1(let session): session.meterResumed(r)
            case .h2(let stream): stream.meterResumed(r)
            case .detached: break
            }
        }
    }

    /// The message of a refusal: the code's own, or one that says more (a rotated key).
    func refusalMessage(_ code: DenialCode) -> String {
        if code == .revoked, let r = facts.record, let to = r.rotatedTo {
            return "This key was rotated (replaced by \(to)) and its overlap has ended."
        }
        return code.defaultMessage
    }

    // MARK: settling

    /// The one end of every exchange, whatever ended it (an answer sent, a refusal, an
    /// upstream failure, a client that left, a time-out): counted once, logged once. Later
    /// calls do nothing.
    func settle() {
        guard isOpen else { return }
        isOpen = false
        facts.token &+= 1   // a late store completion finds nothing to resume
        let nanos = context.loop.now &- startedAt
        if facts.creditState == .held { context.credits?.settle(self) }
        // Only an exchange whose answer began was answered (a client that left while its
        // request waited was not).
        if answerStatus != 0 {
            RequestMetrics.countRequest(facts.counters, route: facts.routeIndex, code: answerCode, nanos: nanos)
        }
        if let log = context.accessLog { AccessLogLine.write(self, nanos: nanos, into: log) }
        if answerStatus != 0, let usage = context.usage { recordUsage(usage, nanos: nanos) }
    }

    static let methodNames: [StaticString] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]

    /// The request's method as bytes (empty when its head did not parse).
    func withMethodBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        guard hasParsedHead else { return body(UnsafeRawBufferPointer(start: nil, count: 0)) }
        if request.method == .other {
            return withUnsafeBytes(of: &otherMethod) { body(UnsafeRawBufferPointer(rebasing: $0[0..<otherMethodCount])) }
        }
        let name = Self.methodNames[Int(request.method.rawValue)]
        return body(UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
    }

    /// The request's method as text (`-` when its head did not parse).
    func writeMethod(into out: IOBuffer) {
        guard hasParsedHead else { out.write(byte: 0x2D); return }
        if request.method == .other {
            withUnsafeBytes(of: &otherMethod) { out.write($0.baseAddress!, count: otherMethodCount) }
        } else {
            out.write(Self.methodNames[Int(request.method.rawValue)])
        }
    }
}

/// Per-exchange facts the phases fill in (reset for every request).
struct ExchangeFacts {
    var phase: Phase = .route
    var headLength = 0
    /// The policy the exchange started under: every phase reads this one, so a reload while
    /// it waits (on Redis) never changes its scopes, plan or route. Kept from one exchange to
    /// the next until the loop's snapshot changes (no retain per request).
    var snapshot: PolicySnapshot
    /// The counters of that snapshot on this loop (`counters`: the same, as plain values).
    var metrics: RequestMetrics {
        didSet { counters = metrics.counters }
    }
    var counters: RequestMetrics.Counters
    /// Index of the matched route in `snapshot.routes`, -1 before one matched.
    var routeIndex = -1
    var route: RouteSpec?
    /// The upstream pool the route chose (kept across a reload while the exchange runs, and
    /// from one exchange to the next until another route is chosen).
    var pool: UpstreamPool?
    /// Bytes of the normalised path in the exchange's `pathBuffer`.
    var pathCount = 0
    var clientIP = IPAddress(hi: 0, lo: 0)
    var isPeerTrusted = false
    var isHTTPS = false
    var credentialSource: CredentialSource = .none
    /// The credential is a JWT (`Authorization: Bearer`), not an API key: verified by the
    /// loop's `JWTGate`, never hashed as a key, always stripped before the backend.
    var isJWT = false
    /// The JWT's cache tag, when the credential phase already computed it (`JWTGate`).
    var hasJWTTag = false
    var jwtTag0: UInt64 = 0
    var jwtTag1: UInt64 = 0
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
    // Credits (routes with a price).
    var creditState: CreditState = .none
    var creditAccount: String?
    var creditReserved: Int64 = 0
    /// The reservation's id in a shared ledger (instance, loop, sequence): also its settlement's
    /// idempotency key. Never the client's request id (a client could reuse one).
    var creditID: String?
    /// The same id as bytes, and the account's hash tag (Redis ledger).
    var creditKey: [UInt8] = []
    var creditTag: [UInt8] = []
    var creditWant: Int64 = 0
    var creditMinimum: Int64 = 0
    var creditCharged: Int64 = 0
    /// Available credits after the reservation (or, refused, what was available); -1: none.
    var creditsRemaining: Int64 = -1
    /// Quota counts this exchange took (given back if a later phase refuses it).
    var quotaKeys: [String]?
    var quotaCountedInRedis = false
    var quotaEnds: [Int64] = []
    /// Per-token routes: the input estimate and the output tokens the request asks for.
    var inputEstimate: Int64 = 0
    var outputWanted: Int64 = 0
    /// What was charged for, in tokens (usage record).
    var tokensIn: Int64 = 0
    var tokensOut: Int64 = 0
    /// An extension of the reservation is on its way to the ledger.
    var extending = false
    var extensions = 0
    /// Bytes of the request went to an upstream (a client that leaves before is not charged).
    var upstreamSent = false
    /// The provider secret the request head carries upstream (`backends.*.inject`): whose,
    /// and where (the table is kept so a reload during the exchange cannot move the value).
    var secretSource: SecretTable.Source = .none
    var secretSlot = SecretTable.Slot(offset: 0, count: 0)
    var secretTable: SecretTable?

    init(snapshot: PolicySnapshot, metrics: RequestMetrics) {
        self.snapshot = snapshot
        self.metrics = metrics
        counters = metrics.counters
    }

    mutating func reset(headLength: Int) {
        phase = .route
        routeIndex = -1
        self.headLength = headLength
        // `route` and `pool` stay until the route phase replaces them (see `Pipeline.route`).
        pathCount = 0
        credentialSource = .none
        isJWT = false
        hasJWTTag = false
        credentialHeader = -1
        credential = .empty
        record = nil
        limitPlan = -1
        retryAfterSeconds = 0
        degraded = .none
        token &+= 1
        if creditState != .none || creditsRemaining >= 0 {
            creditState = .none
            creditAccount = nil
            creditID = nil
            creditKey = []
            creditReserved = 0
            creditCharged = 0
            creditsRemaining = -1
            tokensIn = 0
            tokensOut = 0
            extending = false
            extensions = 0
        }
        upstreamSent = false
        if secretTable != nil { secretTable = nil; secretSource = .none }
        if quotaKeys != nil || quotaCountedInRedis { quotaKeys = nil; quotaCountedInRedis = false }
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
