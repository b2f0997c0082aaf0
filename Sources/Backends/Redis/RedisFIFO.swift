import Policy

/// One command awaiting its reply. Replies arrive in send order, so entries live in a FIFO
/// that mirrors hiredis's callback list one-to-one.
struct RedisPending {
    enum Kind {
        /// A caller's command; the reply is copied into a ``RedisReply``.
        case user(any RedisWaiter, UInt64)
        /// A caller's `admit`: decoded into a `LimitVerdict`; NOSCRIPT re-sends it as EVAL.
        case admit(any RedisWaiter, UInt64, KeyHash, PlanSpec)
        /// AUTH / SELECT / SCRIPT LOAD on a fresh connection.
        case handshake
        /// Half-open breaker probe (PING).
        case probe
        /// Instance heartbeat script.
        case heartbeat
        /// `TIME`, a sample for the connection's `RedisClock`; part of the handshake or not.
        case clock(handshake: Bool)
        /// Fire-and-forget (the reply is ignored).
        case ignored
    }
    var kind: Kind
    var deadline: UInt64
    /// Timed out and already answered `.timedOut`; the late reply is dropped.
    var isAbandoned = false
}

/// A growable ring buffer of ``RedisPending``; indices are logical (0 = oldest).
struct RedisFIFO {
    private var slots: [RedisPending?]
    private var head = 0
    private(set) var count = 0

    init(capacity: Int = 64) {
        var c = 1
        while c < capacity { c <<= 1 }
        slots = Array(repeating: nil, count: c)
    }

    var isEmpty: Bool { count == 0 }

    mutating func append(_ e: RedisPending) {
        if count == slots.count { grow() }
        slots[(head + count) & (slots.count - 1)] = e
        count += 1
    }

    mutating func popFirst() -> RedisPending? {
        guard count > 0 else { return nil }
        let e = slots[head]
        slots[head] = nil
        head = (head + 1) & (slots.count - 1)
        count -= 1
        return e
    }

    subscript(i: Int) -> RedisPending {
        get { slots[(head + i) & (slots.count - 1)]! }
        set { slots[(head + i) & (slots.count - 1)] = newValue }
    }

    private mutating func grow() {
        var n = [RedisPending?](repeating: nil, count: slots.count * 2)
        for i in 0..<count { n[i] = slots[(head + i) & (slots.count - 1)] }
        slots = n
        head = 0
    }
}
