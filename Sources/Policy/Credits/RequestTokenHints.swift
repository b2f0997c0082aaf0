/// The output-token maximum a client asked for, read from its JSON request body.
///
/// Recognised fields: `max_tokens`, `max_completion_tokens`, `max_output_tokens`,
/// `maxTokens`, `maxOutputTokens`, `max_new_tokens`, `maxNewTokens`, `num_predict` (keys
/// matched after escapes are decoded, as the backend's parser reads them), found
///
/// - at the top level of the body;
/// - directly inside a top-level `generationConfig`, `parameters` or `options` object
///   (Gemini, TGI, Ollama);
/// - anywhere inside a top-level `overrideConfig` object (Flowise), where a field's value may
///   also be an object keyed by node id (`"maxTokens": {"chatOpenAI_0": 300}`): every number
///   in it counts (nested objects too).
///
/// ``maxOutputTokens`` is the largest of all of them, duplicates included (a client cannot
/// lower the estimate with one field or one duplicate while the model honours another).
/// A value is a non-negative integer: `100`, `100.0`, `1e2`, or a string holding such a JSON
/// number (`"300"`); `null` counts as absent; values past `Int64.max / 2` clamp to it. Any
/// other value of a recognised field (negative, fractional, a non-numeric string, a boolean,
/// an array, an object outside `overrideConfig`) makes the hints ``invalid``, as does a body
/// that is not one JSON value (syntax error, truncation, more than 64 levels of nesting).
/// An empty or all-whitespace body is not invalid: it has no hints.
///
/// ``streaming`` is the last top-level `stream` or `streaming` member's value (`true` only
/// for the literal `true`).
///
/// The scan is strict, linear, and allocation-free: a resumable scanner with a fixed state
/// (no recursion, a 64-bit mask for the nesting), whatever the body holds.
public struct RequestTokenHints: Sendable, Equatable {
    /// The largest recognised output-token maximum (nil: none found).
    public var maxOutputTokens: Int64?
    /// `"stream": true` or `"streaming": true` at the top level.
    public var streaming: Bool
    /// A recognised field with a value that is not a non-negative integer (or a numeric
    /// string), or a body that does not parse as JSON. What was found before stays in
    /// ``maxOutputTokens``.
    public var invalid: Bool

    public init(maxOutputTokens: Int64? = nil, streaming: Bool = false, invalid: Bool = false) {
        self.maxOutputTokens = maxOutputTokens
        self.streaming = streaming
        self.invalid = invalid
    }

    /// Scans a whole request body.
    public static func scan(_ body: UnsafeRawBufferPointer) -> RequestTokenHints {
        var scanner = CreditJSONScanner()
        var sink = HintsSink()
        scanner.feed(body, &sink)
        let outcome = scanner.finish(&sink)
        return RequestTokenHints(maxOutputTokens: sink.maximum >= 0 ? sink.maximum : nil,
                                 streaming: sink.streaming,
                                 invalid: sink.invalid || outcome == .failed || outcome == .incomplete)
    }

    /// Scans a whole request body held in an array.
    public static func scan(_ body: [UInt8]) -> RequestTokenHints {
        body.withUnsafeBytes { scan($0) }
    }
}

/// Collects the hints from the scanner's calls.
struct HintsSink: CreditJSONSink, Sendable {
    enum Pending: UInt8, Sendable { case none, maximum, stream, override, parameters }

    var pending: Pending = .none
    /// The largest maximum found; -1: none.
    var maximum: Int64 = -1
    var invalid = false
    var streaming = false
    /// Depth of the open top-level `overrideConfig` object (0: none).
    var overrideDepth = 0
    /// Depth of the open top-level `generationConfig`/`parameters`/`options` object (0: none).
    var parametersDepth = 0
    /// Depth of the outermost open object that is a maximum's value (0: none).
    var maximumDepth = 0

    mutating func key(_ word: CreditWord, depth: Int) -> CreditJSONInterest {
        pending = .none
        if maximumDepth != 0 || (word.isOutputMaximum && (depth == 1 || depth == parametersDepth || overrideDepth != 0)) {
            pending = .maximum
            return .number
        }
        if depth == 1 {
            switch word {
            case .stream, .streaming: pending = .stream
            case .overrideConfig: pending = .override
            case .generationConfig, .parameters, .options: pending = .parameters
            default: break
            }
        }
        return .skip
    }

    mutating func open(object: Bool, depth: Int) -> Bool {
        let p = pending
        pending = .none
        if maximumDepth != 0 {
            // Inside a maximum's object: more objects of numbers, no arrays.
            if !object { invalid = true }
            return true
        }
        switch p {
        case .maximum:
            if object && overrideDepth != 0 { maximumDepth = depth } else { invalid = true }
        case .override:
            if object { overrideDepth = depth }
        case .parameters:
            if object { parametersDepth = depth }
        case .stream:
            streaming = false
        case .none:
            break
        }
        return depth == 1 || depth == parametersDepth || overrideDepth != 0 || maximumDepth != 0
    }

    mutating func close(depth: Int) {
        if depth == maximumDepth { maximumDepth = 0 }
        if depth == overrideDepth { overrideDepth = 0 }
        if depth == parametersDepth { parametersDepth = 0 }
    }

    mutating func scalar(_ value: CreditScalar, depth: Int) {
        let p = pending
        pending = .none
        switch p {
        case .maximum:
            switch value {
            case .number(.integer(let v)), .numericString(.integer(let v)): maximum = max(maximum, v)
            case .null: break
            default: invalid = true
            }
        case .stream:
            if case .bool(let flag) = value { streaming = flag } else { streaming = false }
        default:
            break
        }
    }
}
