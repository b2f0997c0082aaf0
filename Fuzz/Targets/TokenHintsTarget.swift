// libFuzzer target: a JSON request body through RequestTokenHints (the output-token maximum
// a client asked for). Invariants:
//
// - the scan is the same whole and resumed: the body fed to the resumable scanner in pieces
//   at fuzzer-chosen points and (flag bit 2) one byte at a time gives the same hints;
// - the maximum is nil or within [0, Int64.max / 2];
// - validity agrees with Foundation's JSONSerialization (fragments allowed) where both follow
//   RFC 8259: inputs where they knowingly differ are left out of the comparison (Foundation
//   takes trailing commas, a BOM and NUL bytes around a value, refuses lone surrogate escapes, numbers past Double and
//   invalid UTF-8; the scanner stops at 64 levels and calls an empty body "no hints");
// - on a body both parse (and with no raw BOM: JSONSerialization drops one at the start of a
//   string, `"\u{FEFF}max_tokens"` is `max_tokens` to it), a plain reading of Foundation's
//   objects by the documented rules is
//   a lower bound: every maximum it finds (it sees one of each duplicate key) is at most the
//   scanner's, and a recognised field with a bad value there makes the scanner's hints invalid.
//
// Input: the control header of FuzzSupport.swift (flags bit 2 byte at a time, bits 5-7 the
// split count), then the body.

import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTokenHints(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = FuzzInput(data, size)
    let body = input.message
    let n = body.count
    let hints = withExactCopy(body, count: n) { RequestTokenHints.scan($0) }
    check(hints.maxOutputTokens.map { $0 >= 0 && $0 <= Int64.max / 2 } ?? true, "maximum \(String(describing: hints.maxOutputTokens))")

    // Resumed.
    let cuts = [0] + input.splitPoints(length: n) + [n]
    var pieces: [Range<Int>] = []
    for k in 0..<(cuts.count - 1) where cuts[k] <= cuts[k + 1] { pieces.append(cuts[k]..<cuts[k + 1]) }
    let split = resumed(body, pieces)
    check(split == hints, "split \(pieces): \(split) whole: \(hints)")
    if input.byteAtATime {
        let bytewise = resumed(body, (0..<n).map { $0..<$0 + 1 })
        check(bytewise == hints, "byte at a time: \(bytewise) whole: \(hints)")
    }

    // Foundation.
    let bytes = Array(body)
    let object = try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
    let parsed = syntaxIsValid(bytes)
    if !parsed { check(hints.invalid, "not JSON, hints valid: \(describe(body))") }
    if object == nil && parsed && !foundationRefusesMore(bytes) && !isBlank(bytes) {
        check(false, "scanner parsed what Foundation refuses: \(describe(body))")
    }
    if object != nil && !parsed && !foundationTakesMore(bytes) {
        check(false, "Foundation parsed what the scanner refuses: \(describe(body))")
    }
    // JSONSerialization drops a raw BOM at the start of a string (a key too; JSONDecoder and
    // other parsers keep it): no value comparison on such bodies.
    let bom = bytes.indices.contains { bytes[$0...].starts(with: [0xEF, 0xBB, 0xBF]) }
    if let object, parsed, !bom {
        var oracle = HintsOracle()
        oracle.read(object)
        if oracle.invalid { check(hints.invalid, "a bad value Foundation sees, scanner valid: \(describe(body))") }
        if !hints.invalid, let m = oracle.maximum {
            check((hints.maxOutputTokens ?? -1) >= min(m, 1 << 53), "scanner \(String(describing: hints.maxOutputTokens)) < \(m) in \(describe(body))")
        }
    }
    return 0
}

/// The same scan, resumed over pieces (each in its own exact-size block).
func resumed(_ body: UnsafeRawBufferPointer, _ pieces: [Range<Int>]) -> RequestTokenHints {
    var scanner = CreditJSONScanner()
    var sink = HintsSink()
    for r in pieces {
        withExactCopy(body, from: r.lowerBound, count: r.count) { scanner.feed($0, &sink) }
    }
    let outcome = scanner.finish(&sink)
    return RequestTokenHints(maxOutputTokens: sink.maximum >= 0 ? sink.maximum : nil, streaming: sink.streaming,
                             invalid: sink.invalid || outcome == .failed || outcome == .incomplete)
}

/// The scanner's verdict on the syntax alone (hints may also be invalid for a value).
func syntaxIsValid(_ bytes: [UInt8]) -> Bool {
    var scanner = CreditJSONScanner()
    var sink = NullSink()
    bytes.withUnsafeBytes { scanner.feed($0, &sink) }
    let o = scanner.finish(&sink)
    return o == .complete || o == .empty
}

struct NullSink: CreditJSONSink {
    mutating func key(_ word: CreditWord, depth: Int) -> CreditJSONInterest { .skip }
    mutating func open(object: Bool, depth: Int) -> Bool { false }
    mutating func close(depth: Int) {}
    mutating func scalar(_ value: CreditScalar, depth: Int) {}
}

func isBlank(_ bytes: [UInt8]) -> Bool { bytes.allSatisfy { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D } }

/// Inputs Foundation refuses although RFC 8259 (and the scanner) take them.
func foundationRefusesMore(_ b: [UInt8]) -> Bool {
    if b.contains(where: { $0 >= 0x80 }) { return true }            // UTF-8 not validated by the scanner
    var k = 0
    while k < b.count {
        // \uD800-\uDFFF: Foundation wants surrogates paired.
        if b[k] == UInt8(ascii: "\\"), k + 2 < b.count, b[k + 1] == UInt8(ascii: "u"),
           b[k + 2] == UInt8(ascii: "d") || b[k + 2] == UInt8(ascii: "D") { return true }
        // Exponents of 3+ digits, long digit runs: past Double for Foundation, clamped here.
        if b[k] == UInt8(ascii: "e") || b[k] == UInt8(ascii: "E") { return true }
        k += 1
    }
    var run = 0
    for c in b {
        if c >= 0x30 && c <= 0x39 { run += 1; if run > 300 { return true } } else { run = 0 }
    }
    return false
}

/// Inputs Foundation takes although RFC 8259 (and the scanner) refuse them.
func foundationTakesMore(_ b: [UInt8]) -> Bool {
    if b.starts(with: [0xEF, 0xBB, 0xBF]) { return true }             // a BOM
    // Control bytes outside strings (NUL around a value passes there).
    if b.contains(where: { $0 < 0x20 && $0 != 0x09 && $0 != 0x0A && $0 != 0x0D }) { return true }
    var depth = 0
    var last: UInt8 = 0
    for c in b {
        if c == UInt8(ascii: "[") || c == UInt8(ascii: "{") { depth += 1; if depth > 64 { return true } }
        if (c == UInt8(ascii: "]") || c == UInt8(ascii: "}")) && last == UInt8(ascii: ",") { return true }  // trailing comma
        if c != 0x20 && c != 0x09 && c != 0x0A && c != 0x0D { last = c }
    }
    return false
}

/// The documented rules over Foundation's objects (one value per duplicate key).
struct HintsOracle {
    var maximum: Int64?
    var invalid = false

    static let fields: Set<String> = ["max_tokens", "max_completion_tokens", "max_output_tokens", "maxTokens",
                                      "maxOutputTokens", "max_new_tokens", "maxNewTokens", "num_predict"]

    mutating func read(_ top: Any) {
        guard let o = top as? [String: Any] else { return }
        for (k, v) in o {
            if Self.fields.contains(k) { value(v, objects: false) }
            if k == "generationConfig" || k == "parameters" || k == "options", let p = v as? [String: Any] {
                for (k2, v2) in p where Self.fields.contains(k2) { value(v2, objects: false) }
            }
            if k == "overrideConfig", let p = v as? [String: Any] { anywhere(p) }
        }
    }

    mutating func anywhere(_ v: Any) {
        if let o = v as? [String: Any] {
            for (k, v2) in o {
                if Self.fields.contains(k) { value(v2, objects: true) } else { anywhere(v2) }
            }
        } else if let a = v as? [Any] {
            for e in a { anywhere(e) }
        }
    }

    mutating func value(_ v: Any, objects: Bool) {
        if v is NSNull { return }
        if let o = v as? [String: Any] {
            if objects { for (_, v2) in o { value(v2, objects: true) } } else { invalid = true }
            return
        }
        if let s = v as? String {
            // A numeric string: the JSON number grammar, nothing around it.
            guard !s.isEmpty, s.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || $0 == UInt8(ascii: ".")
                      || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "-") }),
                  let x = try? JSONSerialization.jsonObject(with: Data(s.utf8), options: [.fragmentsAllowed]) as? NSNumber
            else {
                // Past Double (an exponent, hundreds of digits) Foundation fails where the
                // scanner clamps: no verdict then.
                if !s.utf8.contains(where: { $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") }) && s.utf8.count <= 300 {
                    invalid = true
                }
                return
            }
            number(x)
            return
        }
        if let x = v as? NSNumber { number(x); return }
        invalid = true
    }

    mutating func number(_ x: NSNumber) {
        if String(cString: x.objCType) == "c" { invalid = true; return }   // true / false
        let d = x.doubleValue
        guard d >= 0, d == d.rounded() else { invalid = true; return }
        let v: Int64 = d >= 4.6e18 ? Int64.max / 2 : (String(cString: x.objCType) == "d" ? Int64(d) : min(x.int64Value, Int64.max / 2))
        maximum = max(maximum ?? 0, v)
    }
}
