import Policy

/// Limit refusals the shared store gave, kept per loop for exactly as long as they must hold,
/// so a key hammering past its limit costs no Redis round trip per request.
///
/// Exact, never stricter than Redis: a GCRA refusal whose worst window frees in W ms holds for
/// W ms from the moment Redis decided, whatever any instance does meanwhile (a refusal changes
/// no state, an admission only moves a TAT later, and a limiter key expires only once its TAT
/// has passed). The memo counts W from when the command was queued, which is before Redis
/// decided, so it lapses at or before the moment Redis would admit again.
///
/// Direct-mapped on the key hash's first word (only keys that passed authentication get here,
/// so an attacker cannot choose them); an entry matches only the same key and the same plan
/// object, so a reload's new plan starts clean. A collision evicts: the next request asks Redis.
struct RefusalMemo {
    private struct Entry {
        var hash = KeyHash(w0: 0, w1: 0, w2: 0, w3: 0)
        var plan: PlanSpec?
        var until: UInt64 = 0
        var windowIndex = 0
    }
    private var entries: [Entry]
    private let mask: Int
    /// Refusals answered from the memo (tests, logs).
    private(set) var hits = 0

    init(capacity: Int = 4096) {
        var n = 1
        while n < capacity { n <<= 1 }
        entries = Array(repeating: Entry(), count: n)
        mask = n - 1
    }

    @inline(__always)
    private func slot(_ hash: KeyHash) -> Int { Int(truncatingIfNeeded: hash.w0) & mask }

    /// The 429 for `hash` under `plan` while a refusal still holds, else nil.
    mutating func refusal(_ hash: KeyHash, plan: PlanSpec, now: UInt64) -> Denial? {
        let i = slot(hash)
        guard entries[i].until > now, entries[i].hash == hash, entries[i].plan === plan else { return nil }
        hits &+= 1
        let seconds = Int((entries[i].until - now + 999_999_999) / 1_000_000_000)
        let report = LimitReport(planIndex: plan.index, windowIndex: entries[i].windowIndex,
                                 remaining: 0, resetSeconds: seconds)
        return Denial(.rateLimited, retryAfterSeconds: max(1, seconds), limit: report)
    }

    /// Records Redis's refusal of a command queued at `askedAt`. The script rounds its wait
    /// up to whole ms, so one ms less is what is sure to hold.
    mutating func remember(_ hash: KeyHash, plan: PlanSpec, askedAt: UInt64, verdict v: LimitVerdict) {
        guard !v.isAllowed, v.retryAfterMillis > 1 else { return }
        entries[slot(hash)] = Entry(hash: hash, plan: plan,
                                    until: askedAt &+ UInt64(v.retryAfterMillis - 1) &* 1_000_000,
                                    windowIndex: v.report.windowIndex)
    }
}
