import Synchronization

/// Exact in-process rate limiting, shared by every event-loop thread.
///
/// Cells (one per key, holding one GCRA TAT per window of the key's plan) live in 64
/// stripes, each a `Mutex` over a dictionary; a key always maps to the same stripe, so
/// the all-or-nothing update of its windows is atomic. Memory stays bounded: a cell
/// whose every TAT is ≤ now is indistinguishable from a fresh cell (its windows are
/// full), so it is dropped — an exact eviction, run lazily on insert whenever a stripe
/// has doubled since its last sweep (amortised O(1)). A cell therefore lives at most
/// about its longest window (burst × per / requests) after its last admitted request.
public final class RateLimiter: Sendable {
    struct Cell {
        var signature: UInt64
        var tats: InlineArray<8, UInt64>
    }

    struct StripeState {
        // Sized for ~100 live keys per stripe (6,400 in all) before the first growth.
        var cells = KeyHashMap<Cell>(minimumCapacity: 128)
        var sweepAt = RateLimiter.minSweep
    }

    final class Stripe: Sendable {
        let state = Mutex(StripeState())
    }

    static let minSweep = 1024
    let stripes: [Stripe]
    let mask: Int

    /// - Parameter stripeCount: rounded up to a power of two.
    public init(stripeCount: Int = 64) {
        var n = 1
        while n < stripeCount { n <<= 1 }
        stripes = (0..<n).map { _ in Stripe() }
        mask = n - 1
    }

    /// Admits one request for `key` under `plan` at monotonic time `now` (ns): consumes
    /// one unit from every window if all have room, none otherwise.
    public func admit(key: KeyHash, plan: PlanSpec, now: UInt64) -> LimitVerdict {
        if plan.windows.isEmpty { return LimitVerdict(planIndex: plan.index, windowCount: 0) }
        let stripe = stripes[Int(truncatingIfNeeded: key.w1) & mask]
        return stripe.state.withLock { st -> LimitVerdict in
            let i: Int
            if let found = st.cells.index(forKey: key) {
                i = found
                if st.cells[slot: i].signature != plan.signature {
                    st.cells[slot: i] = Cell(signature: plan.signature, tats: InlineArray(repeating: 0))
                }
            } else {
                if st.cells.count >= st.sweepAt {
                    st.cells = st.cells.filter { !RateLimiter.isIdle($1, now: now) }
                    st.sweepAt = max(RateLimiter.minSweep, st.cells.count * 2)
                }
                i = st.cells.insert(key, Cell(signature: plan.signature, tats: InlineArray(repeating: 0)))
            }
            return GCRA.admit(tats: &st.cells[slot: i].tats, plan: plan, now: now)
        }
    }

    /// Forgets a key's state (admin reset, key deleted).
    public func reset(key: KeyHash) {
        let stripe = stripes[Int(truncatingIfNeeded: key.w1) & mask]
        stripe.state.withLock { $0.cells.removeValue(forKey: key) }
    }

    /// Live cells (for metrics and tests).
    public var cellCount: Int {
        stripes.reduce(0) { n, s in n + s.state.withLock { $0.cells.count } }
    }

    static func isIdle(_ c: Cell, now: UInt64) -> Bool {
        for i in 0..<8 where c.tats[i] > now { return false }
        return true
    }
}
