import Testing
@testable import Policy

/// What a meter says after a stream (everything but the line state).
struct MeterReading: Equatable, CustomStringConvertible {
    var tokens: Int64
    var input: Int64?
    var output: Int64?
    var events: Int
    var error: Bool
    var done: Bool

    init(tokens: Int64, input: Int64? = nil, output: Int64? = nil, events: Int, error: Bool = false, done: Bool = false) {
        self.tokens = tokens
        self.input = input
        self.output = output
        self.events = events
        self.error = error
        self.done = done
    }

    init(_ m: StreamMeter) {
        self.init(tokens: m.outputTokens, input: m.reportedInput, output: m.reportedOutput, events: m.events,
                  error: m.sawError, done: m.sawDone)
    }

    var description: String {
        "tokens \(tokens) input \(input.map(String.init) ?? "nil") output \(output.map(String.init) ?? "nil") "
            + "events \(events) error \(error) done \(done)"
    }
}

/// Feeds `bytes` in the given pieces (each copied into its own array), with no budget.
func meterReading(_ bytes: [UInt8], _ dialect: StreamDialect, pieces: [Range<Int>]) -> MeterReading {
    var m = StreamMeter(dialect: dialect)
    for r in pieces {
        let piece = Array(bytes[r])
        let used = m.scan(piece, budget: .max)
        if used != piece.count { Issue.record("consumed \(used) of \(piece.count)") }
    }
    return MeterReading(m)
}

/// The reading whole; checks that one byte at a time and every split in two (and, for long
/// streams, every 1/64th) give the same.
func meterAllWays(_ text: String, _ dialect: StreamDialect, sourceLocation: Testing.SourceLocation = #_sourceLocation) -> MeterReading {
    let bytes = Array(text.utf8)
    let n = bytes.count
    let whole = meterReading(bytes, dialect, pieces: [0..<n])
    #expect(meterReading(bytes, dialect, pieces: (0..<n).map { $0..<$0 + 1 }) == whole,
            "byte at a time", sourceLocation: sourceLocation)
    let step = n <= 4096 ? 1 : n / 64
    for k in stride(from: 0, through: n, by: step) {
        let split = meterReading(bytes, dialect, pieces: [0..<k, k..<n])
        #expect(split == whole, "split at \(k)", sourceLocation: sourceLocation)
        if split != whole { break }
    }
    return whole
}

/// Flowise's own event bytes: `message:\ndata:<json>\n\n` (BACKENDS.md; what
/// `FlowiseBackend.event(_:_:)` writes: JSONValue.serialized(), keys in order, no spaces).
func flowiseEvent(_ name: String, _ dataJSON: String) -> String {
    "message:\ndata:{\"event\":\"\(name)\",\"data\":\(dataJSON)}\n\n"
}

/// The reference backend's stream for the question "hello" (`FlowiseBackend.predict`): the
/// canned answer "Reference answer: hello" as three tokens, then usage and metadata.
let referenceFlowiseStream: String =
    flowiseEvent("start", "\"\"")
    + flowiseEvent("token", "\"Reference\"")
    + flowiseEvent("token", "\" answer:\"")
    + flowiseEvent("token", "\" hello\"")
    + flowiseEvent("usageMetadata", #"{"input_tokens":1,"output_tokens":3,"total_tokens":4}"#)
    + flowiseEvent("metadata", #"{"chatId":"0b7e2c3a-9d1f-4e6a-8c2b-5f4d3e2a1b0c","chatMessageId":"6a5b4c3d-2e1f-4a0b-9c8d-7e6f5a4b3c2d","question":"hello","sessionId":"0b7e2c3a-9d1f-4e6a-8c2b-5f4d3e2a1b0c"}"#)

struct StreamMeterFlowiseTests {
    @Test func referenceBackendStream() {
        let r = meterAllWays(referenceFlowiseStream, .flowise)
        #expect(r == MeterReading(tokens: 3, input: 1, output: 3, events: 6))
    }

    @Test func backendsDocExample() {
        // BACKENDS.md: start, "Hel", "lo", usageMetadata, metadata.
        let text = """
            message:
            data:{"event":"start","data":""}

            message:
            data:{"event":"token","data":"Hel"}

            message:
            data:{"event":"token","data":"lo"}

            message:
            data:{"event":"usageMetadata","data":{"input_tokens":5,"output_tokens":2,"total_tokens":7}}

            message:
            data:{"event":"metadata","data":{"chatId":"c","chatMessageId":"m"}}


            """
        let r = meterAllWays(text, .flowise)
        #expect(r == MeterReading(tokens: 2, input: 5, output: 2, events: 5))
    }

    @Test(arguments: ["\r\n", "\r", "\n"])
    func lineEndings(_ eol: String) {
        let text = referenceFlowiseStream.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: eol)
        #expect(meterAllWays(text, .flowise) == MeterReading(tokens: 3, input: 1, output: 3, events: 6))
    }

    @Test func mixedLineEndings() {
        let text = "message:\r\ndata:{\"event\":\"token\",\"data\":\"a\"}\r\r"
            + "message:\rdata:{\"event\":\"token\",\"data\":\"b\"}\n\r\n"
            + "data:{\"event\":\"token\",\"data\":\"c\"}\r\n\n"
        #expect(meterAllWays(text, .flowise) == MeterReading(tokens: 3, events: 3))
    }

    @Test func heartbeatsAndCommentsCountNothing() {
        let text = ":heartbeat\n\n" + flowiseEvent("token", "\"a\"") + ":heartbeat\n\n:heartbeat\n"
            + ": data:{\"event\":\"token\",\"data\":\"x\"}\n\n" + flowiseEvent("token", "\"b\"") + ":heartbeat\n\n"
        #expect(meterAllWays(text, .flowise) == MeterReading(tokens: 2, events: 2))
    }

    @Test func eventWithoutDataIsNotAnEvent() {
        let text = "message:\n\nevent: token\nid: 4\nretry: 10\n\n\n\n" + flowiseEvent("token", "\"a\"")
        #expect(meterAllWays(text, .flowise) == MeterReading(tokens: 1, events: 1))
    }

    @Test func onlyTheDataFieldIsParsed() {
        let text = "Data:{\"event\":\"token\"}\n\ndata :{\"event\":\"token\"}\n\ndat:{\"event\":\"token\"}\n\n"
            + "datax:{\"event\":\"token\"}\n\nmessage:{\"event\":\"token\"}\n\n"
        // None of those lines is a data field: no event is dispatched.
        #expect(meterAllWays(text, .flowise) == MeterReading(tokens: 0, events: 0))
        // A bare `data` line is a data field with an empty value: an event, no token.
        #expect(meterAllWays("data\n\ndata:\n\n", .flowise) == MeterReading(tokens: 0, events: 2))
    }

    @Test func oneLeadingSpaceIsRemovedAndDataLinesAreJoined() {
        let text = "data: {\"event\":\"token\",\"data\":\"a\"}\n\n"
            + "data:  {\"event\":\"token\",\"data\":\"b\"}\n\n"
            + "data:{\"event\":\ndata:\"token\",\ndata: \"data\":\"c\"}\n\n"
        #expect(meterAllWays(text, .flowise) == MeterReading(tokens: 3, events: 3))
        // Joined with LF: a string broken across data lines is not JSON, but its event was
        // already recognised.
        #expect(meterAllWays("data:{\"event\":\"token\",\"data\":\"a\ndata:b\"}\n\n", .flowise)
                == MeterReading(tokens: 1, events: 1))
        #expect(meterAllWays("data:{\"event\":\"tok\ndata:en\"}\n\n", .flowise) == MeterReading(tokens: 0, events: 1))
    }

    @Test func byteOrderMarkAtTheStart() {
        let text = "\u{FEFF}" + flowiseEvent("token", "\"a\"")
        #expect(meterAllWays(text, .flowise) == MeterReading(tokens: 1, events: 1))
        // A BOM-like start that is not one is a field name (not `data`).
        let bytes: [UInt8] = [0xEF, 0xBB] + Array("data:{\"event\":\"token\"}\n\n".utf8) + Array(flowiseEvent("token", "1").utf8)
        #expect(meterReading(bytes, .flowise, pieces: [0..<bytes.count]) == MeterReading(tokens: 1, events: 1))
        #expect(meterReading(bytes, .flowise, pieces: (0..<bytes.count).map { $0..<$0 + 1 }) == MeterReading(tokens: 1, events: 1))
    }

    @Test func keyOrderEscapesAndDuplicates() {
        #expect(meterAllWays("data:{\"data\":\"x\",\"event\":\"token\"}\n\n", .flowise).tokens == 1)
        #expect(meterAllWays("data:{\"event\":\"tok\\u0065n\",\"data\":\"x\"}\n\n", .flowise).tokens == 1)
        #expect(meterAllWays("data:{\"ev\\u0065nt\":\"token\"}\n\n", .flowise).tokens == 1)
        #expect(meterAllWays("data:{\"event\":\"token\",\"event\":\"start\"}\n\n", .flowise).tokens == 0)
        #expect(meterAllWays("data:{\"event\":\"start\",\"event\":\"token\"}\n\n", .flowise).tokens == 1)
        #expect(meterAllWays("data:{\"event\":\"Token\"}\n\n", .flowise).tokens == 0)
        #expect(meterAllWays("data:{\"event\":[\"token\"]}\n\n", .flowise).tokens == 0)
        #expect(meterAllWays("data:{\"x\":{\"event\":\"token\"}}\n\n", .flowise).tokens == 0)
        #expect(meterAllWays("data:[{\"event\":\"token\"}]\n\n", .flowise).tokens == 0)
        // Token data of any kind still counts one.
        #expect(meterAllWays("data:{\"event\":\"token\",\"data\":\"\"}\n\n", .flowise).tokens == 1)
        #expect(meterAllWays("data:{\"event\":\"token\",\"data\":{\"a\":[1,2,{}]}}\n\n", .flowise).tokens == 1)
    }

    @Test func brokenJSONAfterTheEventNameStillCounts() {
        #expect(meterAllWays("data:{\"event\":\"token\",\"data\":\"abc\n\n", .flowise) == MeterReading(tokens: 1, events: 1))
        #expect(meterAllWays("data:{\"event\":\"token\" garbage }}}\n\n", .flowise) == MeterReading(tokens: 1, events: 1))
        #expect(meterAllWays("data:{\"event\":\"token\n\n", .flowise) == MeterReading(tokens: 0, events: 1))
        #expect(meterAllWays("data:not json at all\n\n", .flowise) == MeterReading(tokens: 0, events: 1))
        #expect(meterAllWays("data:{\"event\":\"token\"}{\"event\":\"token\"}\n\n", .flowise) == MeterReading(tokens: 1, events: 1))
    }

    /// Whole token events take a short cut past the JSON scanner; fed in pieces they go
    /// through it: both must agree, on good and bad lines alike.
    @Test func tokenShortCutAgreesWithTheScanner() {
        let lines = [
            #"{"event":"token","data":"plain"}"#, #"{"event":"token","data":""}"#,
            #"{"event":"token","data":"line\nbreak \"quoted\" \\ \/ \b\f\r\t"}"#,
            #"{"event":"token","data":"caf\u00e9 \uD83D\uDE00 é"}"#, #"{"event":"token","data":"bad \x escape"}"#,
            #"{"event":"token","data":"bad \u12G4"}"#, #"{"event":"token","data":"short \u12"}"#,
            "{\"event\":\"token\",\"data\":\"tab\tinside\"}", #"{"event":"token","data":"x"} "#,
            #"{"event":"token","data":"x"}}"#, #"{"event":"token","data":"x","more":1}"#, #"{"event":"token","data":"x""#,
            #"{"event":"token","data":"unterminated"#, #"{"event":"token","data":5}"#, #"{"event":"token","data":"x\"}"#,
            #"{"event":"token","data":"x\\"}"#, #"{"event":"token","data":"\"#, #" {"event":"token","data":"x"}"#,
        ]
        for line in lines {
            for eol in ["\n", "\r\n", "\r"] {
                let text = "message:" + eol + "data:" + line + eol + eol + "data: " + line + eol + eol
                let r = meterAllWays(text, .flowise)
                #expect(r.events == 2 && r.tokens == 2, "\(line)")
            }
        }
    }

    @Test func usageFigureAliasesAndForms() {
        let cases: [(String, Int64?, Int64?)] = [
            (#"{"input_tokens":10,"output_tokens":20}"#, 10, 20),
            (#"{"prompt_tokens":10,"completion_tokens":20}"#, 10, 20),
            (#"{"inputTokens":10,"outputTokens":20}"#, 10, 20),
            (#"{"promptTokens":10,"completionTokens":20}"#, 10, 20),
            (#"{"input_tokens":10.0,"output_tokens":"20"}"#, 10, 20),
            (#"{"input_tokens":1e1,"output_tokens":2.0e1}"#, 10, 20),
            (#"{"input_tokens":-1,"output_tokens":2.5}"#, nil, nil),
            (#"{"input_tokens":null,"output_tokens":"x"}"#, nil, nil),
            (#"{"total_tokens":30}"#, nil, nil),
            (#"{"output_tokens":5,"completion_tokens":7,"outputTokens":6}"#, nil, 7),
            (#"{"usage":{"output_tokens":5}}"#, nil, nil),
            (#"{"output_tokens":99999999999999999999999}"#, nil, Int64.max / 2),
            (#"{"input_token_details":{"input_tokens":9},"output_tokens":1}"#, nil, 1),
        ]
        for (data, input, output) in cases {
            let r = meterAllWays(flowiseEvent("usageMetadata", data), .flowise)
            #expect(r == MeterReading(tokens: 0, input: input, output: output, events: 1), "\(data)")
        }
        // Figures in other events do not count.
        let r = meterAllWays(flowiseEvent("metadata", #"{"input_tokens":10,"output_tokens":20}"#), .flowise)
        #expect(r.input == nil && r.output == nil)
        // The event name may come after the data.
        let late = meterAllWays("data:{\"data\":{\"output_tokens\":4},\"event\":\"usageMetadata\"}\n\n", .flowise)
        #expect(late.output == 4)
    }

    @Test func usageFigureWinsEvenWhenSmaller() {
        var text = ""
        for t in 0..<5 { text += flowiseEvent("token", "\"t\(t)\"") }
        text += flowiseEvent("usageMetadata", #"{"input_tokens":9,"output_tokens":2}"#)
        var m = StreamMeter(dialect: .flowise)
        _ = m.scan(Array(text.utf8))
        #expect(m.outputTokens == 5)
        #expect(m.reportedOutput == 2)
        #expect(m.chargeableOutput == 2)
        #expect(max(m.chargeableOutput, m.outputTokens) == 5)
        // Without a figure, the count.
        var n = StreamMeter(dialect: .flowise)
        _ = n.scan(Array(flowiseEvent("token", "\"a\"").utf8))
        #expect(n.chargeableOutput == 1 && n.reportedOutput == nil)
    }

    @Test func severalUsageEventsKeepTheLargestFigures() {
        let text = flowiseEvent("usageMetadata", #"{"input_tokens":9,"output_tokens":2}"#)
            + flowiseEvent("usageMetadata", #"{"input_tokens":3,"output_tokens":8}"#)
        #expect(meterAllWays(text, .flowise) == MeterReading(tokens: 0, input: 9, output: 8, events: 2))
    }

    @Test func errorEvents() {
        let r = meterAllWays(flowiseEvent("token", "\"a\"") + flowiseEvent("error", "\"model overloaded\""), .flowise)
        #expect(r == MeterReading(tokens: 1, events: 2, error: true))
        let cut = CutOffEvent.bytes(.flowise, message: "balance is 0")
        #expect(meterReading(cut, .flowise, pieces: [0..<cut.count]) == MeterReading(tokens: 0, events: 1, error: true))
    }

    @Test func oversizedEventsAreReadWhole() {
        // A 200 KB token (one event, one token) and a 300 KB event of another kind.
        let big = String(repeating: "x", count: 200_000)
        let sources = String(repeating: #"{"pageContent":"lorem ipsum \"dolor\" \\ sit","metadata":{"a":[1,2,3]}},"#, count: 5000)
        let text = flowiseEvent("token", "\"\(big)\"")
            + flowiseEvent("sourceDocuments", "[\(sources){}]")
            + flowiseEvent("usageMetadata", #"{"input_tokens":1,"output_tokens":2}"#)
        #expect(meterAllWays(text, .flowise) == MeterReading(tokens: 1, input: 1, output: 2, events: 3))
        // Figures after a long prefix inside the same event are still read.
        let late = "data:{\"event\":\"usageMetadata\",\"data\":{\"pad\":\"\(big)\",\"output_tokens\":77}}\n\n"
        #expect(meterAllWays(late, .flowise).output == 77)
        // An endless line of garbage is one event.
        let garbage = "data:" + String(repeating: "{[\"\\", count: 50_000) + "\n\n" + flowiseEvent("token", "1")
        #expect(meterAllWays(garbage, .flowise) == MeterReading(tokens: 1, events: 2))
    }

    @Test func deepNestingInAnEventIsBounded() {
        let deep = "data:{\"event\":\"token\",\"data\":" + String(repeating: "[", count: 100_000) + "\n\n"
        #expect(meterAllWays(deep, .flowise) == MeterReading(tokens: 1, events: 1))
    }

    @Test func unfinishedLastEventIsNotDispatched() {
        let r = meterAllWays(flowiseEvent("token", "\"a\"") + "message:\ndata:{\"event\":\"token\",\"data\":\"b\"}\n", .flowise)
        #expect(r == MeterReading(tokens: 1, events: 1))
    }
}

struct StreamMeterBudgetTests {
    /// Feeds `bytes` in `pieces`; every time the meter stops at the budget, records the
    /// absolute offset and raises the budget by `extend`. Returns the stop offsets.
    func stops(_ bytes: [UInt8], _ dialect: StreamDialect, budget: Int64, extend: Int64,
               pieces: [Range<Int>]) -> (stops: [Int], meter: StreamMeter) {
        var m = StreamMeter(dialect: dialect)
        var limit = budget
        var out: [Int] = []
        for r in pieces {
            let piece = Array(bytes[r])
            var at = 0
            while true {
                let used = piece[at...].withUnsafeBytes { m.scan($0, budget: limit) }
                #expect(used <= piece.count - at)
                at += used
                if m.stoppedAtBudget {
                    #expect(m.outputTokens > limit)
                    out.append(r.lowerBound + at)
                    limit += extend
                    continue
                }
                #expect(at == piece.count)
                break
            }
        }
        return (out, m)
    }

    @Test func stopsRightAfterTheEventThatCrossesTheBudget() {
        let events = [flowiseEvent("start", "\"\""), flowiseEvent("token", "\"a\""), flowiseEvent("token", "\"b\""),
                      flowiseEvent("token", "\"c\""), flowiseEvent("usageMetadata", #"{"output_tokens":3}"#)]
        let text = events.joined()
        let bytes = Array(text.utf8)
        var m = StreamMeter(dialect: .flowise)
        // Budget 1: the second token event makes it 2 > 1.
        let used = m.scan(bytes, budget: 1)
        #expect(used == events[0..<3].joined().utf8.count)
        #expect(m.stoppedAtBudget && m.outputTokens == 2 && m.events == 3)
        // Resuming with the same budget stops after the next token event (3 > 1)…
        let used2 = Array(bytes[used...]).withUnsafeBytes { m.scan($0, budget: 1) }
        #expect(used2 == events[3].utf8.count && m.stoppedAtBudget && m.outputTokens == 3)
        // …and an extended budget runs to the end (events without tokens never stop it).
        let used3 = Array(bytes[(used + used2)...]).withUnsafeBytes { m.scan($0, budget: 10) }
        #expect(used3 == events[4].utf8.count && !m.stoppedAtBudget)
        #expect(MeterReading(m) == MeterReading(tokens: 3, output: 3, events: 5))
    }

    @Test func budgetZeroStopsAtTheFirstToken() {
        let bytes = Array((flowiseEvent("start", "\"\"") + ":heartbeat\n\n" + flowiseEvent("token", "\"a\"") + flowiseEvent("token", "\"b\"")).utf8)
        var m = StreamMeter(dialect: .flowise)
        let used = m.scan(bytes, budget: 0)
        #expect(used == (flowiseEvent("start", "\"\"") + ":heartbeat\n\n" + flowiseEvent("token", "\"a\"")).utf8.count)
        #expect(m.stoppedAtBudget)
    }

    @Test(arguments: ["\n", "\r\n", "\r"])
    func stopOffsetsDoNotDependOnSplits(_ eol: String) {
        var text = ""
        for t in 0..<12 { text += flowiseEvent("token", "\"w\(t)\"") + (t % 3 == 0 ? ":heartbeat\n\n" : "") }
        text = text.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: eol)
        let bytes = Array(text.utf8)
        let n = bytes.count
        let whole = stops(bytes, .flowise, budget: 2, extend: 3, pieces: [0..<n])
        #expect(whole.stops.count == 4)   // after tokens 3, 6, 9, 12 (budgets 2, 5, 8, 11)
        #expect(whole.meter.outputTokens == 12)
        // Each stop is right after a blank line's first byte (a CRLF's CR: its LF is skipped later).
        for s in whole.stops {
            let blank = Array(eol.utf8)[0]
            #expect(bytes[s - 1] == blank && bytes[s - 2] == Array(eol.utf8).last!)
        }
        let bytewise = stops(bytes, .flowise, budget: 2, extend: 3, pieces: (0..<n).map { $0..<$0 + 1 })
        #expect(bytewise.stops == whole.stops)
        #expect(MeterReading(bytewise.meter) == MeterReading(whole.meter))
        for k in 0...n {
            let split = stops(bytes, .flowise, budget: 2, extend: 3, pieces: [0..<k, k..<n])
            #expect(split.stops == whole.stops, "split at \(k)")
            #expect(MeterReading(split.meter) == MeterReading(whole.meter))
        }
    }

    @Test func openAIStopsPerChunk() {
        // A chunk with two choices adds two tokens at once.
        let text = openAIChunk(["a"]) + openAIChunk(["b", "c"]) + openAIChunk(["d"]) + "data: [DONE]\n\n"
        let bytes = Array(text.utf8)
        var m = StreamMeter(dialect: .openai)
        let used = m.scan(bytes, budget: 2)
        #expect(used == (openAIChunk(["a"]) + openAIChunk(["b", "c"])).utf8.count)
        #expect(m.outputTokens == 3 && m.stoppedAtBudget)
    }
}

/// An OpenAI chat completion chunk with one choice per content string.
func openAIChunk(_ contents: [String?], usage: String? = nil) -> String {
    let choices = contents.enumerated().map { i, c in
        let delta = c.map { #"{"content":"\#($0)"}"# } ?? #"{"role":"assistant"}"#
        return #"{"index":\#(i),"delta":\#(delta),"logprobs":null,"finish_reason":null}"#
    }.joined(separator: ",")
    let u = usage.map { #","usage":\#($0)"# } ?? ""
    return #"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":[\#(choices)]\#(u)}"# + "\n\n"
}

struct StreamMeterOpenAITests {
    @Test func chatCompletionStream() {
        let text = openAIChunk([nil]) + openAIChunk(["Hel"]) + openAIChunk(["lo"]) + openAIChunk([""])
            + #"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"# + "\n\n"
            + #"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"completion_tokens_details":{"reasoning_tokens":0}}}"# + "\n\n"
            + "data: [DONE]\n\n"
        #expect(meterAllWays(text, .openai) == MeterReading(tokens: 2, input: 9, output: 2, events: 7, done: true))
        let crlf = text.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\r\n")
        #expect(meterAllWays(crlf, .openai) == MeterReading(tokens: 2, input: 9, output: 2, events: 7, done: true))
    }

    @Test func choicesCountOncePerChoiceWithContent() {
        #expect(meterAllWays(openAIChunk(["a", "b", nil, ""]), .openai).tokens == 2)
        // delta.content and text in one choice: one token; duplicate content keys: one.
        #expect(meterAllWays(#"data: {"choices":[{"text":"x","delta":{"content":"y","content":"z"}}]}"# + "\n\n", .openai).tokens == 1)
        // Legacy completions.
        #expect(meterAllWays(#"data: {"choices":[{"text":"x"},{"text":""}]}"# + "\n\n", .openai).tokens == 1)
        // Not content: elsewhere, wrong types, escaped-empty is not empty.
        #expect(meterAllWays(#"data: {"choices":[{"message":{"content":"x"}}]}"# + "\n\n", .openai).tokens == 0)
        #expect(meterAllWays(#"data: {"x":{"choices":[{"delta":{"content":"x"}}]}}"# + "\n\n", .openai).tokens == 0)
        #expect(meterAllWays(#"data: {"choices":[{"delta":{"content":null}},{"delta":{"content":5}}]}"# + "\n\n", .openai).tokens == 0)
        #expect(meterAllWays(#"data: {"choices":[[{"delta":{"content":"x"}}]]}"# + "\n\n", .openai).tokens == 0)
        #expect(meterAllWays(#"data: {"choices":[{"delta":{"x":{"content":"x"}}}]}"# + "\n\n", .openai).tokens == 0)
        #expect(meterAllWays(#"data: {"choices":{"delta":{"content":"x"}}}"# + "\n\n", .openai).tokens == 0)
        #expect(meterAllWays(#"data: {"choices":[{"delta":{"content":"\n"}}]}"# + "\n\n", .openai).tokens == 1)
        #expect(meterAllWays(#"data: {"choices":[{"delta":{"con\u0074ent":"x"}}]}"# + "\n\n", .openai).tokens == 1)
        // Content is counted even when the rest of the chunk is broken.
        #expect(meterAllWays(#"data: {"choices":[{"delta":{"content":"x"}}"# + "\n\n", .openai).tokens == 1)
    }

    @Test func usageFigures() {
        let r = meterAllWays(openAIChunk(["a"], usage: #"{"prompt_tokens":4,"completion_tokens":1}"#), .openai)
        #expect(r == MeterReading(tokens: 1, input: 4, output: 1, events: 1))
        // Responses API: figures in response.usage, with event lines.
        let responses = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n"
            + "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"output\":[],"
            + "\"usage\":{\"input_tokens\":5,\"output_tokens\":7,\"total_tokens\":12}}}\n\n"
        #expect(meterAllWays(responses, .openai) == MeterReading(tokens: 0, input: 5, output: 7, events: 2))
        // Figures nested anywhere else do not count.
        #expect(meterAllWays(#"data: {"x":{"usage":{"completion_tokens":5}}}"# + "\n\n", .openai).output == nil)
        #expect(meterAllWays(#"data: {"usage":{"x":{"completion_tokens":5}}}"# + "\n\n", .openai).output == nil)
        #expect(meterAllWays(#"data: {"choices":[{"usage":{"completion_tokens":5}}]}"# + "\n\n", .openai).output == nil)
    }

    @Test func usageWinsForCharging() {
        let text = openAIChunk(["a"]) + openAIChunk(["b"]) + openAIChunk(["c"])
            + openAIChunk([], usage: #"{"prompt_tokens":4,"completion_tokens":1}"#) + "data: [DONE]\n\n"
        var m = StreamMeter(dialect: .openai)
        _ = m.scan(Array(text.utf8))
        #expect(m.outputTokens == 3 && m.reportedOutput == 1 && m.chargeableOutput == 1 && m.sawDone)
    }

    @Test func errorsAndDone() {
        #expect(meterAllWays(#"data: {"error":{"message":"overloaded","type":"server_error"}}"# + "\n\n", .openai).error)
        #expect(meterAllWays(#"data: {"error":"overloaded"}"# + "\n\n", .openai).error)
        #expect(!meterAllWays(#"data: {"error":null}"# + "\n\n", .openai).error)
        #expect(!meterAllWays(#"data: {"x":{"error":{}}}"# + "\n\n", .openai).error)
        let cut = CutOffEvent.bytes(.openai, message: "no \"credits\" left\n")
        #expect(meterReading(cut, .openai, pieces: [0..<cut.count]) == MeterReading(tokens: 0, events: 2, error: true, done: true))
        // [DONE] exactly.
        #expect(!meterAllWays("data: [DONE] \n\n", .openai).done)
        #expect(!meterAllWays("data: [DONE]\ndata: x\n\n", .openai).done)
        #expect(!meterAllWays("data: [DON\n\n", .openai).done)
        #expect(meterAllWays("data:[DONE]\r\n\r\n", .openai).done)
        // Flowise does not look for [DONE].
        #expect(!meterAllWays("data: [DONE]\n\n", .flowise).done)
    }

    @Test func dialectsDoNotMix() {
        #expect(meterAllWays(flowiseEvent("token", "\"a\""), .openai).tokens == 0)
        #expect(meterAllWays(openAIChunk(["a"]), .flowise).tokens == 0)
    }
}

struct CutOffEventTests {
    @Test func exactBytes() {
        #expect(String(decoding: CutOffEvent.bytes(.flowise, message: "Out of credits"), as: UTF8.self)
                == "message:\ndata:{\"event\":\"error\",\"data\":\"INSUFFICIENT_CREDITS: Out of credits\"}\n\n")
        #expect(String(decoding: CutOffEvent.bytes(.openai, message: "Out of credits"), as: UTF8.self)
                == "data: {\"error\":{\"code\":\"INSUFFICIENT_CREDITS\",\"message\":\"Out of credits\"}}\n\ndata: [DONE]\n\n")
    }

    @Test func messageIsEscaped() {
        let s = String(decoding: CutOffEvent.bytes(.openai, message: "a\"b\\c\nd\re\tf\u{1}g\u{7F}h é"), as: UTF8.self)
        #expect(s == "data: {\"error\":{\"code\":\"INSUFFICIENT_CREDITS\",\"message\":\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u007fh é\"}}\n\ndata: [DONE]\n\n")
        // Still one SSE event per blank line: no raw CR/LF from the message.
        let f = CutOffEvent.bytes(.flowise, message: "x\n\ndata: {\"event\":\"token\"}\n\n")
        #expect(f.filter { $0 == 0x0A }.count == 3)
        #expect(meterReading(f, .flowise, pieces: [0..<f.count]) == MeterReading(tokens: 0, events: 1, error: true))
    }
}

struct CreditMathTests {
    @Test func tokenCharge() {
        #expect(CreditMath.tokenCharge(tokens: 0, price: 3, per: 1000) == 0)
        #expect(CreditMath.tokenCharge(tokens: 1, price: 3, per: 1000) == 1)
        #expect(CreditMath.tokenCharge(tokens: 1000, price: 3, per: 1000) == 3)
        #expect(CreditMath.tokenCharge(tokens: 1001, price: 3, per: 1000) == 4)
        #expect(CreditMath.tokenCharge(tokens: 333, price: 3, per: 1000) == 1)
        #expect(CreditMath.tokenCharge(tokens: 7, price: 0, per: 1) == 0)
        #expect(CreditMath.tokenCharge(tokens: 7, price: 2, per: 1) == 14)
        #expect(CreditMath.tokenCharge(tokens: -5, price: 2, per: 1) == 0)
        #expect(CreditMath.tokenCharge(tokens: 5, price: -2, per: 1) == 0)
        #expect(CreditMath.tokenCharge(tokens: 5, price: 2, per: 0) == 10)
        #expect(CreditMath.tokenCharge(tokens: 5, price: 2, per: -7) == 10)
        #expect(CreditMath.tokenCharge(tokens: .max, price: .max, per: 1) == .max)
        #expect(CreditMath.tokenCharge(tokens: .max, price: 2, per: 2) == .max)
        #expect(CreditMath.tokenCharge(tokens: .max, price: 3, per: 4) == 3 << 61)   // ceil((2^63 - 1) × 3 / 4)
        #expect(CreditMath.tokenCharge(tokens: .max, price: .max, per: .max) == .max)
        #expect(CreditMath.tokenCharge(tokens: .max, price: 1, per: 2) == Int64.max / 2 + 1)
        #expect(CreditMath.tokenCharge(tokens: 1 << 40, price: 1 << 40, per: 1 << 30) == 1 << 50)
        #expect(CreditMath.tokenCharge(tokens: 1 << 40, price: (1 << 40) + 1, per: 1 << 30) == (1 << 50) + (1 << 10))
        // Exact in 128 bits: (2^62 + 1) × 3 / 3.
        #expect(CreditMath.tokenCharge(tokens: (1 << 62) + 1, price: 3, per: 3) == (1 << 62) + 1)
        // The quotient just below 2^64 with a remainder saturates (does not wrap to 0).
        #expect(CreditMath.tokenCharge(tokens: Int64.max, price: 4, per: 2) == .max)
    }

    @Test func inputEstimate() {
        #expect(CreditMath.inputEstimate(bodyBytes: 0) == 0)
        #expect(CreditMath.inputEstimate(bodyBytes: 1) == 1)
        #expect(CreditMath.inputEstimate(bodyBytes: 4) == 1)
        #expect(CreditMath.inputEstimate(bodyBytes: 5) == 2)
        #expect(CreditMath.inputEstimate(bodyBytes: -3) == 0)
        #expect(CreditMath.inputEstimate(bodyBytes: .max) == Int64.max / 4 + 1)
    }
}

struct CreditWordTests {
    /// Every case's spelling classifies as that case (the generated constants are right),
    /// and one byte more or less does not.
    @Test func wordTableMatchesItsSpelling() {
        func classify(_ s: String) -> CreditWord {
            var w: [UInt64] = [0, 0, 0]
            let b = Array(s.utf8)
            for (k, c) in b.prefix(24).enumerated() { w[k >> 3] |= UInt64(c) << UInt64((k & 7) * 8) }
            return CreditWord.classify(count: min(b.count, 25), w[0], w[1], w[2])
        }
        for word in CreditWord.allCases where word != .other {
            let name = String(describing: word)
            #expect(classify(name) == word, "\(name)")
            #expect(classify(name + "s") == .other)
            #expect(classify(String(name.dropLast())) == .other)
        }
        #expect(classify("") == .other)
        #expect(classify("max_completion_tokens_and_then_some") == .other)
    }
}
