import ReferenceBackends
import Foundation
import Testing

struct FinanceBackendTests {
    @Test func accountAndTransactionCRUDMovesTheBalance() throws {
        let directory = TemporaryDirectory()
        try withBackends(finance: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.financePort))
            let me = [("X-Tollgate-Consumer", "alice")]
            let created = try client.request("POST", "/api/finance/accounts", headers: me,
                                             json: ["name": "Wallet", "currency": "VND", "initialBalance": 100.25])
            #expect(created.status == 201)
            let account = try created.json
            let accountID = try #require(account["id"]?.stringValue)
            #expect(account["balance"]?.serialized() == "100.25")
            #expect(account["owner"]?.stringValue == "alice")

            let income = try client.request("POST", "/api/finance/transactions", headers: me,
                                            json: ["accountId": .string(accountID), "type": "income", "amount": 50,
                                                   "description": "salary"])
            #expect(income.status == 201)
            let expense = try client.request("POST", "/api/finance/transactions", headers: me,
                                             json: ["accountId": .string(accountID), "amount": -20.1, "category": "food"])
            #expect(expense.status == 201)
            let expenseID = try #require(try expense.json["id"]?.stringValue)
            #expect(try expense.json["type"]?.stringValue == "expense")
            #expect(try client.request("GET", "/api/finance/accounts/\(accountID)", headers: me).json["balance"]?.serialized() == "130.15")

            // Update: the old effect is undone and the new one applied.
            let updated = try client.request("PUT", "/api/finance/transactions/\(expenseID)", headers: me, json: ["amount": 30])
            #expect(updated.status == 200)
            #expect(try client.request("GET", "/api/finance/accounts/\(accountID)", headers: me).json["balance"]?.serialized() == "120.25")

            let listed = try client.request("GET", "/api/finance/transactions?accountId=\(accountID)", headers: me).json
            #expect(listed["total"]?.intValue == 2)
            #expect(try client.request("GET", "/api/finance/transactions?accountId=other", headers: me).json["total"]?.intValue == 0)

            // An account with transactions cannot go; delete them first.
            #expect(try client.request("DELETE", "/api/finance/accounts/\(accountID)", headers: me).status == 409)
            #expect(try client.request("DELETE", "/api/finance/transactions/\(expenseID)", headers: me).status == 204)
            #expect(try client.request("GET", "/api/finance/accounts/\(accountID)", headers: me).json["balance"]?.serialized() == "150.25")
            #expect(try client.request("GET", "/api/finance/transactions/\(expenseID)", headers: me).status == 404)

            let renamed = try client.request("PUT", "/api/finance/accounts/\(accountID)", headers: me, json: ["name": "Bank"])
            #expect(try renamed.json["name"]?.stringValue == "Bank")
            #expect(try client.request("POST", "/api/finance/accounts", headers: me, json: ["currency": "VND"]).status == 400)
            #expect(try client.request("POST", "/api/finance/transactions", headers: me, body: Array("nope".utf8)).status == 400)
        }
    }

    @Test func recordsBelongToTheConsumerHeader() throws {
        let directory = TemporaryDirectory()
        try withBackends(finance: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.financePort))
            let account = try client.request("POST", "/api/finance/accounts", headers: [("X-Tollgate-Consumer", "alice")],
                                             json: ["name": "Alice's"]).json
            let accountID = try #require(account["id"]?.stringValue)
            #expect(try client.request("GET", "/api/finance/accounts/\(accountID)", headers: [("X-Tollgate-Consumer", "bob")]).status == 404)
            #expect(try client.request("GET", "/api/finance/accounts", headers: [("X-Tollgate-Consumer", "bob")]).json["total"]?.intValue == 0)
            // No header: the anonymous consumer.
            let anonymous = try client.request("POST", "/api/finance/accounts", json: ["name": "Anon"]).json
            #expect(anonymous["owner"]?.stringValue == "anonymous")
        }
    }

    @Test func csvImportIsAcceptedThenCompletesInTheBackground() throws {
        let directory = TemporaryDirectory()
        try withBackends(finance: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.financePort))
            let me = [("X-Tollgate-Consumer", "importer")]
            let accountID = try #require(try client.request("POST", "/api/finance/accounts", headers: me,
                                                            json: ["name": "Main"]).json["id"]?.stringValue)
            let csv = "date,description,amount,type\n2025-01-02,\"Rent, January\",500,expense\n2025-01-03,Salary,1200,income\n2025-01-04,Broken,abc,income\n"
            let accepted = try client.request("POST", "/api/finance/imports?accountId=\(accountID)",
                                              headers: me + [("Content-Type", "text/csv")], body: Array(csv.utf8))
            #expect(accepted.status == 202)
            #expect(try accepted.json["status"]?.stringValue == "queued")
            let jobID = try #require(try accepted.json["jobId"]?.stringValue)

            let job = try pollImport(client, jobID, headers: me)
            #expect(job["status"]?.stringValue == "completed")
            #expect(job["importedRows"]?.intValue == 2)
            #expect(job["failedRows"]?.intValue == 1)
            #expect(try client.request("GET", "/api/finance/accounts/\(accountID)", headers: me).json["balance"]?.serialized() == "700")
            #expect(try client.request("GET", "/api/finance/imports/\(jobID)", headers: [("X-Tollgate-Consumer", "other")]).status == 404)
        }
    }

    @Test func excelUploadIsAcceptedAsOpaqueBytes() throws {
        let directory = TemporaryDirectory()
        try withBackends(finance: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.financePort))
            let workbook: [UInt8] = [0x50, 0x4B, 0x03, 0x04, 0x14, 0x00, 0x06, 0x00, 0x08, 0x00, 0x00, 0x00, 0x21, 0x00]
            let boundary = "tollgate-boundary"
            let multipart = Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"file\"; filename=\"book.xlsx\"\r\nContent-Type: application/vnd.openxmlformats-officedocument.spreadsheetml.sheet\r\n\r\n".utf8)
                + workbook + Array("\r\n--\(boundary)--\r\n".utf8)
            let accepted = try client.request("POST", "/api/finance/imports",
                                              headers: [("Content-Type", "multipart/form-data; boundary=\(boundary)")],
                                              body: multipart)
            #expect(accepted.status == 202)
            let job = try pollImport(client, try #require(try accepted.json["jobId"]?.stringValue), headers: [])
            #expect(job["status"]?.stringValue == "completed")
            #expect(job["format"]?.stringValue == "excel")
            #expect(job["fileName"]?.stringValue == "book.xlsx")
            #expect(job["bytes"]?.intValue == workbook.count)
            #expect(job["importedRows"]?.intValue == 0)
        }
    }

    @Test func whoamiReportsTheIdentityHeadersItSaw() throws {
        let directory = TemporaryDirectory()
        try withBackends(finance: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.financePort))
            let seen = try client.request("GET", "/api/finance/whoami", headers: [
                ("X-Tollgate-Key-Id", "key_123"), ("X-Tollgate-Consumer", "acme"),
                ("X-Tollgate-Scopes", "finance:read finance:write"), ("X-Forwarded-For", "203.0.113.9"),
                ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "api.example"), ("X-Request-Id", "req-1"),
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ]).json
            #expect(seen["keyId"]?.stringValue == "key_123")
            #expect(seen["consumer"]?.stringValue == "acme")
            #expect(seen["scopeList"]?.arrayCount == 2)
            #expect(seen["forwardedFor"]?.stringValue == "203.0.113.9")
            #expect(seen["forwardedProto"]?.stringValue == "https")
            #expect(seen["forwardedHost"]?.stringValue == "api.example")
            #expect(seen["requestId"]?.stringValue == "req-1")
            #expect(seen["traceparent"]?.stringValue?.hasPrefix("00-0af7") == true)
            #expect(seen["sawApiKey"]?.boolValue == false)
            #expect(seen["sawAuthorization"]?.boolValue == false)

            let leaked = try client.request("GET", "/api/finance/whoami", headers: [("X-API-Key", "tg_live_x"),
                                                                                    ("Authorization", "Bearer y")]).json
            #expect(leaked["sawApiKey"]?.boolValue == true)
            #expect(leaked["sawAuthorization"]?.boolValue == true)
            #expect(leaked["keyId"] == .null)
        }
    }

    @Test func slowAnswersAfterTheRequestedDelay() throws {
        let directory = TemporaryDirectory()
        try withBackends(finance: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.financePort))
            let started = ContinuousClock.now
            let response = try client.request("GET", "/api/finance/slow?ms=30")
            #expect(response.status == 200)
            #expect(ContinuousClock.now - started >= .milliseconds(30))
            #expect(try client.request("GET", "/admin/stats").json["requests"]?.intValue == 2)
        }
    }

    /// Imports run on a bounded pool: one thread, one queued job; the rest are refused.
    @Test func importsPastTheQueueBoundAreRefusedWith503() throws {
        let directory = TemporaryDirectory()
        var options = fastOptions()
        options.finance.importWorkers = 1
        options.finance.importQueueCapacity = 1
        // The running job waits this long (cut short by stop()), holding the only thread.
        options.finance.importDelay = .seconds(60)
        try withBackends(finance: true, dataDirectory: directory.path, options: options) { backends in
            let client = try TestHTTPClient(port: try #require(backends.financePort))
            let csv = Array("amount,accountId\n1,x\n".utf8)
            // The thread takes at most one job (it is then held), and one more may wait:
            // of three, at least one is refused.
            let statuses = try (0..<3).map { _ in
                try client.request("POST", "/api/finance/imports", headers: [("Content-Type", "text/csv")], body: csv)
            }
            #expect(statuses[0].status == 202)
            let refused = statuses.filter { $0.status == 503 }
            #expect(!refused.isEmpty)
            #expect(statuses.allSatisfy { $0.status == 202 || $0.status == 503 })
            #expect(refused.allSatisfy { $0.header("Retry-After") == "1" })
            let stats = try client.request("GET", "/admin/stats").json
            #expect(stats["imports"]?.intValue == statuses.count - refused.count)
        }
    }

    private func pollImport(_ client: TestHTTPClient, _ jobID: String, headers: [(String, String)]) throws -> JSONValue {
        // Bounded wait for the background job; it normally finishes in milliseconds.
        for _ in 0..<1_000 {
            let job = try client.request("GET", "/api/finance/imports/\(jobID)", headers: headers).json
            if let status = job["status"]?.stringValue, status == "completed" || status == "failed" { return job }
            usleep(10_000)
        }
        throw TestHTTPClient.Failure(description: "import \(jobID) did not finish")
    }
}
