import Testing
@testable import Policy

struct RequestTokenHintsTests {
    func hints(_ json: String) -> RequestTokenHints {
        RequestTokenHints.scan(Array(json.utf8))
    }

    func maximum(_ json: String) -> Int64? {
        let h = hints(json)
        #expect(!h.invalid, "\(json)")
        return h.maxOutputTokens
    }

    func isInvalid(_ json: String) -> Bool { hints(json).invalid }

    @Test(arguments: ["max_tokens", "max_completion_tokens", "max_output_tokens", "maxTokens", "maxOutputTokens",
                      "max_new_tokens", "maxNewTokens", "num_predict"])
    func everyRecognisedField(_ name: String) {
        #expect(maximum("{\"\(name)\":321}") == 321)
        #expect(maximum("{\"\(name)s\":321}") == nil)
        #expect(maximum("{\"generationConfig\":{\"\(name)\":7}}") == 7)
        #expect(maximum("{\"overrideConfig\":{\"\(name)\":8}}") == 8)
    }

    @Test func typicalBodies() {
        #expect(hints(#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":256,"stream":true}"#)
                == RequestTokenHints(maxOutputTokens: 256, streaming: true, invalid: false))
        #expect(hints(#"{"question":"hello","streaming":true}"#) == RequestTokenHints(streaming: true))
        #expect(hints(#"{"question":"hello"}"#) == RequestTokenHints())
        #expect(hints(#"{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"temperature":0.2,"maxOutputTokens":1024}}"#)
                == RequestTokenHints(maxOutputTokens: 1024))
        #expect(maximum(#"{"inputs":"hi","parameters":{"max_new_tokens":50,"temperature":0.5}}"#) == 50)
        #expect(maximum(#"{"model":"llama3","prompt":"hi","options":{"num_predict":128}}"#) == 128)
        #expect(maximum(#"{"model":"o1","input":"hi","max_output_tokens":4000}"#) == 4000)
    }

    @Test func mismatchedFieldsTakeTheLargest() {
        #expect(maximum(#"{"max_tokens":100,"max_completion_tokens":500}"#) == 500)
        #expect(maximum(#"{"max_completion_tokens":500,"max_tokens":100}"#) == 500)
        #expect(maximum(#"{"max_tokens":100,"generationConfig":{"maxOutputTokens":50},"options":{"num_predict":900}}"#) == 900)
        #expect(maximum(#"{"max_tokens":100,"overrideConfig":{"maxTokens":5000}}"#) == 5000)
    }

    @Test func duplicatesTakeTheLargest() {
        #expect(maximum(#"{"max_tokens":10,"max_tokens":900}"#) == 900)
        #expect(maximum(#"{"max_tokens":900,"max_tokens":10}"#) == 900)
        #expect(maximum(#"{"max_tokens":900,"max_tokens":null}"#) == 900)
        #expect(maximum(#"{"overrideConfig":{"maxTokens":1},"overrideConfig":{"maxTokens":2}}"#) == 2)
    }

    @Test func overrideConfigAnywhereAndPerNode() {
        #expect(maximum(#"{"question":"hi","overrideConfig":{"maxTokens":300}}"#) == 300)
        #expect(maximum(#"{"overrideConfig":{"maxTokens":{"chatOpenAI_0":300,"chatAnthropic_0":1200}}}"#) == 1200)
        #expect(maximum(#"{"overrideConfig":{"maxTokens":{"chatOpenAI_0":"300","chatAnthropic_0":12}}}"#) == 300)
        #expect(maximum(#"{"overrideConfig":{"maxTokens":{"a":{"b":{"c":77}},"d":null}}}"#) == 77)
        #expect(maximum(#"{"overrideConfig":{"chatOpenAI_0":{"maxTokens":50}}}"#) == 50)
        #expect(maximum(#"{"overrideConfig":{"vars":[{"x":1},{"max_tokens":7}]}}"#) == 7)
        #expect(maximum(#"{"overrideConfig":{"a":{"b":{"c":{"d":{"generationConfig":{"maxOutputTokens":99}}}}}}}"#) == 99)
        #expect(maximum(#"{"overrideConfig":{"maxTokens":{}}}"#) == nil)
        #expect(isInvalid(#"{"overrideConfig":{"maxTokens":{"chatOpenAI_0":300,"x":"abc"}}}"#))
        #expect(isInvalid(#"{"overrideConfig":{"maxTokens":{"chatOpenAI_0":[300]}}}"#))
        #expect(isInvalid(#"{"overrideConfig":{"maxTokens":[300]}}"#))
        #expect(isInvalid(#"{"overrideConfig":{"maxTokens":{"a":-1}}}"#))
        // Only a top-level overrideConfig object.
        #expect(maximum(#"{"x":{"overrideConfig":{"maxTokens":5}}}"#) == nil)
        #expect(maximum(#"{"overrideConfig":"{\"maxTokens\":5}"}"#) == nil)
        // After the overrideConfig object closes, its rules end.
        #expect(maximum(#"{"overrideConfig":{},"x":{"maxTokens":5}}"#) == nil)
    }

    @Test func fieldsElsewhereAreNotHints() {
        #expect(maximum(#"{"messages":[{"role":"user","max_tokens":5}]}"#) == nil)
        #expect(maximum(#"{"metadata":{"max_tokens":5}}"#) == nil)
        #expect(maximum(#"{"parameters":{"x":{"max_tokens":5}}}"#) == nil)
        #expect(maximum(#"{"x":{"parameters":{"max_tokens":5}}}"#) == nil)
        #expect(maximum(#"[{"max_tokens":5}]"#) == nil)
        // A tool's JSON schema named `parameters` deeper in the body.
        #expect(maximum(#"{"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"max_tokens":{"type":"integer"}}}}}]}"#) == nil)
        // Objects as values outside overrideConfig are invalid; at top level `parameters` as a string is ignored.
        #expect(isInvalid(#"{"max_tokens":{"a":5}}"#))
        #expect(isInvalid(#"{"generationConfig":{"maxOutputTokens":{"a":5}}}"#))
        #expect(maximum(#"{"parameters":"max_tokens"}"#) == nil)
    }

    @Test func keysAreDecoded() {
        #expect(maximum(#"{"max\u005ftokens":5}"#) == 5)
        #expect(maximum(#"{"\u006dax_tokens":5,"max_tokens":1}"#) == 5)
        #expect(maximum(#"{"max\/tokens":5}"#) == nil)
        #expect(maximum(#"{"max_tokens\u0000":5}"#) == nil)
        #expect(maximum(#"{"overrid\u0065Config":{"maxTokens":6}}"#) == 6)
    }

    @Test func numbers() {
        let valid: [(String, Int64)] = [
            ("0", 0), ("100", 100), ("100.0", 100), ("100.000", 100), ("1e2", 100), ("1E+2", 100), ("1.5e1", 15),
            ("10e-1", 1), ("12300e-2", 123), ("0.0001e4", 1), ("0e-5", 0), ("0.0", 0), ("0e99999999", 0),
            ("\"300\"", 300), ("\"3e2\"", 300), ("\"\\u0033\\u0030\\u0030\"", 300), ("\"300.0\"", 300),
            ("9223372036854775807", Int64.max / 2), ("99999999999999999999999", Int64.max / 2),
            ("1e400", Int64.max / 2), ("1e999999999999999", Int64.max / 2), ("\"99999999999999999999999999\"", Int64.max / 2),
            ("4611686018427387903", Int64.max / 2), ("4611686018427387902", Int64.max / 2 - 1),
            ("1000000000000000000000000000000e-20", 10_000_000_000),
            ("10000000000000000000000000000000000000000000000e-46", 1),
        ]
        for (text, value) in valid {
            #expect(maximum("{\"max_tokens\":\(text)}") == value, "\(text)")
        }
        let invalid = ["-1", "-0", "-0.0", "1.5", "1e-1", "0.5", "100.01", "\"abc\"", "\"\"", "\"-5\"", "\"0300\"", "\" 300\"",
                       "\"300 \"", "\"+3\"", "\"1.5\"", "\"\\u00b3\"", "true", "false", "[1]", "{}", "\"0x10\"",
                       "1000000000000000000001e-20", "\"1e\""]
        for text in invalid {
            #expect(isInvalid("{\"max_tokens\":\(text)}"), "\(text)")
        }
        #expect(maximum(#"{"max_tokens":null}"#) == nil)
    }

    @Test func streamingFlag() {
        #expect(hints(#"{"stream":true}"#).streaming)
        #expect(hints(#"{"streaming":true}"#).streaming)
        #expect(!hints(#"{"stream":false}"#).streaming)
        #expect(!hints(#"{"stream":"true"}"#).streaming)
        #expect(!hints(#"{"stream":1}"#).streaming)
        #expect(!hints(#"{"x":{"stream":true}}"#).streaming)
        #expect(!hints(#"{"stream":true,"stream":false}"#).streaming)
        #expect(hints(#"{"stream":false,"streaming":true}"#).streaming)
        #expect(!hints(#"{"overrideConfig":{"stream":true}}"#).streaming)
    }

    @Test func bodiesThatAreNotJSON() {
        for text in [#"{"max_tokens": 5"#, #"{"a":1}x"#, #"{"a":1} {"b":2}"#, "{'a':1}", #"{"a":1,}"#, "[1,]",
                     #"{"a":01}"#, "{\"a\":\"x\u{01}\"}", #"{"a":"\x"}"#, #"{"a":"\u12G4"}"#, #"{"a" 1}"#, #"{"a":tru}"#,
                     #"{"a":nul}"#, "{\"a\":true1}", "{,}", "]", "}", "\"abc", "-", "1.", "1e", ".5", "+1", "NaN",
                     "\u{FEFF}{}", #"{"a":1}}"#, "[1]]", #"{"a":[}"#, #"{1:2}"#] {
            #expect(isInvalid(text), "\(text)")
        }
        // Empty is not invalid, and so is any single JSON value.
        #expect(hints("") == RequestTokenHints())
        #expect(hints(" \n\t\r ") == RequestTokenHints())
        for text in ["5", "\"x\"", "null", "[]", "{}", " [1, {\"a\": [true, false, null]}, \"\\\"\"] \n", "-0.5e-3"] {
            #expect(!isInvalid(text), "\(text)")
        }
        // A hint found before the syntax error stays (the caller refuses the request anyway).
        #expect(hints(#"{"max_tokens":5,"#) == RequestTokenHints(maxOutputTokens: 5, invalid: true))
    }

    @Test func depthLimit() {
        let ok = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        #expect(!isInvalid(ok))
        let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        #expect(isInvalid(deep))
        #expect(isInvalid(String(repeating: "[", count: 1_000_000)))
        #expect(isInvalid(String(repeating: "{\"a\":", count: 100_000)))
        // A hint at depth 62 inside overrideConfig counts; the same past 64 levels is invalid.
        let inner = String(repeating: "{\"a\":", count: 60) + "{\"maxTokens\":42}" + String(repeating: "}", count: 60)
        #expect(maximum("{\"overrideConfig\":\(inner)}") == 42)
        let tooDeep = String(repeating: "{\"a\":", count: 70) + "{\"maxTokens\":42}" + String(repeating: "}", count: 70)
        #expect(isInvalid("{\"overrideConfig\":\(tooDeep)}"))
    }

    @Test func largeBodies() {
        let big = String(repeating: "lorem \\\"ipsum\\\" \\u00e9 ", count: 100_000)
        #expect(maximum("{\"messages\":[{\"content\":\"\(big)\"}],\"max_tokens\":12}") == 12)
        let many = (0..<20_000).map { "{\"max_tokens\":\($0)}" }.joined(separator: ",")
        #expect(maximum("{\"overrideConfig\":{\"x\":[\(many)]},\"max_tokens\":3}") == 19_999)
    }
}
