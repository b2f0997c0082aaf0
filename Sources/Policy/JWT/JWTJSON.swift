/// The bounded JSON reader of JWT headers and claim sets: strict RFC 8259 over a decoded
/// segment in a caller's buffer, with nothing allocated.
///
/// Strings are decoded in place (an escape is never shorter than what it stands for, so
/// the write position never passes the read position) and checked as UTF-8 (no overlong
/// forms, no surrogates, nothing past U+10FFFF; a `\u` escape of a lone surrogate is
/// refused). Containers nest at most ``maxDepth`` deep. Every byte is looked at a bounded
/// number of times, and no input traps: a failure is `nil`/`false` at the byte it happened.
struct JWTJSON {
    let base: UnsafeMutablePointer<UInt8>
    let end: Int
    var i: Int

    static let maxDepth = 32

    init(_ base: UnsafeMutablePointer<UInt8>, count: Int) {
        self.base = base
        self.end = count
        self.i = 0
    }

    @inline(__always)
    var atEnd: Bool { i >= end }

    @inline(__always)
    func peek() -> UInt8 { base[i] }

    @inline(__always)
    mutating func ws() {
        while i < end {
            let c = base[i]
            guard c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 else { return }
            i &+= 1
        }
    }

    /// Consumes `c` (after white space); false when it is not next.
    @inline(__always)
    mutating func take(_ c: UInt8) -> Bool {
        ws()
        guard i < end, base[i] == c else { return false }
        i &+= 1
        return true
    }

    // MARK: strings

    /// Reads the string starting at `"`, decoding it in place; the decoded bytes' range.
    mutating func string() -> Range<Int>? {
        guard i < end, base[i] == 0x22 else { return nil }
        i &+= 1
        let start = i
        var w = i
        while i < end {
            let c = base[i]
            if c == 0x22 {
                i &+= 1
                return start..<w
            }
            if c == 0x5C {
                guard let n = escape(at: w) else { return nil }
                w &+= n
                continue
            }
            if c < 0x20 { return nil }
            if c < 0x80 {
                base[w] = c
                w &+= 1
                i &+= 1
                continue
            }
            guard let n = utf8Sequence() else { return nil }
            if w != i { (base + w).update(from: base + i, count: n) }
            w &+= n
            i &+= n
        }
        return nil
    }

    /// The length of the valid UTF-8 sequence at `i` (a lead byte ≥ 0x80), or nil.
    @inline(__always)
    private func utf8Sequence() -> Int? {
        let c0 = base[i]
        @inline(__always) func cont(_ k: Int) -> UInt8? {
            guard i &+ k < end else { return nil }
            let c = base[i &+ k]
            return c & 0xC0 == 0x80 ? c : nil
        }
        switch c0 {
        case 0xC2...0xDF:
            return cont(1) == nil ? nil : 2
        case 0xE0...0xEF:
            guard let c1 = cont(1), cont(2) != nil else { return nil }
            if c0 == 0xE0 && c1 < 0xA0 { return nil }          // overlong
            if c0 == 0xED && c1 >= 0xA0 { return nil }         // surrogates
            return 3
        case 0xF0...0xF4:
            guard let c1 = cont(1), cont(2) != nil, cont(3) != nil else { return nil }
            if c0 == 0xF0 && c1 < 0x90 { return nil }          // overlong
            if c0 == 0xF4 && c1 >= 0x90 { return nil }         // past U+10FFFF
            return 4
        default:
            return nil
        }
    }

    /// Decodes the escape at `i` (a backslash) into `w`; the bytes written.
    private mutating func escape(at w: Int) -> Int? {
        guard i &+ 1 < end else { return nil }
        let e = base[i &+ 1]
        let out: UInt8
        switch e {
        case 0x22, 0x5C, 0x2F: out = e
        case 0x62: out = 0x08
        case 0x66: out = 0x0C
        case 0x6E: out = 0x0A
        case 0x72: out = 0x0D
        case 0x74: out = 0x09
        case 0x75:
            guard var scalar = hex4(at: i &+ 2) else { return nil }
            var used = 6
            if scalar >= 0xD800 && scalar <= 0xDBFF {
                // A high surrogate must be followed by an escaped low one.
                guard i &+ 11 < end, base[i &+ 6] == 0x5C, base[i &+ 7] == 0x75,
                      let low = hex4(at: i &+ 8), low >= 0xDC00, low <= 0xDFFF else { return nil }
                scalar = 0x10000 &+ ((scalar &- 0xD800) << 10) &+ (low &- 0xDC00)
                used = 12
            } else if scalar >= 0xDC00 && scalar <= 0xDFFF {
                return nil
            }
            i &+= used
            return encodeUTF8(scalar, at: w)
        default:
            return nil
        }
        base[w] = out
        i &+= 2
        return 1
    }

    private func hex4(at k: Int) -> UInt32? {
        guard k &+ 4 <= end else { return nil }
        var v: UInt32 = 0
        for j in 0..<4 {
            let c = base[k &+ j]
            let d: UInt8
            switch c {
            case 0x30...0x39: d = c &- 0x30
            case 0x41...0x46: d = c &- 0x41 &+ 10
            case 0x61...0x66: d = c &- 0x61 &+ 10
            default: return nil
            }
            v = v << 4 | UInt32(d)
        }
        return v
    }

    private func encodeUTF8(_ s: UInt32, at w: Int) -> Int {
        if s < 0x80 {
            base[w] = UInt8(s)
            return 1
        }
        if s < 0x800 {
            base[w] = UInt8(0xC0 | s >> 6)
            base[w &+ 1] = UInt8(0x80 | s & 0x3F)
            return 2
        }
        if s < 0x10000 {
            base[w] = UInt8(0xE0 | s >> 12)
            base[w &+ 1] = UInt8(0x80 | (s >> 6) & 0x3F)
            base[w &+ 2] = UInt8(0x80 | s & 0x3F)
            return 3
        }
        base[w] = UInt8(0xF0 | s >> 18)
        base[w &+ 1] = UInt8(0x80 | (s >> 12) & 0x3F)
        base[w &+ 2] = UInt8(0x80 | (s >> 6) & 0x3F)
        base[w &+ 3] = UInt8(0x80 | s & 0x3F)
        return 4
    }

    // MARK: numbers

    /// Reads a number (the RFC 8259 grammar) at `i`.
    mutating func number() -> JWTNumber? {
        var negative = false
        if i < end, base[i] == 0x2D { negative = true; i &+= 1 }
        guard i < end, base[i] &- 0x30 <= 9 else { return nil }
        var mantissa: UInt64 = 0
        var overflowed = false
        var exponent = 0
        var lostNonZero = false
        var plain = true
        @inline(__always) func add(_ d: UInt8, fraction: Bool) {
            if !overflowed {
                let (m, o1) = mantissa.multipliedReportingOverflow(by: 10)
                let (s, o2) = m.addingReportingOverflow(UInt64(d))
                if o1 || o2 { overflowed = true } else { mantissa = s; if fraction { exponent -= 1 }; return }
            }
            // Past 19 digits: an integer digit scales by ten, a fraction digit is dropped.
            if fraction { if d != 0 { lostNonZero = true } } else if exponent < 1_000_000 { exponent += 1 }
        }
        if base[i] == 0x30 {
            i &+= 1
        } else {
            while i < end, base[i] &- 0x30 <= 9 { add(base[i] &- 0x30, fraction: false); i &+= 1 }
        }
        if i < end, base[i] == 0x2E {
            plain = false
            i &+= 1
            guard i < end, base[i] &- 0x30 <= 9 else { return nil }
            while i < end, base[i] &- 0x30 <= 9 { add(base[i] &- 0x30, fraction: true); i &+= 1 }
        }
        if i < end, base[i] | 0x20 == 0x65 {
            plain = false
            i &+= 1
            var expNegative = false
            if i < end, base[i] == 0x2D || base[i] == 0x2B { expNegative = base[i] == 0x2D; i &+= 1 }
            guard i < end, base[i] &- 0x30 <= 9 else { return nil }
            var e = 0
            while i < end, base[i] &- 0x30 <= 9 {
                if e < 1_000_000 { e = e * 10 + Int(base[i] &- 0x30) }
                i &+= 1
            }
            exponent += expNegative ? -e : e
        }
        // |value| = mantissa × 10^exponent: its floor, and whether anything is left below 1.
        var magnitude: UInt64
        var fraction = lostNonZero
        if mantissa == 0 {
            magnitude = 0
        } else if exponent >= 0 {
            magnitude = mantissa
            var k = 0
            while k < exponent, magnitude <= JWTNumber.cap {
                magnitude = magnitude &* 10
                k += 1
            }
        } else if exponent < -19 {
            magnitude = 0
            fraction = true
        } else {
            var divisor: UInt64 = 1
            for _ in 0..<(-exponent) { divisor &*= 10 }
            magnitude = mantissa / divisor
            if mantissa % divisor != 0 { fraction = true }
        }
        if overflowed && exponent >= 0 { magnitude = JWTNumber.cap }
        let m = Int64(min(magnitude, JWTNumber.cap))
        let floor = negative ? (fraction ? -m - 1 : -m) : m
        return JWTNumber(floor: floor, hasFraction: fraction, isPlainInteger: plain && !negative)
    }

    // MARK: skipping

    /// Reads and discards one value (strings still checked, containers ≤ `maxDepth - depth`).
    mutating func skipValue(depth: Int) -> Bool {
        ws()
        guard i < end else { return false }
        switch base[i] {
        case 0x22: return string() != nil
        case 0x7B:
            guard depth < Self.maxDepth else { return false }
            i &+= 1
            if take(0x7D) { return true }
            repeat {
                ws()
                guard string() != nil, take(0x3A), skipValue(depth: depth &+ 1) else { return false }
            } while take(0x2C)
            return take(0x7D)
        case 0x5B:
            guard depth < Self.maxDepth else { return false }
            i &+= 1
            if take(0x5D) { return true }
            repeat {
                guard skipValue(depth: depth &+ 1) else { return false }
            } while take(0x2C)
            return take(0x5D)
        case 0x74: return literal("true")
        case 0x66: return literal("false")
        case 0x6E: return literal("null")
        default: return number() != nil
        }
    }

    mutating func literal(_ word: StaticString) -> Bool {
        let n = word.utf8CodeUnitCount
        guard i &+ n <= end else { return false }
        for k in 0..<n where base[i &+ k] != word.utf8Start[k] { return false }
        i &+= n
        return true
    }

    // MARK: values of interest

    /// A top-level member's value, read once whatever the member is used for.
    enum Value {
        case string(Range<Int>)
        case number(JWTNumber, raw: Range<Int>)
        case bool(Bool)
        case null
        /// An array of strings, decoded and moved together, separated by one 0x00 each
        /// (`count` elements; no element holds a 0x00).
        case strings(Range<Int>, count: Int)
        /// Any other array, or an array of strings one of which holds a 0x00.
        case array
        case object
    }

    /// Reads the value of a top-level member (depth 1).
    mutating func value() -> Value? {
        ws()
        guard i < end else { return nil }
        switch base[i] {
        case 0x22:
            return string().map { .string($0) }
        case 0x5B:
            return stringArray()
        case 0x7B:
            return skipValue(depth: 1) ? .object : nil
        case 0x74: return literal("true") ? .bool(true) : nil
        case 0x66: return literal("false") ? .bool(false) : nil
        case 0x6E: return literal("null") ? .null : nil
        default:
            let start = i
            return number().map { .number($0, raw: start..<i) }
        }
    }

    /// An array at `i`: its strings moved together (see ``Value/strings(_:count:)``), or `.array`.
    private mutating func stringArray() -> Value? {
        i &+= 1
        if take(0x5D) { return .strings(i..<i, count: 0) }
        var w = -1
        var start = 0
        var count = 0
        var onlyStrings = true
        repeat {
            ws()
            guard i < end else { return nil }
            if onlyStrings && base[i] == 0x22 {
                guard let r = string() else { return nil }
                if w < 0 { w = r.lowerBound; start = w } else { base[w] = 0; w &+= 1 }
                var hasNul = false
                for k in r where base[k] == 0 { hasNul = true; break }
                if hasNul { onlyStrings = false; continue }
                if w != r.lowerBound { (base + w).update(from: base + r.lowerBound, count: r.count) }
                w &+= r.count
                count &+= 1
            } else {
                onlyStrings = false
                guard skipValue(depth: 2) else { return nil }
            }
        } while take(0x2C)
        guard take(0x5D) else { return nil }
        return onlyStrings ? .strings(start..<w, count: count) : .array
    }
}

/// A JSON number as claims need it: its floor, saturated at ±``cap`` (far past any date).
public struct JWTNumber: Sendable, Equatable {
    public var floor: Int64
    /// Not an integer (something is left below the unit).
    public var hasFraction: Bool
    /// Written as digits only (no sign, fraction or exponent): usable as an identifier.
    public var isPlainInteger: Bool

    static let cap: UInt64 = 1 << 53

    /// The smallest integer not below the value.
    public var ceiling: Int64 { hasFraction ? floor &+ 1 : floor }
}
