import Backends
import CSystem
import Glibc
import Policy
import Runtime
import Synchronization

/// Up to 64 bytes of text kept inline (no allocation): a field of a usage record.
struct InlineText: Hashable {
    private var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
    private(set) var count: UInt8 = 0
    /// Longer than the 64 bytes kept (the record says so rather than pretend).
    private(set) var isTruncated = false
    static let capacity = 64

    @inline(__always)
    mutating func set(_ p: UnsafeRawPointer, _ n: Int) {
        let k = min(n, Self.capacity)
        withUnsafeMutableBytes(of: &words) { $0.baseAddress!.copyMemory(from: p, byteCount: k) }
        count = UInt8(k)
        isTruncated = n > k
    }

    @inline(__always)
    mutating func set(_ s: String) {
        var s = s
        s.withUTF8 { set(UnsafeRawPointer($0.baseAddress ?? UnsafePointer(bitPattern: 1)!), $0.count) }
    }

    @inline(__always)
    mutating func clear() { count = 0; isTruncated = false }

    var isEmpty: Bool { count == 0 }

    func withBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        withUnsafeBytes(of: words) { body(UnsafeRawBufferPointer(rebasing: $0[0..<Int(count)])) }
    }

    // Equal and hashed by the bytes kept (the unused tail is always zero: `set` copies into
    // zeroed words only when the text is as long, so compare the count's bytes).
    static func == (a: InlineText, b: InlineText) -> Bool {
        a.count == b.count && a.withBytes { x in b.withBytes { y in memcmp(x.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, y.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, x.count) == 0 } }
    }

    func hash(into h: inout Hasher) {
        withBytes { h.combine(bytes: $0) }
    }
}

/// One answered request, as settle saw it: fixed size, copied into a per-loop ring, rendered
/// and spooled by the writer thread.
struct UsageRecord {
    var seq: UInt64 = 0
    var loop: UInt16 = 0
    var status: UInt16 = 0
    var code: UInt8 = 0
    /// Wall-clock time of the answer, nanoseconds since the epoch.
    var time: Int64 = 0
    var durationNanos: UInt64 = 0
    var bytesIn: Int64 = 0
    var bytesOut: Int64 = 0
    /// Filled by the credits work (zero until then).
    var credits: Int64 = 0
    var tokensIn: Int64 = 0
    var tokensOut: Int64 = 0
    /// The provider secret injected upstream (`SecretTable.Source`: 0 none, 1 the consumer's
    /// own, 2 the system one).
    var secret: UInt8 = 0
    var method = InlineText()
    var requestID = InlineText()
    var keyID = InlineText()
    var consumer = InlineText()
    var route = InlineText()
    var upstream = InlineText()
}

/// One loop's usage records on their way to the writer: a single-producer (the loop),
/// single-consumer (the writer) ring of fixed-size slots. The loop never waits and never
/// allocates for a record; when the ring is full (the writer is behind) records go to a
/// bounded overflow list instead (counted as spilled), and past that they are counted as
/// dropped and logged once per episode — never silently.
final class UsageQueue: @unchecked Sendable {
    // SAFETY: slots in [head, tail) belong to the consumer, the others to the producer; the
    // indices are atomics (release on publish, acquire on read). The overflow list is under
    // its own lock.
    static let capacity = 8192
    private static let mask = capacity - 1
    let slots: UnsafeMutablePointer<UsageRecord>
    private let head = Atomic<Int>(0)
    private let tail = Atomic<Int>(0)
    private let overflow = Mutex<[UsageRecord]>([])
    static let maxOverflow = 256 * 1024
    let loopIndex: UInt16
    private var nextSeq: UInt64 = 0
    private var isDropping = false
    /// The loop's last route and the text of its name and backend's (loop thread only).
    var lastRoute: RouteSpec?
    var lastRouteText = InlineText()
    var lastUpstreamText = InlineText()
    let counters: UsageCounters

    init(loopIndex: Int, counters: UsageCounters) {
        self.loopIndex = UInt16(truncatingIfNeeded: loopIndex)
        self.counters = counters
        slots = .allocate(capacity: Self.capacity)
        slots.initialize(repeating: UsageRecord(), count: Self.capacity)
    }

    deinit { slots.deallocate() }

    /// The loop: a slot to fill, then `publish()`. Nil when the ring is full (use `spill`).
    @inline(__always)
    func reserve() -> UnsafeMutablePointer<UsageRecord>? {
        let t = tail.load(ordering: .relaxed)
        if t &- head.load(ordering: .acquiring) >= Self.capacity { return nil }
        let slot = slots + (t & Self.mask)
        nextSeq &+= 1
        slot.pointee.seq = nextSeq
        slot.pointee.loop = loopIndex
        return slot
    }

    @inline(__always)
    func publish() { tail.store(tail.load(ordering: .relaxed) &+ 1, ordering: .releasing) }

    /// The ring is full: the record waits in the overflow list (bounded), else it is dropped.
    func spill(_ fill: (inout UsageRecord) -> Void) {
        var r = UsageRecord()
        nextSeq &+= 1
        r.seq = nextSeq
        r.loop = loopIndex
        fill(&r)
        let kept = overflow.withLock { list -> Bool in
            if list.count >= Self.maxOverflow { return false }
            list.append(r)
            return true
        }
        if kept {
            counters.spilled.add(1, ordering: .relaxed)
            isDropping = false
        } else {
            counters.dropped.add(1, ordering: .relaxed)
            if !isDropping {
                isDropping = true
                Log.error("usage: the spool writer is far behind; records are being dropped (tollgate_usage_dropped_total)")
            }
        }
    }

    /// The writer: every record published so far, in order (the ring, then the overflow).
    func drain(_ body: (UnsafePointer<UsageRecord>) -> Void) -> Int {
        let h = head.load(ordering: .relaxed)
        let t = tail.load(ordering: .acquiring)
        var i = h
        while i != t {
            body(slots + (i & Self.mask))
            i &+= 1
        }
        head.store(t, ordering: .releasing)
        var n = t &- h
        let extra = overflow.withLock { list -> [UsageRecord] in
            if list.isEmpty { return [] }
            let l = list
            list.removeAll(keepingCapacity: false)
            return l
        }
        for var r in extra { withUnsafePointer(to: &r) { body($0) } }
        n += extra.count
        return n
    }
}

/// Process-wide usage counters (the writer's and the sinks' are on their objects).
final class UsageCounters: Sendable {
    let spilled = Atomic<UInt64>(0)
    let dropped = Atomic<UInt64>(0)
    let written = Atomic<UInt64>(0)
    let spoolBytes = Atomic<UInt64>(0)
}

extension Exchange {
    /// Settle's usage record: copies what the exchange knows into the loop's ring.
    @inline(__always)
    func recordUsage(_ queue: UsageQueue, nanos: UInt64) {
        if let slot = queue.reserve() {
            fillUsage(&slot.pointee, nanos: nanos, queue: queue)
            queue.publish()
        } else {
            queue.spill { fillUsage(&$0, nanos: nanos, queue: queue) }
        }
    }

    private func fillUsage(_ r: inout UsageRecord, nanos: UInt64, queue: UsageQueue) {
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        r.time = Int64(t.tv_sec) &* 1_000_000_000 &+ Int64(t.tv_nsec)
        r.durationNanos = nanos
        r.status = UInt16(truncatingIfNeeded: answerStatus)
        r.code = UInt8(truncatingIfNeeded: answerCode)
        r.bytesIn = bytesIn
        r.bytesOut = bytesOut
        r.credits = facts.creditCharged
        r.tokensIn = facts.tokensIn
        r.tokensOut = facts.tokensOut
        r.secret = facts.upstreamSent ? facts.secretSource.rawValue : 0
        withMethodBytes { r.method.set($0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, $0.count) }
        withRequestID { r.requestID.set($0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, $0.count) }
        if let k = facts.record {
            r.keyID.set(k.idBytes.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, k.idBytes.count)
            r.consumer.set(k.consumerBytes.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, k.consumerBytes.count)
        } else {
            r.keyID.clear()
            r.consumer.clear()
        }
        if facts.routeIndex >= 0, let route = facts.route {
            // The route's and its backend's names as text, kept for the last route seen.
            if route !== queue.lastRoute {
                queue.lastRoute = route
                queue.lastRouteText.set(route.name)
                let b = route.backend
                let backends = facts.snapshot.backends
                if b >= 0, b < backends.count { queue.lastUpstreamText.set(backends[b].name) } else { queue.lastUpstreamText.clear() }
            }
            r.route = queue.lastRouteText
            if answerCode == MetricCode.ok || answerCode == MetricCode.index(.upstreamUnavailable) {
                r.upstream = queue.lastUpstreamText
            } else {
                r.upstream.clear()
            }
        } else {
            r.route.clear()
            r.upstream.clear()
        }
    }
}
