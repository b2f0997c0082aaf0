import Foundation

/// Everything the accounting backend keeps in memory (and in `accounting.json`, its
/// snapshot): bounded by the number of users, not by history.
struct AccountingState: JournaledState {
    /// Bounds applied as entries are applied (set at start, not stored).
    struct Limits: Sendable {
        var maximumIdempotencyKeys = 100_000
        var idempotencyKeyLifetime: Double = 24 * 3600
        var maximumUsageRecordsPerUser = 1000
    }

    var lastSequence: UInt64 = 0
    var users: [String: CreditAccount] = [:]
    /// The latest usage records per user (older ones are in the journal only).
    var usage: [String: [UsageRecord]] = [:]
    var idempotency: [String: StoredReply] = [:]
    /// Idempotency slots, oldest first (for pruning in O(1)).
    var idempotencyOrder = SlotQueue()
    /// Credit transactions ever made (the transactions themselves are in the journal).
    var transactionCount = 0
    var usageRecordCount = 0
    var limits = Limits()

    init() {}

    /// The stored answer for `slot`, if it is still remembered at `now`.
    func storedReply(_ slot: String, at now: Date) -> StoredReply? {
        guard let stored = idempotency[slot],
              now.timeIntervalSince(stored.storedAt) < limits.idempotencyKeyLifetime else { return nil }
        return stored
    }

    mutating func apply(_ entry: AccountingEntry) {
        if let account = entry.account { users[account.userId] = account }
        if entry.transaction != nil { transactionCount += 1 }
        if let record = entry.usage {
            var records = usage[record.userId] ?? []
            usage[record.userId] = nil  // keep the array uniquely referenced while it changes
            records.append(record)
            if records.count > limits.maximumUsageRecordsPerUser {
                records.removeFirst(records.count - limits.maximumUsageRecordsPerUser)
            }
            usage[record.userId] = records
            usageRecordCount += 1
        }
        if let reply = entry.reply {
            idempotency[reply.slot] = reply
            idempotencyOrder.append(SlotQueue.Item(slot: reply.slot, storedAt: reply.storedAt))
        }
        pruneIdempotency(now: entry.at)
    }

    /// Drops keys past the lifetime or the count, oldest first.
    private mutating func pruneIdempotency(now: Date) {
        while let oldest = idempotencyOrder.first {
            let isExpired = now.timeIntervalSince(oldest.storedAt) >= limits.idempotencyKeyLifetime
            guard isExpired || idempotency.count > limits.maximumIdempotencyKeys || idempotencyOrder.count > 2 * limits.maximumIdempotencyKeys
            else { return }
            idempotencyOrder.removeFirst()
            // A slot used again after it expired has a newer item further on: keep that reply.
            if idempotency[oldest.slot]?.storedAt == oldest.storedAt { idempotency[oldest.slot] = nil }
        }
    }

    // MARK: Coding (also reads the snapshot the earlier whole-state store wrote)

    private enum CodingKeys: String, CodingKey {
        case lastSequence, users, usage, idempotency, idempotencyOrder, transactionCount, usageRecordCount
        case transactions
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        lastSequence = try container.decodeIfPresent(UInt64.self, forKey: .lastSequence) ?? 0
        users = try container.decodeIfPresent([String: CreditAccount].self, forKey: .users) ?? [:]
        if let grouped = try? container.decodeIfPresent([String: [UsageRecord]].self, forKey: .usage) {
            usage = grouped
        } else if let flat = try? container.decodeIfPresent([UsageRecord].self, forKey: .usage) {
            usage = Dictionary(grouping: flat, by: \.userId)
        }
        usageRecordCount = try container.decodeIfPresent(Int.self, forKey: .usageRecordCount)
            ?? usage.values.reduce(0) { $0 + $1.count }
        transactionCount = try container.decodeIfPresent(Int.self, forKey: .transactionCount)
            ?? ((try? container.decodeIfPresent([CreditTransaction].self, forKey: .transactions))?.count ?? 0)
        let replies = try container.decodeIfPresent([String: StoredReply].self, forKey: .idempotency) ?? [:]
        idempotency = Dictionary(uniqueKeysWithValues: replies.map { slot, reply in
            var reply = reply
            reply.slot = slot
            return (slot, reply)
        })
        if let order = try container.decodeIfPresent(SlotQueue.self, forKey: .idempotencyOrder) {
            idempotencyOrder = order
        } else {
            for (slot, reply) in idempotency.sorted(by: { $0.value.storedAt < $1.value.storedAt }) {
                idempotencyOrder.append(SlotQueue.Item(slot: slot, storedAt: reply.storedAt))
            }
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(lastSequence, forKey: .lastSequence)
        try container.encode(users, forKey: .users)
        try container.encode(usage, forKey: .usage)
        try container.encode(idempotency, forKey: .idempotency)
        try container.encode(idempotencyOrder, forKey: .idempotencyOrder)
        try container.encode(transactionCount, forKey: .transactionCount)
        try container.encode(usageRecordCount, forKey: .usageRecordCount)
    }
}

/// One journaled change: the account after it, the ledger line, a usage record, and the
/// stored answer of an idempotent request (any of them).
struct AccountingEntry: Codable, Sendable {
    var at: Date
    var account: CreditAccount?
    /// Kept in the journal only (an audit trail), counted in memory.
    var transaction: CreditTransaction?
    var usage: UsageRecord?
    var reply: StoredReply?

    init(at: Date, account: CreditAccount? = nil, transaction: CreditTransaction? = nil,
         usage: UsageRecord? = nil, reply: StoredReply? = nil) {
        self.at = at
        self.account = account
        self.transaction = transaction
        self.usage = usage
        self.reply = reply
    }
}

/// A FIFO of idempotency slots: append at the end, remove at the front, both O(1).
struct SlotQueue: Codable, Sendable {
    struct Item: Codable, Sendable {
        var slot: String
        var storedAt: Date
    }

    private var items: [Item] = []
    private var head = 0

    init() {}

    var count: Int { items.count - head }
    var first: Item? { head < items.count ? items[head] : nil }

    mutating func append(_ item: Item) { items.append(item) }

    mutating func removeFirst() {
        head += 1
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 1024 && head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        }
    }

    init(from decoder: any Decoder) throws {
        items = try decoder.singleValueContainer().decode([Item].self)
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(Array(items[head...]))
    }
}

struct CreditAccount: Codable, Sendable {
    var userId: String
    var allocations: [CreditAllocation]
    var createdAt: Date
    var updatedAt: Date

    /// Spent allocations kept per account (for `GET /api/credits/balance`).
    static let keptSpentAllocations = 16
    /// How long an expired allocation with credits left is still listed.
    static let expiredListedFor: TimeInterval = 30 * 86_400

    /// A new user's account: `initialCredits` that never expire.
    static func opening(_ user: String, initialCredits: Int, now: Date) -> CreditAccount {
        var account = CreditAccount(userId: user, allocations: [], createdAt: now, updatedAt: now)
        if initialCredits > 0 {
            account.allocations.append(CreditAllocation(id: "initial", credits: initialCredits, remaining: initialCredits,
                                                        expiresAt: nil, allocatedAt: now, notes: "initial balance"))
        }
        return account
    }

    func balance(at now: Date) -> Int {
        allocations.reduce(0) { $0 + ($1.isExpired(at: now) ? 0 : $1.remaining) }
    }

    /// Takes `credits` from live allocations, soonest expiry first (then oldest). The
    /// caller has checked the balance.
    mutating func consume(_ credits: Int, at now: Date) {
        var left = credits
        let order = allocations.indices
            .filter { !allocations[$0].isExpired(at: now) && allocations[$0].remaining > 0 }
            .sorted { (allocations[$0].expiresAt ?? .distantFuture, $0) < (allocations[$1].expiresAt ?? .distantFuture, $1) }
        for index in order where left > 0 {
            let taken = min(left, allocations[index].remaining)
            allocations[index].remaining -= taken
            left -= taken
        }
        precondition(left == 0, "consume called without enough credits")
    }

    /// Drops what can never count again: expired allocations that are spent (or long
    /// expired), and spent ones beyond the latest ``keptSpentAllocations``.
    mutating func prune(at now: Date) {
        allocations.removeAll { allocation in
            guard let expiresAt = allocation.expiresAt, expiresAt <= now else { return false }
            return allocation.remaining == 0 || now.timeIntervalSince(expiresAt) > Self.expiredListedFor
        }
        let spent = allocations.indices.filter { allocations[$0].remaining == 0 }
        if spent.count > Self.keptSpentAllocations {
            let dropped = Set(spent.prefix(spent.count - Self.keptSpentAllocations))
            allocations = allocations.indices.filter { !dropped.contains($0) }.map { allocations[$0] }
        }
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
    var slot: String
    var fingerprint: String
    var status: Int
    var body: String
    var storedAt: Date

    init(slot: String, fingerprint: String, status: Int, body: String, storedAt: Date) {
        self.slot = slot
        self.fingerprint = fingerprint
        self.status = status
        self.body = body
        self.storedAt = storedAt
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        slot = try container.decodeIfPresent(String.self, forKey: .slot) ?? ""
        fingerprint = try container.decode(String.self, forKey: .fingerprint)
        status = try container.decode(Int.self, forKey: .status)
        body = try container.decode(String.self, forKey: .body)
        storedAt = try container.decode(Date.self, forKey: .storedAt)
    }
}
