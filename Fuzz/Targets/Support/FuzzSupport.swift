// Shared by every libFuzzer target (compiled into each one; see scripts/fuzz.sh).
//
// Input layout of the resumable-parser targets (request, response, chunked):
//
//     byte 0      flags: bits 0-1 limits profile, bit 2 byte-at-a-time,
//                        bits 3-4 request method (response target), bits 5-7 split count
//     bytes 1-7   split points, each a fraction of the message length (b * n / 256)
//     bytes 8...  the message (raw HTTP/1.1 bytes)
//
// Shorter inputs are a message with no control bytes (flags 0, no splits), so any raw
// HTTP file still means something. `Fuzz/tools/corpus.py wrap|unwrap` converts.

import Glibc

/// The input split into the control header and the message.
struct FuzzInput {
    var flags: UInt8 = 0
    var fractions: [UInt8] = []
    var message: UnsafeRawBufferPointer

    init(_ data: UnsafePointer<UInt8>?, _ size: Int) {
        let all = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
        if size < 8 {
            message = all
            return
        }
        flags = all[0]
        fractions = Array(all[1..<8])
        message = UnsafeRawBufferPointer(rebasing: all[8...])
    }

    /// 0…7 split points chosen by the fuzzer.
    var splitCount: Int { Int(flags >> 5) }
    var byteAtATime: Bool { flags & 0b100 != 0 }
    var limitsProfile: Int { Int(flags & 0b11) }
    var methodSelector: Int { Int((flags >> 3) & 0b11) }

    /// Sorted offsets in `0..<n` where the bytes "arrive" in pieces (duplicates kept: a
    /// wake-up with no new bytes is a real event).
    func splitPoints(length n: Int) -> [Int] {
        if n == 0 { return [] }
        var out: [Int] = []
        for k in 0..<min(splitCount, fractions.count) { out.append(Int(fractions[k]) * n / 256) }
        out.sort()
        return out
    }
}

/// Traps (a libFuzzer "deadly signal") with a message when an invariant does not hold.
@inline(__always)
func check(_ condition: Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
    if !condition {
        let text = "FUZZ INVARIANT VIOLATED at \(file):\(line): \(message())\n"
        var t = text
        t.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        fatalError("invariant violated: \(message())", file: file, line: line)
    }
}

/// Runs `body` over a copy of `src[from ..< from + count]` in its own exact-size heap
/// block, so AddressSanitizer reports any read past the bytes handed to the code under
/// test (a prefix of a larger input would otherwise hide an over-read).
@inline(__always)
func withExactCopy<R>(_ src: UnsafeRawBufferPointer, from: Int = 0, count: Int,
                      _ body: (UnsafeRawBufferPointer) -> R) -> R {
    precondition(from >= 0 && count >= 0 && from + count <= src.count, "withExactCopy out of range")
    if count == 0 { return body(UnsafeRawBufferPointer(start: nil, count: 0)) }
    let p = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 1)
    defer { p.deallocate() }
    p.copyMemory(from: src.baseAddress! + from, byteCount: count)
    return body(UnsafeRawBufferPointer(start: p, count: count))
}

/// Independent oracles (not the code under test's tables).
enum Oracle {
    /// RFC 9110 tchar.
    static func isTchar(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(c)
        }
    }

    /// field-value byte: VCHAR, obs-text, SP, HTAB.
    static func isFieldValueByte(_ c: UInt8) -> Bool {
        (c >= 0x21 && c <= 0x7E) || c >= 0x80 || c == 0x20 || c == 0x09
    }

    static func isHexUpper(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "F"))
    }

    static func hex(_ c: UInt8) -> UInt8 {
        c <= UInt8(ascii: "9") ? c - UInt8(ascii: "0") : (c | 0x20) - UInt8(ascii: "a") + 10
    }
}

/// Text for a failure message (printable ASCII, the rest escaped).
func describe(_ b: UnsafeRawBufferPointer, limit: Int = 200) -> String {
    var s = ""
    for c in b.prefix(limit) {
        switch c {
        case 0x20...0x7E where c != UInt8(ascii: "\\"): s.append(Character(Unicode.Scalar(c)))
        case 0x0D: s += "\\r"
        case 0x0A: s += "\\n"
        default:
            let h = Array("0123456789abcdef".utf8)
            s += "\\x" + String(decoding: [h[Int(c >> 4)], h[Int(c & 15)]], as: UTF8.self)
        }
    }
    if b.count > limit { s += "…(\(b.count) bytes)" }
    return s
}
