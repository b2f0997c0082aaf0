// libFuzzer target: a raw request path through PathNormalizer (what the route is matched
// on and what the backend is sent). Invariants: the output fits the input's size, is a
// canonical path (starts with '/', no empty, '.' or '..' segments, only pchar bytes and
// uppercase escapes of reserved bytes), and normalising it again changes nothing: a
// backend that normalises once more sees the path that was authorised.
//
// Input: the path bytes (no control header).

import Glibc

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPathNormalizer(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
    let n = input.count
    let out = UnsafeMutableRawBufferPointer.allocate(byteCount: max(n, 1), alignment: 1)
    defer { out.deallocate() }
    let exactOut = UnsafeMutableRawBufferPointer(rebasing: out[0..<n])
    let r = withExactCopy(input, count: n) { PathNormalizer.normalize($0, into: exactOut) }
    guard case .normalized(let count) = r else { return 0 }
    check(count >= 1 && count <= n, "normalized count \(count) of \(n)")
    let p = UnsafeRawBufferPointer(rebasing: out[0..<count])
    check(p[0] == UInt8(ascii: "/"), "does not start with '/'")
    // Segment checks.
    var i = 1
    var segStart = 1
    while i <= count {
        if i == count || p[i] == UInt8(ascii: "/") {
            let seg = UnsafeRawBufferPointer(rebasing: p[segStart..<i])
            let isLast = i == count
            check(!seg.isEmpty || (isLast && (count == 1 || p[count - 1] == UInt8(ascii: "/"))),
                  "empty segment in \(describe(p))")
            check(!(seg.count == 1 && seg[0] == UInt8(ascii: "."))
                  && !(seg.count == 2 && seg[0] == UInt8(ascii: ".") && seg[1] == UInt8(ascii: ".")),
                  "dot segment left in \(describe(p))")
            segStart = i + 1
        } else {
            let c = p[i]
            if c == UInt8(ascii: "%") {
                check(i + 2 < count && Oracle.isHexUpper(p[i + 1]) && Oracle.isHexUpper(p[i + 2]),
                      "bad escape in \(describe(p))")
                let v = Oracle.hex(p[i + 1]) << 4 | Oracle.hex(p[i + 2])
                check(!isUnreserved(v), "escape of an unreserved byte left in \(describe(p))")
                check(v != 0 && v != UInt8(ascii: "/") && v != UInt8(ascii: "\\"), "forbidden escape in \(describe(p))")
                i += 2
            } else {
                check(isUnreserved(c) || Array("!$&'()*+,=:@".utf8).contains(c),
                      "byte 0x\(String(c, radix: 16)) in \(describe(p))")
            }
        }
        i += 1
    }
    // Idempotent.
    let again = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 1)
    defer { again.deallocate() }
    let r2 = withExactCopy(p, count: count) { PathNormalizer.normalize($0, into: again) }
    check(r2 == .normalized(count: count) && memcmp(again.baseAddress!, p.baseAddress!, count) == 0,
          "not idempotent: \(describe(p)) → \(r2)")
    return 0
}

private func isUnreserved(_ c: UInt8) -> Bool {
    (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39)
        || c == UInt8(ascii: "-") || c == UInt8(ascii: ".") || c == UInt8(ascii: "_") || c == UInt8(ascii: "~")
}
