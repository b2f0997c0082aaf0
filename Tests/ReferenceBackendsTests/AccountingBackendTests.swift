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
}
