import Foundation

/// The accounting / credit service of seed 003.
///
/// Identity: with a JWT secret configured (`--jwt-secret`, env
/// `ACCOUNTING_JWT_SECRET`) every request needs `Authorization: Bearer <HS256
/// JWT>` and the user is its `sub` (admin: `role` claim `admin`). Without a
/// secret the user is the `X-Tollgate-Consumer` header (`anonymous` when
/// absent) and admin means `X-Tollgate-Scopes` holds `admin` (or
/// `<something>:admin`). New users start with ``Options/initialCredits``.
///
/// `POST /api/credits/deduct` and `POST /api/usage/record` honour an
/// `Idempotency-Key` header: a retry with the same key and body replays the
/// first answer (with `Idempotent-Replayed: true`) and changes nothing; the
/// same key with another body is `422`.
public final class AccountingBackend: Sendable {
    public struct Options: Sendable {
        /// HS256 secret shared with the auth service; `nil`: trust `X-Tollgate-Consumer`.
        public var jwtSecret: String?
        /// Credits a user is given when first seen.
        public var initialCredits: Int = 100
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

    static let snapshotName = "accounting.json"
    static let maximumIdempotencyKeys = 10_000
    static let idempotencyHeader = "Idempotency-Key"

    let store: StateStore<AccountingState>
    private let options: Options
    private let verifier: HS256Verifier?
    private let counter = RequestCounter()

    public init(dataDirectory: String, options: Options = Options()) throws(ReferenceServerError) {
        self.options = options
        self.verifier = options.jwtSecret.flatMap { $0.isEmpty ? nil : HS256Verifier(secret: $0) }
        self.store = try StateStore(directory: dataDirectory, name: Self.snapshotName, initial: AccountingState())
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
            return Caller(userID: request.consumer,
                          isAdmin: scopes.contains { $0 == "admin" || $0.hasSuffix(":admin") })
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

    // MARK: - Balances

    private func totalBalance(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let user = try caller(request).userID
        let now = Date()
        let total = try store.mutate { state in state.account(user, initialCredits: options.initialCredits, now: now).balance(at: now) }
        return .json(200, ["totalCredits": .number(total)])
    }

    private func balance(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let user = try caller(request).userID
        let now = Date()
        let account = try store.mutate { state in state.account(user, initialCredits: options.initialCredits, now: now) }
        let allocations: [JSONValue] = account.allocations.map { allocation in
            ["id": .string(allocation.id), "credits": .number(allocation.credits), "remaining": .number(allocation.remaining),
             "allocatedAt": .string(Timestamp.iso(allocation.allocatedAt)), "expiresAt": Timestamp.iso(allocation.expiresAt),
             "isExpired": .bool(allocation.isExpired(at: now)), "notes": .optional(allocation.notes)]
        }
        return .json(200, ["userId": .string(user), "totalCredits": .number(account.balance(at: now)),
                           "allocations": .array(allocations)])
    }

    private func deduct(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let user = try caller(request).userID
        let body = try request.jsonObject()
        guard let credits = body["credits"]?.intValue, credits > 0 else {
            throw ReferenceHTTPError.message(400, "credits must be a positive integer")
        }
        let description = body["description"]?.stringValue
        let initialCredits = options.initialCredits
        return try idempotent(request, route: "deduct", user: user) { state, now in
            var account = state.account(user, initialCredits: initialCredits, now: now)
            let available = account.balance(at: now)
            guard available >= credits else {
                return (402, ["success": false, "error": "insufficient credits", "balance": .number(available)])
            }
            account.consume(credits, at: now)
            let newBalance = account.balance(at: now)
            account.updatedAt = now
            state.users[user] = account
            state.transactions.append(CreditTransaction(id: UUID().uuidString.lowercased(), userId: user, type: .deduction,
                                                        amount: credits, balanceAfter: newBalance,
                                                        description: description, createdAt: now))
            return (200, ["success": true, "newBalance": .number(newBalance)])
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
        let notes = body["notes"]?.stringValue
        let now = Date()
        let (allocation, newBalance) = try store.mutate { state in
            var account = state.account(user, initialCredits: options.initialCredits, now: now)
            let allocation = CreditAllocation(id: UUID().uuidString.lowercased(), credits: credits, remaining: credits,
                                              expiresAt: expiryDays.map { now.addingTimeInterval(Double($0) * 86_400) },
                                              allocatedAt: now, notes: notes)
            account.allocations.append(allocation)
            account.updatedAt = now
            state.users[user] = account
            let newBalance = account.balance(at: now)
            state.transactions.append(CreditTransaction(id: UUID().uuidString.lowercased(), userId: user, type: .allocation,
                                                        amount: credits, balanceAfter: newBalance,
                                                        description: notes, createdAt: now))
            return (allocation, newBalance)
        }
        return .json(200, ["success": true, "userId": .string(user), "allocationId": .string(allocation.id),
                           "credits": .number(credits), "expiresAt": Timestamp.iso(allocation.expiresAt),
                           "newBalance": .number(newBalance)])
    }

    // MARK: - Usage

    private func recordUsage(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let user = try caller(request).userID
        let body = try request.jsonObject()
        guard let service = body["service"]?.stringValue, let operation = body["operation"]?.stringValue else {
            throw ReferenceHTTPError.message(400, "service and operation are required")
        }
        guard let credits = body["credits"]?.intValue, credits >= 0 else {
            throw ReferenceHTTPError.message(400, "credits must be a non-negative integer")
        }
        let metadata = body["metadata"] ?? .null
        return try idempotent(request, route: "usage/record", user: user) { state, now in
            let record = UsageRecord(id: UUID().uuidString.lowercased(), userId: user, service: service,
                                     operation: operation, credits: credits, metadata: metadata, timestamp: now)
            state.usage.append(record)
            return (201, ["success": true, "id": .string(record.id)])
        }
    }

    private func listUsage(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let user = try caller(request).userID
        let records = store.read { state in state.usage.filter { $0.userId == user } }
        let items: [JSONValue] = records.map { record in
            ["id": .string(record.id), "service": .string(record.service), "operation": .string(record.operation),
             "credits": .number(record.credits), "metadata": record.metadata,
             "timestamp": .string(Timestamp.iso(record.timestamp))]
        }
        return .json(200, ["data": .array(items), "total": .number(items.count)])
    }

    // MARK: - Idempotency

    /// Runs `apply` at most once per (user, route, `Idempotency-Key`): the
    /// check, the change and the stored answer share one critical section, so
    /// concurrent retries cannot both apply.
    private func idempotent(_ request: ReferenceRequest, route: String, user: String,
                            _ apply: @escaping (inout AccountingState, Date) -> (Int, JSONValue)) throws -> ReferenceResponse {
        guard let key = request.header(Self.idempotencyHeader), !key.isEmpty else {
            let (status, body) = try store.mutate { state in apply(&state, Date()) }
            return .json(status, body)
        }
        guard key.count <= 255 else { throw ReferenceHTTPError.message(400, "Idempotency-Key longer than 255 characters") }
        let slot = "\(user)\n\(route)\n\(key)"
        let fingerprint = ReferenceCrypto.hex(ReferenceCrypto.sha256(request.body))
        let (status, body, isReplay) = try store.mutate { state -> (Int, String, Bool) in
            if let stored = state.idempotency[slot] {
                guard stored.fingerprint == fingerprint else {
                    throw ReferenceHTTPError.message(422, "Idempotency-Key reused with a different request body")
                }
                return (stored.status, stored.body, true)
            }
            let now = Date()
            let (status, body) = apply(&state, now)
            state.idempotency[slot] = StoredReply(fingerprint: fingerprint, status: status, body: body.serialized(), storedAt: now)
            if state.idempotency.count > Self.maximumIdempotencyKeys,
               let oldest = state.idempotency.min(by: { $0.value.storedAt < $1.value.storedAt }) {
                state.idempotency[oldest.key] = nil
            }
            return (status, body.serialized(), false)
        }
        var headers: [(name: String, value: String)] = [("Content-Type", "application/json; charset=utf-8")]
        if isReplay { headers.append(("Idempotent-Replayed", "true")) }
        return ReferenceResponse(status: status, headers: headers, body: .bytes(Array(body.utf8)))
    }

    private func stats() -> ReferenceResponse {
        let counts = store.read { state in
            (state.users.count, state.transactions.count, state.usage.count, state.idempotency.count)
        }
        return .json(200, ["backend": "accounting", "requests": .number(counter.value),
                           "uptimeSeconds": .double(counter.uptimeSeconds), "users": .number(counts.0),
                           "creditTransactions": .number(counts.1), "usageRecords": .number(counts.2),
                           "idempotencyKeys": .number(counts.3), "jwtRequired": .bool(verifier != nil)])
    }
}

// MARK: - State

/// Everything the accounting backend persists (`accounting.json`).
struct AccountingState: Codable, Sendable {
    var users: [String: CreditAccount] = [:]
    var transactions: [CreditTransaction] = []
    var usage: [UsageRecord] = []
    var idempotency: [String: StoredReply] = [:]

    /// The user's account, created with `initialCredits` on first sight.
    mutating func account(_ user: String, initialCredits: Int, now: Date) -> CreditAccount {
        if let account = users[user] { return account }
        var account = CreditAccount(userId: user, allocations: [], createdAt: now, updatedAt: now)
        if initialCredits > 0 {
            account.allocations.append(CreditAllocation(id: UUID().uuidString.lowercased(), credits: initialCredits,
                                                        remaining: initialCredits, expiresAt: nil, allocatedAt: now,
                                                        notes: "initial balance"))
        }
        users[user] = account
        return account
    }
}

struct CreditAccount: Codable, Sendable {
    var userId: String
    var allocations: [CreditAllocation]
    var createdAt: Date
    var updatedAt: Date

    func balance(at now: Date) -> Int {
        allocations.filter { !$0.isExpired(at: now) }.reduce(0) { $0 + $1.remaining }
    }

    /// Takes `credits` from live allocations, soonest expiry first. The caller
    /// has checked the balance.
    mutating func consume(_ credits: Int, at now: Date) {
        var left = credits
        let order = allocations.indices
            .filter { !allocations[$0].isExpired(at: now) && allocations[$0].remaining > 0 }
            .sorted { (allocations[$0].expiresAt ?? .distantFuture) < (allocations[$1].expiresAt ?? .distantFuture) }
        for index in order where left > 0 {
            let taken = min(left, allocations[index].remaining)
            allocations[index].remaining -= taken
            left -= taken
        }
        precondition(left == 0, "consume called without enough credits")
    }
}

struct CreditAllocation: Codable, Sendable {
    var id: String
    var credits: Int
    var remaining: Int
    var expiresAt: Date?
    var allocatedAt: Date
    var notes: String?

    func isExpired(at now: Date) -> Bool { expiresAt.map { $0 <= now } ?? false }
}

enum CreditTransactionKind: String, Codable, Sendable {
    case deduction
    case allocation
}

struct CreditTransaction: Codable, Sendable {
    var id: String
    var userId: String
    var type: CreditTransactionKind
    var amount: Int
    var balanceAfter: Int
    var description: String?
    var createdAt: Date
}

struct UsageRecord: Codable, Sendable {
    var id: String
    var userId: String
    var service: String
    var operation: String
    var credits: Int
    var metadata: JSONValue
    var timestamp: Date
}

/// The first answer to an idempotent request.
struct StoredReply: Codable, Sendable {
    var fingerprint: String
    var status: Int
    var body: String
    var storedAt: Date
}
