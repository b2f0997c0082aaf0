import Policy

/// A client network as security counts it: an IPv4 address, or an IPv6 /64 for lock-out (one
/// subscriber's allocation: an attacker on one /64 has 2^64 addresses, not 2^64 chances);
/// a /24 or IPv6 /48 for "used from many networks".
struct NetKey: Hashable, Sendable, CustomStringConvertible {
    var hi: UInt64
    var lo: UInt64
    /// Prefix length as written (`/24`, `/64`…); 0 for one IPv4 address.
    var bits: UInt8

    /// Lock-out: an IPv4 address as is, an IPv6 address's /64.
    static func lockout(_ a: IPAddress) -> NetKey {
        a.isIPv4 ? NetKey(hi: 0, lo: a.lo, bits: 0) : NetKey(hi: a.hi, lo: 0, bits: 64)
    }

    /// Auto-disable: the /24 of an IPv4 address, the /48 of an IPv6 one.
    static func network(_ a: IPAddress) -> NetKey {
        a.isIPv4 ? NetKey(hi: 0, lo: a.lo & ~0xFF, bits: 24) : NetKey(hi: a.hi & 0xFFFF_FFFF_FFFF_0000, lo: 0, bits: 48)
    }

    /// `203.0.113.7`, `203.0.113.0/24`, `2001:db8:1:2::/64`.
    var description: String {
        let a = IPAddress(hi: hi, lo: lo).description
        return bits == 0 ? a : "\(a)/\(bits)"
    }

    /// The form written to Redis (short, fixed alphabet): hex of both halves and the prefix.
    var wire: String {
        String(hi, radix: 16) + "-" + String(lo, radix: 16) + "-" + String(bits)
    }

    init(hi: UInt64, lo: UInt64, bits: UInt8) { self.hi = hi; self.lo = lo; self.bits = bits }

    init?(wire: Substring) {
        let parts = wire.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 3, let h = UInt64(parts[0], radix: 16), let l = UInt64(parts[1], radix: 16),
              let b = UInt8(parts[2]), b == 0 || b == 24 || b == 48 || b == 64 else { return nil }
        self.init(hi: h, lo: l, bits: b)
    }
}

/// A sliding-window counter (the weighted sum of the current fixed window and the one before
/// it, as Cloudflare's rate limiter counts): two integers and a window start, exact enough for
/// thresholds and bounded in memory whatever the rate.
struct SlidingCount {
    /// Start of the current window (ms since the epoch, a multiple of the window).
    var start: Int64 = 0
    var current: Int64 = 0
    var previous: Int64 = 0

    /// Moves the window to the one holding `now`.
    mutating func roll(now: Int64, per: Int64) {
        let s = now - now % per
        if s == start { return }
        previous = s - start == per ? current : 0
        current = 0
        start = s
    }

    /// The estimate at `now` (after `roll`): the previous window weighted by how much of it
    /// still lies within `per` of now.
    func estimate(now: Int64, per: Int64) -> Int64 {
        let elapsed = now - start
        return current + previous * (per - elapsed) / per
    }
}
