import Foundation

/// The accounting / credit service of seed 003 (`BACKENDS.md`).
///
/// **Identity.** With a JWT secret configured (`--jwt-secret`, env
/// `ACCOUNTING_JWT_SECRET`) every request needs `Authorization: Bearer <HS256 JWT>`; the
/// user is its `sub`, and the caller is an admin exactly when its `role` claim is
/// `admin`. Without a secret the user is the `X-Tollgate-Consumer` header (`anonymous`
/// when absent), and the caller is an admin exactly when `X-Tollgate-Scopes` holds the
/// scope `admin` (`finance:admin`, `x:admin` are not). A service credential (the proxy's
/// `accounting` ledger) is such an admin caller. New users start with
/// ``Options/initialCredits`` (credits that never expire).
///
/// **Endpoints.**
/// - `GET /api/credits/total-balance` → `{"totalCredits": N}`; `GET /api/credits/balance`
///   → the allocations. Admins may add `?userId=U` to read another user's.
/// - `POST /api/credits/deduct {"credits": N}` → `{"success": true, "newBalance": N}`.
///   Atomic: below `credits` it answers `402 {"success": false, "error": "insufficient
///   credits", "balance": N}` and changes nothing. Admins may add `"userId"` to deduct
///   from that user. Credits that expire soonest are spent first.
/// - `POST /api/credits/allocate {"userId", "credits", "expiryDays"?, "notes"?}` (admin
///   only): without `expiryDays` the credits never expire (refunds).
/// - `POST /api/credits/calculate {"service", "operation", "units"?}` → the price.
/// - `POST /api/usage/record {"service", "operation", "credits", "metadata"}` (admins may
///   add `"userId"`), `GET /api/usage/records` (the latest
///   ``maximumUsageRecordsPerUser`` per user; admins may add `?userId=U`).
///
/// **Idempotency.** `deduct`, `allocate` and `usage/record` honour an `Idempotency-Key`
/// header (per caller): a retry with the same key and the same body replays the first
/// answer with `Idempotent-Replayed: true` and changes nothing; the same key with another
/// body is `422`. Keys are kept for ``Options/idempotencyKeyLifetime``, at most
/// ``Options/maximumIdempotencyKeys`` of them.
///
/// **Storage.** A change is one JSON line appended to a journal and applied in memory, and
/// it is answered once an `fdatasync` covers it (an answered change survives `kill -9`
/// and a power cut; concurrent changes share one `fdatasync`, a group commit); the
/// journal is compacted into `accounting.json` in the background once it passes
/// ``Options/compactionBytes``. Reads take the read side of a reader/writer lock
/// and never wait for a disk. Spent allocations, old idempotency keys and old usage
/// records are pruned; credit transactions live in the journal only. So a deduct costs
/// the same however long the history.
public final class AccountingBackend: Sendable {
    public struct Options: Sendable {
        /// HS256 secret shared with the auth service; `nil`: trust `X-Tollgate-Consumer`.
        public var jwtSecret: String?
        /// Credits a user is given when first seen.
        public var initialCredits: Int = 100
        /// Idempotency keys kept (the oldest go first).
        public var maximumIdempotencyKeys = 100_000
        /// How long an idempotency key is remembered.
        public var idempotencyKeyLifetime: Duration = .seconds(24 * 3600)
        /// Journal bytes that trigger a compaction into the snapshot.
        public var compactionBytes = 32 * 1024 * 1024
        public init() {}
    }

    /// Credits per unit, by service and operation (`POST /api/credits/calculate`).
    static let priceTable: [(service: String, operation: String, creditsPerUnit: Decimal)] = [
        ("flowise", "prediction", 1),
        ("flowise", "token", Decimal(1) / 100),
        ("chat", "message", 1),
        ("chat", "stream", 2),
        ("file", "upload", 3),
        ("finance", "import", 5),
    ]

    static let storeName = "accounting"
    static let idempotencyHeader = "Idempotency-Key"
    /// Usage records kept per user for `GET /api/usage/records` (the journal has them all).
    public static let maximumUsageRecordsPerUser = 1000

    let store: JournaledStore<AccountingState>
    private let options: Options
    private let verifier: HS256Verifier?
    private let counter = RequestCounter()

    public init(dataDirectory: String, options: Options = Options()) throws(ReferenceServerError) {
        self.options = options
        self.verifier = options.jwtSecret.flatMap { $0.isEmpty ? nil : HS256Verifier(secret: $0) }
        var storeOptions = JournaledStore<AccountingState>.Options()
        storeOptions.durability = .synced
        storeOptions.compactionBytes = options.compactionBytes
        let limits = AccountingState.Limits(maximumIdempotencyKeys: max(1, options.maximumIdempotencyKeys),
                                            idempotencyKeyLifetime: Double(options.idempotencyKeyLifetime.components.seconds),
                                            maximumUsageRecordsPerUser: Self.maximumUsageRecordsPerUser)
        self.store = try JournaledStore(directory: dataDirectory, name: Self.storeName, initial: AccountingState(),
                                        options: storeOptions) { state in state.limits = limits }
    }

    /// Waits for a background compaction, if one is running.
    public func shutdown() { store.waitForCompaction() }

    /// What the journal holds right now (for tests and `/admin/stats`).
    public var journalStatus: (segments: Int, bytes: Int, compactions: Int) {
        let files = store.journalFiles
        return (files.count, files.bytes, store.compactionCount)
    }

    public func router() -> ReferenceRouter {
        var router = ReferenceRouter()
        router.add("GET", "/health", counting: counter) { _ in .json(200, ["status": "ok"]) }
        router.add("GET", "/admin/stats", counting: counter) { [self] _ in stats() }
        router.add("GET", "/api/credits/total-balance", counting: counter) { [self] request in try totalBalance(request) }
        router.add("GET", "/api/credits/balance", counting: counter) { [self] request in try balance(request) }
        router.add("POST", "/api/credits/deduct", counting: counter) { [self] request in try deduct(request) }
        router.add("POST", "/api/credits/calculate", counting: counter) { [self] request in try calculate(request) }
        router.add("POST", "/api/credits/allocate", counting: counter) { [self] request in try allocate(request) }
        router.add("POST", "/api/usage/record", counting: counter) { [self] request in try recordUsage(request) }
        router.add("GET", "/api/usage/records", counting: counter) { [self] request in try listUsage(request) }
        return router
    }

    // MARK: - Identity

    struct Caller {
        var userID: String
        var isAdmin: Bool
    }

    func caller(_ request: ReferenceRequest) throws(ReferenceHTTPError) -> Caller {
        guard let verifier else {
            let scopes = (request.header(TollgateHeader.scopes) ?? "")
                .split(whereSeparator: { $0 == " " || $0 == "," })
            // Exactly `admin`: a service's own admin scope (`finance:admin`) is not accounting's.
            return Caller(userID: request.consumer, isAdmin: scopes.contains("admin"))
        }
        guard let authorization = request.header("Authorization"),
              authorization.count > 7, authorization.prefix(7).lowercased() == "bearer " else {
            throw ReferenceHTTPError(401, ["error": "missing bearer token"],
                                     headers: [("WWW-Authenticate", "Bearer")])
        }
        let token = String(authorization.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        let claims: JSONValue
        do {
            claims = try verifier.verify(token, now: Date().timeIntervalSince1970)
        } catch {
            throw ReferenceHTTPError(401, ["error": "invalid token", "reason": .string("\(error)")],
                                     headers: [("WWW-Authenticate", "Bearer error=\"invalid_token\"")])
        }
        if claims["type"]?.stringValue == "refresh" {
            throw ReferenceHTTPError(401, ["error": "invalid token", "reason": "refresh token"])
        }
        return Caller(userID: claims["sub"]?.stringValue ?? "", isAdmin: claims["role"]?.stringValue == "admin")
    }

    /// The user a request acts on: the caller, or (admins only) the one it names.
    private func subject(_ caller: Caller, naming requested: String?) throws(ReferenceHTTPError) -> String {
        guard let requested, requested != caller.userID else { return caller.userID }
        guard !requested.isEmpty else { throw .message(400, "userId must not be empty") }
        guard caller.isAdmin else { throw .message(403, "admin role required to act for another user") }
        return requested
    }

    // MARK: - Balances

    /// The user's account as stored, or as it would start (reads create nothing).
    private func currentAccount(_ user: String, in state: AccountingState, now: Date) -> CreditAccount {
        state.users[user] ?? CreditAccount.opening(user, initialCredits: options.initialCredits, now: now)
    }

    private func totalBalance(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let user = try subject(caller(request), naming: request.query("userId"))
        let now = Date()
        let total = store.read { state in currentAccount(user, in: state, now: now).balance(at: now) }
        return .json(200, ["totalCredits": .number(total)])
    }

    private func balance(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let user = try subject(caller(request), naming: request.query("userId"))
        let now = Date()
        let account = store.read { state in currentAccount(user, in: state, now: now) }
        let allocations: [JSONValue] = account.allocations.map { allocation in
            ["id": .string(allocation.id), "credits": .number(allocation.credits), "remaining": .number(allocation.remaining),
             "allocatedAt": .string(Timestamp.iso(allocation.allocatedAt)), "expiresAt": Timestamp.iso(allocation.expiresAt),
             "isExpired": .bool(allocation.isExpired(at: now)), "notes": .optional(allocation.notes)]
        }
        return .json(200, ["userId": .string(user), "totalCredits": .number(account.balance(at: now)),
                           "allocations": .array(allocations)])
    }

    private func deduct(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let caller = try caller(request)
        let body = try request.jsonObject()
        guard let credits = body["credits"]?.intValue, credits > 0 else {
            throw ReferenceHTTPError.message(400, "credits must be a positive integer")
        }
        let user = try subject(caller, naming: body["userId"]?.stringValue)
        let description = body["description"]?.stringValue
        return try idempotent(request, route: "deduct", caller: caller.userID) { state, now in
            var account = currentAccount(user, in: state, now: now)
            let available = account.balance(at: now)
            guard available >= credits else {
                return Decision(status: 402, body: ["success": false, "error": "insufficient credits",
                                                    "balance": .number(available)])
            }
            account.consume(credits, at: now)
            account.updatedAt = now
            account.prune(at: now)
            let newBalance = account.balance(at: now)
            let transaction = CreditTransaction(id: Self.newID(), userId: user, type: .deduction, amount: credits,
                                                balanceAfter: newBalance, description: description, createdAt: now)
            return Decision(status: 200, body: ["success": true, "newBalance": .number(newBalance)],
                            entry: AccountingEntry(at: now, account: account, transaction: transaction))
        }
    }

    private func calculate(_ request: ReferenceRequest) throws -> ReferenceResponse {
        _ = try caller(request)
        let body = try request.jsonObject()
        guard let service = body["service"]?.stringValue, let operation = body["operation"]?.stringValue else {
            throw ReferenceHTTPError.message(400, "service and operation are required")
        }
        let units = body["units"]?.decimalValue ?? 1
        guard units >= 0 else { throw ReferenceHTTPError.message(400, "units must not be negative") }
        guard let price = Self.priceTable.first(where: { $0.service == service && $0.operation == operation }) else {
            let known: [JSONValue] = Self.priceTable.map { .string("\($0.service)/\($0.operation)") }
            throw ReferenceHTTPError(400, ["error": "unknown service/operation", "known": .array(known)])
        }
        // Round up: a fraction of a credit costs a whole one.
        var exact = units * price.creditsPerUnit
        var rounded = Decimal()
        NSDecimalRound(&rounded, &exact, 0, .up)
        return .json(200, ["service": .string(service), "operation": .string(operation), "units": .decimal(units),
                           "creditsPerUnit": .decimal(price.creditsPerUnit),
                           "credits": .number(NSDecimalNumber(decimal: rounded).intValue)])
    }

    private func allocate(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let admin = try caller(request)
        guard admin.isAdmin else { throw ReferenceHTTPError.message(403, "admin role required") }
        let body = try request.jsonObject()
        guard let user = body["userId"]?.stringValue, !user.isEmpty else {
            throw ReferenceHTTPError.message(400, "userId is required")
        }
        guard let credits = body["credits"]?.intValue, credits > 0 else {
            throw ReferenceHTTPError.message(400, "credits must be a positive integer")
        }
        let expiryDays = body["expiryDays"]?.intValue
        if let expiryDays, expiryDays <= 0 { throw ReferenceHTTPError.message(400, "expiryDays must be positive") }
        if body["expiryDays"] != nil && body["expiryDays"] != .null && expiryDays == nil {
            throw ReferenceHTTPError.message(400, "expiryDays must be a positive integer")
        }
        let notes = body["notes"]?.stringValue
        return try idempotent(request, route: "allocate", caller: admin.userID) { state, now in
            var account = currentAccount(user, in: state, now: now)
            let allocation = CreditAllocation(id: Self.newID(), credits: credits, remaining: credits,
                                              expiresAt: expiryDays.map { now.addingTimeInterval(Double($0) * 86_400) },
                                              allocatedAt: now, notes: notes)
            account.allocations.append(allocation)
            account.updatedAt = now
            account.prune(at: now)
            let newBalance = account.balance(at: now)
            let transaction = CreditTransaction(id: Self.newID(), userId: user, type: .allocation, amount: credits,
                                                balanceAfter: newBalance, description: notes, createdAt: now)
            return Decision(status: 200,
                            body: ["success": true, "userId": .string(user), "allocationId": .string(allocation.id),
                                   "credits": .number(credits), "expiresAt": Timestamp.iso(allocation.expiresAt),
                                   "newBalance": .number(newBalance)],
                            entry: AccountingEntry(at: now, account: account, transaction: transaction))
        }
    }

    // MARK: - Usage

    private func recordUsage(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let caller = try caller(request)
        let body = try request.jsonObject()
        guard let service = body["service"]?.stringValue, let operation = body["operation"]?.stringValue else {
            throw ReferenceHTTPError.message(400, "service and operation are required")
        }
        guard let credits = body["credits"]?.intValue, credits >= 0 else {
            throw ReferenceHTTPError.message(400, "credits must be a non-negative integer")
        }
        let user = try subject(caller, naming: body["userId"]?.stringValue)
        let metadata = body["metadata"] ?? .null
        return try idempotent(request, route: "usage/record", caller: caller.userID) { _, now in
            let record = UsageRecord(id: Self.newID(), userId: user, service: service,
                                     operation: operation, credits: credits, metadata: metadata, timestamp: now)
            return Decision(status: 201, body: ["success": true, "id": .string(record.id)],
                            entry: AccountingEntry(at: now, usage: record))
        }
    }

    private func listUsage(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let user = try subject(caller(request), naming: request.query("userId"))
        let records = store.read { state in state.usage[user] ?? [] }
        let items: [JSONValue] = records.map { record in
            ["id": .string(record.id), "service": .string(record.service), "operation": .string(record.operation),
             "credits": .number(record.credits), "metadata": record.metadata,
             "timestamp": .string(Timestamp.iso(record.timestamp))]
        }
        return .json(200, ["data": .array(items), "total": .number(items.count)])
    }

    // MARK: - Idempotency

    /// An answer and the change that goes with it (none for a refusal).
    struct Decision {
        var status: Int
        var body: JSONValue
        var entry: AccountingEntry?
    }

    /// Decides and commits a change at most once per (caller, route, `Idempotency-Key`):
    /// the check, the change and the stored answer are one journal entry, committed one
    /// at a time, so concurrent retries cannot both apply.
    private func idempotent(_ request: ReferenceRequest, route: String, caller: String,
                            _ decide: (AccountingState, Date) throws -> Decision) throws -> ReferenceResponse {
        guard let key = request.header(Self.idempotencyHeader), !key.isEmpty else {
            let decision = try store.commit { state in
                let decision = try decide(state, Date())
                return (decision.entry.map { [$0] } ?? [], decision)
            }
            return .json(decision.status, decision.body)
        }
        guard key.count <= 255 else { throw ReferenceHTTPError.message(400, "Idempotency-Key longer than 255 characters") }
        let slot = "\(caller)\n\(route)\n\(key)"
        let fingerprint = ReferenceCrypto.hex(ReferenceCrypto.sha256(request.body))
        let (status, body, isReplay) = try store.commit { state -> (entries: [AccountingEntry], result: (Int, String, Bool)) in
            let now = Date()
            if let stored = state.storedReply(slot, at: now) {
                guard stored.fingerprint == fingerprint else {
                    throw ReferenceHTTPError.message(422, "Idempotency-Key reused with a different request body")
                }
                return ([], (stored.status, stored.body, true))
            }
            let decision = try decide(state, now)
            let text = decision.body.serialized()
            var entry = decision.entry ?? AccountingEntry(at: now)
            entry.reply = StoredReply(slot: slot, fingerprint: fingerprint, status: decision.status, body: text, storedAt: now)
            return ([entry], (decision.status, text, false))
        }
        var headers: [(name: String, value: String)] = [("Content-Type", "application/json; charset=utf-8")]
        if isReplay { headers.append(("Idempotent-Replayed", "true")) }
        return ReferenceResponse(status: status, headers: headers, body: .bytes(Array(body.utf8)))
    }

    private func stats() -> ReferenceResponse {
        let counts = store.read { state in
            (state.users.count, state.transactionCount, state.usageRecordCount, state.idempotency.count, state.lastSequence)
        }
        return .json(200, ["backend": "accounting", "requests": .number(counter.value),
                           "uptimeSeconds": .double(counter.uptimeSeconds), "users": .number(counts.0),
                           "creditTransactions": .number(counts.1), "usageRecords": .number(counts.2),
                           "idempotencyKeys": .number(counts.3), "journalSequence": .int(Int64(counts.4)),
                           "jwtRequired": .bool(verifier != nil)])
    }

    static func newID() -> String { UUID().uuidString.lowercased() }
}
