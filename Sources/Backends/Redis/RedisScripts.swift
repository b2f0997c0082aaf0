import CHiredis
import COpenSSL
import Policy

/// The Lua scripts Tollgate runs in Redis, with their SHA-1 (computed once, at first use).
public enum RedisScripts {
    /// GCRA over several windows of one key, atomically, on Redis's clock.
    ///
    /// - `KEYS[i]`: `tg:{<hex>}:rl:<i-1>`, one per window (same hash tag: one slot).
    /// - `ARGV[2i-1]`, `ARGV[2i]`: window i's emission interval T and capacity τ = burst×T, in µs.
    /// - One window: `ARGV[3]` how long its key is kept (max(⌈T/1000⌉ ms, 10 s)), `ARGV[4]`
    ///   now, `ARGV[5]` now + T. Several windows: `ARGV[2n+1]` now.
    /// - now: Redis's own clock in µs, as this instance tracks it (`RedisClock`: the offset
    ///   to Redis's `TIME`, from the sample with the shortest round trip), so instances'
    ///   clocks never matter, and the script need not call `TIME` (which cost Redis a sixth of
    ///   each decision).
    ///
    /// Same math as `GCRA.admit`: newTAT = max(TAT, now) + T; a window admits when
    /// newTAT − now ≤ τ. All or nothing: only when every window admits are the TATs stored
    /// (each with a PX of its own need, ⌈(newTAT − now)/1000⌉ ms, after which a missing key
    /// equals a full window). A refused request changes nothing.
    ///
    /// One window, a key that is missing or whose TAT has passed (every key not busy right
    /// now): one `SET … GET` stores now + T and shows the old TAT, and the script answers the
    /// integer 1: admitted with τ − T to spare (`fresh`, worked out by the caller from the plan).
    /// A busy key then costs one more `SET`: the right TAT, or, when refused, the old one
    /// back (a refusal still changes nothing). One-window keys are kept `ARGV[3]` ms at least
    /// (see `keepMillis`). Each `redis.call` costs Redis about as much as the whole EVALSHA
    /// around it (redis-server under callgrind, Tollgate as its client: 62.6k instructions per
    /// decision with `TIME` and a GET then a SET, 48.1k writing first, 40.7k without `TIME`).
    ///
    /// Otherwise returns `"allowed retry_ms worst rem_1 reset_ms_1 … rem_n reset_ms_n"`, one
    /// bulk string of decimal integers (one reply object for hiredis to allocate, not 3 + 2n):
    /// - allowed: `rem_i` = ⌊(τ − used)/T⌋, `reset_ms_i` = ⌈used/1000⌉; retry_ms 0.
    /// - refused: `worst` is the 0-based refused window with the longest wait (first on ties),
    ///   `retry_ms` = ⌈its (used − τ)/1000⌉; refused windows give rem 0 and their own wait;
    ///   windows that had room give rem + 1 (the request was not counted) and
    ///   ⌈(max(TAT, now) − now)/1000⌉.
    public static let limiterSource: String = """
        local function ints(a)
          for i = 1, #a do a[i] = string.format('%d', a[i]) end
          return table.concat(a, ' ')
        end
        local n = #KEYS
        if n == 1 then
          local old = redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[3], 'GET')
          if not old then return 1 end
          local v = tonumber(old) or 0
          local now = tonumber(ARGV[4])
          if v <= now then return 1 end
          local T = tonumber(ARGV[1])
          local cap = tonumber(ARGV[2])
          local used = v + T - now
          if used <= cap then
            local reset = math.ceil(used / 1000)
            redis.call('SET', KEYS[1], string.format('%d', v + T), 'PX', math.max(reset, tonumber(ARGV[3])))
            return string.format('1 0 0 %d %d', math.floor((cap - used) / T), reset)
          end
          redis.call('SET', KEYS[1], old, 'PX', math.max(math.ceil((v - now) / 1000), tonumber(ARGV[3])))
          local wait = math.ceil((used - cap) / 1000)
          return string.format('0 %d 0 0 %d', wait, wait)
        end
        local now = tonumber(ARGV[2 * n + 1])
        local tat, newtat, used = {}, {}, {}
        local allowed = true
        local worst, worstwait = -1, -1
        for i = 1, n do
          local T = tonumber(ARGV[2 * i - 1])
          local cap = tonumber(ARGV[2 * i])
          local v = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
          local base = v > now and v or now
          tat[i] = v
          newtat[i] = base + T
          used[i] = newtat[i] - now
          if used[i] > cap then
            allowed = false
            local wait = used[i] - cap
            if wait > worstwait then worst = i - 1; worstwait = wait end
          end
        end
        local out = {0, 0, 0}
        if allowed then
          out[1] = 1
          for i = 1, n do
            local T = tonumber(ARGV[2 * i - 1])
            local cap = tonumber(ARGV[2 * i])
            local px = math.ceil(used[i] / 1000)
            if px < 1 then px = 1 end
            redis.call('SET', KEYS[i], string.format('%d', newtat[i]), 'PX', px)
            out[2 + 2 * i] = math.floor((cap - used[i]) / T)
            out[3 + 2 * i] = math.ceil(used[i] / 1000)
          end
          return ints(out)
        end
        out[2] = math.ceil(worstwait / 1000)
        out[3] = worst
        for i = 1, n do
          local T = tonumber(ARGV[2 * i - 1])
          local cap = tonumber(ARGV[2 * i])
          if used[i] <= cap then
            local base = tat[i] > now and tat[i] or now
            out[2 + 2 * i] = math.floor((cap - used[i]) / T) + 1
            out[3 + 2 * i] = math.ceil((base - now) / 1000)
          else
            out[2 + 2 * i] = 0
            out[3 + 2 * i] = math.ceil((used[i] - cap) / 1000)
          end
        end
        return ints(out)
        """

    /// Announces an instance and counts the live ones, on the server's clock.
    /// `KEYS[1]` = `tg:instances`; `ARGV[1]` = instance id, `ARGV[2]` = liveness window (ms).
    /// Returns the number of instances seen within the window (this one included).
    public static let heartbeatSource: String = """
        local t = redis.call('TIME')
        local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local window = tonumber(ARGV[2])
        redis.call('ZADD', KEYS[1], ms, ARGV[1])
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - window)
        redis.call('PEXPIRE', KEYS[1], window * 10)
        return redis.call('ZCARD', KEYS[1])
        """

    public static let limiterSHA: [UInt8] = sha1Hex(limiterSource)
    public static let heartbeatSHA: [UInt8] = sha1Hex(heartbeatSource)
    public static let limiterBody: [UInt8] = Array(limiterSource.utf8)
    public static let heartbeatBody: [UInt8] = Array(heartbeatSource.utf8)

    /// Lowercase hex SHA-1, the name Redis gives a script.
    public static func sha1Hex(_ text: String) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 20)
        var bytes = Array(text.utf8)
        bytes.withUnsafeMutableBufferPointer { src in
            digest.withUnsafeMutableBufferPointer { d in
                _ = SHA1(src.baseAddress, src.count, d.baseAddress)
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(40)
        for b in digest {
            let hi = b >> 4, lo = b & 0xF
            out.append(hi < 10 ? hi + 48 : hi + 87)
            out.append(lo < 10 ? lo + 48 : lo + 87)
        }
        return out
    }

    /// Per-window limiter arguments in µs: (T, τ = burst × T).
    @inline(__always)
    static func micros(_ w: RateWindow) -> (emission: Int, capacity: Int) {
        let t = max(1, Int(w.emissionNanos / 1000))
        return (t, t &* max(1, w.burst))
    }

    /// How many ARGV the limiter script takes for `plan`: T and τ per window, then for one
    /// window the key's keep time, now and now + T; for several, now.
    @inline(__always)
    static func argumentCount(_ plan: PlanSpec) -> Int {
        let n = plan.windows.count
        return n == 1 ? 5 : 2 * n + 1
    }

    /// ⌈T/1000⌉ ms: a fresh one-window key's reset.
    @inline(__always)
    static func emissionMillis(_ w: RateWindow) -> Int {
        max(1, (micros(w).emission + 999) / 1000)
    }

    /// How long a one-window limiter key is kept: its need, but at least 10 s. A key that
    /// outlives its TAT reads as a full window (the same as a missing one); keeping it makes
    /// the next decision of an active client overwrite a key instead of creating one and,
    /// a millisecond later, expiring it (measured: 12% of Redis's CPU per decision in the
    /// bench, where each key comes back every few hundred ms with a 1 ms emission interval).
    static let keepFloorMillis = 10_000
    @inline(__always)
    static func keepMillis(_ w: RateWindow) -> Int { max(emissionMillis(w), keepFloorMillis) }

    /// The verdict for the script's integer answer 1 (one window, fresh key): admitted, used = T,
    /// so τ − T to spare (burst − 1 requests) and a reset of ⌈T/1000⌉ ms.
    static func freshVerdict(_ plan: PlanSpec) -> LimitVerdict? {
        guard plan.windows.count == 1 else { return nil }
        let (t, cap) = micros(plan.windows[0])
        let fields: InlineArray<5, Int64> = [1, 0, 0, Int64((cap - t) / t), Int64(emissionMillis(plan.windows[0]))]
        return verdict(plan: plan) { fields[$0] }
    }

    /// Turns the limiter script's reply into the verdict the in-process limiter would give:
    /// same `isAllowed`, `retryAfterSeconds`, per-window remaining/reset and reported window.
    /// Nil when the reply is not the script's shape (an error reply, a wrong window count).
    public static func verdict(from reply: RedisReply, plan: PlanSpec) -> LimitVerdict? {
        let want = 3 + 2 * plan.windows.count
        var ints = InlineArray<19, Int64>(repeating: 0)
        switch reply {
        case .integer(let fresh):
            return fresh == 1 ? freshVerdict(plan) : nil
        case .string(let text):
            guard text.withUnsafeBytes({ parseIntegers($0, count: want, into: &ints) }) else { return nil }
        case .array(let items):
            // The array form of earlier versions of the script.
            guard items.count == want else { return nil }
            for (i, item) in items.enumerated() {
                guard case .integer(let v) = item else { return nil }
                ints[i] = v
            }
        default:
            return nil
        }
        return verdict(plan: plan) { ints[$0] }
    }

    /// Same, reading the C reply directly (no copy: the hot path).
    static func verdict(from r: UnsafePointer<redisReply>, plan: PlanSpec) -> LimitVerdict? {
        let p = r.pointee
        if p.type == REDIS_REPLY_INTEGER { return p.integer == 1 ? freshVerdict(plan) : nil }
        let want = 3 + 2 * plan.windows.count
        guard p.type == REDIS_REPLY_STRING, let str = p.str else { return nil }
        var ints = InlineArray<19, Int64>(repeating: 0)
        guard parseIntegers(UnsafeRawBufferPointer(start: str, count: Int(p.len)), count: want, into: &ints) else {
            return nil
        }
        return verdict(plan: plan) { ints[$0] }
    }

    /// Exactly `count` space-separated decimal integers (optionally negative).
    static func parseIntegers(_ text: UnsafeRawBufferPointer, count: Int, into out: inout InlineArray<19, Int64>) -> Bool {
        guard count <= 19, let p = text.baseAddress else { return false }
        let end = text.count
        var n = 0
        var i = 0
        while i < end {
            var c = p.load(fromByteOffset: i, as: UInt8.self)
            let negative = c == 0x2D
            if negative {
                i &+= 1
                if i == end { return false }
                c = p.load(fromByteOffset: i, as: UInt8.self)
            }
            let start = i
            var v: Int64 = 0
            while c &- 0x30 < 10 {
                if i &- start == 18 { return false }
                v = v &* 10 &+ Int64(c &- 0x30)
                i &+= 1
                if i == end { break }
                c = p.load(fromByteOffset: i, as: UInt8.self)
            }
            if i == start || n == count { return false }
            out[n] = negative ? -v : v
            n &+= 1
            if i < end {
                if c != 0x20 { return false }
                i &+= 1
                if i == end { return false }
            }
        }
        return n == count
    }

    @inline(__always)
    private static func verdict(plan: PlanSpec, _ at: (Int) -> Int64) -> LimitVerdict {
        var v = blankVerdict(plan)
        let n = plan.windows.count
        let isAllowed = at(0) == 1
        v.isAllowed = isAllowed
        for i in 0..<n {
            let rem = Int(max(0, at(3 + 2 * i)))
            let resetSeconds = ceilSeconds(ms: at(4 + 2 * i))
            v.windows[i] = WindowState(remaining: rem, resetSeconds: isAllowed || rem > 0 ? resetSeconds : max(1, resetSeconds))
        }
        if isAllowed {
            v.retryAfterSeconds = 0
            var best = 0
            for i in 1..<max(1, n) where i < n {
                let a = v.windows[i], b = v.windows[best]
                if a.remaining < b.remaining || (a.remaining == b.remaining && a.resetSeconds > b.resetSeconds) { best = i }
            }
            if n > 0 {
                v.report = LimitReport(planIndex: plan.index, windowIndex: best,
                                       remaining: v.windows[best].remaining, resetSeconds: v.windows[best].resetSeconds)
            }
        } else {
            let worst = Int(min(max(0, at(2)), Int64(max(0, n - 1))))
            v.retryAfterSeconds = max(1, ceilSeconds(ms: at(1)))
            v.retryAfterMillis = max(1, at(1))
            v.report = LimitReport(planIndex: plan.index, windowIndex: worst, remaining: 0, resetSeconds: v.retryAfterSeconds)
        }
        return v
    }

    @inline(__always) static func ceilSeconds(ms: Int64) -> Int { Int((max(0, ms) + 999) / 1000) }

    /// A verdict value for `plan` to fill in. `LimitVerdict`'s memberwise init is internal to
    /// Policy; evaluating a fresh cell (every window full, nothing stored) yields one with the
    /// right plan index and window count, whose fields are then all overwritten.
    @inline(__always)
    static func blankVerdict(_ plan: PlanSpec) -> LimitVerdict {
        var tats = InlineArray<8, UInt64>(repeating: 0)
        return GCRA.admit(tats: &tats, plan: plan, now: 1 << 40)
    }
}
