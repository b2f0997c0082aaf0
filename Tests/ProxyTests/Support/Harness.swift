import Foundation
import Glibc

/// A free loopback TCP port (bound to port 0, read back, released).
func freePort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var sin = sockaddr_in()
    sin.sin_family = sa_family_t(AF_INET)
    sin.sin_addr.s_addr = inet_addr("127.0.0.1")
    sin.sin_port = 0
    _ = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return UInt16(bigEndian: sin.sin_port)
}

/// A port nothing listens on (bound, never listened: connects are refused).
func refusedPort() -> UInt16 { freePort() }

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ s: String) { description = s }
}

/// The built `tollgate` binary next to the test bundle (or $TOLLGATE_BIN).
func tollgateBinary() -> String {
    if let b = ProcessInfo.processInfo.environment["TOLLGATE_BIN"] { return b }
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent("tollgate").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    // Fall back to the usual SwiftPM location from the package root.
    return FileManager.default.currentDirectoryPath + "/.build/debug/tollgate"
}

func makeTempDir(_ tag: String = "tg") -> String {
    var template = Array("/tmp/\(tag)-XXXXXX".utf8CString)
    let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    return String(cString: p!)
}

func writeFile(_ path: String, _ text: String) {
    _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
}

/// `tollgate` as a child process; stopped (by PID) when the test ends.
final class TollgateProcess: @unchecked Sendable {
    let process = Process()
    let logPath: String
    let port: UInt16

    init(arguments: [String], port: UInt16, environment: [String: String] = [:], waitForPort: Bool = true) throws {
        self.port = port
        logPath = makeTempDir("tglog") + "/stderr.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: tollgateBinary())
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        process.standardError = FileHandle(forWritingAtPath: logPath)
        process.standardOutput = FileHandle(forWritingAtPath: logPath)
        try process.run()
        if waitForPort { try waitUntilListening(port: port) }
    }

    /// `tollgate serve --policies DIR` on `port`.
    convenience init(policies: String, port: UInt16, threads: Int = 2, extra: [String] = [], environment: [String: String] = [:]) throws {
        try self.init(arguments: ["serve", "--policies", policies, "--threads", String(threads)] + extra,
                      port: port, environment: environment)
    }

    func waitUntilListening(port: UInt16, timeout: Double = 20) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if !process.isRunning { throw HarnessError("tollgate exited early (\(process.terminationStatus)): \(log)") }
            if let c = try? RawClient(port: port) { c.close(); return }
            usleep(20_000)
        }
        throw HarnessError("tollgate did not listen on \(port): \(log)")
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    var pid: Int32 { process.processIdentifier }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// SIGTERM, then wait for the exit status (SIGKILL after `timeout`).
    @discardableResult
    func stop(timeout: Double = 15) -> Int32 {
        guard process.isRunning else { return process.terminationStatus }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        return process.terminationStatus
    }

    func waitForExit(timeout: Double = 15) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        return process.isRunning ? nil : process.terminationStatus
    }

    deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
}

/// Runs `tollgate ARGS` to completion; returns (exit status, stdout+stderr).
func runTollgate(_ args: [String], environment: [String: String] = [:]) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: tollgateBinary())
    p.arguments = args
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    p.environment = env
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}
