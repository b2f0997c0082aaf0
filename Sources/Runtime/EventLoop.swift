import CSystem
import Glibc
import Synchronization

/// Something registered with a loop: a socket, a listener, an eventfd.
/// Called on the loop's thread only.
public protocol EventHandler: AnyObject {
    /// `events` is the epoll mask (`EventSet`). Never called for a stale registration.
    func handleEvent(_ events: EventSet, loop: EventLoop)
    /// A deadline scheduled with `schedule(at:fd:)` passed (check your own deadline: timers are lazy).
    func handleTimer(loop: EventLoop)
}

extension EventHandler {
    public func handleTimer(loop: EventLoop) {}
}

/// A timer not tied to a registered fd (reconnect back-off, periodic work).
public protocol TimerHandler: AnyObject {
    func timerFired(loop: EventLoop)
}

/// The epoll mask, typed. Values are the Linux constants as literals (no lazy globals, no
/// generic SetAlgebra code on the hot path: test with `hasInput`/`hasOutput`).
public struct EventSet: OptionSet, Sendable {
    public let rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public static var readable: EventSet { EventSet(rawValue: 0x001) }        // EPOLLIN
    @inlinable public static var writable: EventSet { EventSet(rawValue: 0x004) }        // EPOLLOUT
    @inlinable public static var error: EventSet { EventSet(rawValue: 0x008) }           // EPOLLERR
    @inlinable public static var hangup: EventSet { EventSet(rawValue: 0x010) }          // EPOLLHUP
    @inlinable public static var readHangup: EventSet { EventSet(rawValue: 0x2000) }     // EPOLLRDHUP
    @inlinable public static var edgeTriggered: EventSet { EventSet(rawValue: 0x8000_0000) } // EPOLLET
    /// What every stream socket registers once: both directions, edge-triggered, no later epoll_ctl.
    @inlinable public static var streamSocket: EventSet { EventSet(rawValue: 0x8000_2005) }
    /// Readable, or an error/hang-up a read will report.
    @inlinable public var hasInput: Bool { rawValue & 0x2019 != 0 }
    @inlinable public var hasOutput: Bool { rawValue & 0x004 != 0 }
    /// The peer closed (or the socket failed): a short read no longer means "drained, a new
    /// edge will come" — the data and the FIN may have come in one edge.
    @inlinable public var hasHangup: Bool { rawValue & 0x2018 != 0 }
    /// Writable or failed (a connect finished either way).
    @inlinable public var hasOutputOrFailure: Bool { rawValue & 0x01C != 0 }
}

/// One epoll event loop, owned by one thread. Registrations are indexed by fd; the epoll
/// data word carries `generation << 32 | fd`, so an event for a closed-and-reused fd is dropped
/// (HAProxy's fd generation, SwiftNIO's registration id).
public final class EventLoop: @unchecked Sendable {
    // SAFETY: everything but `inbox`, `wakeFD` and `isStopping` is touched only on the loop
    // thread (`assertOnLoop`); the inbox is a Mutex and the wake-up an eventfd write.
    private struct Registration {
        var generation: UInt32 = 0
        var handler: (any EventHandler)?
    }
    private struct TimerEntry {
        var deadline: UInt64
        var key: UInt64                 // generation << 32 | fd, or 0 with `handler`
        var handler: (any TimerHandler)?
    }

    public let index: Int
    private let epfd: Int32
    private let wakeFD: Int32
    private var registrations: [Registration]
    private var nextGeneration: UInt32 = 1
    private var timers: [TimerEntry] = []
    private var deferred: [any TimerHandler] = []
    private var events: UnsafeMutablePointer<epoll_event>
    private let maxEvents = 256
    private let inbox = Mutex<[@Sendable () -> Void]>([])
    private let stopFlag = Atomic<Bool>(false)
    private var thread: pthread_t?
    /// Monotonic nanoseconds, refreshed after every `epoll_wait`.
    public private(set) var now: UInt64

    public init(index: Int) throws(Errno) {
        self.index = index
        let ep = epoll_create1(Int32(EPOLL_CLOEXEC))
        if ep < 0 { throw Errno.current }
        epfd = ep
        let ev = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        if ev < 0 { throw Errno.current }
        wakeFD = ev
        registrations = Array(repeating: Registration(), count: 1024)
        events = .allocate(capacity: maxEvents)
        now = monotonicNanos()
        var e = epoll_event()
        e.events = EventSet.readable.rawValue
        e.data.u64 = UInt64(UInt32(bitPattern: ev))
        _ = epoll_ctl(epfd, EPOLL_CTL_ADD, ev, &e)
    }
    deinit {
        events.deallocate()
        Glibc.close(epfd)
        Glibc.close(wakeFD)
    }

    @inline(__always)
    public func assertOnLoop() {
        assert(thread == nil || pthread_equal(thread!, pthread_self()) != 0, "called off its event loop")
    }

    // MARK: registrations

    /// Registers `fd` with `handler`; returns the registration's generation.
    @discardableResult
    public func register(fd: Int32, handler: any EventHandler, events mask: EventSet = .streamSocket) throws(Errno) -> UInt32 {
        let i = Int(fd)
        if i >= registrations.count {
            registrations.append(contentsOf: repeatElement(Registration(), count: max(i + 1, registrations.count * 2) - registrations.count))
        }
        nextGeneration &+= 1
        if nextGeneration == 0 { nextGeneration = 1 }
        let gen = nextGeneration
        registrations[i] = Registration(generation: gen, handler: handler)
        var e = epoll_event()
        e.events = mask.rawValue
        e.data.u64 = UInt64(gen) << 32 | UInt64(UInt32(bitPattern: fd))
        if epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e) < 0 {
            registrations[i] = Registration()
            throw Errno.current
        }
        return gen
    }

    public func modify(fd: Int32, events mask: EventSet) {
        let i = Int(fd)
        guard i < registrations.count else { return }
        var e = epoll_event()
        e.events = mask.rawValue
        e.data.u64 = UInt64(registrations[i].generation) << 32 | UInt64(UInt32(bitPattern: fd))
        _ = epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &e)
    }

    /// Forgets `fd` and closes it. Later events and timers for it are dropped.
    public func close(fd: Int32) {
        let i = Int(fd)
        if i < registrations.count { registrations[i] = Registration() }
        Glibc.close(fd)
    }


    /// Forgets `fd` without closing it (it stays open for its owner).
    public func deregister(fd: Int32) {
        let i = Int(fd)
        if i < registrations.count { registrations[i] = Registration() }
        var e = epoll_event()
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &e)
    }

    public func generation(of fd: Int32) -> UInt32 {
        let i = Int(fd)
        return i < registrations.count ? registrations[i].generation : 0
    }

    // MARK: timers

    /// Calls the handler registered for `fd` at `deadline`, if that registration still exists.
    public func schedule(at deadline: UInt64, fd: Int32) {
        let gen = generation(of: fd)
        if gen == 0 { return }
        push(TimerEntry(deadline: deadline, key: UInt64(gen) << 32 | UInt64(UInt32(bitPattern: fd)), handler: nil))
    }

    /// Calls `handler.timerFired` once this turn's events are handled, before the loop waits
    /// again (a write batched over the turn: cheaper than a zero-delay timer in the heap).
    /// A handler queued from inside such a call runs on the next turn.
    public func afterEvents(_ handler: any TimerHandler) {
        deferred.append(handler)
    }

    private func runDeferred() {
        let batch = deferred
        deferred.removeAll(keepingCapacity: true)
        for h in batch { h.timerFired(loop: self) }
    }

    /// Calls `handler.timerFired` at `deadline` (holds a strong reference until then).
    public func schedule(at deadline: UInt64, handler: any TimerHandler) {
        push(TimerEntry(deadline: deadline, key: 0, handler: handler))
    }

    private func push(_ t: TimerEntry) {
        timers.append(t)
        var i = timers.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if timers[p].deadline <= timers[i].deadline { break }
            timers.swapAt(p, i)
            i = p
        }
    }

    private func popMin() -> TimerEntry {
        let top = timers[0]
        let last = timers.removeLast()
        if !timers.isEmpty {
            timers[0] = last
            var i = 0
            let n = timers.count
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < n && timers[l].deadline < timers[m].deadline { m = l }
                if r < n && timers[r].deadline < timers[m].deadline { m = r }
                if m == i { break }
                timers.swapAt(i, m)
                i = m
            }
        }
        return top
    }

    private func fireTimers() {
        while let first = timers.first, first.deadline <= now {
            let t = popMin()
            if let h = t.handler {
                h.timerFired(loop: self)
            } else {
                let fd = Int(UInt32(truncatingIfNeeded: t.key))
                let gen = UInt32(truncatingIfNeeded: t.key >> 32)
                if fd < registrations.count, registrations[fd].generation == gen, let h = registrations[fd].handler {
                    h.handleTimer(loop: self)
                }
            }
        }
    }

    // MARK: cross-thread work

    /// Runs `work` on this loop's thread soon. Callable from any thread.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        inbox.withLock { $0.append(work) }
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }

    private func drainInbox() {
        var v: UInt64 = 0
        _ = Glibc.read(wakeFD, &v, 8)
        let work = inbox.withLock { q -> [@Sendable () -> Void] in
            let w = q
            q.removeAll(keepingCapacity: true)
            return w
        }
        for w in work { w() }
    }

    // MARK: running

    public func stop() {
        stopFlag.store(true, ordering: .releasing)
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }
    public var isStopped: Bool { stopFlag.load(ordering: .acquiring) }

    /// Runs the loop on the calling thread until `stop()`.
    public func run() {
        thread = pthread_self()
        let wakeKey = UInt64(UInt32(bitPattern: wakeFD))
        while !stopFlag.load(ordering: .relaxed) {
            var timeout: Int32 = -1
            if !deferred.isEmpty {
                timeout = 0
            } else if let first = timers.first {
                let t = monotonicNanos()
                timeout = first.deadline <= t ? 0 : Int32(min((first.deadline - t + 999_999) / 1_000_000, 60_000))
            }
            let n = epoll_wait(epfd, events, Int32(maxEvents), timeout)
            now = monotonicNanos()
            if n > 0 {
                for k in 0..<Int(n) {
                    let e = events[k]
                    let key = e.data.u64
                    if key == wakeKey { drainInbox(); continue }
                    let fd = Int(UInt32(truncatingIfNeeded: key))
                    let gen = UInt32(truncatingIfNeeded: key >> 32)
                    guard fd < registrations.count, registrations[fd].generation == gen,
                          let h = registrations[fd].handler else { continue }
                    h.handleEvent(EventSet(rawValue: e.events), loop: self)
                }
            }
            if !deferred.isEmpty { runDeferred() }
            if !timers.isEmpty { fireTimers() }
        }
    }
}

/// A lazily re-armed deadline for one fd-registered handler: setting it is a store;
/// the heap is touched only when no earlier timer is pending.
public struct Deadline {
    public private(set) var at: UInt64 = 0        // 0 = none
    private var armed: UInt64 = 0

    public init() {}

    @inline(__always)
    public mutating func set(_ deadline: UInt64, fd: Int32, loop: EventLoop) {
        at = deadline
        if deadline != 0 && (armed == 0 || deadline < armed) {
            armed = deadline
            loop.schedule(at: deadline, fd: fd)
        }
    }
    @inline(__always) public mutating func clear() { at = 0 }

    /// Call from `handleTimer`: true when the deadline really passed; re-arms otherwise.
    public mutating func expired(fd: Int32, loop: EventLoop) -> Bool {
        if armed <= loop.now { armed = 0 }
        if at == 0 { return false }
        if at <= loop.now { at = 0; return true }
        if armed == 0 { armed = at; loop.schedule(at: at, fd: fd) }
        return false
    }
}

/// Starts a pthread running `body`.
public func spawnThread(name: String, _ body: @escaping @Sendable () -> Void) -> pthread_t {
    final class Box: @unchecked Sendable {
        // SAFETY: handed to exactly one new thread, which takes ownership.
        let body: @Sendable () -> Void
        init(_ b: @escaping @Sendable () -> Void) { body = b }
    }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, { arg in
        let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
        b.body()
        return nil
    }, box)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    let n = String(name.prefix(15))
    _ = tollgate_pthread_setname(tid, n)
    return tid
}
