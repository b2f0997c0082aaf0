import Testing
@testable import Policy

struct IPRulesTests {
    static let valid: [(String, String)] = [
        ("192.0.2.1", "192.0.2.1"), ("0.0.0.0", "0.0.0.0"), ("255.255.255.255", "255.255.255.255"),
        ("::", "::"), ("::1", "::1"), ("2001:db8::1", "2001:db8::1"), ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"), ("1::", "1::"), ("fe80::1:2", "fe80::1:2"),
        ("::ffff:192.0.2.1", "192.0.2.1"), ("64:ff9b::192.0.2.33", "64:ff9b::c000:221"),
    ]

    @Test(arguments: valid)
    func parses(_ text: String, _ canonical: String) {
        #expect(IPAddress(text)?.description == canonical)
    }

    static let invalid = ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.4 ", " 1.2.3.4", "1.2.3.", "a.b.c.d",
                          ":::", "1:2:3:4:5:6:7:8:9", "1::2::3", "12345::", "1:", ":1", "fe80::1%eth0", "[::1]",
                          "1:2:3:4:5:6:7::8:9", "::1.2.3", "1.2.3.4:80", "unknown"]

    @Test(arguments: invalid)
    func refuses(_ text: String) {
        #expect(IPAddress(text) == nil)
    }

    @Test func cidrContainment() {
        let v4 = CIDR("10.0.0.0/8")!
        #expect(v4.contains(IPAddress("10.255.1.2")!))
        #expect(!v4.contains(IPAddress("11.0.0.1")!))
        #expect(!v4.contains(IPAddress("::a00:1")!))  // an IPv6 address is not IPv4
        let v6 = CIDR("2001:db8::/32")!
        #expect(v6.contains(IPAddress("2001:db8:ffff::1")!))
        #expect(!v6.contains(IPAddress("2001:db9::1")!))
        #expect(CIDR("0.0.0.0/0")!.contains(IPAddress("8.8.8.8")!))
        #expect(!CIDR("0.0.0.0/0")!.contains(IPAddress("::1")!))
        #expect(CIDR("::/0")!.contains(IPAddress("8.8.8.8")!))
        #expect(CIDR("192.0.2.7")!.contains(IPAddress("192.0.2.7")!))
        #expect(CIDR.parse("10.0.0.1/8") == .failure(.hostBitsSet))
        #expect(CIDR.parse("10.0.0.0/08") == .failure(.badPrefix))
        #expect(CIDR.parse("::/129") == .failure(.badPrefix))
        #expect(CIDR.parse("10.0.0.0/") == .failure(.badPrefix))
        #expect(CIDR("10.0.0.0/8")!.description == "10.0.0.0/8")
    }

    static let rules = ClientRules(trustedProxies: CIDRSet([CIDR("10.0.0.0/8")!, CIDR("::1/128")!]))

    static let xff: [(peer: String, xff: String?, client: String)] = [
        ("198.51.100.7", "1.2.3.4", "198.51.100.7"),  // untrusted peer: XFF ignored (spoofing)
        ("198.51.100.7", nil, "198.51.100.7"),
        ("10.0.0.1", nil, "10.0.0.1"),
        ("10.0.0.1", "", "10.0.0.1"),
        ("10.0.0.1", "1.2.3.4", "1.2.3.4"),
        ("10.0.0.1", "9.9.9.9, 1.2.3.4", "1.2.3.4"),  // rightmost untrusted, not leftmost
        ("10.0.0.1", "9.9.9.9, 1.2.3.4, 10.0.0.2", "1.2.3.4"),  // trusted hops skipped
        ("10.0.0.1", "9.9.9.9,1.2.3.4,10.0.0.2 ,\t10.0.0.3", "1.2.3.4"),
        ("10.0.0.1", "10.0.0.5, 10.0.0.2", "10.0.0.5"),  // all trusted → leftmost
        // Not an address: the client is unknown (`::`), never the trusted proxy itself.
        ("10.0.0.1", "1.2.3.4, garbage, 10.0.0.2", "::"),
        ("10.0.0.1", "1.2.3.4, garbage", "::"),
        ("10.0.0.1", "unknown", "::"),
        ("10.0.0.1", "1.2.3.4, unknown", "::"),
        ("10.0.0.1", "_hidden", "::"),
        ("10.0.0.1", "1.2.3.4:", "::"),
        ("10.0.0.1", "1.2.3.4:123456", "::"),
        ("10.0.0.1", "[1.2.3.4", "::"),
        ("10.0.0.1", "[2001:db8::1]x", "::"),
        // Ports and brackets are stripped.
        ("10.0.0.1", "1.2.3.4:5555", "1.2.3.4"),
        ("10.0.0.1", "9.9.9.9, 1.2.3.4:5555, 10.0.0.2:80", "1.2.3.4"),
        ("10.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.1", "[2001:db8::1]", "2001:db8::1"),
        ("10.0.0.1", "[::1]:80, 1.2.3.4", "1.2.3.4"),
        ("10.0.0.1", "1.2.3.4, , 10.0.0.2", "1.2.3.4"),  // empty list elements skipped
        ("::1", "2001:db8::7", "2001:db8::7"),
        ("::1", "::ffff:10.1.1.1, 2001:db8::7", "2001:db8::7"),
    ]

    @Test(arguments: xff)
    func resolvesClient(_ c: (peer: String, xff: String?, client: String)) {
        let peer = IPAddress(c.peer)!
        let got: IPAddress
        if let x = c.xff {
            let bytes = Array(x.utf8)
            got = bytes.withUnsafeBytes { Self.rules.resolveClient(peer: peer, forwardedFor: $0) }
        } else {
            got = Self.rules.resolveClient(peer: peer, forwardedFor: nil)
        }
        #expect(got == IPAddress(c.client)!)
    }

    @Test func unknownClientIsAdmittedByNoAllowList() {
        let everyone = ClientRules(allow: CIDRSet([CIDR("0.0.0.0/0")!, CIDR("::/0")!]))
        #expect(!everyone.admits(.unknown))
        #expect(everyone.admits(IPAddress("1.1.1.1")!))
        #expect(!CIDRSet([CIDR("::/0")!]).contains(.unknown))
        #expect(ClientRules(deny: CIDRSet([CIDR("10.0.0.0/8")!])).admits(.unknown))  // no allow list: only deny applies
    }

    @Test func admitsDenyFirstThenAllow() {
        let open = ClientRules(deny: CIDRSet([CIDR("203.0.113.0/24")!]))
        #expect(open.admits(IPAddress("1.1.1.1")!))
        #expect(!open.admits(IPAddress("203.0.113.5")!))
        let closed = ClientRules(deny: CIDRSet([CIDR("10.9.0.0/16")!]), allow: CIDRSet([CIDR("10.0.0.0/8")!]))
        #expect(closed.admits(IPAddress("10.1.0.1")!))
        #expect(!closed.admits(IPAddress("10.9.0.1")!))
        #expect(!closed.admits(IPAddress("1.1.1.1")!))
    }
}
