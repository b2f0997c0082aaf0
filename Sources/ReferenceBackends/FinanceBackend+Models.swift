import Foundation

/// Everything the finance backend persists (`finance.json` and its journal).
struct FinanceState: JournaledState, FinanceRecords {
    var lastSequence: UInt64 = 0
    var accounts: [String: FinanceAccount] = [:]
    var transactions: [String: FinanceTransaction] = [:]
    var imports: [String: ImportJob] = [:]

    init() {}

    func account(_ id: String) -> FinanceAccount? { accounts[id] }
    func transaction(_ id: String) -> FinanceTransaction? { transactions[id] }

    mutating func apply(_ entry: FinanceEntry) {
        for (id, account) in entry.accounts { accounts[id] = account }
        for (id, transaction) in entry.transactions { transactions[id] = transaction }
        for (id, job) in entry.imports { imports[id] = job }
    }

    private enum CodingKeys: String, CodingKey { case lastSequence, accounts, transactions, imports }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        lastSequence = try container.decodeIfPresent(UInt64.self, forKey: .lastSequence) ?? 0
        accounts = try container.decodeIfPresent([String: FinanceAccount].self, forKey: .accounts) ?? [:]
        transactions = try container.decodeIfPresent([String: FinanceTransaction].self, forKey: .transactions) ?? [:]
        imports = try container.decodeIfPresent([String: ImportJob].self, forKey: .imports) ?? [:]
    }
}

/// Lookups shared by the state and a change in progress.
protocol FinanceRecords {
    func account(_ id: String) -> FinanceAccount?
    func transaction(_ id: String) -> FinanceTransaction?
}

/// One journaled change: the records it wrote (`null`: deleted).
struct FinanceEntry: Codable, Sendable {
    var accounts: [String: FinanceAccount?] = [:]
    var transactions: [String: FinanceTransaction?] = [:]
    var imports: [String: ImportJob?] = [:]
}

/// A change in progress: the state as it would be, and what was written.
struct FinanceChange: FinanceRecords {
    var accounts: Overlay<FinanceAccount>
    var transactions: Overlay<FinanceTransaction>
    var imports: Overlay<ImportJob>

    init(_ state: FinanceState) {
        accounts = Overlay(state.accounts)
        transactions = Overlay(state.transactions)
        imports = Overlay(state.imports)
    }

    func account(_ id: String) -> FinanceAccount? { accounts[id] }
    func transaction(_ id: String) -> FinanceTransaction? { transactions[id] }

    var entry: FinanceEntry {
        FinanceEntry(accounts: accounts.changes, transactions: transactions.changes, imports: imports.changes)
    }

    var isEmpty: Bool { accounts.changes.isEmpty && transactions.changes.isEmpty && imports.changes.isEmpty }
}

/// A dictionary seen through the writes of a change (`changes`, `nil`: removed), the
/// base left as it is.
struct Overlay<Value> {
    private let base: [String: Value]
    private(set) var changes: [String: Value?] = [:]

    init(_ base: [String: Value]) { self.base = base }

    subscript(key: String) -> Value? {
        get {
            if let changed = changes[key] { return changed }
            return base[key]
        }
        set { changes.updateValue(newValue, forKey: key) }
    }

    /// Every value as the change sees it (a scan: for rare checks only).
    var values: [Value] {
        base.compactMap { changes[$0.key] == nil ? $0.value : nil } + changes.values.compactMap { $0 }
    }
}

extension JournaledStore where State == FinanceState {
    /// Runs `body` on a change of the current state and commits what it wrote, as one
    /// entry (nothing when it throws or writes nothing).
    func mutate<Result>(_ body: (inout FinanceChange) throws -> Result) throws -> Result {
        try commit { state in
            var change = FinanceChange(state)
            let result = try body(&change)
            return (change.isEmpty ? [] : [change.entry], result)
        }
    }
}

struct FinanceAccount: Codable, Sendable {
    var id: String
    var owner: String
    var name: String
    var type: String
    var currency: String
    var initialBalance: Decimal
    var balance: Decimal
    var isActive: Bool
    var createdAt: Date
    var updatedAt: Date

    var json: JSONValue {
        ["id": .string(id), "owner": .string(owner), "name": .string(name), "type": .string(type),
         "currency": .string(currency), "initialBalance": .decimal(initialBalance), "balance": .decimal(balance),
         "isActive": .bool(isActive), "createdAt": .string(Timestamp.iso(createdAt)),
         "updatedAt": .string(Timestamp.iso(updatedAt))]
    }
}

enum TransactionKind: String, Codable, Sendable {
    case income
    case expense
}

struct FinanceTransaction: Codable, Sendable {
    var id: String
    var owner: String
    var accountId: String
    var type: TransactionKind
    /// Always positive; `type` gives the direction.
    var amount: Decimal
    var description: String?
    var category: String?
    var date: String
    var createdAt: Date
    var updatedAt: Date

    /// The effect on the account balance.
    var signedAmount: Decimal {
        switch type {
        case .income: amount
        case .expense: -amount
        }
    }

    var json: JSONValue {
        ["id": .string(id), "owner": .string(owner), "accountId": .string(accountId), "type": .string(type.rawValue),
         "amount": .decimal(amount), "description": .optional(description), "category": .optional(category),
         "date": .string(date), "createdAt": .string(Timestamp.iso(createdAt)),
         "updatedAt": .string(Timestamp.iso(updatedAt))]
    }
}

/// A validated transaction body (create, update, or one imported row).
struct TransactionDraft: Sendable {
    var accountId: String
    var type: TransactionKind
    var amount: Decimal
    var description: String?
    var category: String?
    var date: String?

    /// `defaults` supplies the fields an update leaves out.
    init(_ body: JSONValue, defaults: FinanceTransaction?) throws(ReferenceHTTPError) {
        guard let accountId = body["accountId"]?.stringValue ?? defaults?.accountId, !accountId.isEmpty else {
            throw .message(400, "accountId is required")
        }
        var kind: TransactionKind? = defaults?.type
        if let typeValue = body["type"] {
            guard let text = typeValue.stringValue, let parsed = TransactionKind(rawValue: text.lowercased()) else {
                throw .message(400, "type must be \"income\" or \"expense\"")
            }
            kind = parsed
        }
        var amount: Decimal
        if let amountValue = body["amount"] {
            guard let parsed = amountValue.decimalValue else { throw .message(400, "amount must be a number") }
            amount = parsed
        } else if let old = defaults?.amount {
            amount = old
        } else {
            throw .message(400, "amount is required")
        }
        if amount < 0 {
            // A signed amount without a type: negative is an expense.
            if kind == nil { kind = .expense }
            amount = -amount
        }
        amount = Money.rounded(amount)
        guard amount > 0 else { throw .message(400, "amount must not be zero") }
        self.accountId = accountId
        self.type = kind ?? .income
        self.amount = amount
        self.description = body["description"]?.stringValue ?? defaults?.description
        self.category = body["category"]?.stringValue ?? defaults?.category
        self.date = body["date"]?.stringValue ?? defaults?.date
    }

    init(accountId: String, type: TransactionKind, amount: Decimal, description: String?, category: String?, date: String?) {
        self.accountId = accountId
        self.type = type
        self.amount = amount
        self.description = description
        self.category = category
        self.date = date
    }
}

enum ImportStatus: String, Codable, Sendable {
    case queued
    case processing
    case completed
    case failed
}

enum ImportFormat: String, Codable, Sendable {
    case csv
    case excel
}

struct ImportJob: Codable, Sendable {
    var id: String
    var owner: String
    var status: ImportStatus
    var format: ImportFormat
    var fileName: String?
    var bytes: Int
    var accountId: String?
    var importedRows: Int
    var failedRows: Int
    var errors: [String]
    var note: String?
    var createdAt: Date
    var completedAt: Date?

    var json: JSONValue {
        ["jobId": .string(id), "status": .string(status.rawValue), "format": .string(format.rawValue),
         "fileName": .optional(fileName), "bytes": .number(bytes), "accountId": .optional(accountId),
         "importedRows": .number(importedRows), "failedRows": .number(failedRows),
         "errors": .array(errors.map(JSONValue.string)), "note": .optional(note),
         "createdAt": .string(Timestamp.iso(createdAt)), "completedAt": Timestamp.iso(completedAt)]
    }
}

/// The file of an import request: the raw body, or the first file part of a
/// `multipart/form-data` body. Excel workbooks (`PK` zip or OLE magic, or an
/// Excel content type) are kept as opaque bytes.
struct ImportUpload {
    var payload: [UInt8]
    var fileName: String?
    var format: ImportFormat

    init(_ request: ReferenceRequest) throws(ReferenceHTTPError) {
        let contentType = request.header("Content-Type")?.lowercased() ?? ""
        var payload = request.body
        var partType = contentType
        var fileName: String?
        if contentType.hasPrefix("multipart/form-data") {
            guard let boundary = Self.boundary(request.header("Content-Type") ?? ""),
                  let part = Self.firstFilePart(request.body, boundary: boundary) else {
                throw .message(400, "multipart body without a file part")
            }
            payload = part.content
            fileName = part.fileName
            partType = part.contentType?.lowercased() ?? ""
        }
        guard !payload.isEmpty else { throw .message(400, "empty import file") }
        let isZip = payload.starts(with: [0x50, 0x4B, 0x03, 0x04])
        let isOLE = payload.starts(with: [0xD0, 0xCF, 0x11, 0xE0])
        let namesExcel = fileName.map { $0.lowercased().hasSuffix(".xlsx") || $0.lowercased().hasSuffix(".xls") } ?? false
        let isExcel = isZip || isOLE || namesExcel || partType.contains("spreadsheet") || partType.contains("excel")
        self.payload = payload
        self.fileName = fileName
        self.format = isExcel ? .excel : .csv
    }

    static func boundary(_ contentType: String) -> String? {
        for parameter in contentType.split(separator: ";").dropFirst() {
            let pair = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmed(of: " \t") }
            if pair.count == 2 && pair[0].lowercased() == "boundary" {
                let value = pair[1]
                return value.hasPrefix("\"") && value.hasSuffix("\"") && value.count >= 2
                    ? String(value.dropFirst().dropLast()) : value
            }
        }
        return nil
    }

    struct Part {
        var content: [UInt8]
        var fileName: String?
        var contentType: String?
    }

    /// The first part with a `filename`, else the first part.
    static func firstFilePart(_ body: [UInt8], boundary: String) -> Part? {
        let delimiter = Array("--\(boundary)".utf8)
        var parts: [Part] = []
        var positions: [Int] = []
        var index = 0
        while let found = find(delimiter, in: body, from: index) {
            positions.append(found)
            index = found + delimiter.count
        }
        for (start, end) in zip(positions, positions.dropFirst()) {
            var partStart = start + delimiter.count
            // Skip the CRLF after the delimiter line.
            if partStart + 1 < body.count && body[partStart] == 13 && body[partStart + 1] == 10 { partStart += 2 }
            var partEnd = end
            if partEnd >= 2 && body[partEnd - 2] == 13 && body[partEnd - 1] == 10 { partEnd -= 2 }
            guard partStart <= partEnd else { continue }
            let part = Array(body[partStart..<partEnd])
            guard let headEnd = Self.find([13, 10, 13, 10], in: part, from: 0) else { continue }
            let head = String(decoding: part[..<headEnd], as: UTF8.self)
            var fileName: String?
            var contentType: String?
            for line in head.split(separator: "\r\n") {
                let lower = line.lowercased()
                if lower.hasPrefix("content-disposition:"), let range = line.range(of: "filename=\"") {
                    let rest = line[range.upperBound...]
                    fileName = rest.firstIndex(of: "\"").map { String(rest[..<$0]) }
                } else if lower.hasPrefix("content-type:") {
                    contentType = String(line.dropFirst("content-type:".count)).trimmingCharacters(in: .whitespaces)
                }
            }
            parts.append(Part(content: Array(part[(headEnd + 4)...]), fileName: fileName, contentType: contentType))
        }
        return parts.first { $0.fileName != nil } ?? parts.first
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
        guard !needle.isEmpty, haystack.count >= needle.count else { return nil }
        var index = start
        while index + needle.count <= haystack.count {
            if haystack[index] == needle[0] && Array(haystack[index..<index + needle.count]) == needle { return index }
            index += 1
        }
        return nil
    }
}

/// Turns an import payload into transaction drafts.
///
/// CSV: a header row naming at least `amount`; optional `date`,
/// `description`, `type` (income/expense), `category`, `accountId`. Comma or
/// semicolon separated, RFC 4180 quoting. A binary Excel workbook is accepted
/// as opaque bytes and imports no rows (noted on the job); an "Excel" upload
/// that is really CSV text falls back to the CSV reader.
enum ImportParser {
    struct Outcome {
        var rows: [(line: Int, draft: TransactionDraft)] = []
        var errors: [String] = []
        var note: String?
    }

    static func parse(_ payload: [UInt8], format: ImportFormat, defaultAccountID: String?) -> Outcome {
        var bytes = payload
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }
        guard let text = String(validating: bytes, as: UTF8.self),
              !bytes.contains(0) else {
            var outcome = Outcome()
            outcome.note = format == .excel
                ? "binary workbook accepted as opaque bytes; the reference backend does not read .xlsx cells (send CSV to import rows)"
                : "payload is not UTF-8 text"
            return outcome
        }
        var outcome = parseCSV(text, defaultAccountID: defaultAccountID)
        if format == .excel { outcome.note = "excel upload read as CSV text (fallback)" }
        return outcome
    }

    static func parseCSV(_ text: String, defaultAccountID: String?) -> Outcome {
        var outcome = Outcome()
        let firstLine = text.prefix { $0 != "\n" && $0 != "\r\n" }
        let separator: Character = firstLine.contains(";") && !firstLine.contains(",") ? ";" : ","
        let records = records(text, separator: separator)
        guard let header = records.first else {
            outcome.errors.append("empty file")
            return outcome
        }
        let columns = header.fields.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        func column(_ name: String) -> Int? { columns.firstIndex(of: name) }
        guard let amountColumn = column("amount") else {
            outcome.errors.append("header row must name an amount column")
            return outcome
        }
        for record in records.dropFirst() {
            if record.fields.allSatisfy({ $0.trimmingCharacters(in: .whitespaces).isEmpty }) { continue }
            func field(_ index: Int?) -> String? {
                guard let index, index < record.fields.count else { return nil }
                let value = record.fields[index].trimmingCharacters(in: .whitespaces)
                return value.isEmpty ? nil : value
            }
            guard let amountText = field(amountColumn), var amount = Decimal(string: amountText) else {
                outcome.errors.append("line \(record.line): bad or missing amount")
                continue
            }
            var kind: TransactionKind?
            if let typeText = field(column("type")) {
                guard let parsed = TransactionKind(rawValue: typeText.lowercased()) else {
                    outcome.errors.append("line \(record.line): type must be income or expense")
                    continue
                }
                kind = parsed
            }
            if amount < 0 {
                if kind == nil { kind = .expense }
                amount = -amount
            }
            amount = Money.rounded(amount)
            guard amount > 0 else {
                outcome.errors.append("line \(record.line): amount must not be zero")
                continue
            }
            guard let accountID = field(column("accountid")) ?? defaultAccountID else {
                outcome.errors.append("line \(record.line): no accountId (column or ?accountId=)")
                continue
            }
            outcome.rows.append((record.line, TransactionDraft(accountId: accountID, type: kind ?? .income, amount: amount,
                                                               description: field(column("description")),
                                                               category: field(column("category")),
                                                               date: field(column("date")))))
        }
        return outcome
    }

    /// RFC 4180 records with their starting line numbers.
    static func records(_ text: String, separator: Character) -> [(line: Int, fields: [String])] {
        var records: [(line: Int, fields: [String])] = []
        var fields: [String] = []
        var field = ""
        var isQuoted = false
        var line = 1
        var recordLine = 1
        var characters = Array(text)
        if characters.last != "\n" && characters.last != "\r\n" { characters.append("\n") }
        var index = 0
        while index < characters.count {
            let character = characters[index]
            if isQuoted {
                if character == "\"" {
                    if index + 1 < characters.count && characters[index + 1] == "\"" {
                        field.append("\"")
                        index += 1
                    } else {
                        isQuoted = false
                    }
                } else {
                    if character == "\n" || character == "\r\n" { line += 1 }
                    field.append(character)
                }
            } else if character == "\"" && field.isEmpty {
                isQuoted = true
            } else if character == separator {
                fields.append(field)
                field = ""
            } else if character == "\n" || character == "\r\n" || character == "\r" {
                fields.append(field)
                records.append((recordLine, fields))
                fields = []
                field = ""
                line += 1
                recordLine = line
            } else {
                field.append(character)
            }
            index += 1
        }
        return records
    }
}
