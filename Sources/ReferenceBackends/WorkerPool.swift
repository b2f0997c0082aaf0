#if canImport(Glibc)
import Glibc
#endif
import CSystem

/// A pthread mutex and condition variable (the condition waits on `CLOCK_MONOTONIC`).
final class Monitor: @unchecked Sendable {
    // SAFETY: the pointers are allocated once and only used through pthread calls, which
    // are thread-safe by contract; they are freed in deinit, when no thread can hold them.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    func locked<Result>(_ body: () throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }

    /// Waits for a signal; the caller holds the lock (inside ``locked(_:)``).
    func wait() { pthread_cond_wait(condition, mutex) }

    /// Waits for a signal or `deadline`; `false` once the deadline has passed.
    @discardableResult
    func wait(until deadline: ContinuousClock.Instant) -> Bool {
        let remaining = ContinuousClock.now.duration(to: deadline)
        guard remaining > .zero else { return false }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let (seconds, attoseconds) = remaining.components
        var nanoseconds = now.tv_nsec + Int(attoseconds / 1_000_000_000)
        var wholeSeconds = now.tv_sec + Int(seconds)
        if nanoseconds >= 1_000_000_000 {
            nanoseconds -= 1_000_000_000
            wholeSeconds += 1
        }
        var absolute = timespec(tv_sec: wholeSeconds, tv_nsec: nanoseconds)
        return pthread_cond_timedwait(condition, mutex, &absolute) != ETIMEDOUT
    }

    func signal() { pthread_cond_signal(condition) }
    func broadcast() { pthread_cond_broadcast(condition) }
}

/// A bounded pool of worker threads fed from a bounded queue.
///
/// At most `maximumWorkers` threads, started when work arrives and no idle thread is
/// waiting (so an unused pool costs nothing); at most `queueCapacity` items wait.
/// ``submit(_:)`` refuses work past that bound instead of growing: the caller answers
/// "busy" (the reference server's 503, the finance import queue's 503).
final class WorkerPool<Item: Sendable>: @unchecked Sendable {
    // SAFETY: every mutable field below is read and written with `monitor` locked.
    let maximumWorkers: Int
    let queueCapacity: Int
    private let name: String
    private let handler: @Sendable (Item) -> Void
    private let monitor = Monitor()
    private var queue: [Item?] = []
    private var queueHead = 0
    private var workers = 0
    private var waiting = 0
    private var busy = 0
    private var isShutDown = false

    init(name: String, maximumWorkers: Int, queueCapacity: Int, handler: @escaping @Sendable (Item) -> Void) {
        self.name = name
        self.maximumWorkers = max(1, maximumWorkers)
        self.queueCapacity = max(1, queueCapacity)
        self.handler = handler
    }

    /// Threads started so far (never more than ``maximumWorkers``).
    var workerCount: Int { monitor.locked { workers } }
    /// Items running right now.
    var busyCount: Int { monitor.locked { busy } }
    /// Items waiting for a thread.
    var queuedCount: Int { monitor.locked { queue.count - queueHead } }

    /// Queues `item`; `false` when the queue is full or the pool is shut down (the
    /// caller still owns `item`).
    func submit(_ item: Item) -> Bool {
        monitor.locked {
            let queued = queue.count - queueHead
            guard !isShutDown, queued < queueCapacity else { return false }
            queue.append(item)
            // Woken waiters take the queued items; start a thread for the rest.
            if queued + 1 > waiting && workers < maximumWorkers {
                if (try? ReferenceThread.detach({ [self] in runWorker() })) != nil {
                    workers += 1
                } else if workers == 0 {
                    queue.removeLast()
                    return false
                }
            }
            if waiting > 0 { monitor.signal() }
            return true
        }
    }

    /// Refuses new work, hands back what was still queued, and waits until the running
    /// items finish or `timeout` passes (threads still busy then finish on their own).
    @discardableResult
    func shutdown(waitingUpTo timeout: Duration) -> [Item] {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        return monitor.locked {
            isShutDown = true
            let left = queue[queueHead...].compactMap { $0 }
            queue.removeAll()
            queueHead = 0
            monitor.broadcast()
            while workers > 0 {
                if !monitor.wait(until: deadline) { break }
            }
            return left
        }
    }

    private func runWorker() {
        _ = name.withCString { tollgate_pthread_setname(pthread_self(), $0) }
        while true {
            let next: Item? = monitor.locked {
                while queue.count == queueHead && !isShutDown {
                    waiting += 1
                    monitor.wait()
                    waiting -= 1
                }
                if isShutDown {
                    workers -= 1
                    monitor.broadcast()
                    return nil
                }
                let item = queue[queueHead]
                queue[queueHead] = nil
                queueHead += 1
                if queueHead == queue.count {
                    queue.removeAll(keepingCapacity: true)
                    queueHead = 0
                } else if queueHead > 1024 && queueHead * 2 > queue.count {
                    queue.removeFirst(queueHead)
                    queueHead = 0
                }
                busy += 1
                return item
            }
            guard let next else { return }
            handler(next)
            monitor.locked {
                busy -= 1
                if isShutDown { monitor.broadcast() }
            }
        }
    }
}

/// A weak reference that can be captured by a `@Sendable` closure made before its
/// object is fully initialised (a pool's handler pointing back at its owner).
final class WeakBox<Object: AnyObject & Sendable>: @unchecked Sendable {
    // SAFETY: set once by the owner's init before any work that reads it is queued (the
    // pool's mutex orders that store before every read); only read afterwards.
    weak var object: Object?
    init() {}
}
