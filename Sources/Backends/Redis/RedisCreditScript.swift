import Policy
import Runtime

/// The credit ledger in Redis: one Lua script, four operations, every one atomic.
///
/// Keys of an account (one hash tag, so one Cluster slot): `tg:cr:{<tag>}` (hash: `balance`,
/// `held`, `account`), `tg:cr:{<tag>}:res` (sorted set: reservation id → expiry, ms on
/// Redis's clock), `tg:cr:{<tag>}:amt` (hash: reservation id → credits held), and one
/// idempotency key per settlement or grant, `tg:cr:{<tag>}:done:<id>` (what it charged or
/// granted, kept 7 days). `<tag>` is the first 32 hex digits of the SHA-256 of the account
/// name: any name (a consumer from a token claim included) makes a valid, bounded key.
///
/// - `reserve id want minimum ttl_ms` → `{1, held, available}` or `{0, available}`: expired
///   reservations go back first (at most 100 per call); then `min(want, available)` is held
///   when at least `minimum` is available. Reserving again under the same id adds to it (a
///   stream's extension) and moves its expiry.
/// - `settle id charge` → `{1, charged, available}`, or `{2, charged}` when this id was
///   settled before (a retry changes nothing): the hold is released and `charge` taken,
///   never more than the balance minus what others hold.
/// - `grant id amount name` → `{1, balance}` or `{2, balance}` for a grant id seen before.
/// - `balance` → `{balance, held}` (expired reservations returned first).
public enum RedisCreditScript {
    public static let source: String = """
        local function num(v) return tonumber(v) or 0 end
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local op = ARGV[1]
        local held = num(redis.call('HGET', KEYS[1], 'held'))
        local function expire()
          local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
          for _, id in ipairs(old) do
            held = held - num(redis.call('HGET', KEYS[3], id))
            redis.call('HDEL', KEYS[3], id)
            redis.call('ZREM', KEYS[2], id)
          end
          if held < 0 then held = 0 end
        end
        if op == 'reserve' then
          expire()
          local bal = num(redis.call('HGET', KEYS[1], 'balance'))
          local avail = bal - held
          local want = num(ARGV[3])
          local minimum = num(ARGV[4])
          if avail < minimum or avail <= 0 then
            redis.call('HSET', KEYS[1], 'held', held)
            if avail < 0 then avail = 0 end
            return {0, avail}
          end
          local amt = math.min(want, avail)
          redis.call('HINCRBY', KEYS[3], ARGV[2], amt)
          redis.call('ZADD', KEYS[2], now + num(ARGV[5]), ARGV[2])
          redis.call('HSET', KEYS[1], 'held', held + amt)
          return {1, amt, avail - amt}
        elseif op == 'settle' then
          local done = redis.call('GET', KEYS[4])
          if done then return {2, num(done)} end
          local amt = num(redis.call('HGET', KEYS[3], ARGV[2]))
          redis.call('HDEL', KEYS[3], ARGV[2])
          redis.call('ZREM', KEYS[2], ARGV[2])
          held = held - amt
          if held < 0 then held = 0 end
          local bal = num(redis.call('HGET', KEYS[1], 'balance'))
          local charge = num(ARGV[3])
          local room = bal - held
          if room < 0 then room = 0 end
          if charge > room then charge = room end
          if charge < 0 then charge = 0 end
          bal = bal - charge
          redis.call('HSET', KEYS[1], 'balance', bal, 'held', held)
          redis.call('SET', KEYS[4], charge, 'EX', 604800)
          return {1, charge, bal - held}
        elseif op == 'grant' then
          local done = redis.call('GET', KEYS[4])
          if done then return {2, num(redis.call('HGET', KEYS[1], 'balance'))} end
          local bal = redis.call('HINCRBY', KEYS[1], 'balance', num(ARGV[3]))
          redis.call('HSET', KEYS[1], 'account', ARGV[4])
          redis.call('SET', KEYS[4], ARGV[3], 'EX', 604800)
          return {1, bal}
        elseif op == 'balance' then
          expire()
          redis.call('HSET', KEYS[1], 'held', held)
          return {num(redis.call('HGET', KEYS[1], 'balance')), held}
        end
        return redis.error_reply('unknown credit op')
        """

    public static let sha1: [UInt8] = RedisScripts.sha1Hex(source)

    /// The account's hash tag: 32 hex digits of SHA-256(name).
    public static func tag(_ account: String) -> String {
        String(KeyHash.sha256(account).hex.prefix(32))
    }

    /// `KEYS[1…4]` of an operation (`id`: the reservation, settlement or grant id; the
    /// idempotency key is only read by settle and grant).
    public static func keys(account: String, id: String) -> [String] {
        let base = "tg:cr:{\(tag(account))}"
        return [base, base + ":res", base + ":amt", base + ":done:" + id]
    }

    /// `EVALSHA sha 4 keys… op id args…` (or `EVAL source …` with `withSource`).
    public static func command(account: String, id: String, op: String, _ args: [String], withSource: Bool = false) -> [[UInt8]] {
        var out: [[UInt8]] = [Array((withSource ? "EVAL" : "EVALSHA").utf8), withSource ? Array(source.utf8) : sha1, Array("4".utf8)]
        for k in keys(account: account, id: id) { out.append(Array(k.utf8)) }
        out.append(Array(op.utf8))
        out.append(Array(id.utf8))
        for a in args { out.append(Array(a.utf8)) }
        return out
    }

    /// The account's tag as bytes (32 hex digits).
    public static func tagBytes(_ account: String) -> [UInt8] {
        let h = KeyHash.sha256(account)
        return [UInt8](unsafeUninitializedCapacity: 32) { b, n in
            Hex.write16(h.w0, to: UnsafeMutableRawPointer(b.baseAddress!))
            Hex.write16(h.w1, to: UnsafeMutableRawPointer(b.baseAddress! + 16))
            n = 32
        }
    }

    /// Formats `EVALSHA sha 4 keys… op id args…` (or `EVAL source …`) straight into `w`
    /// (`tag` from ``tagBytes(_:)``): no argument arrays per command.
    public static func format(into w: RESPWriter, tag: [UInt8], id: [UInt8], op: StaticString, _ a1: Int64,
                              _ a2: Int64? = nil, _ a3: Int64? = nil, withSource: Bool = false) {
        w.arrayHeader(3 + 4 + 2 + 1 + (a2 == nil ? 0 : 1) + (a3 == nil ? 0 : 1))
        if withSource {
            w.bulk("EVAL")
            w.bulk(source)
        } else {
            w.bulk("EVALSHA")
            w.bulk(sha1)
        }
        w.bulk("4")
        tag.withUnsafeBytes { t in
            id.withUnsafeBytes { i in
                let open = UnsafeRawBufferPointer(start: keyOpen.utf8Start, count: keyOpen.utf8CodeUnitCount)
                let close = UnsafeRawBufferPointer(start: keyClose.utf8Start, count: keyClose.utf8CodeUnitCount)
                w.bulk(open, t, close)
                w.bulk(open, t, close, UnsafeRawBufferPointer(start: resSuffix.utf8Start, count: resSuffix.utf8CodeUnitCount))
                w.bulk(open, t, close, UnsafeRawBufferPointer(start: amtSuffix.utf8Start, count: amtSuffix.utf8CodeUnitCount))
                w.bulk(open, t, close, UnsafeRawBufferPointer(start: doneSuffix.utf8Start, count: doneSuffix.utf8CodeUnitCount), i)
                w.bulk(op)
                w.bulk(i)
            }
        }
        w.bulk(decimal: Int(a1))
        if let a2 { w.bulk(decimal: Int(a2)) }
        if let a3 { w.bulk(decimal: Int(a3)) }
    }

    private static let keyOpen: StaticString = "tg:cr:{"
    private static let keyClose: StaticString = "}"
    private static let resSuffix: StaticString = ":res"
    private static let amtSuffix: StaticString = ":amt"
    private static let doneSuffix: StaticString = ":done:"

    /// Decodes a script answer: the integers of its array, or nil (an error or another shape).
    public static func integers(_ r: RedisReply) -> [Int64]? {
        guard case .array(let items) = r else { return nil }
        var out: [Int64] = []
        for i in items {
            guard case .integer(let v) = i else { return nil }
            out.append(v)
        }
        return out
    }

    public static func isNoScript(_ r: RedisReply) -> Bool {
        if case .error(let e) = r { return e.starts(with: Array("NOSCRIPT".utf8)) }
        return false
    }
}
