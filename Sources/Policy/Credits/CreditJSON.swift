// A resumable, allocation-free JSON scanner for credit metering: it reads JSON in any pieces
// (any split of the input gives the same calls), keeps a fixed ~150 bytes of state
// whatever the input, and reports structure to a sink instead of building values. Runs of
// string bytes, unwanted keys and unread numbers are skipped in tight loops.
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
    /// Not read: the sink did not ask for the value (interest `.skip`).
    case unread

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
    /// The key of a member of the object at `depth` (only in objects whose `open` returned
    /// true); returns what to read of the value: with `.skip`, a string is `.string(length,
    /// .other)` and a number `.unread`; the value of a member whose key is not reported too.
    mutating func key(_ word: CreditWord, depth: Int) -> CreditJSONInterest
    /// A container opens; `depth` is its own depth (1 for the top-level value). For an
    /// object, returns whether its keys are wanted (the others are skipped unread).
    mutating func open(object: Bool, depth: Int) -> Bool
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
        case start, value, valueOrClose, keyOrClose, key, colon, afterValue, end, failed
        /// Inside a key that is wanted (decoded and captured) / not wanted (skipped).
        case keyString, skippedKey
        case string, number, literal
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
    /// Bit `d - 1` set: the sink wants the keys of the object at depth `d`.
    private var keyed: UInt64 = 0
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
    private static let lf: UInt8 = 0x0A
    private static let cr: UInt8 = 0x0D

    @inline(__always)
    private static func isSpace(_ c: UInt8) -> Bool {
        c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09
    }

    /// A byte that ends a run of plain string bytes.
    @inline(__always)
    private static func endsRun(_ c: UInt8) -> Bool {
        c == quote || c == backslash || c < 0x20
    }

    /// The high bit of each byte of `x` (little-endian) that is a quote, a backslash or a
    /// control byte (< 0x20), exact up to and including the first such byte (bytes after it
    /// may be flagged by borrows: only the lowest set bit is used).
    @inline(__always)
    static func stopMask(_ x: UInt64) -> UInt64 {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highs: UInt64 = 0x8080_8080_8080_8080
        let q = x ^ (ones &* 0x22)
        let bs = x ^ (ones &* 0x5C)
        let control = (x &- ones &* 0x20) & ~x
        let quote = (q &- ones) & ~q
        let backslash = (bs &- ones) & ~bs
        return (control | quote | backslash) & highs
    }

    @inline(__always)
    private static func isDigit(_ c: UInt8) -> Bool { c &- 0x30 <= 9 }

    @inline(__always)
    private var topIsObject: Bool { (objects >> UInt64(truncatingIfNeeded: depth &- 1)) & 1 == 1 }

    /// Scans `bytes` (the next part of the input); every byte is consumed.
    mutating func feed<S: CreditJSONSink>(_ bytes: UnsafeRawBufferPointer, _ sink: inout S) {
        guard let base = bytes.baseAddress else { return }
        _ = scan(base, bytes.count, lines: false, &sink)
    }

    /// Scans the next part of an SSE data line: stops at the first CR or LF (not consumed;
    /// the caller feeds the LF that joins data lines) and returns its offset, or `count`.
    /// After a syntax error it stops where it failed (``state`` is `.failed`) and ignores
    /// the rest of the input.
    mutating func feedLine<S: CreditJSONSink>(_ base: UnsafeRawPointer, _ count: Int, _ sink: inout S) -> Int {
        scan(base, count, lines: true, &sink)
    }

    @inline(__always)
    private mutating func scan<S: CreditJSONSink>(_ base: UnsafeRawPointer, _ n: Int, lines: Bool,
                                                   _ sink: inout S) -> Int {
        var i = 0
        while i < n {
            let c = base.load(fromByteOffset: i, as: UInt8.self)
            // In the structural states the expected bytes are tried first; whitespace (rare in
            // what backends send) after them.
            switch state {
            case .start, .value, .valueOrClose:
                if c > 0x20 {
                    i += 1
                    if c == UInt8(ascii: "]") && state == .valueOrClose {
                        closeContainer(&sink)
                    } else {
                        beginValue(c, &sink)
                        if state == .failed { return i - 1 }
                    }
                    continue
                }
            case .keyOrClose, .key:
                if c == Self.quote {
                    i += 1
                    escape = 0
                    length = 0
                    if (keyed >> UInt64(truncatingIfNeeded: depth &- 1)) & 1 == 1 {
                        state = .keyString
                        w0 = 0; w1 = 0; w2 = 0; captured = 0
                    } else {
                        state = .skippedKey
                    }
                    continue
                }
                if c == UInt8(ascii: "}") && state == .keyOrClose {
                    i += 1
                    closeContainer(&sink)
                    continue
                }
            case .colon:
                if c == UInt8(ascii: ":") {
                    i += 1
                    state = .value
                    continue
                }
            case .afterValue:
                if c == UInt8(ascii: ",") {
                    i += 1
                    state = topIsObject ? .key : .value
                    continue
                }
                if c == (topIsObject ? UInt8(ascii: "}") : UInt8(ascii: "]")) {
                    i += 1
                    closeContainer(&sink)
                    continue
                }
            case .end:
                break
            case .keyString, .skippedKey, .string:
                if escape != 0 {
                    i += 1
                    escapeByte(c)
                    if state == .failed { return i - 1 }
                    continue
                }
                // A run of plain bytes, up to a quote, a backslash or a control byte: eight at
                // a time while they last (SWAR), then one by one.
                var j = i
                var b = c
                if state == .keyString || (state == .string && interest == .capture) {
                    var k = captured
                    var a0 = w0, a1 = w1, a2 = w2
                    // Whole words while the capture is word-aligned (a key's start).
                    while k & 7 == 0 && k < 24 && j &+ 8 <= n {
                        let x = base.loadUnaligned(fromByteOffset: j, as: UInt64.self)
                        let stop = Self.stopMask(x)
                        let taken = stop == 0 ? 8 : stop.trailingZeroBitCount >> 3
                        let part = taken == 8 ? x : x & ((1 &<< UInt64(taken << 3)) &- 1)
                        if k == 0 { a0 = part } else if k == 8 { a1 = part } else { a2 = part }
                        k += taken
                        j += taken
                        if taken < 8 { break }
                    }
                    if k > 25 { k = 25 }
                    if j < n {
                        b = base.load(fromByteOffset: j, as: UInt8.self)
                        while !Self.endsRun(b) {
                            let shift = UInt64((k & 7) << 3)
                            if k < 8 { a0 |= UInt64(b) << shift } else if k < 16 { a1 |= UInt64(b) << shift } else if k < 24 { a2 |= UInt64(b) << shift }
                            if k < 25 { k += 1 }
                            j += 1
                            if j == n { break }
                            b = base.load(fromByteOffset: j, as: UInt8.self)
                        }
                    }
                    captured = k
                    w0 = a0; w1 = a1; w2 = a2
                } else if state == .string && interest == .number {
                    while !Self.endsRun(b) {
                        if !numberBad && !number.take(b) { numberBad = true }
                        j += 1
                        if j == n { break }
                        b = base.load(fromByteOffset: j, as: UInt8.self)
                    }
                } else {
                    while j &+ 8 <= n {
                        let stop = Self.stopMask(base.loadUnaligned(fromByteOffset: j, as: UInt64.self))
                        if stop != 0 { j += stop.trailingZeroBitCount >> 3; break }
                        j += 8
                    }
                    if j < n {
                        b = base.load(fromByteOffset: j, as: UInt8.self)
                        while !Self.endsRun(b) {
                            j += 1
                            if j == n { break }
                            b = base.load(fromByteOffset: j, as: UInt8.self)
                        }
                    }
                }
                length = Self.saturatingAdd(length, j &- i)
                i = j
                if i == n { return n }
                i += 1
                if b == Self.quote {
                    endString(&sink)
                    // What usually follows, taken at once: a key's colon, a value's comma.
                    if i < n {
                        let d = base.load(fromByteOffset: i, as: UInt8.self)
                        if state == .colon {
                            if d == UInt8(ascii: ":") { i += 1; state = .value }
                        } else if state == .afterValue && d == UInt8(ascii: ",") {
                            i += 1
                            state = topIsObject ? .key : .value
                        }
                    }
                } else if b == Self.backslash {
                    length = Self.saturatingAdd(length, 1)
                    escape = 1
                } else {
                    if lines && (b == Self.lf || b == Self.cr) { return i - 1 }
                    state = .failed
                    return i - 1
                }
                continue
            case .number:
                if interest == .skip && (number.phase == .int || number.phase == .frac || number.phase == .exp) {
                    // Unread: skip the digits (they change nothing but the value).
                    var b = c
                    while Self.isDigit(b) {
                        i += 1
                        if i == n { return n }
                        b = base.load(fromByteOffset: i, as: UInt8.self)
                    }
                    if number.take(b) { i += 1; continue }
                } else if number.take(c) {
                    i += 1
                    continue
                }
                guard number.isComplete else { state = .failed; return i }
                // The byte after the number is looked at again in the next state.
                endScalar(.number(interest == .skip ? .unread : number.value), &sink)
                continue
            case .literal:
                guard c == UInt8(truncatingIfNeeded: literalRest) else { state = .failed; return i }
                i += 1
                literalRest >>= 8
                if literalRest == 0 { endScalar(literalValue, &sink) }
                continue
            case .failed:
                return i
            }
            // A structural state, and not a byte it expects: whitespace, or the end of the
            // data line, or a syntax error.
            guard Self.isSpace(c) else { state = .failed; return i }
            if lines && (c == Self.lf || c == Self.cr) { return i }
            i += 1
        }
        return n
    }

    /// Ready for a new input (what `beginValue` and the string starts set up is left as is).
    mutating func reset() {
        state = .start
        depth = 0
        interest = .skip
        escape = 0
    }

    /// A fresh scanner is told its input was one complete value (a caller that recognised
    /// it whole and told the sink what the scan would have).
    mutating func assumeComplete() {
        state = .end
    }

    /// The offset of the quote that closes a JSON string whose text starts at `p + from`, if
    /// the text is valid (escapes included) and closed within `count`; nil otherwise.
    static func stringEnd(_ p: UnsafeRawPointer, from: Int, count n: Int) -> Int? {
        var j = from
        while true {
            while j &+ 8 <= n {
                let stop = stopMask(p.loadUnaligned(fromByteOffset: j, as: UInt64.self))
                if stop != 0 { j += stop.trailingZeroBitCount >> 3; break }
                j += 8
            }
            guard j < n else { return nil }
            var b = p.load(fromByteOffset: j, as: UInt8.self)
            while !endsRun(b) {
                j += 1
                guard j < n else { return nil }
                b = p.load(fromByteOffset: j, as: UInt8.self)
            }
            if b == quote { return j }
            guard b == backslash, j + 1 < n else { return nil }
            switch p.load(fromByteOffset: j + 1, as: UInt8.self) {
            case quote, backslash, UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"), UInt8(ascii: "n"),
                 UInt8(ascii: "r"), UInt8(ascii: "t"):
                j += 2
            case UInt8(ascii: "u"):
                guard j + 5 < n else { return nil }
                for k in 2...5 {
                    let h = p.load(fromByteOffset: j + k, as: UInt8.self)
                    guard isDigit(h) || (h | 0x20) &- UInt8(ascii: "a") < 6 else { return nil }
                }
                j += 6
            default:
                return nil
            }
        }
    }

    /// The input has ended: a number at the very end is complete here.
    mutating func finish<S: CreditJSONSink>(_ sink: inout S) -> Outcome {
        if state == .number {
            if number.isComplete {
                endScalar(.number(interest == .skip ? .unread : number.value), &sink)
            } else {
                state = .failed
            }
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
            interest = .skip
            if object {
                objects |= bit
                state = .keyOrClose
                if sink.open(object: true, depth: depth) { keyed |= bit } else { keyed &= ~bit }
            } else {
                objects &= ~bit
                state = .valueOrClose
                _ = sink.open(object: false, depth: depth)
            }
        case Self.quote:
            state = .string
            escape = 0
            length = 0
            if interest == .capture {
                w0 = 0; w1 = 0; w2 = 0; captured = 0
            } else if interest == .number {
                number = CreditNumberReader()
                numberBad = false
            }
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

    /// One byte of an escape sequence (`escape != 0`).
    private mutating func escapeByte(_ c: UInt8) {
        length = Self.saturatingAdd(length, 1)
        if escape == 1 {
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
            return
        }
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
            // ASCII decodes to its byte; anything else to 0x80, which no word contains and no
            // number accepts (surrogate pairs need no pairing here).
            decoded(code < 0x80 ? UInt8(truncatingIfNeeded: code) : 0x80)
        }
    }

    /// A decoded escape's byte.
    private mutating func decoded(_ b: UInt8) {
        if state == .keyString || (state == .string && interest == .capture) {
            let k = captured
            if k < 24 {
                let v = UInt64(b) << UInt64((k & 7) << 3)
                if k < 8 { w0 |= v } else if k < 16 { w1 |= v } else { w2 |= v }
            }
            if k < 25 { captured = k + 1 }
        } else if state == .string && interest == .number {
            if !numberBad && !number.take(b) { numberBad = true }
        }
    }

    @inline(__always)
    private mutating func endString<S: CreditJSONSink>(_ sink: inout S) {
        switch state {
        case .keyString:
            state = .colon
            interest = sink.key(CreditWord.classify(count: captured, w0, w1, w2), depth: depth)
        case .skippedKey:
            state = .colon
            interest = .skip
        default:
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
    }

    @inline(__always)
    private static func saturatingAdd(_ a: Int, _ b: Int) -> Int {
        a > Int.max &- b ? Int.max : a &+ b
    }
}
