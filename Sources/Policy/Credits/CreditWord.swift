/// The JSON keys and string values credit metering looks for, recognised from their
/// decoded bytes (escapes decoded, so `"max\u005ftokens"` is `max_tokens`, as every JSON
/// parser the backend might use reads it).
enum CreditWord: UInt8, Sendable, CaseIterable {
    case other
    // Flowise SSE
    case event, data, token, usageMetadata, error
    // OpenAI SSE
    case choices, delta, content, text, usage, response
    // Usage figures
    case input_tokens, output_tokens, prompt_tokens, completion_tokens
    case inputTokens, outputTokens, promptTokens, completionTokens
    // Output-token maxima in request bodies
    case max_tokens, max_completion_tokens, max_output_tokens, maxTokens, maxOutputTokens
    case max_new_tokens, maxNewTokens, num_predict
    // Request body structure
    case stream, streaming, overrideConfig, generationConfig, parameters, options

    /// A usage figure of input (prompt) tokens.
    var isInputFigure: Bool {
        switch self {
        case .input_tokens, .prompt_tokens, .inputTokens, .promptTokens: true
        default: false
        }
    }

    /// A usage figure of output (completion) tokens.
    var isOutputFigure: Bool {
        switch self {
        case .output_tokens, .completion_tokens, .outputTokens, .completionTokens: true
        default: false
        }
    }

    /// A request field naming the most output tokens the model may produce.
    var isOutputMaximum: Bool {
        switch self {
        case .max_tokens, .max_completion_tokens, .max_output_tokens, .maxTokens, .maxOutputTokens,
             .max_new_tokens, .maxNewTokens, .num_predict: true
        default: false
        }
    }

    /// The word spelled by `count` decoded bytes whose first 24 are packed little-endian in
    /// `w0`, `w1`, `w2` (zero past the end). The constants are the spellings of the cases,
    /// packed the same way (checked by `CreditWordTests`).
    @inline(__always)
    static func classify(count: Int, _ w0: UInt64, _ w1: UInt64, _ w2: UInt64) -> CreditWord {
        switch count {
        case 4:
            if w0 == 0x0000000061746164 { return .data }  // "data"
            if w0 == 0x0000000074786574 { return .text }  // "text"
        case 5:
            if w0 == 0x000000746e657665 { return .event }  // "event"
            if w0 == 0x0000006e656b6f74 { return .token }  // "token"
            if w0 == 0x000000726f727265 { return .error }  // "error"
            if w0 == 0x00000061746c6564 { return .delta }  // "delta"
            if w0 == 0x0000006567617375 { return .usage }  // "usage"
        case 6:
            if w0 == 0x00006d6165727473 { return .stream }  // "stream"
        case 7:
            if w0 == 0x00736563696f6863 { return .choices }  // "choices"
            if w0 == 0x00746e65746e6f63 { return .content }  // "content"
            if w0 == 0x00736e6f6974706f { return .options }  // "options"
        case 8:
            if w0 == 0x65736e6f70736572 { return .response }  // "response"
        case 9:
            if w0 == 0x6e656b6f5478616d && w1 == 0x0000000000000073 { return .maxTokens }  // "maxTokens"
            if w0 == 0x6e696d6165727473 && w1 == 0x0000000000000067 { return .streaming }  // "streaming"
        case 10:
            if w0 == 0x656b6f745f78616d && w1 == 0x000000000000736e { return .max_tokens }  // "max_tokens"
            if w0 == 0x6574656d61726170 && w1 == 0x0000000000007372 { return .parameters }  // "parameters"
        case 11:
            if w0 == 0x6b6f547475706e69 && w1 == 0x0000000000736e65 { return .inputTokens }  // "inputTokens"
            if w0 == 0x646572705f6d756e && w1 == 0x0000000000746369 { return .num_predict }  // "num_predict"
        case 12:
            if w0 == 0x6f745f7475706e69 && w1 == 0x00000000736e656b { return .input_tokens }  // "input_tokens"
            if w0 == 0x6f5474757074756f && w1 == 0x00000000736e656b { return .outputTokens }  // "outputTokens"
            if w0 == 0x6f5474706d6f7270 && w1 == 0x00000000736e656b { return .promptTokens }  // "promptTokens"
            if w0 == 0x6f5477654e78616d && w1 == 0x00000000736e656b { return .maxNewTokens }  // "maxNewTokens"
        case 13:
            if w0 == 0x74654d6567617375 && w1 == 0x0000006174616461 { return .usageMetadata }  // "usageMetadata"
            if w0 == 0x745f74757074756f && w1 == 0x000000736e656b6f { return .output_tokens }  // "output_tokens"
            if w0 == 0x745f74706d6f7270 && w1 == 0x000000736e656b6f { return .prompt_tokens }  // "prompt_tokens"
        case 14:
            if w0 == 0x5f77656e5f78616d && w1 == 0x0000736e656b6f74 { return .max_new_tokens }  // "max_new_tokens"
            if w0 == 0x656469727265766f && w1 == 0x00006769666e6f43 { return .overrideConfig }  // "overrideConfig"
        case 15:
            if w0 == 0x757074754f78616d && w1 == 0x00736e656b6f5474 { return .maxOutputTokens }  // "maxOutputTokens"
        case 16:
            if w0 == 0x6974656c706d6f63 && w1 == 0x736e656b6f546e6f { return .completionTokens }  // "completionTokens"
            if w0 == 0x69746172656e6567 && w1 == 0x6769666e6f436e6f { return .generationConfig }  // "generationConfig"
        case 17:
            if w0 == 0x6974656c706d6f63 && w1 == 0x6e656b6f745f6e6f && w2 == 0x0000000000000073 { return .completion_tokens }  // "completion_tokens"
            if w0 == 0x7074756f5f78616d && w1 == 0x6e656b6f745f7475 && w2 == 0x0000000000000073 { return .max_output_tokens }  // "max_output_tokens"
        case 21:
            if w0 == 0x706d6f635f78616d && w1 == 0x745f6e6f6974656c && w2 == 0x000000736e656b6f { return .max_completion_tokens }  // "max_completion_tokens"
        default: break
        }
        return .other
    }
}
