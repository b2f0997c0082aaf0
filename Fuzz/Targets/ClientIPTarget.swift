// libFuzzer target: client address resolution from peer bytes: IPAddress.parse (the
// X-Forwarded-For elements), ClientRules.resolveClient (the walk through trusted proxies)
// and CIDR.parse (the text form round trip).
//
// Input: byte 0 picks the peer (trusted or not), the rest is an X-Forwarded-For value.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzClientIP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let all = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
    guard size >= 1 else { return 0 }
    let xff = UnsafeRawBufferPointer(rebasing: all[1...])
    let n = xff.count

    // The whole value as one address: a parsed address prints and parses back to itself.
    if let a = withExactCopy(xff, count: n, { IPAddress.parse($0) }) {
        let text = a.description
        check(IPAddress(text) == a, "\(describe(xff)) → \(text) does not parse back")
        if case .success(let c) = CIDR.parse(text) {
            check(c.contains(a) && CIDR(c.description) == c, "CIDR round trip of \(text)")
        } else {
            check(false, "\(text) is an address but not a CIDR")
        }
    }
    // The value as CIDR text.
    let s = String(decoding: xff, as: UTF8.self)
    if case .success(let c) = CIDR.parse(s) {
        check(c.contains(c.network), "CIDR \(s) does not contain its network")
        check(CIDR(c.description) == c, "CIDR \(s) → \(c.description) does not parse back")
    }

    // X-Forwarded-For through trusted proxies.
    let rules = Rules.shared
    let peers = Rules.peers
    let peer = peers[Int(all[0]) % peers.count]
    let client = withExactCopy(xff, count: n) { rules.resolveClient(peer: peer, forwardedFor: $0) }
    if client != peer {
        check(rules.trustedProxies.contains(peer), "an untrusted peer's XFF chose the client")
        // The chosen address is one of the list's elements (ports and brackets stripped), or
        // the unknown client when an element is not an address — never the proxy by default.
        var found = false
        var hasGarbage = false
        for part in xff.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false) {
            var a = part.startIndex, b = part.endIndex
            while a < b, xff[a] == 0x20 || xff[a] == 0x09 { a += 1 }
            while b > a, xff[b - 1] == 0x20 || xff[b - 1] == 0x09 { b -= 1 }
            if a == b { continue }
            if let ip = IPAddress.parseForwarded(UnsafeRawBufferPointer(rebasing: xff[a..<b])) {
                if ip == client { found = true }
            } else {
                hasGarbage = true
            }
        }
        check(found || (client.isUnknown && hasGarbage), "client \(client) is not in \(describe(xff))")
    }
    // No allow list admits the unknown client.
    if client.isUnknown { check(!ClientRules(allow: CIDRSet([CIDR("::/0")!, CIDR("0.0.0.0/0")!])).admits(client), "unknown admitted") }
    _ = rules.admits(client)
    return 0
}

private enum Rules {
    static let shared = ClientRules(
        trustedProxies: CIDRSet(["10.0.0.0/8", "127.0.0.0/8", "::1/128", "fd00::/8"].compactMap { CIDR($0) }),
        deny: CIDRSet(["203.0.113.0/24", "2001:db8::/32"].compactMap { CIDR($0) }),
        allow: CIDRSet())
    static let peers: [IPAddress] = ["127.0.0.1", "10.1.2.3", "::1", "192.0.2.7", "fd00::5", "2001:db8::1"]
        .compactMap { IPAddress($0) }
}
