import Foundation
import Synchronization

/// A Flowise-style AI chat server (seed 003, `BACKENDS.md`).
///
/// `POST /api/v1/prediction/{chatflowId}` answers a canned reply (see
/// ``cannedAnswer(to:)``). With `"streaming": true` it sends Flowise's own
/// event bytes, one chunk per event, flushed at once:
///
/// ```
/// message:\ndata:{"event":"start","data":""}\n\n
/// message:\ndata:{"event":"token","data":"<token>"}\n\n        one per token, tokenDelay apart
/// message:\ndata:{"event":"usageMetadata","data":{"input_tokens":…,"output_tokens":…,"total_tokens":…}}\n\n
/// message:\ndata:{"event":"metadata","data":{"chatId":…,"chatMessageId":…,"question":…,"sessionId":…}}\n\n
/// ```
///
/// and then ends the response (no `end` event, as the current Flowise server).
/// With an API key configured every `/api/v1/…` route but `ping` needs
/// `Authorization: Bearer <key>`, else `401 {"message":"Unauthorized"}`.
public final class FlowiseBackend: Sendable {
    public struct Options: Sendable {
        /// Flowise's own API key (`--flowise-api-key`, env `FLOWISE_API_KEY`).
        public var apiKey: String?
        /// Pause between token events (`--token-delay-ms`, env `FLOWISE_TOKEN_DELAY_MS`).
        public var tokenDelay: Duration = .milliseconds(20)
        /// Test seam: called on the streaming thread just before event `index`
        /// (0-based) of `count` is written. Tests hold the stream open here.
        public var beforeStreamEvent: (@Sendable (_ index: Int, _ count: Int) -> Void)?
        public init() {}
    }

    /// The chatflows every fresh data directory starts with (ids are stable
    /// so demo policies can name them).
    public static let defaultChatflows: [Chatflow] = [
        Chatflow(id: "8c1f3e52-3c4b-4d2a-9a57-0d5f2b7c6a11", name: "Tollgate Assistant", deployed: true,
                 isPublic: false, category: "Support;Demo", createdDate: Date(timeIntervalSince1970: 1_735_689_600)),
        Chatflow(id: "2f6b9a7e-5d41-4c8e-b0f3-7a9c1e4d2b36", name: "Finance Q&A", deployed: true,
                 isPublic: false, category: "Finance", createdDate: Date(timeIntervalSince1970: 1_735_776_000)),
        Chatflow(id: "d3a7c2e9-1b84-4f6d-8e25-94c0b7a1f5e8", name: "Draft Flow", deployed: false,
                 isPublic: true, category: nil, createdDate: Date(timeIntervalSince1970: 1_735_862_400)),
    ]

    static let snapshotName = "flowise.json"

    let store: StateStore<FlowiseState>
    private let options: Options
    private let counter = RequestCounter()
    private let streamsStarted = Atomic(0)
    private let streamsFinished = Atomic(0)

    public init(dataDirectory: String, options: Options = Options()) throws(ReferenceServerError) {
        self.options = options
        self.store = try StateStore(directory: dataDirectory, name: Self.snapshotName,
                                    initial: FlowiseState(chatflows: Self.defaultChatflows))
    }

    /// Streams whose last event has been written.
    public var finishedStreamCount: Int { streamsFinished.load(ordering: .acquiring) }

    public func router() -> ReferenceRouter {
        var router = ReferenceRouter()
        router.add("GET", "/health", counting: counter) { _ in .json(200, ["status": "ok"]) }
        router.add("GET", "/admin/stats", counting: counter) { [self] _ in stats() }
        router.add("GET", "/api/v1/ping", counting: counter) { _ in .text(200, "pong") }
        router.add("GET", "/api/v1/chatflows", counting: counter) { [self] request in
            try authorize(request)
            return .json(200, .array(store.read { $0.chatflows }.map(\.json)))
        }
        router.add("GET", "/api/v1/chatflows/{id}", counting: counter) { [self] request in
            try authorize(request)
            return .json(200, try chatflow(request.pathParameters["id"] ?? "").json)
        }
        router.add("POST", "/api/v1/prediction/{chatflowId}", counting: counter) { [self] request in
            try authorize(request)
            return try predict(request)
        }
        router.add("GET", "/api/v1/chatmessage/{chatflowId}", counting: counter) { [self] request in
            try authorize(request)
            return try messages(request)
        }
        return router
    }

    // MARK: - Answers

    /// The canned reply to `question`.
    public static func cannedAnswer(to question: String) -> String {
        "Reference answer: \(question)"
    }

    /// Splits text into tokens: each is a run of whitespace plus the word after
    /// it (the first has no leading whitespace), so the tokens concatenate back
    /// to the text exactly.
    public static func tokenize(_ text: String) -> [String] {
        var tokens: [String] = []
        var current = ""
        var hasWord = false
        for character in text {
            if character.isWhitespace {
                if hasWord {
                    tokens.append(current)
                    current = ""
                    hasWord = false
                }
                current.append(character)
            } else {
                current.append(character)
                hasWord = true
            }
        }
        if !current.isEmpty {
            if hasWord || tokens.isEmpty { tokens.append(current) } else { tokens[tokens.count - 1] += current }
        }
        return tokens
    }

    /// One Flowise SSE event: `message:\ndata:<json>\n\n`.
    public static func event(_ name: String, _ data: JSONValue) -> String {
        let payload: JSONValue = ["event": .string(name), "data": data]
        return "message:\ndata:\(payload.serialized())\n\n"
    }

    static func usage(question: String, answerTokens: Int) -> JSONValue {
        let input = tokenize(question).count
        return ["input_tokens": .number(input), "output_tokens": .number(answerTokens),
                "total_tokens": .number(input + answerTokens)]
    }

    private func predict(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let flow = try chatflow(request.pathParameters["chatflowId"] ?? "")
        let body = try request.jsonObject()
        guard let question = body["question"]?.stringValue else {
            throw Self.flowiseError(400, "question is required")
        }
        let isStreaming = body["streaming"]?.boolValue ?? false
        let chatID = body["chatId"]?.stringValue ?? UUID().uuidString.lowercased()
        let sessionID = body["overrideConfig"]?["sessionId"]?.stringValue ?? chatID
        let answer = Self.cannedAnswer(to: question)
        let tokens = Self.tokenize(answer)
        let usage = Self.usage(question: question, answerTokens: tokens.count)
        let messageID = UUID().uuidString.lowercased()
        let now = Date()
        try store.mutate { state in
            state.messages.append(ChatMessage(id: UUID().uuidString.lowercased(), chatflowId: flow.id, chatId: chatID,
                                              sessionId: sessionID, role: "userMessage", content: question, createdDate: now))
            state.messages.append(ChatMessage(id: messageID, chatflowId: flow.id, chatId: chatID, sessionId: sessionID,
                                              role: "apiMessage", content: answer, createdDate: now))
        }
        guard isStreaming else {
            return .json(200, ["text": .string(answer), "question": .string(question), "chatId": .string(chatID),
                               "chatMessageId": .string(messageID), "isStreamValid": false,
                               "sessionId": .string(sessionID), "usageMetadata": usage])
        }
        let events = [Self.event("start", "")]
            + tokens.map { Self.event("token", .string($0)) }
            + [Self.event("usageMetadata", usage),
               Self.event("metadata", ["chatId": .string(chatID), "chatMessageId": .string(messageID),
                                       "question": .string(question), "sessionId": .string(sessionID)])]
        let delay = options.tokenDelay
        let probe = options.beforeStreamEvent
        let stopSignal = request.stopSignal
        streamsStarted.add(1, ordering: .relaxed)
        return .eventStream(headers: [("Connection", "keep-alive"), ("X-Accel-Buffering", "no")]) { [self] writer in
            for (index, event) in events.enumerated() {
                // Tokens after the first arrive `delay` apart.
                if index >= 2 && index <= tokens.count {
                    guard stopSignal.sleep(for: delay) else { return }
                }
                probe?(index, events.count)
                try writer.write(event)
            }
            streamsFinished.add(1, ordering: .releasing)
        }
    }

    private func messages(_ request: ReferenceRequest) throws -> ReferenceResponse {
        let flow = try chatflow(request.pathParameters["chatflowId"] ?? "")
        let chatID = request.query("chatId")
        let list = store.read { state in
            state.messages.filter { $0.chatflowId == flow.id && (chatID == nil || $0.chatId == chatID) }
        }
        return .json(200, .array(list.map(\.json)))
    }

    // MARK: - Checks

    private func authorize(_ request: ReferenceRequest) throws(ReferenceHTTPError) {
        guard let key = options.apiKey, !key.isEmpty else { return }
        let presented = request.header("Authorization").flatMap { value -> String? in
            guard value.count > 7, value.prefix(7).lowercased() == "bearer " else { return nil }
            return String(value.dropFirst(7))
        }
        guard let presented,
              ReferenceCrypto.equalInConstantTime(ReferenceCrypto.sha256(Array(presented.utf8)),
                                                  ReferenceCrypto.sha256(Array(key.utf8))) else {
            throw ReferenceHTTPError(401, ["message": "Unauthorized"])
        }
    }

    private func chatflow(_ id: String) throws(ReferenceHTTPError) -> Chatflow {
        guard let flow = store.read({ state in state.chatflows.first { $0.id == id } }) else {
            throw Self.flowiseError(404, "Chatflow \(id) not found")
        }
        return flow
    }

    /// Flowise's error body: `{"statusCode":…,"success":false,"message":…,"stack":{}}`.
    static func flowiseError(_ status: Int, _ message: String) -> ReferenceHTTPError {
        ReferenceHTTPError(status, ["statusCode": .number(status), "success": false, "message": .string(message),
                                    "stack": [:]])
    }

    private func stats() -> ReferenceResponse {
        let counts = store.read { ($0.chatflows.count, $0.messages.count) }
        return .json(200, ["backend": "flowise", "requests": .number(counter.value),
                           "uptimeSeconds": .double(counter.uptimeSeconds), "chatflows": .number(counts.0),
                           "messages": .number(counts.1),
                           "streamsStarted": .number(streamsStarted.load(ordering: .relaxed)),
                           "streamsFinished": .number(streamsFinished.load(ordering: .relaxed)),
                           "apiKeyRequired": .bool(!(options.apiKey ?? "").isEmpty)])
    }
}

// MARK: - State

/// Everything the Flowise backend persists (`flowise.json`).
struct FlowiseState: Codable, Sendable {
    var chatflows: [FlowiseBackend.Chatflow]
    var messages: [ChatMessage] = []
}

extension FlowiseBackend {
    public struct Chatflow: Codable, Sendable {
        public var id: String
        public var name: String
        public var deployed: Bool
        public var isPublic: Bool
        public var category: String?
        public var createdDate: Date

        var json: JSONValue {
            ["id": .string(id), "name": .string(name), "deployed": .bool(deployed), "isPublic": .bool(isPublic),
             "category": .optional(category), "type": "CHATFLOW", "createdDate": .string(Timestamp.iso(createdDate)),
             "updatedDate": .string(Timestamp.iso(createdDate))]
        }
    }
}

struct ChatMessage: Codable, Sendable {
    var id: String
    var chatflowId: String
    var chatId: String
    var sessionId: String
    var role: String
    var content: String
    var createdDate: Date

    var json: JSONValue {
        ["id": .string(id), "chatflowid": .string(chatflowId), "chatId": .string(chatId), "sessionId": .string(sessionId),
         "role": .string(role), "content": .string(content), "createdDate": .string(Timestamp.iso(createdDate))]
    }
}
