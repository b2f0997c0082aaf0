import Backends
import Foundation
import Glibc
import Policy
import Runtime
import Testing

struct RedisLimiterTests {
    static func plan(_ windows: [(Int, Duration, Int?)], index: Int = 0) -> PlanSpec {
        PlanSpec(index: index, name: "p", windows: windows.map { RateWindow(plan: "p", requests: $0.0, per: $0.1, burst: $0.2) })
    }

    /// Sends `count` admits in one batch and returns the verdicts in order.
    static func admitBatch(_ live: LiveConnection, _ hash: KeyHash, _ plan: PlanSpec, count: Int,
                           tokenBase: UInt64 = 0) -> [LimitVerdict] {
        let c = Collector()
        let immediate = live.on { conn in
            (0..<count).compactMap { conn.admit(hash, plan: plan, waiter: c, token: tokenBase + UInt64($0)) }
        }
        #expect(immediate.isEmpty)
        #expect(eventually { c.count == count })
        let all = c.all
        #expect(all.map(\.token) == (0..<UInt64(count)).map { tokenBase + $0 })
        return all.compactMap(\.result.verdict)
    }

    @Test func admitsTheLimitThenRefuses() throws {
        try withRedis { server, live in
            let plan = Self.plan([(5, .seconds(10), nil)])
            let v = Self.admitBatch(live, KeyHash.sha256("k-limit"), plan, count: 7)
            #expect(v.count == 7)
            #expect(v.map(\.isAllowed) == [true, true, true, true, true, false, false])
            #expect(v.prefix(5).map { $0.windows[0].remaining } == [4, 3, 2, 1, 0])
            #expect(v[0].report.resetSeconds == 2 && v[4].report.resetSeconds == 10)
            #expect(v[5].retryAfterSeconds == 2)
            #expect(v[5].report.windowIndex == 0 && v[5].report.remaining == 0)
            #expect(v[0].retryAfterSeconds == 0)
        }
    }

    @Test func allOrNothingAcrossWindowsAndRefusalsConsumeNothing() throws {
        try withRedis { server, live in
            let plan = Self.plan([(2, .seconds(100), nil), (10, .seconds(100), nil)])
            let hash = KeyHash.sha256("k-two-windows")
            let first = Self.admitBatch(live, hash, plan, count: 2)
            #expect(first.map(\.isAllowed) == [true, true])
            #expect(first[1].windows[1].remaining == 8)
            let dir = try server.client()
            let before = try dir.run(["GET", RedisKeys.limiter(hash, window: 1)])
            let refused = Self.admitBatch(live, hash, plan, count: 3, tokenBase: 10)
            #expect(refused.map(\.isAllowed) == [false, false, false])
            // The second window had room but must not be charged: it still reports 8 left.
            #expect(refused.allSatisfy { $0.windows[1].remaining == 8 && $0.windows[0].remaining == 0 })
            #expect(refused.allSatisfy { $0.report.windowIndex == 0 && $0.retryAfterSeconds >= 1 })
            #expect(try dir.run(["GET", RedisKeys.limiter(hash, window: 1)]) == before)
            #expect(try dir.run(["GET", RedisKeys.limiter(hash, window: 0)]) != .nil)
            // TTLs follow each window's need.
            if case .integer(let ttl) = try dir.run(["PTTL", RedisKeys.limiter(hash, window: 1)]) {
                #expect(ttl > 0 && ttl <= 20_000)
            } else { Issue.record("no TTL") }
        }
    }

    /// Redis's verdicts for `count` requests on one key, each checked against the
    /// in-process limiter's; returns which were allowed.
    static func agreement(_ plan: PlanSpec, key: String, count: Int) throws -> [Bool] {
        try withRedis { server, live in
            let hash = KeyHash.sha256(key)
            let remote = admitBatch(live, hash, plan, count: count)
            let local = RateLimiter()
            let now: UInt64 = 1_000_000_000_000
            for (i, r) in remote.enumerated() {
                let l = local.admit(key: hash, plan: plan, now: now)
                #expect(r.isAllowed == l.isAllowed, "request \(i)")
                #expect(r.retryAfterSeconds == l.retryAfterSeconds, "request \(i)")
                #expect(r.report == l.report, "request \(i)")
                #expect(r.windowCount == l.windowCount)
                for w in 0..<plan.windows.count {
                    #expect(r.windows[w] == l.windows[w], "request \(i) window \(w)")
                }
            }
            return remote.map(\.isAllowed)
        }
    }

    @Test func agreesWithTheInProcessLimiter() throws {
        // Whole-second emission intervals, so the few ms that pass between Redis calls
        // cannot move a ceil-to-seconds boundary.
        let plan = Self.plan([(2, .seconds(4), nil), (5, .seconds(50), nil)], index: 3)
        #expect(try Self.agreement(plan, key: "k-agree", count: 6) == [true, true, false, false, false, false])
    }

    /// One window takes the script's table-free path: same answers as the general one.
    @Test func agreesWithTheInProcessLimiterOnOneWindow() throws {
        let plan = Self.plan([(3, .seconds(6), 3)], index: 1)
        #expect(try Self.agreement(plan, key: "k-agree-one", count: 5) == [true, true, true, false, false])
    }

    /// The one-window path writes first (`SET … GET`) and repairs after: a refusal must leave
    /// the stored TAT and its expiry as they were, an admission of a busy key must store the
    /// right TAT, and a key whose TAT has passed (still present) starts a fresh window.
    @Test func oneWindowRefusalRestoresTheStoredTATAndAStaleKeyStartsFresh() throws {
        try withRedis { server, live in
            let plan = Self.plan([(2, .seconds(100), nil)])   // T = 50 s, τ = 100 s
            let hash = KeyHash.sha256("k-restore")
            let key = RedisKeys.limiter(hash, window: 0)
            let dir = try server.client()
            let admitted = Self.admitBatch(live, hash, plan, count: 2)
            #expect(admitted.map(\.isAllowed) == [true, true])
            #expect(admitted.map { $0.windows[0].remaining } == [1, 0])
            let tat = try dir.run(["GET", key])
            guard case .integer(let ttlBefore) = try dir.run(["PTTL", key]) else { Issue.record("no TTL"); return }
            #expect(ttlBefore > 99_000 && ttlBefore <= 100_000)
            let refused = Self.admitBatch(live, hash, plan, count: 3, tokenBase: 10)
            #expect(refused.map(\.isAllowed) == [false, false, false])
            #expect(refused.allSatisfy { $0.retryAfterSeconds >= 49 && $0.retryAfterSeconds <= 50 })
            #expect(refused.allSatisfy { $0.retryAfterMillis > 49_000 && $0.retryAfterMillis <= 50_000 })
            #expect(try dir.run(["GET", key]) == tat, "a refusal changed the stored TAT")
            guard case .integer(let ttlAfter) = try dir.run(["PTTL", key]) else { Issue.record("no TTL"); return }
            // Both expiries are the TAT rounded up to a millisecond, from different instants.
            #expect(ttlAfter <= ttlBefore + 2 && ttlAfter > ttlBefore - 5_000, "TTL \(ttlBefore) → \(ttlAfter)")

            // A TAT long past, on a key that has not expired: the same as a missing key.
            let stale = KeyHash.sha256("k-stale")
            let staleKey = RedisKeys.limiter(stale, window: 0)
            try dir.run(["SET", staleKey, "1000", "PX", "600000"])
            let fresh = Self.admitBatch(live, stale, plan, count: 1)
            #expect(fresh.first?.isAllowed == true && fresh.first?.windows[0].remaining == 1)
            guard case .string(let stored) = try dir.run(["GET", staleKey]),
                  let v = Int(String(decoding: stored, as: UTF8.self)) else { Issue.record("no TAT"); return }
            #expect(v > 1_000_000_000_000_000, "TAT \(v) is not now + T in µs")
            guard case .integer(let freshTTL) = try dir.run(["PTTL", staleKey]) else { Issue.record("no TTL"); return }
            #expect(freshTTL > 45_000 && freshTTL <= 50_000, "a fresh key lives T (50 s), not \(freshTTL) ms")

            // A short interval (T = 100 ms): the key is kept 10 s, so an active client's next
            // decision overwrites it; it still reads as a full window once its TAT has passed.
            let quick = Self.plan([(10, .seconds(1), 1)])
            let q = KeyHash.sha256("k-quick")
            #expect(Self.admitBatch(live, q, quick, count: 1).first?.isAllowed == true)
            guard case .integer(let kept) = try dir.run(["PTTL", RedisKeys.limiter(q, window: 0)]) else { Issue.record("no TTL"); return }
            #expect(kept > 9_000 && kept <= 10_000, "kept \(kept) ms")
            usleep(150_000)
            let again = Self.admitBatch(live, q, quick, count: 1, tokenBase: 5)
            #expect(again.first?.isAllowed == true && again.first?.windows[0].remaining == 0)
        }
    }

    /// The script's `now` is Redis's clock as the connection tracks it from `TIME`: within
    /// the sample's bound of what Redis itself says.
    @Test func theConnectionTracksRedissClock() throws {
        try withRedis { server, live in
            let dir = try server.client()
            let (tracked, bound) = live.on { conn in
                (conn.clock.micros(atLocal: monotonicNanos()), conn.clock.error(at: monotonicNanos()))
            }
            guard case .array(let parts) = try dir.run(["TIME"]), parts.count == 2,
                  let s = parts[0].text.flatMap({ Int64($0) }), let u = parts[1].text.flatMap({ Int64($0) }) else {
                Issue.record("no TIME"); return
            }
            let redisNow = s * 1_000_000 + u
            #expect(bound < 50_000, "clock bound \(bound) µs")
            // TIME was asked after the tracked reading: it may be later by the time the ask took.
            #expect(redisNow - tracked > -Int64(bound) - 1_000 && redisNow - tracked < 200_000,
                    "tracked \(tracked), Redis \(redisNow)")
        }
    }

    /// The best sample wins; an old one loses its claim at 100 ppm.
    @Test func theClockKeepsTheTightestSample() {
        var c = RedisClock()
        #expect(!c.isSet)
        c.add(server: 5_000_000, sentAt: 1_000_000_000, receivedAt: 1_000_400_000)   // ±200 µs
        #expect(c.isSet && c.errorMicros == 200)
        #expect(c.micros(atLocal: 1_000_200_000) == 5_000_000)
        c.add(server: 9_999_999, sentAt: 1_100_000_000, receivedAt: 1_102_000_000)   // ±1 ms: worse
        #expect(c.errorMicros == 200 && c.micros(atLocal: 1_000_200_000) == 5_000_000)
        c.add(server: 5_200_050, sentAt: 1_200_000_000, receivedAt: 1_200_100_000)   // ±50 µs: better
        #expect(c.errorMicros == 50 && c.micros(atLocal: 1_200_050_000) == 5_200_050)
        // 100 s later the 50 µs sample counts as 10,050 µs: a 1 ms one replaces it.
        #expect(c.error(at: 101_200_100_000) == 10_050)
        c.add(server: 105_000_000, sentAt: 101_200_000_000, receivedAt: 101_202_000_000)
        #expect(c.errorMicros == 1_000 && c.micros(atLocal: 101_201_000_000) == 105_000_000)
        c.add(server: 1, sentAt: 10, receivedAt: 5)   // a reply before its command: ignored
        #expect(c.errorMicros == 1_000)
    }

    @Test func exactAcrossTwoConnectionsHammeringOneKey() throws {
        let server = try RedisServer()
        defer { server.stop() }
        let a = try LiveConnection(url: server.url, instanceID: "a")
        defer { a.shutdown() }
        let b = try LiveConnection(url: server.url, instanceID: "b")
        defer { b.shutdown() }
        #expect(a.waitUp() && b.waitUp())
        let plan = Self.plan([(50, .seconds(3600), nil)])
        let hash = KeyHash.sha256("k-shared")
        let ca = Collector(), cb = Collector()
        let perRound = 50, rounds = 4
        for r in 0..<rounds {
            a.thread.loop.execute { [bound = a.bound] in
                for i in 0..<perRound { _ = bound.value!.admit(hash, plan: plan, waiter: ca, token: UInt64(r * perRound + i)) }
            }
            b.thread.loop.execute { [bound = b.bound] in
                for i in 0..<perRound { _ = bound.value!.admit(hash, plan: plan, waiter: cb, token: UInt64(r * perRound + i)) }
            }
        }
        let total = perRound * rounds
        #expect(eventually { ca.count == total && cb.count == total })
        let verdicts = (ca.all + cb.all).compactMap(\.result.verdict)
        #expect(verdicts.count == 2 * total)
        #expect(verdicts.filter(\.isAllowed).count == 50)
    }

    @Test func reloadsTheScriptAfterNoScript() throws {
        try withRedis { server, live in
            let plan = Self.plan([(10, .seconds(60), nil)])
            let hash = KeyHash.sha256("k-noscript")
            #expect(Self.admitBatch(live, hash, plan, count: 1).first?.isAllowed == true)
            let dir = try server.client()
            try dir.run(["SCRIPT", "FLUSH"])
            let sha = String(decoding: RedisScripts.limiterSHA, as: UTF8.self)
            #expect(try dir.run(["SCRIPT", "EXISTS", sha]) == .array([.integer(0)]))
            // Several in one batch: each gets NOSCRIPT, each falls back to EVAL.
            let after = Self.admitBatch(live, hash, plan, count: 3, tokenBase: 100)
            #expect(after.map(\.isAllowed) == [true, true, true])
            #expect(after.map { $0.windows[0].remaining } == [8, 7, 6])
            #expect(try dir.run(["SCRIPT", "EXISTS", sha]) == .array([.integer(1)]))
            #expect(Self.admitBatch(live, hash, plan, count: 1, tokenBase: 200).first?.windows[0].remaining == 5)
        }
    }

    @Test func emptyPlanAnswersAtOnce() throws {
        try withRedis { server, live in
            let c = Collector()
            let r = live.on { $0.admit(KeyHash.sha256("x"), plan: Self.plan([]), waiter: c, token: 1) }
            #expect(r?.verdict?.isAllowed == true)
            usleep(20_000)
            #expect(c.count == 0)
        }
    }
}
