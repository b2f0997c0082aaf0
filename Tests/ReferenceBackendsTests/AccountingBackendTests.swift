import ReferenceBackends
import Dispatch
import Foundation
import Synchronization
import Testing

struct AccountingBackendTests {
    @Test func concurrentDeductsNeverOverdraw() throws {
        let directory = TemporaryDirectory()
        var options = fastOptions()
        options.accounting.initialCredits = 100
        try withBackends(accounting: true, dataDirectory: directory.path, options: options) { backends in
            let port = try #require(backends.accountingPort)
            let results = Mutex<[(status: Int, newBalance: Int?)]>([])
            let failures = Mutex<[String]>([])
            let ready = DispatchSemaphore(value: 0)
            let go = DispatchSemaphore(value: 0)
            var threads: [ReferenceThread] = []
            for _ in 0..<16 {
                threads.append(try ReferenceThread.spawn {
                    do {
                        let client = try TestHTTPClient(port: port)
                        ready.signal()
                        go.wait()
                        let response = try client.request("POST", "/api/credits/deduct",
                                                          headers: [("X-Tollgate-Consumer", "racer")],
                                                          json: ["credits": 10])
                        let newBalance = try response.json["newBalance"]?.intValue
                        results.withLock { $0.append((response.status, newBalance)) }
                    } catch {
                        ready.signal()
                        failures.withLock { $0.append("\(error)") }
                    }
                })
            }
            for _ in 0..<16 { ready.wait() }
            for _ in 0..<16 { go.signal() }
            for thread in threads { thread.join() }

            #expect(failures.withLock { $0 }.isEmpty)
            let outcomes = results.withLock { $0 }
            #expect(outcomes.count == 16)
            #expect(outcomes.filter { $0.status == 200 }.count == 10)
            #expect(outcomes.filter { $0.status == 402 }.count == 6)
            // Each success saw a distinct balance: 90, 80, …, 0 — never below zero.
            #expect(Set(outcomes.compactMap(\.newBalance)) == Set(stride(from: 0, through: 90, by: 10)))
            let client = try TestHTTPClient(port: port)
            let total = try client.request("GET", "/api/credits/total-balance", headers: [("X-Tollgate-Consumer", "racer")])
            #expect(total.text == #"{"totalCredits":0}"#)
            let refused = try client.request("POST", "/api/credits/deduct", headers: [("X-Tollgate-Consumer", "racer")],
                                             json: ["credits": 1])
            #expect(refused.status == 402)
            #expect(refused.text == #"{"success":false,"error":"insufficient credits","balance":0}"#)
            // Every answered deduct was on disk (group commits): a second process on the
            // same data directory, the first never stopped, sees them all.
            try withBackends(accounting: true, dataDirectory: directory.path, options: options) { second in
                let reader = try TestHTTPClient(port: try #require(second.accountingPort))
                let after = try reader.request("GET", "/api/credits/total-balance", headers: [("X-Tollgate-Consumer", "racer")])
                #expect(after.text == #"{"totalCredits":0}"#)
            }
        }
    }

    @Test func idempotencyKeyAppliesARetriedDeductOnce() throws {
        let directory = TemporaryDirectory()
        try withBackends(accounting: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.accountingPort))
            let headers = [("X-Tollgate-Consumer", "retrier"), ("Idempotency-Key", "req-42")]
            let first = try client.request("POST", "/api/credits/deduct", headers: headers, json: ["credits": 15])
            #expect(first.status == 200)
            #expect(first.text == #"{"success":true,"newBalance":85}"#)
            #expect(first.header("Idempotent-Replayed") == nil)

            let retry = try client.request("POST", "/api/credits/deduct", headers: headers, json: ["credits": 15])
            #expect(retry.status == 200)
            #expect(retry.text == first.text)
            #expect(retry.header("Idempotent-Replayed") == "true")
            #expect(try client.request("GET", "/api/credits/total-balance", headers: [("X-Tollgate-Consumer", "retrier")])
                .json["totalCredits"]?.intValue == 85)

            let mismatch = try client.request("POST", "/api/credits/deduct", headers: headers, json: ["credits": 16])
            #expect(mismatch.status == 422)

            // The same key from another user is another request.
            let other = try client.request("POST", "/api/credits/deduct",
                                           headers: [("X-Tollgate-Consumer", "someone"), ("Idempotency-Key", "req-42")],
                                           json: ["credits": 15])
            #expect(other.header("Idempotent-Replayed") == nil)

            let usageHeaders = [("X-Tollgate-Consumer", "retrier"), ("Idempotency-Key", "usage-1")]
            let usage: JSONValue = ["service": "flowise", "operation": "prediction", "credits": 3,
                                    "metadata": ["chatflowId": "abc"]]
            let recorded = try client.request("POST", "/api/usage/record", headers: usageHeaders, json: usage)
            #expect(recorded.status == 201)
            let again = try client.request("POST", "/api/usage/record", headers: usageHeaders, json: usage)
            #expect(again.status == 201)
            #expect(try again.json["id"] == recorded.json["id"])
            let records = try client.request("GET", "/api/usage/records", headers: [("X-Tollgate-Consumer", "retrier")]).json
            #expect(records["total"]?.intValue == 1)
            #expect(records["data"]?[0]?["metadata"]?["chatflowId"]?.stringValue == "abc")
        }
    }

    @Test func jwtSubjectIsTheUserWhenASecretIsConfigured() throws {
        let directory = TemporaryDirectory()
        var options = fastOptions()
        options.accounting.jwtSecret = "same_secret_across_all_services"
        try withBackends(accounting: true, dataDirectory: directory.path, options: options) { backends in
            let client = try TestHTTPClient(port: try #require(backends.accountingPort))
            let signer = HS256Verifier(secret: "same_secret_across_all_services")
            let now = Date().timeIntervalSince1970
            let alice = signer.sign(["sub": "alice", "role": "enduser", "type": "access", "exp": .double(now + 900)])
            let admin = signer.sign(["sub": "root", "role": "admin", "exp": .double(now + 900)])

            #expect(try client.request("GET", "/api/credits/total-balance").status == 401)
            // The consumer header is not trusted once JWTs are on.
            #expect(try client.request("GET", "/api/credits/total-balance", headers: [("X-Tollgate-Consumer", "alice")]).status == 401)
            let forged = HS256Verifier(secret: "wrong").sign(["sub": "alice"])
            #expect(try client.request("GET", "/api/credits/total-balance", headers: [("Authorization", "Bearer \(forged)")]).status == 401)
            let expired = signer.sign(["sub": "alice", "exp": .double(now - 3600)])
            #expect(try client.request("GET", "/api/credits/total-balance", headers: [("Authorization", "Bearer \(expired)")]).status == 401)

            let deducted = try client.request("POST", "/api/credits/deduct", headers: [("Authorization", "Bearer \(alice)")],
                                              json: ["credits": 40])
            #expect(deducted.text == #"{"success":true,"newBalance":60}"#)

            // Allocation is for admins only.
            let allocation: JSONValue = ["userId": "alice", "credits": 500, "expiryDays": 30]
            #expect(try client.request("POST", "/api/credits/allocate", headers: [("Authorization", "Bearer \(alice)")],
                                       json: allocation).status == 403)
            let allocated = try client.request("POST", "/api/credits/allocate", headers: [("Authorization", "Bearer \(admin)")],
                                               json: allocation)
            #expect(allocated.status == 200)
            #expect(try allocated.json["newBalance"]?.intValue == 560)

            let detail = try client.request("GET", "/api/credits/balance", headers: [("Authorization", "Bearer \(alice)")]).json
            #expect(detail["userId"]?.stringValue == "alice")
            #expect(detail["totalCredits"]?.intValue == 560)
            #expect(detail["allocations"]?.arrayCount == 2)
            // Credits that expire soonest are spent first.
            _ = try client.request("POST", "/api/credits/deduct", headers: [("Authorization", "Bearer \(alice)")],
                                   json: ["credits": 100])
            let after = try client.request("GET", "/api/credits/balance", headers: [("Authorization", "Bearer \(alice)")]).json
            #expect(after["allocations"]?[1]?["remaining"]?.intValue == 400)
            #expect(after["allocations"]?[0]?["remaining"]?.intValue == 60)
        }
    }

    @Test func calculatesCostsFromThePriceTable() throws {
        let directory = TemporaryDirectory()
        try withBackends(accounting: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.accountingPort))
            let tokens = try client.request("POST", "/api/credits/calculate",
                                            json: ["service": "flowise", "operation": "token", "units": 250]).json
            #expect(tokens["credits"]?.intValue == 3)
            let prediction = try client.request("POST", "/api/credits/calculate",
                                                json: ["service": "flowise", "operation": "prediction"]).json
            #expect(prediction["credits"]?.intValue == 1)
            let unknown = try client.request("POST", "/api/credits/calculate", json: ["service": "x", "operation": "y"])
            #expect(unknown.status == 400)
            #expect(try client.request("POST", "/api/credits/deduct", json: ["credits": 0]).status == 400)
            #expect(try client.request("POST", "/api/credits/deduct", json: ["credits": 1.5]).status == 400)
        }
    }

    /// Admin is exactly the `admin` scope: another service's admin scope is not accounting's.
    @Test func aScopedAdminScopeIsNotAccountingAdmin() throws {
        let directory = TemporaryDirectory()
        try withBackends(accounting: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.accountingPort))
            let grant: JSONValue = ["userId": "mallory", "credits": 1000]
            for scopes in ["finance:admin", "x:admin", "finance:read finance:admin", "admins", "Admin"] {
                let refused = try client.request("POST", "/api/credits/allocate",
                                                 headers: [("X-Tollgate-Consumer", "mallory"), ("X-Tollgate-Scopes", scopes)],
                                                 json: grant)
                #expect(refused.status == 403, "\(scopes)")
                // Nor may it deduct from, or read, someone else.
                let deduct = try client.request("POST", "/api/credits/deduct",
                                                headers: [("X-Tollgate-Consumer", "mallory"), ("X-Tollgate-Scopes", scopes)],
                                                json: ["credits": 1, "userId": "victim"])
                #expect(deduct.status == 403, "\(scopes)")
                let peek = try client.request("GET", "/api/credits/balance?userId=victim",
                                              headers: [("X-Tollgate-Consumer", "mallory"), ("X-Tollgate-Scopes", scopes)])
                #expect(peek.status == 403, "\(scopes)")
            }
            let me = [("X-Tollgate-Consumer", "mallory")]
            #expect(try client.request("GET", "/api/credits/total-balance", headers: me).text == #"{"totalCredits":100}"#)
            let admin = [("X-Tollgate-Consumer", "ops"), ("X-Tollgate-Scopes", "finance:read,admin")]
            let allowed = try client.request("POST", "/api/credits/allocate", headers: admin, json: grant)
            #expect(allowed.status == 200)
            #expect(try allowed.json["newBalance"]?.intValue == 1100)
        }
    }

    /// What the proxy's `accounting` ledger uses with its service credential: deduct for a
    /// user (atomic, 402 when short), refund without expiry, read a user's balance, all
    /// idempotent.
    @Test func aServiceCredentialDeductsRefundsAndReadsForAUser() throws {
        let directory = TemporaryDirectory()
        try withBackends(accounting: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.accountingPort))
            let service = [("X-Tollgate-Consumer", "tollgate"), ("X-Tollgate-Scopes", "admin")]
            let charged = try client.request("POST", "/api/credits/deduct", headers: service + [("Idempotency-Key", "charge-1")],
                                             json: ["userId": "carol", "credits": 30])
            #expect(charged.text == #"{"success":true,"newBalance":70}"#)
            let replay = try client.request("POST", "/api/credits/deduct", headers: service + [("Idempotency-Key", "charge-1")],
                                            json: ["userId": "carol", "credits": 30])
            #expect(replay.header("Idempotent-Replayed") == "true")
            #expect(replay.text == charged.text)
            #expect(try client.request("POST", "/api/credits/deduct", headers: service + [("Idempotency-Key", "charge-1")],
                                       json: ["userId": "carol", "credits": 31]).status == 422)
            // The service's own balance is untouched; carol's moved once.
            #expect(try client.request("GET", "/api/credits/total-balance", headers: service).text == #"{"totalCredits":100}"#)
            #expect(try client.request("GET", "/api/credits/total-balance?userId=carol", headers: service).text == #"{"totalCredits":70}"#)

            // Short: 402 with the balance, nothing changed.
            let short = try client.request("POST", "/api/credits/deduct", headers: service, json: ["userId": "carol", "credits": 71])
            #expect(short.status == 402)
            #expect(short.text == #"{"success":false,"error":"insufficient credits","balance":70}"#)

            // A refund: credits that never expire, applied once per key.
            let refund: JSONValue = ["userId": "carol", "credits": 30, "notes": "refund charge-1"]
            let refunded = try client.request("POST", "/api/credits/allocate", headers: service + [("Idempotency-Key", "refund-1")],
                                              json: refund)
            #expect(refunded.status == 200)
            #expect(try refunded.json["expiresAt"] == .null)
            #expect(try refunded.json["newBalance"]?.intValue == 100)
            let again = try client.request("POST", "/api/credits/allocate", headers: service + [("Idempotency-Key", "refund-1")],
                                           json: refund)
            #expect(again.header("Idempotent-Replayed") == "true")
            #expect(try client.request("POST", "/api/credits/allocate", headers: service + [("Idempotency-Key", "refund-1")],
                                       json: ["userId": "carol", "credits": 31]).status == 422)

            let detail = try client.request("GET", "/api/credits/balance?userId=carol", headers: service).json
            #expect(detail["userId"]?.stringValue == "carol")
            #expect(detail["totalCredits"]?.intValue == 100)
            #expect(detail["allocations"]?[1]?["expiresAt"] == .null)
            // Carol herself sees the same, and may not name anyone else.
            let carol = [("X-Tollgate-Consumer", "carol")]
            #expect(try client.request("GET", "/api/credits/balance", headers: carol).json["totalCredits"]?.intValue == 100)
            #expect(try client.request("GET", "/api/credits/balance?userId=carol", headers: carol).status == 200)
            #expect(try client.request("GET", "/api/credits/balance?userId=dave", headers: carol).status == 403)
        }
    }

    @Test func aServiceJWTWithTheAdminRoleDeductsForAUser() throws {
        let directory = TemporaryDirectory()
        var options = fastOptions()
        options.accounting.jwtSecret = "shared-test-secret"
        try withBackends(accounting: true, dataDirectory: directory.path, options: options) { backends in
            let client = try TestHTTPClient(port: try #require(backends.accountingPort))
            let signer = HS256Verifier(secret: "shared-test-secret")
            let exp = JSONValue.double(Date().timeIntervalSince1970 + 900)
            let service = [("Authorization", "Bearer \(signer.sign(["sub": "tollgate", "role": "admin", "exp": exp]))")]
            let scoped = [("Authorization", "Bearer \(signer.sign(["sub": "svc", "role": "finance:admin", "exp": exp]))")]
            #expect(try client.request("POST", "/api/credits/deduct", headers: scoped,
                                       json: ["userId": "erin", "credits": 5]).status == 403)
            #expect(try client.request("POST", "/api/credits/deduct", headers: service,
                                       json: ["userId": "erin", "credits": 5]).text == #"{"success":true,"newBalance":95}"#)
            let erin = [("Authorization", "Bearer \(signer.sign(["sub": "erin", "exp": exp]))")]
            #expect(try client.request("GET", "/api/credits/total-balance", headers: erin).text == #"{"totalCredits":95}"#)
        }
    }

    /// An answered deduct is on disk before the answer: a second process on the same data
    /// directory (the first never stopped, as after `kill -9`) sees it; a torn last line
    /// (a change never answered) is cut off.
    @Test func answeredChangesSurviveACrashAndATornTailIsCutOff() throws {
        let directory = TemporaryDirectory()
        let me = [("X-Tollgate-Consumer", "durable")]
        let crashed = try ReferenceBackends.start(finance: nil, accounting: loopbackEphemeral, flowise: nil,
                                                  dataDirectory: directory.path, options: fastOptions())
        let client = try TestHTTPClient(port: try #require(crashed.accountingPort))
        for _ in 0..<3 {
            #expect(try client.request("POST", "/api/credits/deduct", headers: me, json: ["credits": 7]).status == 200)
        }
        // No stop(): nothing is flushed on the way out.
        let journal = directory.path + "/accounting-000000000001.journal"
        let handle = try #require(FileHandle(forWritingAtPath: journal))
        handle.seekToEndOfFile()
        handle.write(Data(#"{"entry":{"account":{"userId":"durable","allocations":[],"creat"#.utf8))
        handle.closeFile()
        try withBackends(accounting: true, dataDirectory: directory.path) { backends in
            let again = try TestHTTPClient(port: try #require(backends.accountingPort))
            #expect(try again.request("GET", "/api/credits/total-balance", headers: me).text == #"{"totalCredits":79}"#)
            #expect(try again.request("POST", "/api/credits/deduct", headers: me, json: ["credits": 1]).status == 200)
        }
        let lines = try String(contentsOfFile: journal, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 4)
        #expect(lines.allSatisfy { (try? JSONValue.parse(Array($0.utf8))) != nil })
        crashed.stop()
    }

    /// The journal is compacted into a snapshot, idempotency keys are pruned past their
    /// bound, and the state comes back the same after a restart.
    @Test func theJournalIsCompactedAndOldKeysArePruned() throws {
        let directory = TemporaryDirectory()
        var options = fastOptions()
        options.accounting.initialCredits = 1000
        options.accounting.compactionBytes = 4096
        options.accounting.maximumIdempotencyKeys = 10
        let me = [("X-Tollgate-Consumer", "busy")]
        try withBackends(accounting: true, dataDirectory: directory.path, options: options) { backends in
            let client = try TestHTTPClient(port: try #require(backends.accountingPort))
            for index in 0..<100 {
                let response = try client.request("POST", "/api/credits/deduct", headers: me + [("Idempotency-Key", "k\(index)")],
                                                  json: ["credits": 1])
                #expect(response.status == 200)
            }
            let accounting = try #require(backends.accounting)
            accounting.shutdown()  // waits for a compaction in flight
            let status = accounting.journalStatus
            #expect(status.compactions >= 1)
            #expect(status.bytes < 4096 + 1024)
            let stats = try client.request("GET", "/admin/stats").json
            #expect(stats["idempotencyKeys"]?.intValue == 10)
            #expect(stats["creditTransactions"]?.intValue == 100)
        }
        #expect(FileManager.default.fileExists(atPath: directory.path + "/accounting.json"))
        try withBackends(accounting: true, dataDirectory: directory.path, options: options) { backends in
            let client = try TestHTTPClient(port: try #require(backends.accountingPort))
            #expect(try client.request("GET", "/api/credits/total-balance", headers: me).text == #"{"totalCredits":900}"#)
            // The newest key is remembered; the oldest was pruned, so it is a new request.
            let newest = try client.request("POST", "/api/credits/deduct", headers: me + [("Idempotency-Key", "k99")],
                                            json: ["credits": 1])
            #expect(newest.header("Idempotent-Replayed") == "true")
            let oldest = try client.request("POST", "/api/credits/deduct", headers: me + [("Idempotency-Key", "k0")],
                                            json: ["credits": 1])
            #expect(oldest.header("Idempotent-Replayed") == nil)
            #expect(try oldest.json["newBalance"]?.intValue == 899)
        }
    }

    /// Reads create nothing: a balance of an unknown user is its opening balance, and no
    /// account or journal line comes of it.
    @Test func balanceReadsWriteNothing() throws {
        let directory = TemporaryDirectory()
        try withBackends(accounting: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.accountingPort))
            for user in ["a", "b", "c"] {
                #expect(try client.request("GET", "/api/credits/balance", headers: [("X-Tollgate-Consumer", user)])
                    .json["totalCredits"]?.intValue == 100)
            }
            #expect(try client.request("GET", "/admin/stats").json["users"]?.intValue == 0)
            #expect(try #require(backends.accounting).journalStatus.bytes == 0)
        }
    }
}
