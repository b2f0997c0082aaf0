import ReferenceBackends
import Dispatch
import Foundation
import Synchronization
import Testing

struct FlowiseBackendTests {
    static let chatflow = FlowiseBackend.defaultChatflows[0].id

    @Test func answersOneJSONObjectWithoutStreaming() throws {
        let directory = TemporaryDirectory()
        try withBackends(flowise: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.flowisePort))
            let response = try client.request("POST", "/api/v1/prediction/\(Self.chatflow)",
                                              json: ["question": "Hi there", "overrideConfig": ["sessionId": "s-1"]])
            #expect(response.status == 200)
            #expect(response.header("Content-Type")?.hasPrefix("application/json") == true)
            let body = try response.json
            #expect(body["text"]?.stringValue == "Reference answer: Hi there")
            #expect(body["question"]?.stringValue == "Hi there")
            #expect(body["sessionId"]?.stringValue == "s-1")
            #expect(body["chatId"]?.stringValue?.isEmpty == false)
            #expect(body["chatMessageId"]?.stringValue?.isEmpty == false)
            #expect(body["usageMetadata"]?["total_tokens"]?.intValue == 6)

            let flows = try client.request("GET", "/api/v1/chatflows").json
            #expect(flows.arrayCount == FlowiseBackend.defaultChatflows.count)
            #expect(flows[0]?["deployed"]?.boolValue == true)
            #expect(flows[0]?["isPublic"] != nil)
            #expect(flows[0]?["category"]?.stringValue == "Support;Demo")
        }
    }

    @Test func streamsFlowiseEventBytesExactlyOneEventPerChunk() throws {
        let directory = TemporaryDirectory()
        try withBackends(flowise: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.flowisePort))
            try client.sendRequest("POST", "/api/v1/prediction/\(Self.chatflow)", headers: [("Content-Type", "application/json")],
                                   body: Array(#"{"question":"Hi \"there\" a/b","streaming":true,"chatId":"chat-1"}"#.utf8))
            let head = try client.readHead()
            #expect(head.status == 200)
            #expect(head.header("Content-Type") == "text/event-stream")
            #expect(head.header("Transfer-Encoding") == "chunked")
            #expect(head.header("Content-Length") == nil)
            var chunks: [String] = []
            while let chunk = try client.readChunk() { chunks.append(String(decoding: chunk, as: UTF8.self)) }

            let metadata = try #require(chunks.last)
            let data = try JSONValue.parse(Array(metadata.dropFirst("message:\ndata:".count).utf8))
            let messageID = try #require(data["data"]?["chatMessageId"]?.stringValue)
            let expected = [
                "message:\ndata:{\"event\":\"start\",\"data\":\"\"}\n\n",
                "message:\ndata:{\"event\":\"token\",\"data\":\"Reference\"}\n\n",
                "message:\ndata:{\"event\":\"token\",\"data\":\" answer:\"}\n\n",
                "message:\ndata:{\"event\":\"token\",\"data\":\" Hi\"}\n\n",
                "message:\ndata:{\"event\":\"token\",\"data\":\" \\\"there\\\"\"}\n\n",
                "message:\ndata:{\"event\":\"token\",\"data\":\" a/b\"}\n\n",
                "message:\ndata:{\"event\":\"usageMetadata\",\"data\":{\"input_tokens\":3,\"output_tokens\":5,\"total_tokens\":8}}\n\n",
                "message:\ndata:{\"event\":\"metadata\",\"data\":{\"chatId\":\"chat-1\",\"chatMessageId\":\"\(messageID)\",\"question\":\"Hi \\\"there\\\" a/b\",\"sessionId\":\"chat-1\"}}\n\n",
            ]
            #expect(chunks == expected)
            // Keep-alive holds after a stream: the next request works on the same connection.
            let messages = try client.request("GET", "/api/v1/chatmessage/\(Self.chatflow)?chatId=chat-1").json
            #expect(messages.arrayCount == 2)
        }
    }

    /// The first token reaches the client while the server still holds the
    /// last event back: events are flushed one by one, not buffered.
    @Test func firstTokenArrivesBeforeTheStreamEnds() throws {
        let directory = TemporaryDirectory()
        let gate = DispatchSemaphore(value: 0)
        let gateTimedOut = Atomic(false)
        let writeTimes = Mutex<[Int: ContinuousClock.Instant]>([:])
        var options = fastOptions()
        let delay = Duration.milliseconds(15)
        options.flowise.tokenDelay = delay
        options.flowise.beforeStreamEvent = { index, count in
            writeTimes.withLock { $0[index] = .now }
            if index == count - 1 && gate.wait(timeout: .now() + 20) == .timedOut {
                gateTimedOut.store(true, ordering: .relaxed)
            }
        }
        try withBackends(flowise: true, dataDirectory: directory.path, options: options) { backends in
            let flowise = try #require(backends.flowise)
            let client = try TestHTTPClient(port: try #require(backends.flowisePort))
            try client.sendRequest("POST", "/api/v1/prediction/\(Self.chatflow)", headers: [("Content-Type", "application/json")],
                                   body: Array(#"{"question":"one two three four","streaming":true}"#.utf8))
            #expect(try client.readHead().status == 200)
            #expect(try client.readChunk().map { String(decoding: $0, as: UTF8.self) }?.contains("\"start\"") == true)
            let firstToken = try #require(try client.readChunk())
            #expect(String(decoding: firstToken, as: UTF8.self).contains("\"token\""))
            // The server is parked before its last event: nothing has finished yet.
            #expect(flowise.finishedStreamCount == 0)
            gate.signal()
            var rest: [[UInt8]] = []
            while let chunk = try client.readChunk() { rest.append(chunk) }
            #expect(flowise.finishedStreamCount == 1)
            #expect(gateTimedOut.load(ordering: .relaxed) == false)
            // start + 6 tokens + usageMetadata + metadata = 9 events; 7 after the first token.
            #expect(rest.count == 7)
            // Successive token writes were at least the configured delay apart.
            let times = writeTimes.withLock { $0 }
            for index in 2...6 {
                let gap = try #require(times[index]) - (try #require(times[index - 1]))
                #expect(gap >= delay)
            }
        }
    }

    @Test func chatMessagesAreFilteredByConsumer() throws {
        let directory = TemporaryDirectory()
        try withBackends(flowise: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.flowisePort))
            for (consumer, question) in [("alice", "alice asks"), ("bob", "bob asks"), ("alice", "alice again")] {
                let asked = try client.request("POST", "/api/v1/prediction/\(Self.chatflow)",
                                               headers: [("X-Tollgate-Consumer", consumer)],
                                               json: ["question": .string(question), "chatId": "shared-chat"])
                #expect(asked.status == 200)
            }
            func contents(_ headers: [(String, String)], _ query: String = "") throws -> [String] {
                let list = try client.request("GET", "/api/v1/chatmessage/\(Self.chatflow)\(query)", headers: headers).json
                guard case .array(let items) = list else { return [] }
                return items.compactMap { $0["content"]?.stringValue }
            }
            #expect(try contents([("X-Tollgate-Consumer", "alice")]) ==
                ["alice asks", "Reference answer: alice asks", "alice again", "Reference answer: alice again"])
            #expect(try contents([("X-Tollgate-Consumer", "bob")], "?chatId=shared-chat") == ["bob asks", "Reference answer: bob asks"])
            #expect(try contents([("X-Tollgate-Consumer", "mallory")], "?chatId=shared-chat").isEmpty)
            #expect(try contents([]).isEmpty)
        }
        // The owners survive a restart.
        try withBackends(flowise: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.flowisePort))
            let list = try client.request("GET", "/api/v1/chatmessage/\(Self.chatflow)", headers: [("X-Tollgate-Consumer", "bob")]).json
            #expect(list.arrayCount == 2)
        }
    }

    @Test func answerTokensMakesAStreamAsLongAsAsked() throws {
        let directory = TemporaryDirectory()
        var options = fastOptions()
        options.flowise.tokenDelay = .zero
        options.flowise.answerTokens = 12
        try withBackends(flowise: true, dataDirectory: directory.path, options: options) { backends in
            let client = try TestHTTPClient(port: try #require(backends.flowisePort))
            func tokens(_ body: String) throws -> [String] {
                try client.sendRequest("POST", "/api/v1/prediction/\(Self.chatflow)", headers: [("Content-Type", "application/json")],
                                       body: Array(body.utf8))
                #expect(try client.readHead().status == 200)
                var events: [JSONValue] = []
                while let chunk = try client.readChunk() {
                    events.append(try JSONValue.parse(Array(String(decoding: chunk, as: UTF8.self).dropFirst("message:\ndata:".count).utf8)))
                }
                #expect(events.first?["event"]?.stringValue == "start")
                #expect(events.suffix(2).compactMap { $0["event"]?.stringValue } == ["usageMetadata", "metadata"])
                return events.filter { $0["event"]?.stringValue == "token" }.compactMap { $0["data"]?.stringValue }
            }
            // The option: 12 tokens.
            let padded = try tokens(#"{"question":"Hi","streaming":true}"#)
            #expect(padded.count == 12)
            #expect(padded.joined() == FlowiseBackend.answer(to: "Hi", tokens: 12))
            #expect(padded.joined().hasPrefix("Reference answer: Hi token4"))
            // The request field wins: 2000 tokens, or 2 (the canned answer cut).
            let long = try tokens(#"{"question":"Hi","streaming":true,"answerTokens":2000}"#)
            #expect(long.count == 2000)
            #expect(long.last == " token2000")
            #expect(try tokens(#"{"question":"Hi","streaming":true,"answerTokens":2}"#) == ["Reference", " answer:"])
            let refused = try client.request("POST", "/api/v1/prediction/\(Self.chatflow)",
                                             json: ["question": "Hi", "answerTokens": 0])
            #expect(refused.status == 400)
        }
    }

    @Test func requiresTheFlowiseAPIKeyWhenConfigured() throws {
        let directory = TemporaryDirectory()
        var options = fastOptions()
        options.flowise.apiKey = "flowise-secret"
        try withBackends(flowise: true, dataDirectory: directory.path, options: options) { backends in
            let client = try TestHTTPClient(port: try #require(backends.flowisePort))
            let missing = try client.request("POST", "/api/v1/prediction/\(Self.chatflow)", json: ["question": "hi"])
            #expect(missing.status == 401)
            #expect(missing.text == #"{"message":"Unauthorized"}"#)
            #expect(try client.request("GET", "/api/v1/chatflows", headers: [("Authorization", "Bearer nope")]).status == 401)
            let allowed = try client.request("GET", "/api/v1/chatflows", headers: [("Authorization", "Bearer flowise-secret")])
            #expect(allowed.status == 200)
            #expect(try client.request("GET", "/api/v1/ping").text == "pong")
        }
    }

    /// Several keys (`apiKeys`, `--flowise-api-keys`): each works, and the answer names the
    /// one presented (`X-Flowise-Key`, 1-based: `apiKey` first); two Authorization fields are
    /// refused.
    @Test func acceptsSeveralKeysAndNamesTheOnePresented() throws {
        let directory = TemporaryDirectory()
        var options = fastOptions()
        options.flowise.apiKey = "flowise-main"
        options.flowise.apiKeys = ["flowise-alice", "flowise-bob"]
        try withBackends(flowise: true, dataDirectory: directory.path, options: options) { backends in
            let client = try TestHTTPClient(port: try #require(backends.flowisePort))
            for (key, index) in [("flowise-main", "1"), ("flowise-alice", "2"), ("flowise-bob", "3")] {
                let r = try client.request("POST", "/api/v1/prediction/\(Self.chatflow)",
                                           headers: [("Authorization", "Bearer \(key)")], json: ["question": "hi"])
                #expect(r.status == 200)
                #expect(r.header("X-Flowise-Key") == index)
            }
            let unknown = try client.request("GET", "/api/v1/chatflows", headers: [("Authorization", "Bearer flowise-carol")])
            #expect(unknown.status == 401)
            #expect(unknown.header("X-Flowise-Key") == nil)
            let two = try client.request("GET", "/api/v1/chatflows", headers: [("Authorization", "Bearer flowise-bob"),
                                                                               ("Authorization", "Basic eDp5")])
            #expect(two.status == 400)
        }
    }

    @Test func readsKeysFromAFile() throws {
        let directory = TemporaryDirectory()
        let file = directory.path + "/keys"
        try "# keys\nflowise-a\n\n  flowise-b  \n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try FlowiseBackend.readKeys(file: file) == ["flowise-a", "flowise-b"])
    }

    @Test func unknownChatflowIs404LikeFlowise() throws {
        let directory = TemporaryDirectory()
        try withBackends(flowise: true, dataDirectory: directory.path) { backends in
            let client = try TestHTTPClient(port: try #require(backends.flowisePort))
            let response = try client.request("POST", "/api/v1/prediction/nope", json: ["question": "hi", "streaming": true])
            #expect(response.status == 404)
            #expect(response.text == #"{"statusCode":404,"success":false,"message":"Chatflow nope not found","stack":{}}"#)
        }
    }
}

struct PersistenceTests {
    @Test func stateSurvivesARestartOnTheSameDataDirectory() throws {
        let directory = TemporaryDirectory()
        let me = [("X-Tollgate-Consumer", "keeper")]
        let accountID = try withBackends(finance: true, accounting: true, flowise: true,
                                         dataDirectory: directory.path) { backends in
            let finance = try TestHTTPClient(port: try #require(backends.financePort))
            let accountID = try #require(try finance.request("POST", "/api/finance/accounts", headers: me,
                                                             json: ["name": "Durable", "initialBalance": 10]).json["id"]?.stringValue)
            #expect(try finance.request("POST", "/api/finance/transactions", headers: me,
                                        json: ["accountId": .string(accountID), "amount": 5, "type": "income"]).status == 201)
            let accounting = try TestHTTPClient(port: try #require(backends.accountingPort))
            #expect(try accounting.request("POST", "/api/credits/deduct", headers: me + [("Idempotency-Key", "k1")],
                                           json: ["credits": 30]).status == 200)
            let flowise = try TestHTTPClient(port: try #require(backends.flowisePort))
            #expect(try flowise.request("POST", "/api/v1/prediction/\(FlowiseBackend.defaultChatflows[1].id)",
                                        json: ["question": "remember me", "chatId": "c-9"]).status == 200)
            return accountID
        }
        // Journals, compacted into `<name>.json` snapshots once they grow.
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        #expect(files == ["accounting-000000000001.journal", "finance-000000000001.journal", "flowise-000000000001.journal"])

        try withBackends(finance: true, accounting: true, flowise: true, dataDirectory: directory.path) { backends in
            let finance = try TestHTTPClient(port: try #require(backends.financePort))
            let account = try finance.request("GET", "/api/finance/accounts/\(accountID)", headers: me)
            #expect(account.status == 200)
            #expect(try account.json["balance"]?.serialized() == "15")
            #expect(try finance.request("GET", "/api/finance/transactions", headers: me).json["total"]?.intValue == 1)
            let accounting = try TestHTTPClient(port: try #require(backends.accountingPort))
            #expect(try accounting.request("GET", "/api/credits/total-balance", headers: me).text == #"{"totalCredits":70}"#)
            // The idempotency record survived too: the retry is a replay.
            let retry = try accounting.request("POST", "/api/credits/deduct", headers: me + [("Idempotency-Key", "k1")],
                                               json: ["credits": 30])
            #expect(retry.header("Idempotent-Replayed") == "true")
            #expect(try accounting.request("GET", "/api/credits/total-balance", headers: me).text == #"{"totalCredits":70}"#)
            let flowise = try TestHTTPClient(port: try #require(backends.flowisePort))
            let messages = try flowise.request("GET", "/api/v1/chatmessage/\(FlowiseBackend.defaultChatflows[1].id)?chatId=c-9").json
            #expect(messages.arrayCount == 2)
            #expect(messages[0]?["content"]?.stringValue == "remember me")
        }
    }
}
