import Foundation
import Synchronization
import Testing
@testable import Policy

struct LimiterTests {
    static let second: UInt64 = 1_000_000_000

    func plan(_ windows: [(Int, Duration, Int?)], name: String = "free") -> PlanSpec {
        PlanSpec(index: 0, name: name, windows: windows.map { RateWindow(plan: name, requests: $0.0, per: $0.1, burst: $0.2) })
    }

    @Test func burstThenRefill() {
        let p = plan([(10, .seconds(1), 20)])
        var tats = InlineArray<8, UInt64>(repeating: 0)
        let t0 = 100 * Self.second
        for i in 0..<20 {
            let v = GCRA.admit(tats: &tats, plan: p, now: t0)
            #expect(v.isAllowed)
            #expect(v.windows[0].remaining == 19 - i)
        }
        let refused = GCRA.admit(tats: &tats, plan: p, now: t0)
        #expect(!refused.isAllowed)
        #expect(refused.retryAfterSeconds == 1)  // 100 ms until one fits, rounded up
        #expect(refused.report.remaining == 0)
        // 100 ms later exactly one more fits.
        #expect(GCRA.admit(tats: &tats, plan: p, now: t0 + Self.second / 10).isAllowed)
        #expect(!GCRA.admit(tats: &tats, plan: p, now: t0 + Self.second / 10).isAllowed)
        // After 2 s idle the bucket is full again: 20 more.
        var n = 0
        while GCRA.admit(tats: &tats, plan: p, now: t0 + 3 * Self.second).isAllowed { n += 1 }
        #expect(n == 20)
    }

    @Test func burstDefaultsToRequests() {
        let p = plan([(3, .seconds(1), nil)])
        var tats = InlineArray<8, UInt64>(repeating: 0)
        #expect((0..<5).filter { _ in GCRA.admit(tats: &tats, plan: p, now: Self.second).isAllowed }.count == 3)
    }

    @Test func multiWindowIsAllOrNothing() {
        // 5/s burst 5, and 7/day: the day window runs out first.
        let p = plan([(5, .seconds(1), 5), (7, .seconds(86_400), nil)])
        var tats = InlineArray<8, UInt64>(repeating: 0)
        let t0 = 10 * Self.second
        for _ in 0..<5 { #expect(GCRA.admit(tats: &tats, plan: p, now: t0).isAllowed) }
        let refusedBySecond = GCRA.admit(tats: &tats, plan: p, now: t0)
        #expect(!refusedBySecond.isAllowed)
        #expect(refusedBySecond.report.windowIndex == 0)
        // The refusal consumed nothing from the day window: two more fit a second later.
        #expect(GCRA.admit(tats: &tats, plan: p, now: t0 + 2 * Self.second).isAllowed)
        let v = GCRA.admit(tats: &tats, plan: p, now: t0 + 2 * Self.second)
        #expect(v.isAllowed)
        #expect(v.windows[1].remaining == 0)
        #expect(v.report.windowIndex == 1)  // most restrictive
        let refusedByDay = GCRA.admit(tats: &tats, plan: p, now: t0 + 4 * Self.second)
        #expect(!refusedByDay.isAllowed)
        #expect(refusedByDay.report.windowIndex == 1)
        // One day unit every 86400/7 s ≈ 12343 s; we have used them all 2-4 s in.
        #expect(refusedByDay.retryAfterSeconds > 12_000 && refusedByDay.retryAfterSeconds <= 12_343)
        // The second window still has its room: refused requests did not spend it.
        #expect(refusedByDay.windows[0].remaining == 5)
    }

    @Test func retryAfterIsTheWaitUntilOneFits() {
        let p = plan([(1, .seconds(60), nil)])
        var tats = InlineArray<8, UInt64>(repeating: 0)
        #expect(GCRA.admit(tats: &tats, plan: p, now: 0).isAllowed)
        #expect(GCRA.admit(tats: &tats, plan: p, now: 0).retryAfterSeconds == 60)
        #expect(GCRA.admit(tats: &tats, plan: p, now: 59 * Self.second + 1).retryAfterSeconds == 1)
        #expect(GCRA.admit(tats: &tats, plan: p, now: 60 * Self.second).isAllowed)
    }

    @Test func limiterKeepsKeysApartAndEvictsIdleCells() {
        let p = plan([(1, .seconds(1), nil)])
        let limiter = RateLimiter(stripeCount: 1)
        let a = KeyHash.sha256("a"), b = KeyHash.sha256("b")
        #expect(limiter.admit(key: a, plan: p, now: Self.second).isAllowed)
        #expect(!limiter.admit(key: a, plan: p, now: Self.second).isAllowed)
        #expect(limiter.admit(key: b, plan: p, now: Self.second).isAllowed)
        // Fill past the sweep threshold; cells idle for a full window are dropped.
        for i in 0..<3000 {
            _ = limiter.admit(key: .sha256("k\(i)"), plan: p, now: Self.second + UInt64(i) * 10_000_000)
        }
        #expect(limiter.cellCount < 1500)
    }

    @Test func planChangeResetsTheCell() {
        let limiter = RateLimiter()
        let k = KeyHash.sha256("k")
        let small = plan([(1, .seconds(60), nil)])
        #expect(limiter.admit(key: k, plan: small, now: 1).isAllowed)
        #expect(!limiter.admit(key: k, plan: small, now: 1).isAllowed)
        let big = plan([(100, .seconds(60), nil)])
        #expect(limiter.admit(key: k, plan: big, now: 1).isAllowed)
    }

    @Test func concurrentAdmitsAreExact() async {
        let n = 1000
        let p = plan([(n, .seconds(3600), nil)])
        let limiter = RateLimiter()
        let key = KeyHash.sha256("shared")
        let allowed = await withTaskGroup(of: Int.self) { g in
            for _ in 0..<8 {
                g.addTask {
                    var mine = 0
                    for _ in 0..<500 where limiter.admit(key: key, plan: p, now: 42 * LimiterTests.second).isAllowed {
                        mine += 1
                    }
                    return mine
                }
            }
            return await g.reduce(0, +)
        }
        #expect(allowed == n)
    }

    final class Counter: Sendable {
        let value = Mutex(0)
    }

    /// 8 OS threads × 500 admits on one key with a budget of 1000 → exactly 1000 pass.
    @Test func eightThreadsAdmitExactlyTheBudget() {
        let n = 1000
        let p = plan([(n, .seconds(3600), nil)])
        let limiter = RateLimiter()
        let key = KeyHash.sha256("shared-threads")
        let counter = Counter()
        let group = DispatchGroup()
        for _ in 0..<8 {
            group.enter()
            let t = Thread {
                var mine = 0
                for _ in 0..<500 where limiter.admit(key: key, plan: p, now: 7 * LimiterTests.second).isAllowed {
                    mine += 1
                }
                counter.value.withLock { $0 += mine }
                group.leave()
            }
            t.start()
        }
        group.wait()
        #expect(counter.value.withLock { $0 } == n)
    }

    @Test func rateLimitHeaders() {
        let p = plan([(10, .seconds(1), nil), (1000, .seconds(86_400), nil)])
        #expect(String(decoding: p.policyHeader, as: UTF8.self) == #""free-1s";q=10;w=1, "free-1d";q=1000;w=86400"#)
        var tats = InlineArray<8, UInt64>(repeating: 0)
        let v = GCRA.admit(tats: &tats, plan: p, now: Self.second)
        let (policy, state) = RateLimitHeaders.render(plan: p, verdict: v)
        #expect(policy == p.policyHeader)
        #expect(String(decoding: state, as: UTF8.self) == #""free-1s";r=9;t=1"#)
        for _ in 0..<9 { _ = GCRA.admit(tats: &tats, plan: p, now: Self.second) }
        let refused = GCRA.admit(tats: &tats, plan: p, now: Self.second)
        #expect(String(decoding: RateLimitHeaders.render(plan: p, verdict: refused).state, as: UTF8.self)
            == #""free-1s";r=0;t=1"#)
        #expect(refused.denial == Denial(.rateLimited, retryAfterSeconds: 1, limit: refused.report))
        #expect(RateWindow(plan: "x", requests: 1, per: .milliseconds(1500)).name == "x-1500ms")
        #expect(RateWindow(plan: "x", requests: 1, per: .seconds(7200)).name == "x-2h")
    }
}
