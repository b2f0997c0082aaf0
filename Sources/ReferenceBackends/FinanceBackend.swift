import Foundation

/// The finance API of seed 000 (TiHoMo CoreFinance): accounts and
/// transactions per consumer, an asynchronous import (`202 Accepted` + job),
/// plus the test endpoints the integration tests lean on (`whoami`, `echo`,
/// `slow`, `stream`).
///
/// Ownership: every record belongs to the consumer named in
/// `X-Tollgate-Consumer` (added by the proxy), `anonymous` without it. Other
/// consumers' records answer `404`.
///
/// Import jobs run on a bounded pool (``Options/importWorkers`` threads, at most
/// ``Options/importQueueCapacity`` jobs waiting); past it an import is refused with `503`
/// and `Retry-After`.
public final class FinanceBackend: Sendable {
    public struct Options: Sendable {
        /// Wait before an import job starts processing (lets tests see `queued`).
        public var importDelay: Duration = .milliseconds(20)
        /// Threads running import jobs.
        public var importWorkers = 2
        /// Import jobs waiting for a thread; past it: `503`.
        public var importQueueCapacity = 64
        public init() {}
    }

    static let storeName = "finance"

    let store: JournaledStore<FinanceState>
    private let options: Options
    private let counter = RequestCounter()
    private let stopSignal = ReferenceStopSignal()
    private let importPool: WorkerPool<ImportWork>

    private struct ImportWork: Sendable {
        var job: ImportJob
        var payload: [UInt8]
    }

    public init(dataDirectory: String, options: Options = Options()) throws(ReferenceServerError) {
        self.options = options
        var storeOptions = JournaledStore<FinanceState>.Options()
        storeOptions.durability = .written
        self.store = try JournaledStore(directory: dataDirectory, name: Self.storeName, initial: FinanceState(),
                                        options: storeOptions)
        let box = WeakBox<FinanceBackend>()
        self.importPool = WorkerPool(name: "tg-ref-import", maximumWorkers: options.importWorkers,
                                     queueCapacity: options.importQueueCapacity) { work in
            box.object?.runImport(work.job, payload: work.payload)
        }
        box.object = self
        // Jobs cut short by a restart cannot resume (their payload is not kept).
        do {
            let interrupted = store.read { state in
                state.imports.values.filter { $0.status == .queued || $0.status == .processing }.map(\.id)
            }
            if !interrupted.isEmpty { try store.mutate { state in
                for id in interrupted {
                    state.imports[id]?.status = .failed
                    state.imports[id]?.errors.append("interrupted by a restart before completion")
                    state.imports[id]?.completedAt = Date()
                }
            } }
        } catch {
            throw .persistenceFailed(path: dataDirectory, reason: "\(error)")
        }
    }

    /// Stops background import jobs and waits (up to five seconds) for those running.
    /// Jobs still queued stay `queued`; the next start marks them failed.
    public func shutdown() {
        stopSignal.raise()
        importPool.shutdown(waitingUpTo: .seconds(5))
        store.waitForCompaction()
    }

    public func router() -> ReferenceRouter {
        var router = ReferenceRouter()
        let counter = self.counter
        router.add("GET", "/health", counting: counter) { _ in .json(200, ["status": "ok"]) }
        router.add("GET", "/admin/stats", counting: counter) { [self] _ in stats() }
        router.add("GET", "/api/finance/whoami", counting: counter) { request in Self.whoami(request) }
        router.add("*", "/api/finance/echo", counting: counter) { request in Self.echo(request) }
        router.add("GET", "/api/finance/slow", counting: counter) { request in Self.slow(request) }
        router.add("GET", "/api/finance/stream", counting: counter) { request in try Self.stream(request) }

        router.add("GET", "/api/finance/accounts", counting: counter) { [self] request in listAccounts(request) }
        router.add("POST", "/api/finance/accounts", counting: counter) { [self] request in try createAccount(request) }
        router.add("GET", "/api/finance/accounts/{id}", counting: counter) { [self] request in try getAccount(request) }
        router.add("PUT", "/api/finance/accounts/{id}", counting: counter) { [self] request in try updateAccount(request) }
        router.add("DELETE", "/api/finance/accounts/{id}", counting: counter) { [self] request in try deleteAccount(request) }

        router.add("GET", "/api/finance/transactions", counting: counter) { [self] request in listTransactions(request) }
        router.add("POST", "/api/finance/transactions", counting: counter) { [self] request in try createTransaction(request) }
        router.add("GET", "/api/finance/transactions/{id}", counting: counter) { [self] request in try getTransaction(request) }
        router.add("PUT", "/api/finance/transactions/{id}", counting: counter) { [self] request in try updateTransaction(request) }
        router.add("DELETE", "/api/finance/transactions/{id}", counting: counter) { [self] request in try deleteTransaction(request) }

        router.add("POST", "/api/finance/imports", counting: counter) { [self] request in try startImport(request) }
        router.add("GET", "/api/finance/imports/{jobId}", counting: counter) { [self] request in try getImport(request) }
        return router
    }

    // MARK: - Accounts

    private func listAccounts(_ request: ReferenceRequest) -> ReferenceResponse {
        let owner = request.consumer
        let accounts = store.read { state in
            state.accounts.values.filter { $0.owner == owner }.sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
        }
        return .json(200, ["data": .array(accounts.map(\.json)), "total": .number(accounts.count)])
    }

    private func createAccount(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let body = try request.jsonObject()
        guard let name = body["name"]?.stringValue, !name.isEmpty else {
            throw ReferenceHTTPError.message(400, "name is required")
        }
        let initial = Money.rounded(body["initialBalance"]?.decimalValue ?? 0)
        let now = Date()
        let account = FinanceAccount(id: UUID().uuidString.lowercased(), owner: request.consumer, name: name,
                                     type: body["type"]?.stringValue ?? "bank",
                                     currency: body["currency"]?.stringValue ?? "VND",
                                     initialBalance: initial, balance: initial, isActive: true,
                                     createdAt: now, updatedAt: now)
        try store.mutate { $0.accounts[account.id] = account }
        return .json(201, account.json, headers: [("Location", "/api/finance/accounts/\(account.id)")])
    }

    private func ownedAccount(_ id: String, _ owner: String, in state: some FinanceRecords) throws(ReferenceHTTPError) -> FinanceAccount {
        guard let account = state.account(id), account.owner == owner else {
            throw .message(404, "account not found")
        }
        return account
    }

    private func getAccount(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let id = request.pathParameters["id"] ?? ""
        let account = try store.read { state in try ownedAccount(id, request.consumer, in: state) }
        return .json(200, account.json)
    }

    private func updateAccount(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let id = request.pathParameters["id"] ?? ""
        let body = try request.jsonObject()
        let account = try store.mutate { state in
            var account = try ownedAccount(id, request.consumer, in: state)
            if let name = body["name"] {
                guard let text = name.stringValue, !text.isEmpty else { throw ReferenceHTTPError.message(400, "name must be a non-empty string") }
                account.name = text
            }
            if let type = body["type"]?.stringValue { account.type = type }
            if let currency = body["currency"]?.stringValue { account.currency = currency }
            if let isActive = body["isActive"]?.boolValue { account.isActive = isActive }
            if let initial = body["initialBalance"]?.decimalValue {
                let rounded = Money.rounded(initial)
                account.balance += rounded - account.initialBalance
                account.initialBalance = rounded
            }
            account.updatedAt = Date()
            state.accounts[id] = account
            return account
        }
        return .json(200, account.json)
    }

    private func deleteAccount(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let id = request.pathParameters["id"] ?? ""
        try store.mutate { state in
            _ = try ownedAccount(id, request.consumer, in: state)
            guard !state.transactions.values.contains(where: { $0.accountId == id }) else {
                throw ReferenceHTTPError.message(409, "account has transactions; delete them first")
            }
            state.accounts[id] = nil
        }
        return ReferenceResponse(status: 204)
    }

    // MARK: - Transactions

    private func listTransactions(_ request: ReferenceRequest) -> ReferenceResponse {
        let owner = request.consumer
        let accountID = request.query("accountId")
        let transactions = store.read { state in
            state.transactions.values
                .filter { $0.owner == owner && (accountID == nil || $0.accountId == accountID) }
                .sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
        }
        return .json(200, ["data": .array(transactions.map(\.json)), "total": .number(transactions.count)])
    }

    private func createTransaction(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let body = try request.jsonObject()
        let draft = try TransactionDraft(body, defaults: nil)
        let now = Date()
        let transaction = try store.mutate { state in
            try Self.insert(draft, owner: request.consumer, now: now, into: &state)
        }
        return .json(201, transaction.json, headers: [("Location", "/api/finance/transactions/\(transaction.id)")])
    }

    /// Records a transaction and moves its account's balance.
    static func insert(_ draft: TransactionDraft, owner: String, now: Date,
                       into state: inout FinanceChange) throws(ReferenceHTTPError) -> FinanceTransaction {
        guard var account = state.accounts[draft.accountId], account.owner == owner else {
            throw .message(404, "account not found")
        }
        let transaction = FinanceTransaction(id: UUID().uuidString.lowercased(), owner: owner, accountId: draft.accountId,
                                             type: draft.type, amount: draft.amount, description: draft.description,
                                             category: draft.category, date: draft.date ?? Timestamp.iso(now),
                                             createdAt: now, updatedAt: now)
        account.balance += transaction.signedAmount
        account.updatedAt = now
        state.accounts[account.id] = account
        state.transactions[transaction.id] = transaction
        return transaction
    }

    private func ownedTransaction(_ id: String, _ owner: String, in state: some FinanceRecords) throws(ReferenceHTTPError) -> FinanceTransaction {
        guard let transaction = state.transaction(id), transaction.owner == owner else {
            throw .message(404, "transaction not found")
        }
        return transaction
    }

    private func getTransaction(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let id = request.pathParameters["id"] ?? ""
        let transaction = try store.read { state in try ownedTransaction(id, request.consumer, in: state) }
        return .json(200, transaction.json)
    }

    private func updateTransaction(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let id = request.pathParameters["id"] ?? ""
        let body = try request.jsonObject()
        let owner = request.consumer
        let transaction = try store.mutate { state in
            let old = try ownedTransaction(id, owner, in: state)
            let draft = try TransactionDraft(body, defaults: old)
            guard var newAccount = state.accounts[draft.accountId], newAccount.owner == owner else {
                throw ReferenceHTTPError.message(404, "account not found")
            }
            let now = Date()
            // Undo the old effect, then apply the new one (possibly on another account).
            if var oldAccount = state.accounts[old.accountId] {
                oldAccount.balance -= old.signedAmount
                oldAccount.updatedAt = now
                state.accounts[oldAccount.id] = oldAccount
                if oldAccount.id == newAccount.id { newAccount = oldAccount }
            }
            var updated = old
            updated.accountId = draft.accountId
            updated.type = draft.type
            updated.amount = draft.amount
            updated.description = draft.description
            updated.category = draft.category
            updated.date = draft.date ?? old.date
            updated.updatedAt = now
            newAccount.balance += updated.signedAmount
            newAccount.updatedAt = now
            state.accounts[newAccount.id] = newAccount
            state.transactions[id] = updated
            return updated
        }
        return .json(200, transaction.json)
    }

    private func deleteTransaction(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let id = request.pathParameters["id"] ?? ""
        try store.mutate { state in
            let transaction = try ownedTransaction(id, request.consumer, in: state)
            if var account = state.accounts[transaction.accountId] {
                account.balance -= transaction.signedAmount
                account.updatedAt = Date()
                state.accounts[account.id] = account
            }
            state.transactions[id] = nil
        }
        return ReferenceResponse(status: 204)
    }

    // MARK: - Imports

    private func startImport(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let upload = try ImportUpload(request)
        let job = ImportJob(id: UUID().uuidString.lowercased(), owner: request.consumer, status: .queued,
                            format: upload.format, fileName: upload.fileName, bytes: upload.payload.count,
                            accountId: request.query("accountId"), importedRows: 0, failedRows: 0, errors: [],
                            note: nil, createdAt: Date(), completedAt: nil)
        try store.mutate { $0.imports[job.id] = job }
        guard importPool.submit(ImportWork(job: job, payload: upload.payload)) else {
            _ = try? store.mutate { $0.imports[job.id] = nil }
            throw ReferenceHTTPError(503, ["error": "import queue full, try again later"], headers: [("Retry-After", "1")])
        }
        return .json(202, ["jobId": .string(job.id), "status": "queued",
                           "statusUrl": .string("/api/finance/imports/\(job.id)")],
                     headers: [("Location", "/api/finance/imports/\(job.id)")])
    }

    private func getImport(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let id = request.pathParameters["jobId"] ?? ""
        let job = try store.read { state throws(ReferenceHTTPError) -> ImportJob in
            guard let job = state.imports[id], job.owner == request.consumer else { throw .message(404, "import job not found") }
            return job
        }
        return .json(200, job.json)
    }

    /// The background half of an import: parse rows and apply them as transactions.
    private func runImport(_ job: ImportJob, payload: [UInt8]) {
        guard stopSignal.sleep(for: options.importDelay) else { return }
        _ = try? store.mutate { $0.imports[job.id]?.status = .processing }
        let parsed = ImportParser.parse(payload, format: job.format, defaultAccountID: job.accountId)
        do {
            try store.mutate { state in
                var imported = 0
                var errors = parsed.errors
                let now = Date()
                for (line, draft) in parsed.rows {
                    do {
                        _ = try Self.insert(draft, owner: job.owner, now: now, into: &state)
                        imported += 1
                    } catch {
                        errors.append("line \(line): account \(draft.accountId) not found")
                    }
                }
                state.imports[job.id]?.status = .completed
                state.imports[job.id]?.importedRows = imported
                state.imports[job.id]?.failedRows = parsed.rows.count - imported + parsed.errors.count
                state.imports[job.id]?.errors = Array(errors.prefix(20))
                state.imports[job.id]?.note = parsed.note
                state.imports[job.id]?.completedAt = now
            }
        } catch {
            _ = try? store.mutate { state in
                state.imports[job.id]?.status = .failed
                state.imports[job.id]?.errors.append("\(error)")
                state.imports[job.id]?.completedAt = Date()
            }
        }
    }

    // MARK: - Stats

    private func stats() -> ReferenceResponse {
        let counts = store.read { state in
            (state.accounts.count, state.transactions.count, state.imports.count,
             state.imports.values.filter { $0.status == .completed }.count)
        }
        return .json(200, ["backend": "finance", "requests": .number(counter.value),
                           "uptimeSeconds": .double(counter.uptimeSeconds),
                           "accounts": .number(counts.0), "transactions": .number(counts.1),
                           "imports": .number(counts.2), "importsCompleted": .number(counts.3)])
    }
}
