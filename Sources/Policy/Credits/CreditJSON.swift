// A resumable, allocation-free JSON scanner for credit metering: it reads JSON a byte at a
// time (any split of the input gives the same calls), keeps a fixed ~100 bytes of state
// whatever the input, and reports structure to a sink instead of building values.
//
// Used whole (RequestTokenHints: one request body) and resumed (StreamMeter: the data lines
// of one SSE event, fed as they pass). Strict RFC 8259 syntax: strings with valid escapes and
// no raw control bytes, the number grammar, exact literals, one top-level value; UTF-8 is
// not validated (bytes >= 0x80 are taken as they are). Depth is limited to 64 containers
// (a bit mask, no stack): deeper input fails. Linear: every byte is looked at once, and the
// number reader's loops are bounded by 20 steps per digit.

/// What a sink wants of the string value that follows a key.
enum CreditJSONInterest: UInt8, Sendable {
    /// Nothing but its raw length (the fast path: bytes are skipped, escapes not decoded).
    case skip
    /// Its decoded text, classified as a ``CreditWord``.
    case capture
    /// Its decoded text read as a JSON number (a numeric string: `"300"`).
    case number
}

/// A JSON number (or numeric string) as credit code needs it.
enum CreditNumber: Equatable, Sendable {
    /// A non-negative integral value (`100`, `100.0`, `1e2`), clamped to `Int64.max / 2`.
    case integer(Int64)
    /// Not integral (`100.5`, `1e-1`).
    case fraction
    /// Negative (`-5`, also `-0`).
    case negative
    /// Not a number at all (numeric strings only: `"abc"`, `""`, `"0300"`, `" 3"`).
    case malformed

    /// The largest value metering works with: sums of a few of them cannot overflow.
    static let limit: Int64 = Int64.max / 2
}

/// A scalar value as reported to a sink.
enum CreditScalar: Equatable, Sendable {
    /// A string; `length` is its raw byte count between the quotes (escapes undecoded,
    /// saturating), so `length > 0` ⇔ non-empty. `word` is `.other` unless captured.
    case string(length: Int, word: CreditWord)
    /// A string whose value was wanted as a number (interest `.number`).
    case numericString(CreditNumber)
    case number(CreditNumber)
    case bool(Bool)
    case null
}

/// Receives the structure of the scanned JSON. Depths: the top-level value's container
/// has depth 1; a member of the object at depth `d` has `key(_:depth: d)`, and if its value
/// is a container, that container has depth `d + 1`.
protocol CreditJSONSink {
    /// The key of a member of the object at `depth`; returns what to collect of the value
    /// (used only if the value is a string).
    mutating func key(_ word: CreditWord, depth: Int) -> CreditJSONInterest
    /// A container opens; `depth` is its own depth (1 for the top-level value).
    mutating func open(object: Bool, depth: Int)
    /// The container at `depth` closes.
    mutating func close(depth: Int)
    /// A scalar value inside the container at `depth` (0: the top-level value itself).
    mutating func scalar(_ value: CreditScalar, depth: Int)
}

/// Reads the JSON number grammar `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` a byte at
/// a time and keeps its exact integral value when it has one (saturating, no traps).
///
/// The digits (integer and fraction part together) are kept as `mantissa × 10^pendingZeros`,
/// where the mantissa ends in a non-zero digit: the value is integral exactly when
/// `pendingZeros + exponent − fractionDigits >= 0`.
struct CreditNumberReader: Sendable {
    enum Phase: UInt8, Sendable { case start, sign, zero, int, dot, frac, e, expSign, exp }
    static let countCap = 1 << 40
    var phase: Phase = .start
    var negative = false
    var expNegative = false
    /// The mantissa no longer fits 64 bits (the value is huge, or not integral).
    var huge = false
    var mantissa: UInt64 = 0
    var pendingZeros = 0
    var fractionDigits = 0
    var exponent = 0

    /// A number can end here.
    var isComplete: Bool { phase == .zero || phase == .int || phase == .frac || phase == .exp }

    /// Takes `c` as the next byte of the number; false when `c` cannot continue it (then
    /// the number ends before `c` if ``isComplete``, else it is malformed).
    @inline(__always)
    mutating func take(_ c: UInt8) -> Bool {
        let d = c &- 0x30
        if d <= 9 {
            switch phase {
            case .start, .sign:
                phase = d == 0 ? .zero : .int
                digit(d)
            case .int:
                digit(d)
            case .dot, .frac:
                phase = .frac
                if fractionDigits < Self.countCap { fractionDigits += 1 }
                digit(d)
            case .e, .expSign, .exp:
                phase = .exp
                if exponent < 1_000_000 { exponent = exponent * 10 + Int(d) }
            case .zero:
                return false
            }
            return true
        }
        switch c {
        case UInt8(ascii: "-"):
            if phase == .start { phase = .sign; negative = true; return true }
            if phase == .e { phase = .expSign; expNegative = true; return true }
        case UInt8(ascii: "+"):
            if phase == .e { phase = .expSign; return true }
        case UInt8(ascii: "."):
            if phase == .zero || phase == .int { phase = .dot; return true }
        case UInt8(ascii: "e"), UInt8(ascii: "E"):
            if phase == .zero || phase == .int || phase == .frac { phase = .e; return true }
        default:
            break
        }
        return false
    }

    @inline(__always)
    private mutating func digit(_ d: UInt8) {
        if d == 0 {
            if pendingZeros < Self.countCap { pendingZeros += 1 }
            return
        }
        if huge { pendingZeros = 0; return }
        var m = mantissa
        if m != 0 {
            // m × 10^(pendingZeros + 1): at most 20 multiplications before it overflows.
            var k = pendingZeros + 1
            while k > 0 {
                let (r, o) = m.multipliedReportingOverflow(by: 10)
                if o { huge = true; pendingZeros = 0; return }
                m = r
                k -= 1
            }
        }
        let (r, o) = m.addingReportingOverflow(UInt64(d))
        if o { huge = true } else { mantissa = r }
        pendingZeros = 0
    }

    /// The value (meaningful when ``isComplete``).
    var value: CreditNumber {
        if mantissa == 0 && !huge { return negative ? .negative : .integer(0) }
        if negative { return .negative }
        let shift = pendingZeros + (expNegative ? -exponent : exponent) - fractionDigits
        if shift < 0 { return .fraction }
        let limit = UInt64(CreditNumber.limit)
        if huge { return .integer(CreditNumber.limit) }
        var v = mantissa
        var k = shift
        while k > 0 {
            let (r, o) = v.multipliedReportingOverflow(by: 10)
            if o || r > limit { return .integer(CreditNumber.limit) }
            v = r
            k -= 1
        }
        return .integer(Int64(min(v, limit)))
    }
}

/// The resumable scanner. `feed` any number of times, then `finish` once.
struct CreditJSONScanner: Sendable {
    static let maxDepth = 64

    enum State: UInt8, Sendable {
        case start, value, valueOrClose, keyOrClose, key, keyString, colon, string, number, literal,
             afterValue, end, failed
    }

    enum Outcome: Equatable, Sendable {
        /// One complete value (and only whitespace after it).
        case complete
        /// Nothing but whitespace.
        case empty
        /// The input stopped inside the value.
        case incomplete
        /// Not JSON (or deeper than ``maxDepth``).
        case failed
    }

    private(set) var state: State = .start
    private(set) var depth = 0
    /// Bit `d - 1` set: the container at depth `d` is an object.
    private var objects: UInt64 = 0
    private var interest: CreditJSONInterest = .skip
    /// 0: none; 1: after `\`; 2…5: after `\u` and (escape − 2) hex digits.
    private var escape: UInt8 = 0
    private var code: UInt32 = 0
    /// Raw bytes of the current string (saturating).
    private var length = 0
    /// The first 24 decoded bytes of the current key or captured string, packed little-endian,
    /// and how many decoded bytes there were (counting stops at 25).
    private var w0: UInt64 = 0
    private var w1: UInt64 = 0
    private var w2: UInt64 = 0
    private var captured = 0
    /// The bytes a literal still needs, packed little-endian (0: done), and its value.
    private var literalRest: UInt32 = 0
    private var literalValue: CreditScalar = .null
    private var number = CreditNumberReader()
    /// A numeric string had a byte that is not part of a number.
    private var numberBad = false

    private static let quote = UInt8(ascii: "\"")
    private static let backslash = UInt8(ascii: "\\")

    @inline(__always)
    private static func isSpace(_ c: UInt8) -> Bool {
        c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09
    }

    @inline(__always)
    private var topIsObject: Bool { depth > 0 && (objects >> UInt64(depth - 1)) & 1 == 1 }

    /// Scans `bytes` (the next part of the input).
    mutating func feed<S: CreditJSONSink>(_ bytes: UnsafeRawBufferPointer, _ sink: inout S) {
        guard let base = bytes.baseAddress else { return }
        let n = bytes.count
        var i = 0
        while i < n {
            let c = base.load(fromByteOffset: i, as: UInt8.self)
            switch state {
            case .start, .value, .valueOrClose:
                if Self.isSpace(c) { i += 1; continue }
                if c == UInt8(ascii: "]") && state == .valueOrClose {
                    i += 1
                    closeContainer(&sink)
                    continue
                }
                i += 1
                beginValue(c, &sink)
            case .keyOrClose, .key:
                if Self.isSpace(c) { i += 1; continue }
                i += 1
                if c == Self.quote {
                    beginString(key: true)
                } else if c == UInt8(ascii: "}") && state == .keyOrClose {
                    closeContainer(&sink)
                } else {
                    state = .failed
                    return
                }
            case .colon:
                if Self.isSpace(c) { i += 1; continue }
                i += 1
                guard c == UInt8(ascii: ":") else { state = .failed; return }
                state = .value
            case .keyString, .string:
                if escape == 0 && state == .string && interest == .skip {
                    // Fast path: skip to the closing quote, an escape or a control byte.
                    var j = i
                    var b = c
                    while b != Self.quote && b != Self.backslash && b >= 0x20 {
                        j += 1
                        if j == n { break }
                        b = base.load(fromByteOffset: j, as: UInt8.self)
                    }
                    length = Self.saturatingAdd(length, j - i)
                    i = j
                    if i == n { return }
                }
                let b = base.load(fromByteOffset: i, as: UInt8.self)
                i += 1
                stringByte(b, &sink)
                if state == .failed { return }
            case .number:
                if number.take(c) { i += 1; continue }
                guard number.isComplete else { state = .failed; return }
                // The byte after the number is looked at again in the next state.
                endScalar(.number(number.value), &sink)
            case .literal:
                i += 1
                guard c == UInt8(truncatingIfNeeded: literalRest) else { state = .failed; return }
                literalRest >>= 8
                if literalRest == 0 { endScalar(literalValue, &sink) }
            case .afterValue:
                if Self.isSpace(c) { i += 1; continue }
                i += 1
                switch c {
                case UInt8(ascii: ","):
                    state = topIsObject ? .key : .value
                case UInt8(ascii: "}") where topIsObject, UInt8(ascii: "]") where !topIsObject:
                    closeContainer(&sink)
                default:
                    state = .failed
                    return
                }
            case .end:
                if Self.isSpace(c) { i += 1; continue }
                state = .failed
                return
            case .failed:
                return
            }
        }
    }

    /// The input has ended: a number at the very end is complete here.
    mutating func finish<S: CreditJSONSink>(_ sink: inout S) -> Outcome {
        if state == .number {
            if number.isComplete { endScalar(.number(number.value), &sink) } else { state = .failed }
        }
        switch state {
        case .end: return .complete
        case .start: return .empty
        case .failed: return .failed
        default: return .incomplete
        }
    }

    // MARK: - Values

    @inline(__always)
    private mutating func beginValue<S: CreditJSONSink>(_ c: UInt8, _ sink: inout S) {
        switch c {
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            guard depth < Self.maxDepth else { state = .failed; return }
            let object = c == UInt8(ascii: "{")
            depth += 1
            let bit: UInt64 = 1 << UInt64(depth - 1)
            if object { objects |= bit } else { objects &= ~bit }
            interest = .skip
            state = object ? .keyOrClose : .valueOrClose
            sink.open(object: object, depth: depth)
        case Self.quote:
            beginString(key: false)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            number = CreditNumberReader()
            _ = number.take(c)
            state = .number
        case UInt8(ascii: "t"):
            literalRest = 0x65_75_72  // "rue"
            literalValue = .bool(true)
            state = .literal
        case UInt8(ascii: "f"):
            literalRest = 0x65_73_6C_61  // "alse"
            literalValue = .bool(false)
            state = .literal
        case UInt8(ascii: "n"):
            literalRest = 0x6C_6C_75  // "ull"
            literalValue = .null
            state = .literal
        default:
            state = .failed
        }
    }

    @inline(__always)
    private mutating func endScalar<S: CreditJSONSink>(_ value: CreditScalar, _ sink: inout S) {
        interest = .skip
        state = depth == 0 ? .end : .afterValue
        sink.scalar(value, depth: depth)
    }

    @inline(__always)
    private mutating func closeContainer<S: CreditJSONSink>(_ sink: inout S) {
        let closing = depth
        depth -= 1
        state = depth == 0 ? .end : .afterValue
        sink.close(depth: closing)
    }

    // MARK: - Strings

    @inline(__always)
    private mutating func beginString(key: Bool) {
        state = key ? .keyString : .string
        escape = 0
        length = 0
        if key || interest == .capture {
            w0 = 0; w1 = 0; w2 = 0; captured = 0
        } else if interest == .number {
            number = CreditNumberReader()
            numberBad = false
        }
    }

    /// One byte inside a string (not the fast path).
    @inline(__always)
    private mutating func stringByte<S: CreditJSONSink>(_ c: UInt8, _ sink: inout S) {
        if escape == 0 && c == Self.quote { endString(&sink); return }
        length = Self.saturatingAdd(length, 1)
        switch escape {
        case 0:
            if c == Self.backslash { escape = 1; return }
            if c < 0x20 { state = .failed; return }
            decoded(c)
        case 1:
            let d: UInt8
            switch c {
            case Self.quote, Self.backslash, UInt8(ascii: "/"): d = c
            case UInt8(ascii: "b"): d = 0x08
            case UInt8(ascii: "f"): d = 0x0C
            case UInt8(ascii: "n"): d = 0x0A
            case UInt8(ascii: "r"): d = 0x0D
            case UInt8(ascii: "t"): d = 0x09
            case UInt8(ascii: "u"):
                escape = 2
                code = 0
                return
            default:
                state = .failed
                return
            }
            escape = 0
            decoded(d)
        default:
            let h: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): h = UInt32(c &- 0x30)
            case UInt8(ascii: "a")...UInt8(ascii: "f"): h = UInt32(c &- 0x57)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): h = UInt32(c &- 0x37)
            default: state = .failed; return
            }
            code = code << 4 | h
            escape += 1
            if escape == 6 {
                escape = 0
                // ASCII decodes to its byte; anything else to 0x80, which no word contains
                // and no number accepts (surrogate pairs need no pairing here).
                decoded(code < 0x80 ? UInt8(truncatingIfNeeded: code) : 0x80)
            }
        }
    }

    @inline(__always)
    private mutating func decoded(_ b: UInt8) {
        if state == .keyString || interest == .capture {
            let k = captured
            if k < 24 {
                let v = UInt64(b) << UInt64((k & 7) * 8)
                switch k >> 3 {
                case 0: w0 |= v
                case 1: w1 |= v
                default: w2 |= v
                }
            }
            if k < 25 { captured = k + 1 }
        } else if interest == .number {
            if !numberBad && !number.take(b) { numberBad = true }
        }
    }

    @inline(__always)
    private mutating func endString<S: CreditJSONSink>(_ sink: inout S) {
        if state == .keyString {
            let word = CreditWord.classify(count: captured, w0, w1, w2)
            state = .colon
            interest = sink.key(word, depth: depth)
            return
        }
        let value: CreditScalar
        switch interest {
        case .skip:
            value = .string(length: length, word: .other)
        case .capture:
            value = .string(length: length, word: CreditWord.classify(count: captured, w0, w1, w2))
        case .number:
            value = .numericString(!numberBad && number.isComplete ? number.value : .malformed)
        }
        endScalar(value, &sink)
    }

    @inline(__always)
    private static func saturatingAdd(_ a: Int, _ b: Int) -> Int {
        a > Int.max - b ? Int.max : a + b
    }
}
