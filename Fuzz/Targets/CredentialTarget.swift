// libFuzzer target: credential extraction as the pipeline's extractCredential phase does it
// over peer bytes: `Authorization: Bearer` values, a query parameter, then KeyFormat's
// classification (and hash) of whatever was found.
//
// Input: byte 0 = length L (mod 16) of the query parameter name, the next L bytes the
// name, the rest the header value / query string.

import Glibc

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCredential(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let all = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
    guard size >= 1 else { return 0 }
    let l = min(Int(all[0] & 15), size - 1)
    let name = Array(all[1..<(1 + l)])
    let value = UnsafeRawBufferPointer(rebasing: all[(1 + l)...])
    let n = value.count

    if let r = withExactCopy(value, count: n, { CredentialRule.bearerToken(in: $0) }) {
        check(r.lowerBound >= 7 && r.upperBound <= n && !r.isEmpty, "bearer range \(r) of \(n)")
        for (i, c) in "bearer".utf8.enumerated() { check(value[i] | 0x20 == c, "not a Bearer value") }
        check(value[6] == 0x20 && value[r.lowerBound - 1] == 0x20, "no SP before the token")
        for k in r { check(value[k] != 0x20 && value[k] != 0x09, "blank inside the token") }
        for k in r.upperBound..<n { check(value[k] == 0x20 || value[k] == 0x09, "junk after the token") }
        classify(UnsafeRawBufferPointer(rebasing: value[r]))
    }
    if let r = withExactCopy(value, count: n, { CredentialRule.queryValue(named: name, in: $0) }) {
        check(r.lowerBound >= 1 && r.lowerBound <= r.upperBound && r.upperBound <= n, "query range \(r) of \(n)")
        check(value[r.lowerBound - 1] == UInt8(ascii: "="), "query value not after '='")
        let nameStart = r.lowerBound - 1 - name.count
        check(nameStart >= 0 && Array(value[nameStart..<(r.lowerBound - 1)]) == name, "name not before the value")
        check(nameStart == 0 || value[nameStart - 1] == UInt8(ascii: "&"), "name not at a parameter start")
        for k in r { check(value[k] != UInt8(ascii: "&"), "'&' inside the value") }
        check(r.upperBound == n || value[r.upperBound] == UInt8(ascii: "&"), "value does not run to '&' or the end")
        classify(UnsafeRawBufferPointer(rebasing: value[r]))
    }
    classify(value)
    return 0
}

/// KeyFormat.classify over the exact bytes; a key of the minted shape is 41 bytes of
/// `tg_` + base62, anything else is foreign.
private func classify(_ key: UnsafeRawBufferPointer) {
    let kind = withExactCopy(key, count: key.count) { KeyFormat.classify($0) }
    let shaped = key.count == KeyFormat.length && key[0] == UInt8(ascii: "t") && key[1] == UInt8(ascii: "g")
        && key[2] == UInt8(ascii: "_")
        && key[3...].allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) }
    check((kind == .foreign) == !shaped, "classify \(kind) for \(describe(key))")
    _ = withExactCopy(key, count: key.count) { KeyHash.sha256($0) }
}
