import Backends
import Foundation
import Glibc
import Policy
import Runtime
import Synchronization
import Testing

/// A real `redis-server` on a free loopback port, stopped by PID.
final class RedisServer: @unchecked Sendable {
    // SAFETY: `process` is only touched by the test that owns the server, one call at a time.
    let port: Int
    let extraArguments: [String]
    let password: String?
    private var process: Process?

    /// - Parameters:
    ///   - extraArguments: more `redis-server` options (e.g. `--requirepass`).
    ///   - password: what the readiness PING authenticates with.
    init(extraArguments: [String] = [], password: String? = nil) throws {
        self.extraArguments = extraArguments
        self.password = password
        var lastError: (any Error)?
        var started: (Int, Process?)?
        for _ in 0..<5 where started == nil {
            let p = RedisServer.freePort()
            var proc: Process?
            do {
                try RedisServer.launch(port: p, extra: extraArguments, password: password, into: &proc)
                started = (p, proc)
            } catch {
                lastError = error
            }
        }
        guard let (p, proc) = started else { throw lastError ?? Failure("cannot start redis-server") }
        port = p
        process = proc
    }

    var url: RedisURL { RedisURL(endpoint: .tcp(host: "127.0.0.1", port: port), password: password) }
    var pid: Int32 { process?.processIdentifier ?? 0 }

    struct Failure: Error, CustomStringConvertible {
        var description: String
        init(_ s: String) { description = s }
    }

    private static func launch(port: Int, extra: [String], password: String?, into slot: inout Process?) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        p.arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--daemonize", "no", "--enable-debug-command", "local"] + extra.map { $0.replacingOccurrences(of: "{port}", with: String(port)) }
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        slot = p
        let until = monotonicNanos() + 5_000_000_000
        while monotonicNanos() < until {
            if !p.isRunning { slot = nil; throw Failure("redis-server exited on port \(port)") }
            if ping(port: port, password: password) { return }
            usleep(10_000)
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        slot = nil
        throw Failure("redis-server on port \(port) never answered PING")
    }

    static func ping(port: Int, password: String? = nil) -> Bool {
        let url = RedisURL(endpoint: .tcp(host: "127.0.0.1", port: port), password: password)
        guard let c = try? RedisKeyDirectory(url: url, timeout: .milliseconds(200)) else { return false }
        return (try? c.run(["PING"])) != nil
    }

    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = 0
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr)
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: a.sin_port))
    }

    /// SIGKILL by PID (an outage).
    func kill9() {
        guard let p = process else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        process = nil
    }

    /// Starts again on the same port.
    func restart() throws {
        try RedisServer.launch(port: port, extra: extraArguments, password: password, into: &process)
    }

    func stop() { kill9() }

    deinit { kill9() }

    /// A blocking client for setup and inspection.
    func client() throws -> RedisKeyDirectory { try RedisKeyDirectory(url: url) }
}

/// An event loop on its own thread.
final class LoopThread: @unchecked Sendable {
    // SAFETY: `loop` is used from other threads only through `execute`/`stop` (thread-safe);
    // `tid` is written once in init and read by `shutdown` on the owning test thread.
    let loop: EventLoop
    private var tid: pthread_t

    init() throws {
        let l = try EventLoop(index: 0)
        loop = l
        tid = spawnThread(name: "redis-test") { l.run() }
    }

    /// Runs `body` on the loop and waits for its result.
    func sync<T>(_ body: @escaping () -> T) -> T {
        let box = SyncBox(body)
        loop.execute { box.result = box.body(); box.done.signal() }
        box.done.wait()
        return box.result!
    }

    func shutdown() {
        loop.stop()
        pthread_join(tid, nil)
    }
}

final class SyncBox<T>: @unchecked Sendable {
    // SAFETY: `body` runs on the loop while the caller blocks on `done`; `result` is
    // written before `done.signal()` and read after `done.wait()`.
    let body: () -> T
    var result: T?
    let done = DispatchSemaphore(value: 0)
    init(_ b: @escaping () -> T) { body = b }
}

/// A value used only on one loop, held by a test thread.
final class LoopBound<T>: @unchecked Sendable {
    // SAFETY: `value` is only read inside `LoopThread.sync` closures of its loop.
    var value: T?
    init() {}
}

/// Records every completion, in order; checks exactly-once per token.
final class Collector: RedisWaiter, Sendable {
    struct Done: Sendable { var token: UInt64; var result: RedisResult }
    let done = Mutex<[Done]>([])

    func redisCompleted(token: UInt64, result: RedisResult) {
        done.withLock { $0.append(Done(token: token, result: result)) }
    }
    var count: Int { done.withLock { $0.count } }
    var all: [Done] { done.withLock { $0 } }
    func results(for token: UInt64) -> [RedisResult] { all.filter { $0.token == token }.map(\.result) }
}

/// Health transitions, in order.
final class HealthLog: Sendable {
    let states = Mutex<[RedisHealth]>([])
    func record(_ h: RedisHealth) { states.withLock { $0.append(h) } }
    var all: [RedisHealth] { states.withLock { $0 } }
}

/// Polls `condition` until true or `seconds` pass (generous; never a timing assertion).
func eventually(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let until = monotonicNanos() + UInt64(seconds * 1e9)
    while monotonicNanos() < until {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

/// A running RedisConnection on its own loop thread.
final class LiveConnection: @unchecked Sendable {
    // SAFETY: `bound.value` is only touched on `thread.loop` (inside `sync`).
    let thread: LoopThread
    let bound = LoopBound<RedisConnection>()
    let health = HealthLog()

    init(url: RedisURL, deadline: Duration = .milliseconds(500), instanceID: String = "test",
         options: RedisConnection.Options = RedisConnection.Options()) throws {
        thread = try LoopThread()
        let h = health, b = bound
        thread.sync {
            let c = RedisConnection(loop: self.thread.loop, url: url, commandDeadline: deadline,
                                    instanceID: instanceID, options: options) { h.record($0) }
            b.value = c
            c.start()
        }
    }

    func on<T>(_ body: @escaping (RedisConnection) -> T) -> T {
        let b = bound
        return thread.sync { body(b.value!) }
    }

    var isUp: Bool { on { $0.health == .up } }

    func waitUp() -> Bool { eventually { self.isUp } }

    func shutdown() {
        on { $0.stop() }
        thread.shutdown()
    }
}

extension RedisResult {
    var replyText: String? { if case .reply(let r) = self { r.text } else { nil } }
    var verdict: LimitVerdict? { if case .limit(let v) = self { v } else { nil } }
    var isTimedOut: Bool { if case .timedOut = self { true } else { false } }
    var isUnavailable: Bool { if case .unavailable = self { true } else { false } }
    var isNilReply: Bool { if case .reply(.nil) = self { true } else { false } }
}

/// A redis-server of the test's own and a connection to it, up (checked); the connection and
/// the server are stopped, in that order, when `body` returns or throws.
func withRedis<R>(deadline: Duration = .milliseconds(500), options: RedisConnection.Options = RedisConnection.Options(),
                  sourceLocation: SourceLocation = #_sourceLocation,
                  _ body: (RedisServer, LiveConnection) throws -> R) throws -> R {
    let server = try RedisServer()
    defer { server.stop() }
    let live = try LiveConnection(url: server.url, deadline: deadline, options: options)
    defer { live.shutdown() }
    #expect(live.waitUp(), sourceLocation: sourceLocation)
    return try body(server, live)
}
