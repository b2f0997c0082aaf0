/// One rate-limit window of a plan: `requests` per `per`, with `burst` capacity.
public struct RateWindow: Sendable, Equatable {
    /// `<plan>-<per>`, e.g. `free-1s`: the policy name in the RateLimit headers.
    public let name: String
    public let requests: Int
    public let per: Duration
    public let burst: Int
    /// The GCRA emission interval `per / requests` in nanoseconds (≥ 1).
    public let emissionNanos: UInt64
    /// Burst tolerance `burst × emission` in nanoseconds.
    public let capacityNanos: UInt64
    /// `per` in whole seconds (rounded up, ≥ 1), the RateLimit-Policy `w`.
    public let perSeconds: Int

    public init(plan: String, requests: Int, per: Duration, burst: Int? = nil) {
        precondition(requests > 0 && per > .zero)
        let perNanos = RateWindow.nanos(per)
        self.name = plan + "-" + RateWindow.label(perNanos)
        self.requests = requests
        self.per = per
        self.burst = burst ?? requests
        self.emissionNanos = max(1, perNanos / UInt64(requests))
        self.capacityNanos = emissionNanos &* UInt64(max(1, self.burst))
        self.perSeconds = Int(max(1, (perNanos + 999_999_999) / 1_000_000_000))
    }

    static func nanos(_ d: Duration) -> UInt64 {
        let (s, a) = d.components
        return UInt64(max(0, s)) &* 1_000_000_000 &+ UInt64(max(0, a / 1_000_000_000))
    }

    /// Canonical duration text: the largest of d/h/m/s/ms that divides evenly.
    static func label(_ ns: UInt64) -> String {
        let units: [(UInt64, String)] = [(86_400_000_000_000, "d"), (3_600_000_000_000, "h"),
                                         (60_000_000_000, "m"), (1_000_000_000, "s"), (1_000_000, "ms")]
        for (u, s) in units where ns % u == 0 { return "\(ns / u)\(s)" }
        return "\(ns)ns"
    }
}

/// A named plan: its windows and its precomputed `RateLimit-Policy` header value.
public final class PlanSpec: Sendable {
    public static let maxWindows = 8

    public let index: Int
    public let name: String
    public let windows: [RateWindow]
    /// Calendar quotas (`quotas:`), checked after the rate limits.
    public let quotas: [QuotaSpec]
    /// `"free-1s";q=10;w=1, "free-1d";q=1000;w=86400`, built once.
    public let policyHeader: [UInt8]
    /// Identifies the window layout, so a limiter cell made under another plan/reload
    /// shape is reset instead of misread.
    let signature: UInt64
    /// Response-header text built once (owned by the plan, freed with it): the whole
    /// `RateLimit-Policy: …\r\n` line, then for each window the opening of its `RateLimit`
    /// line, `RateLimit: "<window>";r=`, at `stateOpenings[i]` (offset, count).
    nonisolated(unsafe) public let headerText: UnsafeRawBufferPointer
    public let policyLineCount: Int
    public let stateOpenings: InlineArray<8, (Int32, Int32)>

    public init(index: Int, name: String, windows: [RateWindow], quotas: [QuotaSpec] = []) {
        precondition(windows.count <= PlanSpec.maxWindows)
        self.quotas = quotas
        self.index = index
        self.name = name
        self.windows = windows
        self.policyHeader = RateLimitHeaders.policyValue(windows)
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for w in windows {
            for v in [w.emissionNanos, w.capacityNanos] { h = (h ^ v) &* 0x100_0000_01b3 }
        }
        self.signature = h
        var text = Array("RateLimit-Policy: ".utf8) + policyHeader + [0x0D, 0x0A]
        policyLineCount = text.count
        var openings = InlineArray<8, (Int32, Int32)>(repeating: (0, 0))
        for (i, w) in windows.enumerated() {
            let opening = Array("RateLimit: \"".utf8) + Array(w.name.utf8) + Array("\";r=".utf8)
            openings[i] = (Int32(text.count), Int32(opening.count))
            text += opening
        }
        stateOpenings = openings
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: text.count, alignment: 1)
        storage.copyBytes(from: text)
        headerText = UnsafeRawBufferPointer(storage)
    }

    deinit { headerText.deallocate() }
}
