/// An IP address as a 128-bit value; IPv4 lives in the IPv4-mapped range
/// `::ffff:a.b.c.d` (RFC 4291 §2.5.5.2), so one compare serves both families.
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    public var hi: UInt64
    public var lo: UInt64

    public init(hi: UInt64, lo: UInt64) { self.hi = hi; self.lo = lo }

    public init(ipv4 v: UInt32) { hi = 0; lo = 0xFFFF_0000_0000 | UInt64(v) }

    public var isIPv4: Bool { hi == 0 && lo >> 32 == 0xFFFF }

    /// A client nobody can name: an `X-Forwarded-For` element from a trusted proxy that is not
    /// an address (`unknown`, an obfuscated identifier, garbage). It is `::`, which no peer
    /// can be, and no CIDR set contains it: no allow list admits it, no proxy is trusted
    /// through it.
    public static let unknown = IPAddress(hi: 0, lo: 0)
    public var isUnknown: Bool { hi == 0 && lo == 0 }

    /// One element of `X-Forwarded-For` as proxies write it: an address, an IPv4 address with
    /// a port (`192.0.2.1:4711`), a bracketed IPv6 address with or without a port
    /// (`[2001:db8::1]:4711`). Anything else is nil.
    public static func parseForwarded(_ b: UnsafeRawBufferPointer) -> IPAddress? {
        let n = b.count
        if n == 0 { return nil }
        if b[0] == UInt8(ascii: "[") {
            var close = 1
            while close < n, b[close] != UInt8(ascii: "]") { close += 1 }
            guard close < n, close > 1 else { return nil }
            if close + 1 < n && !isPort(b, from: close + 1) { return nil }
            guard let a = parse(UnsafeRawBufferPointer(rebasing: b[1..<close])), true else { return nil }
            return a
        }
        var colons = 0, lastColon = -1, hasDot = false
        for i in 0..<n {
            if b[i] == UInt8(ascii: ":") { colons += 1; lastColon = i }
            if b[i] == UInt8(ascii: ".") { hasDot = true }
        }
        if colons == 1 && hasDot {
            guard isPort(b, from: lastColon) else { return nil }
            guard let v = parseIPv4(b, from: 0, to: lastColon) else { return nil }
            return IPAddress(ipv4: v)
        }
        return parse(b)
    }

    /// `:` then 1–5 digits to the end.
    private static func isPort(_ b: UnsafeRawBufferPointer, from i: Int) -> Bool {
        guard b[i] == UInt8(ascii: ":"), b.count - i - 1 >= 1, b.count - i - 1 <= 5 else { return false }
        for k in (i + 1)..<b.count where b[k] < UInt8(ascii: "0") || b[k] > UInt8(ascii: "9") { return false }
        return true
    }

    public init?(_ string: String) {
        var s = string
        guard let a = s.withUTF8({ IPAddress.parse(UnsafeRawBufferPointer($0)) }) else { return nil }
        self = a
    }

    /// Strict text form: dotted quad (four decimal octets, no leading zeros, no spaces) or
    /// RFC 4291 §2.2 IPv6 (with `::` and an optional trailing dotted quad). No zone ids.
    public static func parse(_ b: UnsafeRawBufferPointer) -> IPAddress? {
        if b.isEmpty || b.count > 45 { return nil }
        var hasColon = false
        for c in b where c == UInt8(ascii: ":") { hasColon = true; break }
        if !hasColon {
            guard let v = parseIPv4(b, from: 0, to: b.count) else { return nil }
            return IPAddress(ipv4: v)
        }
        return parseIPv6(b)
    }

    static func parseIPv4(_ b: UnsafeRawBufferPointer, from: Int, to: Int) -> UInt32? {
        var value: UInt32 = 0
        var octets = 0
        var i = from
        while i < to {
            var n: UInt32 = 0
            let start = i
            while i < to, b[i] >= UInt8(ascii: "0"), b[i] <= UInt8(ascii: "9") {
                n = n * 10 + UInt32(b[i] - UInt8(ascii: "0"))
                i += 1
                if i - start > 3 { return nil }
            }
            let len = i - start
            if len == 0 || n > 255 || (len > 1 && b[start] == UInt8(ascii: "0")) { return nil }
            value = value << 8 | n
            octets += 1
            if i < to {
                if b[i] != UInt8(ascii: ".") || octets == 4 { return nil }
                i += 1
                if i == to { return nil }
            }
        }
        return octets == 4 ? value : nil
    }

    static func parseIPv6(_ b: UnsafeRawBufferPointer) -> IPAddress? {
        var groups: (UInt16, UInt16, UInt16, UInt16, UInt16, UInt16, UInt16, UInt16) = (0, 0, 0, 0, 0, 0, 0, 0)
        return withUnsafeMutableBytes(of: &groups) { raw -> IPAddress? in
            let g = raw.bindMemory(to: UInt16.self)
            var count = 0
            var gap = -1  // index in g where "::" sits
            var i = 0
            let n = b.count
            if n >= 2, b[0] == UInt8(ascii: ":") {
                guard b[1] == UInt8(ascii: ":") else { return nil }
                gap = 0
                i = 2
                if i == n { return IPAddress(hi: 0, lo: 0) }
            }
            while i < n {
                // A trailing dotted quad takes two groups.
                var j = i
                var sawDot = false
                while j < n, b[j] != UInt8(ascii: ":") { if b[j] == UInt8(ascii: ".") { sawDot = true }; j += 1 }
                if sawDot {
                    guard j == n, count <= 6, let v4 = parseIPv4(b, from: i, to: n) else { return nil }
                    g[count] = UInt16(v4 >> 16); g[count + 1] = UInt16(v4 & 0xFFFF)
                    count += 2
                    i = n
                    break
                }
                let len = j - i
                guard len >= 1, len <= 4, count < 8 else { return nil }
                var v: UInt16 = 0
                for k in i..<j {
                    let c = b[k]
                    let d: UInt16
                    switch c {
                    case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt16(c - UInt8(ascii: "0"))
                    case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt16(c - UInt8(ascii: "a") + 10)
                    case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt16(c - UInt8(ascii: "A") + 10)
                    default: return nil
                    }
                    v = v << 4 | d
                }
                g[count] = v
                count += 1
                i = j
                if i < n {  // at ':'
                    i += 1
                    if i < n, b[i] == UInt8(ascii: ":") {
                        guard gap < 0 else { return nil }
                        gap = count
                        i += 1
                    } else if i == n {
                        return nil  // trailing single ':'
                    }
                }
            }
            if gap >= 0 {
                guard count < 8 else { return nil }
                let tail = count - gap
                var k = 7
                for t in stride(from: tail - 1, through: 0, by: -1) {
                    g[k] = g[gap + t]; k -= 1
                }
                for z in gap..<(8 - tail) { g[z] = 0 }
            } else if count != 8 {
                return nil
            }
            var hi: UInt64 = 0, lo: UInt64 = 0
            for k in 0..<4 { hi = hi << 16 | UInt64(g[k]) }
            for k in 4..<8 { lo = lo << 16 | UInt64(g[k]) }
            return IPAddress(hi: hi, lo: lo)
        }
    }

    /// Dotted quad for IPv4, otherwise eight lowercase hex groups with the longest zero
    /// run compressed (RFC 5952), for logs and errors.
    public var description: String {
        if isIPv4 {
            let v = UInt32(truncatingIfNeeded: lo)
            return "\(v >> 24).\(v >> 16 & 0xFF).\(v >> 8 & 0xFF).\(v & 0xFF)"
        }
        var g = [UInt16]()
        for k in 0..<4 { g.append(UInt16(truncatingIfNeeded: hi >> UInt64(48 - 16 * k))) }
        for k in 0..<4 { g.append(UInt16(truncatingIfNeeded: lo >> UInt64(48 - 16 * k))) }
        var bestStart = -1, bestLen = 1, runStart = -1
        for k in 0...8 {
            if k < 8, g[k] == 0 { if runStart < 0 { runStart = k } } else if runStart >= 0 {
                if k - runStart > bestLen { bestStart = runStart; bestLen = k - runStart }
                runStart = -1
            }
        }
        func hex(_ v: UInt16) -> String { String(v, radix: 16) }
        if bestStart < 0 { return g.map(hex).joined(separator: ":") }
        let left = g[0..<bestStart].map(hex).joined(separator: ":")
        let right = g[(bestStart + bestLen)...].map(hex).joined(separator: ":")
        return left + "::" + right
    }
}

/// An address block. IPv4 prefixes are stored in the mapped space (`/8` → `/104`).
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    public var network: IPAddress
    /// Prefix length in the 128-bit space.
    public var bits: Int

    public init(network: IPAddress, bits: Int) { self.network = network; self.bits = bits }

    public enum ParseError: Error, Equatable { case badAddress, badPrefix, hostBitsSet }

    /// `a.b.c.d/n`, `v6/n`, or a bare address (a single host). Host bits must be zero.
    public static func parse(_ text: String) -> Result<CIDR, ParseError> {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let addr = IPAddress(String(parts[0])) else { return .failure(.badAddress) }
        let maxBits = addr.isIPv4 ? 32 : 128
        var n = maxBits
        if parts.count == 2 {
            let p = parts[1]
            guard !p.isEmpty, p.count <= 3, p.allSatisfy({ $0.isASCII && $0.isNumber }),
                  !(p.count > 1 && p.first == "0"), let v = Int(p), v <= maxBits
            else { return .failure(.badPrefix) }
            n = v
        }
        let bits = addr.isIPv4 ? 96 + n : n
        let c = CIDR(network: addr, bits: bits)
        guard c.mask(addr) == addr else { return .failure(.hostBitsSet) }
        return .success(c)
    }

    init?(_ text: String) {
        guard case .success(let c) = CIDR.parse(text) else { return nil }
        self = c
    }

    @inline(__always) func mask(_ a: IPAddress) -> IPAddress {
        let hiMask: UInt64 = bits >= 64 ? ~0 : (bits == 0 ? 0 : ~0 << UInt64(64 - bits))
        let loMask: UInt64 = bits >= 128 ? ~0 : (bits <= 64 ? 0 : ~0 << UInt64(128 - bits))
        return IPAddress(hi: a.hi & hiMask, lo: a.lo & loMask)
    }

    @inline(__always) public func contains(_ a: IPAddress) -> Bool { mask(a) == network }

    public var description: String {
        network.isIPv4 && bits >= 96 ? "\(network)/\(bits - 96)" : "\(network)/\(bits)"
    }
}

/// A list of blocks; a linear scan is fine for the handfuls operators write.
public struct CIDRSet: Sendable, Equatable {
    public var blocks: [CIDR]
    public init(_ blocks: [CIDR] = []) { self.blocks = blocks }
    public var isEmpty: Bool { blocks.isEmpty }
    @inline(__always) public func contains(_ a: IPAddress) -> Bool {
        if a.isUnknown { return false }
        for b in blocks where b.contains(a) { return true }
        return false
    }
}

/// The `clients` block: who may set `X-Forwarded-For`, and the global deny/allow lists.
public struct ClientRules: Sendable, Equatable {
    public var trustedProxies: CIDRSet
    public var deny: CIDRSet
    public var allow: CIDRSet

    public init(trustedProxies: CIDRSet = CIDRSet(), deny: CIDRSet = CIDRSet(), allow: CIDRSet = CIDRSet()) {
        self.trustedProxies = trustedProxies; self.deny = deny; self.allow = allow
    }

    /// The client address: the peer unless the peer is a trusted proxy; then the
    /// `X-Forwarded-For` list is walked right to left, skipping trusted proxies, and the
    /// first untrusted entry wins. Ports and brackets are stripped (`192.0.2.1:4711`,
    /// `[2001:db8::1]:443`); an entry that is not an address (`unknown`, garbage) stops the
    /// walk and the client is `IPAddress.unknown`, which no allow list admits (never the
    /// trusted proxy itself). If every entry is trusted, the leftmost one is the client.
    /// Entries may carry surrounding spaces/tabs.
    public func resolveClient(peer: IPAddress, forwardedFor: UnsafeRawBufferPointer?) -> IPAddress {
        guard let xff = forwardedFor, !trustedProxies.isEmpty, trustedProxies.contains(peer) else { return peer }
        var lastTrusted = peer
        var end = xff.count
        while end > 0 {
            var start = end
            while start > 0, xff[start - 1] != UInt8(ascii: ",") { start -= 1 }
            var a = start, b = end
            while a < b, xff[a] == 0x20 || xff[a] == 0x09 { a += 1 }
            while b > a, xff[b - 1] == 0x20 || xff[b - 1] == 0x09 { b -= 1 }
            if a < b {  // empty elements (", ,") are skipped, as RFC 9110 list syntax allows
                // Not an address: the client is unknown (never the trusted proxy itself).
                guard let ip = IPAddress.parseForwarded(UnsafeRawBufferPointer(rebasing: xff[a..<b])) else { return .unknown }
                if !trustedProxies.contains(ip) { return ip }
                lastTrusted = ip
            }
            end = start > 0 ? start - 1 : 0
        }
        return lastTrusted
    }

    /// Global IP rule: deny first; then an empty allow list admits everyone.
    @inline(__always) public func admits(_ ip: IPAddress) -> Bool {
        if deny.contains(ip) { return false }
        return allow.isEmpty || allow.contains(ip)
    }
}
