import CSystem
import Glibc
import Synchronization

/// Token buckets by name for the admin listener: the key API's per-caller limit, the
/// dashboard's per-address limit on failed sign-ins. Bounded: past 10 000 names the table
/// starts over (every bucket full again), so a flood of names cannot grow it.
final class AdminRateLimiter: Sendable {
    /// Tokens added per second, and the most a bucket holds.
    let rate: Double
    let burst: Double
    private let buckets = Mutex<[String: (tokens: Double, at: Double)]>([:])
    static let maximumNames = 10_000

    init(rate: Double, burst: Double) {
        self.rate = rate
        self.burst = burst
    }

    /// Takes a token from `name`'s bucket; false when it is empty.
    func admit(_ name: String) -> Bool {
        let now = Self.now()
        return buckets.withLock { b in
            var e = refilled(b[name], now)
            let ok = e.tokens >= 1
            if ok { e.tokens -= 1 }
            if b.count > Self.maximumNames { b.removeAll() }
            b[name] = e
            return ok
        }
    }

    /// Whole seconds until `name` may try again (0: a token is there now); takes nothing.
    func wait(_ name: String) -> Int {
        let now = Self.now()
        let tokens = buckets.withLock { b in refilled(b[name], now).tokens }
        return tokens >= 1 ? 0 : Int(((1 - tokens) / rate).rounded(.up))
    }

    private func refilled(_ e: (tokens: Double, at: Double)?, _ now: Double) -> (tokens: Double, at: Double) {
        guard let e else { return (burst, now) }
        return (min(burst, e.tokens + (now - e.at) * rate), now)
    }

    private static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
