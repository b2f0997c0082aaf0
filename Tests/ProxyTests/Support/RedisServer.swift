import Policy
import Backends
import Foundation
import Glibc
import Runtime

/// A real `redis-server` on a free loopback port, stopped by PID (the approach of
/// BackendsTests/RedisTestSupport.swift; test targets cannot import each other's code).
final class RedisServer: @unchecked Sendable {
    // SAFETY: `process` is only touched by the test that owns the server, one call at a time.
    let port: Int
    private var process: Process?

    init() throws {
        var lastError: (any Error)?
        for _ in 0..<5 {
            let p = Int(freePort())
            do {
                process = try RedisServer.launch(port: p)
                port = p
                return
            } catch {
                lastError = error
            }
        }
        throw lastError ?? HarnessError("cannot start redis-server")
    }

    /// Starts on a given port (a policy may already name it).
    init(port: Int) throws {
        self.port = port
        process = try RedisServer.launch(port: port)
    }

    /// `redis://127.0.0.1:PORT/0`, as a policy names it.
    var urlText: String { "redis://127.0.0.1:\(port)/0" }
    var url: RedisURL { RedisURL(endpoint: .tcp(host: "127.0.0.1", port: port)) }
    var pid: Int32 { process?.processIdentifier ?? 0 }
    var isRunning: Bool { process?.isRunning ?? false }

    /// Starts `redis-server` (no persistence) and waits until it answers PING.
    private static func launch(port: Int) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        p.arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--daemonize", "no"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let until = monotonicNanos() + 5_000_000_000
        while monotonicNanos() < until {
            if !p.isRunning { throw HarnessError("redis-server exited on port \(port)") }
            if ping(port: port) { return p }
            usleep(10_000)
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        throw HarnessError("redis-server on port \(port) never answered PING")
    }

    static func ping(port: Int) -> Bool {
        let url = RedisURL(endpoint: .tcp(host: "127.0.0.1", port: port))
        guard let c = try? RedisKeyDirectory(url: url, timeout: .milliseconds(200)) else { return false }
        return (try? c.run(["PING"])) != nil
    }

    /// SIGKILL by PID (an outage: no goodbye to the clients).
    func kill9() {
        guard let p = process else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        process = nil
    }

    /// Starts again on the same port (empty: no persistence); returns once it answers PING.
    func restart() throws {
        kill9()
        process = try RedisServer.launch(port: port)
    }

    func stop() { kill9() }

    deinit { kill9() }

    /// A blocking client for setup and inspection.
    func client() throws -> RedisKeyDirectory { try RedisKeyDirectory(url: url) }

    /// `calls` of one command in `INFO commandstats` (`cmdstat_<name>`), 0 when never called.
    func commandCalls(_ name: String) throws -> Int { try commandCalls([name])[0] }

    /// Calls of each command, all from one `INFO commandstats` reply.
    func commandCalls(_ names: [String]) throws -> [Int] {
        guard let text = try client().run(["INFO", "commandstats"]).text else { return names.map { _ in 0 } }
        let lines = text.split(whereSeparator: \.isNewline)
        return names.map { name in
            for line in lines where line.hasPrefix("cmdstat_\(name):") {
                // cmdstat_get:calls=12,usec=34,…
                for field in line.split(separator: ":", maxSplits: 1)[1].split(separator: ",") where field.hasPrefix("calls=") {
                    return Int(field.dropFirst(6)) ?? 0
                }
            }
            return 0
        }
    }
}
