/// How a credit route's streamed answer spells its events (policy `credits.stream`).
public enum StreamDialect: UInt8, Sendable {
    /// Flowise: `message:` + `data:{"event":"token","data":"…"}` per event (BACKENDS.md).
    case flowise
    /// OpenAI chat completions (and compatible servers): `data: {chunk}` … `data: [DONE]`.
    case openai
}

/// Counts the output tokens of a streamed (SSE) answer as its bytes pass, split anywhere.
///
/// Framing follows the WHATWG event-stream rules: lines end with LF, CRLF or CR; a blank
/// line ends an event; a line starting with `:` is a comment (Flowise's `:heartbeat`);
/// fields other than `data` (`message`, `event`, `id`, `retry`) are ignored; a `data` value
/// loses one leading space, and the data lines of one event are joined with LF. An event is
/// dispatched (counted in ``events``) only if it had a data line. A stream's last event
/// without its blank line is never dispatched (a browser drops it too). A UTF-8 byte order
/// mark at the start is skipped.
///
/// What counts:
/// - ``StreamDialect/flowise``: the data is `{"event": NAME, "data": …}`. Each `token`
///   event is one output token; a `usageMetadata` event's `data` object gives the reported
///   figures (`input_tokens`/`output_tokens`, also `prompt_tokens`/`completion_tokens`,
///   `inputTokens`/`outputTokens`, `promptTokens`/`completionTokens`); an `error` event
///   sets ``sawError``.
/// - ``StreamDialect/openai``: the data is a chunk object. A chunk counts one token per
///   element of `choices` whose `delta.content` (or `text`) is a non-empty string; a `usage`
///   object at the top level or in a top-level `response` (Responses API) gives the figures
///   (the same names); an `error` object (or string) at the top level sets ``sawError``;
///   `data: [DONE]` sets ``sawDone``.
///
/// Figures are integers (`12`, `12.0`, `"12"`; past `Int64.max / 2` they clamp to it); others
/// are ignored. When several events carry figures, the largest of each is kept (usage
/// figures in a stream are cumulative).
///
/// The data is parsed as it arrives by a resumable JSON scanner with a fixed state of about
/// 150 bytes: nothing is buffered, so an event of any size is read whole in bounded
/// memory and linear time, and facts seen before a syntax error still count (a token event
/// whose JSON breaks after `"event":"token"` is a token: its bytes reached the client). No
/// input can trap: counters saturate. The struct is a plain value (no heap storage, about
/// 280 bytes), cheap to copy and `Sendable`.
///
/// Cost (callgrind, -O): a Flowise token event whole in its chunk takes a short cut past the
/// scanner, about 350 instructions for `message:\ndata:{"event":"token","data":" answer"}\n\n`;
/// other events go through the scanner at about 20 instructions a byte (a typical 250-byte
/// OpenAI chunk: about 5,000); runs of string bytes are skipped eight at a time.
public struct StreamMeter: Sendable {
    public let dialect: StreamDialect
    /// Output tokens counted so far (never decreases).
    public private(set) var outputTokens: Int64 = 0
    /// The largest input-token figure the backend reported, if any.
    public private(set) var reportedInput: Int64?
    /// The largest output-token figure the backend reported, if any.
    public private(set) var reportedOutput: Int64?
    /// Complete (dispatched) events seen.
    public private(set) var events: Int = 0
    /// The backend sent an error event.
    public private(set) var sawError = false
    /// OpenAI dialect: `data: [DONE]` was seen.
    public private(set) var sawDone = false
    /// The last ``scan(_:budget:)`` stopped right after an event that took ``outputTokens``
    /// past its budget (the return value is that event's end).
    public private(set) var stoppedAtBudget = false

    /// The output tokens to charge: the backend's figure when it sent one (even if smaller
    /// than the count), else the count. Callers that never charge a stream less than what
    /// passed take `max(chargeableOutput, outputTokens)`.
    public var chargeableOutput: Int64 { reportedOutput ?? outputTokens }

    private enum Line: UInt8, Sendable {
        /// At the first byte of a line.
        case start
        /// In a field name that may still be `data` (`nameMatched` bytes of it so far).
        case name
        /// In a comment or in the value of a field other than `data`.
        case skip
        /// Right after `data:` (one space may follow).
        case dataStart
        /// In a data value: bytes go to the JSON scanner.
        case data
    }

    private var line: Line = .start
    /// Bytes of `data` matched by the current field name.
    private var nameMatched: UInt8 = 0
    /// The last byte was a CR: an LF now completes that line break.
    private var afterCR = false
    /// The current event has had a data line.
    private var hasData = false
    /// OpenAI: bytes of `[DONE]` matched by the event's data; 0xFF once it differs.
    private var doneMatched: UInt8 = 0
    /// Bytes of a UTF-8 byte order mark matched at the start of the stream; 3 when done.
    private var bom: UInt8 = 0
    private var json = CreditJSONScanner()
    private var event: MeterEvent

    public init(dialect: StreamDialect) {
        self.dialect = dialect
        self.event = MeterEvent(flowise: dialect == .flowise)
    }

    private static let lf: UInt8 = 0x0A
    private static let cr: UInt8 = 0x0D

    /// Scans `chunk` (the next response-body bytes, already de-chunked) and returns how many
    /// bytes of it were consumed: all of them, except that it stops right after the end of the
    /// first complete event that adds tokens and leaves `outputTokens > budget` (then
    /// ``stoppedAtBudget`` is true), so the caller can forward up to that point and decide:
    /// extend the budget or cut off. Call again with the rest. The end of an event is the
    /// last byte of its blank line; for a CRLF blank line that is the CR (the LF is skipped
    /// by the next call, whatever chunk it arrives in), so where the scan stops does not
    /// depend on how the bytes were split.
    public mutating func scan(_ chunk: UnsafeRawBufferPointer, budget: Int64) -> Int {
        stoppedAtBudget = false
        guard let base = chunk.baseAddress else { return 0 }
        let n = chunk.count
        var i = 0
        if bom < 3 {
            i = byteOrderMark(base, n)
        }
        while i < n {
            switch line {
            case .start:
                let c = base.load(fromByteOffset: i, as: UInt8.self)
                if afterCR {
                    afterCR = false
                    if c == Self.lf { i += 1; continue }
                }
                if c == Self.lf || c == Self.cr {
                    afterCR = c == Self.cr
                    i += 1
                    if dispatch(budget: budget) {
                        stoppedAtBudget = true
                        return i
                    }
                    continue
                }
                if c != UInt8(ascii: "d") {
                    // A comment (`:`) or a field that is not `data`: skipped to its end.
                    i += 1
                    line = .skip
                    continue
                }
                if i &+ 5 <= n && base.loadUnaligned(fromByteOffset: i, as: UInt32.self) == Self.dataName
                    && base.load(fromByteOffset: i + 4, as: UInt8.self) == UInt8(ascii: ":") {
                    // `data:` whole in the chunk.
                    i += 5
                    beginDataLine()
                    line = .dataStart
                    continue
                }
                i += 1
                line = .name
                nameMatched = 1
            case .name:
                let c = base.load(fromByteOffset: i, as: UInt8.self)
                i += 1
                if c == UInt8(ascii: ":") {
                    if nameMatched == 4 {
                        beginDataLine()
                        line = .dataStart
                    } else {
                        line = .skip
                    }
                } else if c == Self.lf || c == Self.cr {
                    // A line with no colon is a field name with an empty value.
                    afterCR = c == Self.cr
                    if nameMatched == 4 { beginDataLine() }
                    line = .start
                } else if nameMatched < 4 && c == UInt8(truncatingIfNeeded: Self.dataName >> (UInt32(nameMatched) * 8)) {
                    nameMatched += 1
                } else {
                    line = .skip
                }
            case .skip:
                var b = base.load(fromByteOffset: i, as: UInt8.self)
                while b != Self.lf && b != Self.cr {
                    i += 1
                    if i == n { return n }
                    b = base.load(fromByteOffset: i, as: UInt8.self)
                }
                afterCR = b == Self.cr
                i += 1
                line = .start
            case .dataStart:
                if base.load(fromByteOffset: i, as: UInt8.self) == UInt8(ascii: " ") { i += 1 }
                line = .data
            case .data:
                // Flowise's token events, whole in the chunk, take a short cut that ends
                // exactly where the scanner would.
                if dialect == .flowise && json.state == .start,
                   let length = Self.flowiseTokenLine(base + i, n - i) {
                    json.assumeComplete()
                    event.name = .token
                    i += length
                    afterCR = base.load(fromByteOffset: i, as: UInt8.self) == Self.cr
                    i += 1
                    line = .start
                    continue
                }
                // The JSON scanner reads the value up to the line's end, unless it has failed
                // (then the end is found here).
                var j = i + json.feedLine(base + i, n - i, &event)
                if json.state == .failed {
                    while j < n {
                        let b = base.load(fromByteOffset: j, as: UInt8.self)
                        if b == Self.lf || b == Self.cr { break }
                        j += 1
                    }
                }
                if dialect == .openai && doneMatched != 0xFF { matchDone(base + i, j - i) }
                i = j
                if i < n {
                    afterCR = base.load(fromByteOffset: i, as: UInt8.self) == Self.cr
                    i += 1
                    line = .start
                }
            }
        }
        return n
    }

    /// The stream's first bytes: a UTF-8 byte order mark is skipped (also split across
    /// chunks). Returns the bytes consumed.
    private mutating func byteOrderMark(_ base: UnsafeRawPointer, _ n: Int) -> Int {
        var i = 0
        while bom < 3 && i < n {
            if base.load(fromByteOffset: i, as: UInt8.self) == UInt8(truncatingIfNeeded: Self.bomWord >> (UInt32(bom) * 8)) {
                bom += 1
                i += 1
            } else {
                // Not a byte order mark: the bytes taken as one start a field that is not `data`.
                if bom > 0 { line = .skip }
                bom = 3
            }
        }
        return i
    }

    /// EF BB BF, packed little-endian.
    private static let bomWord: UInt32 = 0xBF_BB_EF
    /// "data", packed little-endian.
    private static let dataName: UInt32 = 0x61_74_61_64
    /// "[DONE]", packed little-endian.
    private static let doneWord: UInt64 = 0x5D_45_4E_4F_44_5B

    /// A data line starts: after the first, the lines are joined with LF.
    @inline(__always)
    private mutating func beginDataLine() {
        if hasData {
            var lf = Self.lf
            withUnsafeBytes(of: &lf) { json.feed($0, &event) }
            doneMatched = 0xFF
        }
        hasData = true
    }

    /// `{"event":"token","data":"`, packed little-endian in three words and a byte.
    private static let tokenPrefix: (UInt64, UInt64, UInt64, UInt8) =
        (0x2274_6E65_7665_227B, 0x226E_656B_6F74_223A, 0x3A22_6174_6164_222C, 0x22)

    /// The length of the line at `p` (of `count` bytes available) if it is exactly
    /// `{"event":"token","data":"<JSON string text>"}` followed by a CR or LF (all within
    /// `count`); nil for anything else (the scanner then reads it).
    @inline(__always)
    static func flowiseTokenLine(_ p: UnsafeRawPointer, _ count: Int) -> Int? {
        guard count >= 28,
              p.loadUnaligned(as: UInt64.self) == tokenPrefix.0,
              p.loadUnaligned(fromByteOffset: 8, as: UInt64.self) == tokenPrefix.1,
              p.loadUnaligned(fromByteOffset: 16, as: UInt64.self) == tokenPrefix.2,
              p.load(fromByteOffset: 24, as: UInt8.self) == tokenPrefix.3 else { return nil }
        guard let end = CreditJSONScanner.stringEnd(p, from: 25, count: count) else { return nil }
        // The closing quote is at `end`; then `}` and the line's end.
        guard end + 2 < count,
              p.load(fromByteOffset: end + 1, as: UInt8.self) == UInt8(ascii: "}") else { return nil }
        let eol = p.load(fromByteOffset: end + 2, as: UInt8.self)
        return eol == lf || eol == cr ? end + 2 : nil
    }

    /// OpenAI: the data so far is a prefix of `[DONE]` (and stays one).
    private mutating func matchDone(_ p: UnsafeRawPointer, _ count: Int) {
        var k = 0
        while k < count && doneMatched != 0xFF {
            let b = p.load(fromByteOffset: k, as: UInt8.self)
            if doneMatched < 6 && b == UInt8(truncatingIfNeeded: Self.doneWord >> (UInt64(doneMatched) * 8)) {
                doneMatched += 1
            } else {
                doneMatched = 0xFF
            }
            k += 1
        }
    }

    /// A blank line: the event (if it had data) is complete. Returns whether it added tokens
    /// and the count is now past `budget`.
    private mutating func dispatch(budget: Int64) -> Bool {
        guard hasData else { return false }
        // Only a number at the very end still has something to say.
        if json.state == .number { _ = json.finish(&event) }
        if events < Int.max { events += 1 }
        var added: Int64 = 0
        var figures = false
        if event.flowise {
            switch event.name {
            case .token: added = 1
            case .error: sawError = true
            case .usageMetadata: figures = true
            default: break
            }
        } else {
            added = event.tokens
            if event.error { sawError = true }
            if doneMatched == 6 { sawDone = true }
            figures = true
        }
        if figures {
            if event.input >= 0 { reportedInput = max(reportedInput ?? 0, event.input) }
            if event.output >= 0 { reportedOutput = max(reportedOutput ?? 0, event.output) }
        }
        outputTokens = outputTokens > Int64.max - added ? Int64.max : outputTokens + added
        json.reset()
        event = MeterEvent(flowise: event.flowise)
        hasData = false
        doneMatched = 0
        return added > 0 && outputTokens > budget
    }
}

extension StreamMeter {
    /// Scans `bytes` (convenience for tests and callers holding an array).
    public mutating func scan(_ bytes: [UInt8], budget: Int64 = .max) -> Int {
        bytes.withUnsafeBytes { scan($0, budget: budget) }
    }
}

/// What one SSE event's data says, collected from the JSON scanner's calls.
struct MeterEvent: CreditJSONSink, Sendable {
    /// What the next value is (set by its key, used by the value).
    enum Pending: UInt8, Sendable {
        case none, eventName, figures, choices, delta, content, response, error, inputFigure, outputFigure
    }

    let flowise: Bool
    var pending: Pending = .none
    /// Flowise: the `event` value (the last one, as JSON.parse keeps).
    var name: CreditWord = .other
    /// OpenAI: choices with non-empty content.
    var tokens: Int64 = 0
    /// The largest figures in the event; -1: none.
    var input: Int64 = -1
    var output: Int64 = -1
    var error = false
    /// Depth of the open object whose members are usage figures (0: none).
    var figuresDepth = 0
    /// OpenAI: the top-level `choices` array is open (depth 2); a choice object (depth 3), its
    /// `delta` object (depth 4); the top-level `response` object (depth 2).
    var choicesOpen = false
    var inChoice = false
    var choiceCounted = false
    var inDelta = false
    var responseOpen = false

    init(flowise: Bool) { self.flowise = flowise }

    @inline(__always)
    mutating func key(_ word: CreditWord, depth: Int) -> CreditJSONInterest {
        if depth == figuresDepth {
            if word.isInputFigure { pending = .inputFigure; return .number }
            if word.isOutputFigure { pending = .outputFigure; return .number }
            pending = .none
            return .skip
        }
        pending = .none
        if flowise {
            if depth == 1 {
                if word == .event { pending = .eventName; return .capture }
                if word == .data { pending = .figures }
            }
            return .skip
        }
        switch depth {
        case 1:
            switch word {
            case .choices: pending = .choices
            case .usage: pending = .figures
            case .response: pending = .response
            case .error: pending = .error
            default: break
            }
        case 2:
            if responseOpen && word == .usage { pending = .figures }
        case 3:
            if inChoice {
                if word == .delta { pending = .delta } else if word == .text { pending = .content }
            }
        case 4:
            if inDelta && word == .content { pending = .content }
        default:
            break
        }
        return .skip
    }

    @inline(__always)
    mutating func open(object: Bool, depth: Int) -> Bool {
        let p = pending
        pending = .none
        guard object else {
            if p == .choices { choicesOpen = true }
            return false
        }
        switch p {
        case .figures: figuresDepth = depth
        case .response: responseOpen = true
        case .delta: inDelta = true
        case .error: error = true
        case .none:
            if depth == 3 && choicesOpen {
                inChoice = true
                choiceCounted = false
            }
        default: break
        }
        // The keys wanted: the top level, figures, and OpenAI's response, choice and delta.
        if depth == 1 || depth == figuresDepth { return true }
        if flowise { return false }
        return (depth == 2 && responseOpen) || (depth == 3 && inChoice) || (depth == 4 && inDelta)
    }

    @inline(__always)
    mutating func close(depth: Int) {
        if depth == figuresDepth { figuresDepth = 0 }
        switch depth {
        case 2: choicesOpen = false; responseOpen = false
        case 3: inChoice = false
        case 4: inDelta = false
        default: break
        }
    }

    @inline(__always)
    mutating func scalar(_ value: CreditScalar, depth: Int) {
        let p = pending
        pending = .none
        switch p {
        case .eventName:
            if case .string(_, let word) = value { name = word } else { name = .other }
        case .content:
            if case .string(let length, _) = value, length > 0, inChoice, !choiceCounted {
                choiceCounted = true
                if tokens < Int64.max { tokens += 1 }
            }
        case .inputFigure:
            if let v = Self.integer(value) { input = max(input, v) }
        case .outputFigure:
            if let v = Self.integer(value) { output = max(output, v) }
        case .error:
            if case .string = value { error = true }
        default:
            break
        }
    }

    @inline(__always)
    static func integer(_ value: CreditScalar) -> Int64? {
        switch value {
        case .number(.integer(let v)), .numericString(.integer(let v)): v
        default: nil
        }
    }
}
