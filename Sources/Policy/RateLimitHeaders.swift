/// The IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers, structured
/// fields form):
///
///     RateLimit-Policy: "free-1s";q=10;w=1, "free-1d";q=1000;w=86400
///     RateLimit: "free-1s";r=9;t=1
///
/// `q` is the window's `requests`, `w` its length in seconds. `RateLimit` names the most
/// restrictive window (fewest remaining): `r` is what remains (it may exceed `q` while
/// a `burst` larger than `requests` is unspent) and `t` the seconds until that window is
/// full again — or, on a refused request, until one more request fits (= Retry-After).
public enum RateLimitHeaders {
    public static let policyName: [UInt8] = Array("RateLimit-Policy".utf8)
    public static let stateName: [UInt8] = Array("RateLimit".utf8)

    static func policyValue(_ windows: [RateWindow]) -> [UInt8] {
        var out: [UInt8] = []
        for (i, w) in windows.enumerated() {
            if i > 0 { out.append(contentsOf: ", ".utf8) }
            out.append(contentsOf: "\"\(w.name)\";q=\(w.requests);w=\(w.perSeconds)".utf8)
        }
        return out
    }

    /// The two header values. The policy value is the plan's precomputed bytes.
    public static func render(plan: PlanSpec, verdict: LimitVerdict) -> (policy: [UInt8], state: [UInt8]) {
        var state = [UInt8](repeating: 0, count: 96)
        let n = state.withUnsafeMutableBytes { writeState(plan: plan, report: verdict.report, into: $0) }
        state.removeLast(state.count - n)
        return (plan.policyHeader, state)
    }

    /// Allocation-free form of the `RateLimit` value: writes into `out` and returns the
    /// byte count (0 when the plan has no windows or `out` is too small).
    public static func writeState(plan: PlanSpec, report: LimitReport, into out: UnsafeMutableRawBufferPointer) -> Int {
        guard report.windowIndex < plan.windows.count else { return 0 }
        let name = plan.windows[report.windowIndex].name
        var o = 0
        func put(_ b: UInt8) -> Bool { if o < out.count { out[o] = b; o += 1; return true }; return false }
        func putInt(_ v: Int) -> Bool {
            var v = max(0, v)
            var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                         UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
                (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
            return withUnsafeMutableBytes(of: &digits) { d in
                var k = 0
                repeat { d[k] = UInt8(ascii: "0") + UInt8(v % 10); v /= 10; k += 1 } while v > 0
                while k > 0 { k -= 1; if !put(d[k]) { return false } }
                return true
            }
        }
        var ok = put(UInt8(ascii: "\""))
        for b in name.utf8 where ok { ok = put(b) }
        for b in "\";r=".utf8 where ok { ok = put(b) }
        ok = ok && putInt(report.remaining)
        for b in ";t=".utf8 where ok { ok = put(b) }
        ok = ok && putInt(report.resetSeconds)
        return ok ? o : 0
    }
}
