#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A joinable POSIX thread running one `@Sendable` closure.
///
/// The reference backends use plain blocking threads (one accept thread, one
/// thread per connection, one per import job): clarity over speed. Spawned
/// threads block SIGINT, SIGTERM and SIGPIPE so that process signals reach the
/// thread that waits for them (see ``ReferenceBackends/runUntilSignalled()``).
public final class ReferenceThread: Sendable {
    private let handle: pthread_t
    private let isJoined = Mutex(false)

    private init(handle: pthread_t) { self.handle = handle }

    /// Starts `body` on a new joinable thread.
    public static func spawn(_ body: @escaping @Sendable () -> Void) throws(ReferenceServerError) -> ReferenceThread {
        ReferenceThread(handle: try start(body))
    }

    /// Starts `body` on a new detached thread (nobody will join it).
    public static func detach(_ body: @escaping @Sendable () -> Void) throws(ReferenceServerError) {
        let handle = try start(body)
        pthread_detach(handle)
    }

    /// Waits for the thread to finish. Joining more than once is a no-op.
    public func join() {
        let shouldJoin = isJoined.withLock { joined in
            if joined { return false }
            joined = true
            return true
        }
        if shouldJoin { pthread_join(handle, nil) }
    }

    private static func start(_ body: @escaping @Sendable () -> Void) throws(ReferenceServerError) -> pthread_t {
        let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
        var handle = pthread_t()
        let rc = pthread_create(&handle, nil, { argument in
            guard let argument else { return nil }
            let body = Unmanaged<ThreadBody>.fromOpaque(argument).takeRetainedValue()
            var blocked = sigset_t()
            sigemptyset(&blocked)
            sigaddset(&blocked, SIGINT)
            sigaddset(&blocked, SIGTERM)
            sigaddset(&blocked, SIGPIPE)
            pthread_sigmask(SIG_BLOCK, &blocked, nil)
            body.run()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<ThreadBody>.fromOpaque(box).release()
            throw .threadStartFailed(errno: rc)
        }
        return handle
    }
}

private final class ThreadBody: Sendable {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

/// Set by ``ReferenceServer/stop()``; long handlers (slow replies, token
/// delays) sleep through it so that a stopping server is not held up.
public final class ReferenceStopSignal: Sendable {
    private let isRaised = Atomic(false)

    public init() {}

    public var isStopping: Bool { isRaised.load(ordering: .acquiring) }

    public func raise() { isRaised.store(true, ordering: .releasing) }

    /// Sleeps for `duration` in small steps; returns `false` if the server
    /// began stopping before the time was up.
    @discardableResult
    public func sleep(for duration: Duration) -> Bool {
        let deadline = ContinuousClock.now.advanced(by: duration)
        while ContinuousClock.now < deadline {
            if isStopping { return false }
            let remaining = ContinuousClock.now.duration(to: deadline)
            let step = min(remaining, .milliseconds(10))
            let (seconds, attoseconds) = step.components
            var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
            var remainder = timespec()
            while nanosleep(&request, &remainder) != 0 && errno == EINTR { request = remainder }
        }
        return !isStopping
    }
}
