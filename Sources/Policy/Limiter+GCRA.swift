/// Pure GCRA math (the "virtual scheduling" form of a token bucket), one window at a
/// time. State is a theoretical arrival time (TAT) in monotonic nanoseconds; a fresh
/// window has TAT 0. With emission interval T = per/requests and capacity τ = burst×T:
///
///     newTAT  = max(TAT, now) + T
///     allowed = newTAT − now ≤ τ
///
/// A refused request leaves TAT unchanged. Remaining = ⌊(τ − (newTAT − now)) / T⌋.
public enum GCRA {
    public struct Outcome: Sendable, Equatable {
        public var isAllowed: Bool
        /// TAT to store when the request is admitted.
        public var newTAT: UInt64
        /// Requests still admissible right after this one (0 when refused).
        public var remaining: Int
        /// Allowed: ns until the window is full again. Refused: ns until one fits.
        public var resetNanos: UInt64
    }

    @inline(__always)
    public static func evaluate(tat: UInt64, window w: RateWindow, now: UInt64) -> Outcome {
        let base = max(tat, now)
        let newTAT = base &+ w.emissionNanos
        let used = newTAT - now
        if used <= w.capacityNanos {
            let remaining = Int((w.capacityNanos - used) / w.emissionNanos)
            return Outcome(isAllowed: true, newTAT: newTAT, remaining: remaining, resetNanos: used)
        }
        return Outcome(isAllowed: false, newTAT: tat, remaining: 0, resetNanos: used - w.capacityNanos)
    }

    @inline(__always) static func ceilSeconds(_ ns: UInt64) -> Int {
        Int((ns + 999_999_999) / 1_000_000_000)
    }

    /// All-or-nothing over several windows: if every window has room, every TAT advances;
    /// otherwise nothing changes. `tats` holds one TAT per window of `plan`. Each window is
    /// evaluated again in the second pass instead of keeping the outcomes (cheaper than
    /// an inline array of them).
    public static func admit(tats: inout InlineArray<8, UInt64>, plan: PlanSpec, now: UInt64) -> LimitVerdict {
        let windows = plan.windows
        let n = windows.count
        var v = LimitVerdict(planIndex: plan.index, windowCount: n)
        var worstRetry: UInt64 = 0
        var worst = -1
        for i in 0..<n {
            let o = evaluate(tat: tats[i], window: windows[i], now: now)
            if !o.isAllowed && (worst < 0 || o.resetNanos > worstRetry) { worst = i; worstRetry = o.resetNanos }
        }
        if worst < 0 {
            // Most restrictive: fewest remaining; ties → the later reset.
            var best = 0
            for i in 0..<n {
                let o = evaluate(tat: tats[i], window: windows[i], now: now)
                tats[i] = o.newTAT
                let w = WindowState(remaining: o.remaining, resetSeconds: ceilSeconds(o.resetNanos))
                v.windows[i] = w
                let b = v.windows[best]
                if w.remaining < b.remaining || (w.remaining == b.remaining && w.resetSeconds > b.resetSeconds) { best = i }
            }
            v.isAllowed = true
            if n > 0 {
                v.report = LimitReport(planIndex: plan.index, windowIndex: best,
                                       remaining: v.windows[best].remaining, resetSeconds: v.windows[best].resetSeconds)
            }
            return v
        }
        // Refused: report what a client would see if it asked now (nothing consumed).
        for i in 0..<n {
            let o = evaluate(tat: tats[i], window: windows[i], now: now)
            if o.isAllowed {
                // Would-be remaining counts this request; without it there is one more.
                v.windows[i] = WindowState(remaining: o.remaining + 1,
                                           resetSeconds: ceilSeconds(max(tats[i], now) - now))
            } else {
                v.windows[i] = WindowState(remaining: 0, resetSeconds: max(1, ceilSeconds(o.resetNanos)))
            }
        }
        v.isAllowed = false
        v.retryAfterSeconds = max(1, ceilSeconds(worstRetry))
        v.report = LimitReport(planIndex: plan.index, windowIndex: worst, remaining: 0,
                               resetSeconds: v.retryAfterSeconds)
        return v
    }
}

/// Remaining budget of one window after a decision.
public struct WindowState: Sendable, Equatable {
    // Stored narrow: verdicts are copied by value on the request path.
    private var remaining32: Int32
    private var reset32: Int32
    public var remaining: Int { Int(remaining32) }
    public var resetSeconds: Int { Int(reset32) }
    public init(remaining: Int, resetSeconds: Int) {
        remaining32 = Int32(clamping: remaining)
        reset32 = Int32(clamping: resetSeconds)
    }
}

/// The window reported in the `RateLimit` header (the most restrictive one), and the
/// payload of a `RATE_LIMITED` ``Denial``.
public struct LimitReport: Sendable, Equatable {
    public var planIndex: Int
    public var windowIndex: Int
    public var remaining: Int
    public var resetSeconds: Int
    public init(planIndex: Int, windowIndex: Int, remaining: Int, resetSeconds: Int) {
        self.planIndex = planIndex; self.windowIndex = windowIndex
        self.remaining = remaining; self.resetSeconds = resetSeconds
    }
}

/// The limiter's answer for one request. No heap: per-window state is inline.
public struct LimitVerdict: Sendable {
    public var isAllowed = true
    /// ≥ 1 when refused, 0 when allowed.
    public var retryAfterSeconds = 0
    /// The exact wait behind `retryAfterSeconds`, in ms, when the shared store decided (0 otherwise).
    public var retryAfterMillis: Int64 = 0
    public var report: LimitReport
    public var windowCount: Int
    /// Valid for `0..<windowCount`, in the plan's window order.
    public var windows = InlineArray<8, WindowState>(repeating: WindowState(remaining: 0, resetSeconds: 0))

    init(planIndex: Int, windowCount: Int) {
        self.windowCount = windowCount
        self.report = LimitReport(planIndex: planIndex, windowIndex: 0, remaining: 0, resetSeconds: 0)
    }

    /// The denial for a refused verdict.
    public var denial: Denial {
        Denial(.rateLimited, retryAfterSeconds: retryAfterSeconds, limit: report)
    }
}
