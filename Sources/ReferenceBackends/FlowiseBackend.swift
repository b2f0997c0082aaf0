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
/// `Authorization: Bearer <key>`, else `401 {"message":"Unauthorized"}`. Several keys may be
/// accepted (``Options/apiKeys``, `--flowise-api-keys FILE`, one per line): every answer to
/// a request that presented one says which in `X-Flowise-Key: N` (its 1-based position:
/// ``Options/apiKey`` first, then ``Options/apiKeys``), so a test sees which credential a
/// proxy injected. A request with more than one `Authorization` field is refused (400): a
/// credential must be unambiguous.
///
/// A long answer, for streaming and credit benchmarks: ``Options/answerTokens``
/// (`--answer-tokens`, env `FLOWISE_ANSWER_TOKENS`) or the request field
/// `"answerTokens": N` (a Tollgate extension, 1…100 000) pads or cuts the canned answer
/// to N tokens (see ``answer(to:tokens:)``).
///
/// Chat messages belong to the consumer named in `X-Tollgate-Consumer` (added by the
/// proxy; `anonymous` without it): `GET /api/v1/chatmessage/{chatflowId}` lists the
/// caller's own only. They are kept in a journal (`flowise-*.journal`, written before
/// the answer, no `fsync`: they survive `kill -9`, not a power cut), compacted into
/// `flowise.json`; the latest ``maximumMessagesPerConsumer`` per consumer are kept.
public final class FlowiseBackend: Sendable {
    public struct Options: Sendable {
        /// Flowise's own API key (`--flowise-api-key`, env `FLOWISE_API_KEY`).
        public var apiKey: String?
        /// More accepted keys (`--flowise-api-keys FILE`, env `FLOWISE_API_KEYS_FILE`: one per
        /// line, blank lines and `#` comments skipped).
        public var apiKeys: [String] = []
        /// Pause between token events (`--token-delay-ms`, env `FLOWISE_TOKEN_DELAY_MS`).
        public var tokenDelay: Duration = .milliseconds(20)
        /// Tokens in every answer (`nil`: the canned answer as it is); a request's
        /// `answerTokens` field wins.
        public var answerTokens: Int?
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

    static let storeName = "flowise"
    /// Chat messages kept per consumer (older ones are dropped).
    public static let maximumMessagesPerConsumer = 1000
    /// The largest `answerTokens`.
    public static let maximumAnswerTokens = 100_000

    let store: JournaledStore<FlowiseState>
    private let options: Options
    private let counter = RequestCounter()
    private let streamsStarted = Atomic(0)
    private let streamsFinished = Atomic(0)

    public init(dataDirectory: String, options: Options = Options()) throws(ReferenceServerError) {
        self.options = options
        var storeOptions = JournaledStore<FlowiseState>.Options()
        storeOptions.durability = .written
        self.store = try JournaledStore(directory: dataDirectory, name: Self.storeName,
                                        initial: FlowiseState(chatflows: Self.defaultChatflows),
                                        options: storeOptions)
    }

    /// Waits for a background compaction, if one is running.
    public func shutdown() { store.waitForCompaction() }

    /// Streams whose last event has been written.
    public var finishedStreamCount: Int { streamsFinished.load(ordering: .acquiring) }

    public func router() -> ReferenceRouter {
        var router = ReferenceRouter()
        router.add("GET", "/health", counting: counter) { _ in .json(200, ["status": "ok"]) }
        router.add("GET", "/admin/stats", counting: counter) { [self] _ in stats() }
        router.add("GET", "/api/v1/ping", counting: counter) { _ in .text(200, "pong") }
        router.add("GET", "/api/v1/chatflows", counting: counter) { [self] request in
            let key = try authorize(request)
            return Self.naming(key, .json(200, .array(store.read { $0.chatflows }.map(\.json))))
        }
        router.add("GET", "/api/v1/chatflows/{id}", counting: counter) { [self] request in
            let key = try authorize(request)
            return Self.naming(key, .json(200, try chatflow(request.pathParameters["id"] ?? "").json))
        }
        router.add("POST", "/api/v1/prediction/{chatflowId}", counting: counter) { [self] request in
            let key = try authorize(request)
            return Self.naming(key, try predict(request))
        }
        router.add("GET", "/api/v1/chatmessage/{chatflowId}", counting: counter) { [self] request in
            let key = try authorize(request)
            return Self.naming(key, try messages(request))
        }
        return router
    }

    // MARK: - Answers

    /// The canned reply to `question`.
    public static func cannedAnswer(to question: String) -> String {
        "Reference answer: \(question)"
    }

    /// The canned reply, padded (` token5`, ` token6`, …) or cut to `tokens` tokens when
    /// given.
    public static func answer(to question: String, tokens: Int?) -> String {
        let canned = cannedAnswer(to: question)
        guard let tokens, tokens > 0 else { return canned }
        var parts = tokenize(canned)
        if parts.count >= tokens { return parts.prefix(tokens).joined() }
        parts.reserveCapacity(tokens)
        for index in parts.count..<tokens { parts.append(" token\(index + 1)") }
        return parts.joined()
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
        var answerTokens = options.answerTokens
        if let requested = body["answerTokens"] {
            guard let count = requested.intValue, (1...Self.maximumAnswerTokens).contains(count) else {
                throw Self.flowiseError(400, "answerTokens must be an integer in 1...\(Self.maximumAnswerTokens)")
            }
            answerTokens = count
        }
        let chatID = body["chatId"]?.stringValue ?? UUID().uuidString.lowercased()
        let sessionID = body["overrideConfig"]?["sessionId"]?.stringValue ?? chatID
        let answer = Self.answer(to: question, tokens: answerTokens)
        let tokens = Self.tokenize(answer)
        let usage = Self.usage(question: question, answerTokens: tokens.count)
        let messageID = UUID().uuidString.lowercased()
        let now = Date()
        let owner = request.consumer
        let exchange = [
            ChatMessage(id: UUID().uuidString.lowercased(), owner: owner, chatflowId: flow.id, chatId: chatID,
                        sessionId: sessionID, role: "userMessage", content: question, createdDate: now),
            ChatMessage(id: messageID, owner: owner, chatflowId: flow.id, chatId: chatID, sessionId: sessionID,
                        role: "apiMessage", content: answer, createdDate: now),
        ]
        try store.commit { _ in ([FlowiseEntry(messages: exchange)], ()) }
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
        let owner = request.consumer
        // The caller's own messages only.
        let list = store.read { state in
            (state.messages[owner] ?? []).filter { $0.chatflowId == flow.id && (chatID == nil || $0.chatId == chatID) }
        }
        return .json(200, .array(list.map(\.json)))
    }

    // MARK: - Checks

    /// Every key this server accepts, in the order `X-Flowise-Key` numbers them.
    var acceptedKeys: [String] { ([options.apiKey ?? ""] + options.apiKeys).filter { !$0.isEmpty } }

    /// The 1-based position of the key presented (nil when none is required); throws 401
    /// without a matching one, 400 when `Authorization` is sent more than once.
    private func authorize(_ request: ReferenceRequest) throws(ReferenceHTTPError) -> Int? {
        let keys = acceptedKeys
        guard !keys.isEmpty else { return nil }
        let fields = request.headers.filter { $0.name.lowercased() == "authorization" }
        if fields.count > 1 { throw ReferenceHTTPError(400, ["message": "more than one Authorization header"]) }
        let presented = fields.first.flatMap { field -> String? in
            let value = field.value
            guard value.count > 7, value.prefix(7).lowercased() == "bearer " else { return nil }
            return String(value.dropFirst(7))
        }
        guard let presented else { throw ReferenceHTTPError(401, ["message": "Unauthorized"]) }
        let digest = ReferenceCrypto.sha256(Array(presented.utf8))
        var found: Int?
        for (i, key) in keys.enumerated() {
            // Every key compared (no early exit on a match).
            if ReferenceCrypto.equalInConstantTime(digest, ReferenceCrypto.sha256(Array(key.utf8))), found == nil { found = i + 1 }
        }
        guard let found else { throw ReferenceHTTPError(401, ["message": "Unauthorized"]) }
        return found
    }

    /// `X-Flowise-Key: N` on an answer to a request that presented key N.
    static func naming(_ key: Int?, _ response: ReferenceResponse) -> ReferenceResponse {
        guard let key else { return response }
        var r = response
        r.headers.append((name: "X-Flowise-Key", value: String(key)))
        return r
    }

    /// Keys from a file: one per line, blank lines and `#` comments skipped.
    public static func readKeys(file path: String) throws -> [String] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") }
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
        let counts = store.read { ($0.chatflows.count, $0.messageCount) }
        return .json(200, ["backend": "flowise", "requests": .number(counter.value),
                           "uptimeSeconds": .double(counter.uptimeSeconds), "chatflows": .number(counts.0),
                           "messages": .number(counts.1),
                           "streamsStarted": .number(streamsStarted.load(ordering: .relaxed)),
                           "streamsFinished": .number(streamsFinished.load(ordering: .relaxed)),
                           "apiKeyRequired": .bool(!acceptedKeys.isEmpty), "apiKeys": .number(acceptedKeys.count)])
    }
}

// MARK: - State

/// Everything the Flowise backend persists (`flowise.json` and its journal).
struct FlowiseState: JournaledState {
    var lastSequence: UInt64 = 0
    var chatflows: [FlowiseBackend.Chatflow]
    /// Chat messages by owner (consumer), oldest first, the latest
    /// ``FlowiseBackend/maximumMessagesPerConsumer`` each.
    var messages: [String: [ChatMessage]] = [:]

    init(chatflows: [FlowiseBackend.Chatflow]) { self.chatflows = chatflows }

    var messageCount: Int { messages.values.reduce(0) { $0 + $1.count } }

    mutating func apply(_ entry: FlowiseEntry) {
        for message in entry.messages {
            var list = messages[message.owner] ?? []
            messages[message.owner] = nil  // keep the array uniquely referenced while it changes
            list.append(message)
            if list.count > FlowiseBackend.maximumMessagesPerConsumer {
                list.removeFirst(list.count - FlowiseBackend.maximumMessagesPerConsumer)
            }
            messages[message.owner] = list
        }
    }

    private enum CodingKeys: String, CodingKey { case lastSequence, chatflows, messages }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        lastSequence = try container.decodeIfPresent(UInt64.self, forKey: .lastSequence) ?? 0
        chatflows = try container.decode([FlowiseBackend.Chatflow].self, forKey: .chatflows)
        if let byOwner = try? container.decodeIfPresent([String: [ChatMessage]].self, forKey: .messages) {
            messages = byOwner
        } else if let flat = try? container.decodeIfPresent([ChatMessage].self, forKey: .messages) {
            // The earlier whole-state snapshot: one list, no owners.
            messages = Dictionary(grouping: flat, by: \.owner)
        }
    }
}

/// One journaled change: the messages of one prediction.
struct FlowiseEntry: Codable, Sendable {
    var messages: [ChatMessage]
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
    /// The consumer who asked (never shown to others).
    var owner: String
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

extension ChatMessage {
    private enum CodingKeys: String, CodingKey {
        case id, owner, chatflowId, chatId, sessionId, role, content, createdDate
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        id = try container.decode(String.self, forKey: .id)
        owner = try container.decodeIfPresent(String.self, forKey: .owner) ?? TollgateHeader.anonymousConsumer
        chatflowId = try container.decode(String.self, forKey: .chatflowId)
        chatId = try container.decode(String.self, forKey: .chatId)
        sessionId = try container.decode(String.self, forKey: .sessionId)
        role = try container.decode(String.self, forKey: .role)
        content = try container.decode(String.self, forKey: .content)
        createdDate = try container.decode(Date.self, forKey: .createdDate)
    }
}
