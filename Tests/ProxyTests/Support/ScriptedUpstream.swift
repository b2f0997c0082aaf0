import Foundation
import Glibc

/// A real loopback server whose every byte a test scripts: the fault-injection seam
/// (refusals, stalls, resets, malformed or streamed responses).
final class ScriptedUpstream: @unchecked Sendable {
    // SAFETY: `listenFD` is set once; `stopped` is only read by the accept thread after it.
    let port: UInt16
    private let listenFD: Int32
    private let handler: @Sendable (UpstreamPeer) -> Void
    private let lock = NSLock()
    private var stopped = false
    private var peers: [UpstreamPeer] = []
    private(set) var acceptedCount = 0

    init(handler: @escaping @Sendable (UpstreamPeer) -> Void) throws {
        self.handler = handler
        let listenFD = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.listenFD = listenFD
        var one: Int32 = 1
        setsockopt(listenFD, SOL_SOCKET, SO_REUSEADDR, &one, 4)
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_addr.s_addr = inet_addr("127.0.0.1")
        sin.sin_port = 0
        _ = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listenFD, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listenFD, $0, &len) } }
        port = UInt16(bigEndian: sin.sin_port)
        listen(listenFD, 128)
        startAccepting()
    }

    private func startAccepting() {
        let t = Thread { [self] in self.acceptLoop() }
        t.start()
    }

    private func acceptLoop() {
        while true {
            let c = accept(listenFD, nil, nil)
            if c < 0 { return }
            lock.lock()
            if stopped { lock.unlock(); Glibc.close(c); return }
            let peer = UpstreamPeer(fd: c)
            peers.append(peer)
            acceptedCount += 1
            lock.unlock()
            let h = handler
            let t = Thread { h(peer); peer.close() }
            t.start()
        }
    }

    var connections: Int { lock.lock(); defer { lock.unlock() }; return acceptedCount }

    /// Idempotent: a second call must not touch `listenFD`, whose number may have been reused.
    func stop() {
        lock.lock()
        if stopped { lock.unlock(); return }
        stopped = true
        let ps = peers
        lock.unlock()
        shutdown(listenFD, Int32(SHUT_RDWR))
        Glibc.close(listenFD)
        for p in ps { p.shutdownIfOpen() }
    }
    deinit { stop() }
}

/// One accepted upstream connection, driven by a test script.
final class UpstreamPeer: @unchecked Sendable {
    // SAFETY: used by exactly one handler thread.
    let fd: Int32
    private var buffer: [UInt8] = []
    private let lock = NSLock()
    private var closed = false
    init(fd: Int32) {
        self.fd = fd
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    private func fill() -> Bool {
        var tmp = [UInt8](repeating: 0, count: 65536)
        let n = tmp.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { return false }
        buffer.append(contentsOf: tmp[0..<n])
        return true
    }

    /// The next request head (through CRLFCRLF), or nil on EOF.
    func readHead() -> String? {
        while true {
            if buffer.count >= 4 {
                for i in 0...(buffer.count - 4) where buffer[i] == 13 && buffer[i + 1] == 10 && buffer[i + 2] == 13 && buffer[i + 3] == 10 {
                    let head = String(decoding: buffer[0..<(i + 4)], as: UTF8.self)
                    buffer.removeFirst(i + 4)
                    return head
                }
            }
            if !fill() { return nil }
        }
    }

    func read(count: Int) -> [UInt8]? {
        while buffer.count < count { if !fill() { return nil } }
        let out = Array(buffer[0..<count])
        buffer.removeFirst(count)
        return out
    }

    /// Reads a chunked body (raw framing included), through the last chunk.
    func readChunkedBody() -> [UInt8]? {
        var data: [UInt8] = []
        while true {
            guard let line = readLine(), let size = Int(line.split(separator: ";").first ?? "", radix: 16) else { return nil }
            if size == 0 { _ = readLine(); return data }
            guard let d = read(count: size) else { return nil }
            data += d
            _ = readLine()
        }
    }

    private func readLine() -> String? {
        while true {
            if buffer.count >= 2 {
                for i in 0...(buffer.count - 2) where buffer[i] == 13 && buffer[i + 1] == 10 {
                    let l = String(decoding: buffer[0..<i], as: UTF8.self)
                    buffer.removeFirst(i + 2)
                    return l
                }
            }
            if !fill() { return nil }
        }
    }

    func write(_ s: String) { write(Array(s.utf8)) }
    /// Sends all of `b`; false when the peer is gone (the connection was closed under us).
    func trySend(_ b: [UInt8]) -> Bool {
        var off = 0
        while off < b.count {
            let n = b[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            off += n
        }
        return true
    }
    func write(_ b: [UInt8]) {
        var off = 0
        while off < b.count {
            let n = b[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            off += n
        }
    }

    /// Reset (RST) instead of a clean close.
    func reset() {
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        close()
    }

    func close() {
        lock.lock()
        defer { lock.unlock() }
        if closed { return }
        closed = true
        Glibc.close(fd)
    }

    /// Wakes a blocked handler; never touches an fd number that was already closed (and maybe reused).
    func shutdownIfOpen() {
        lock.lock()
        defer { lock.unlock() }
        if !closed { shutdown(fd, Int32(SHUT_RDWR)) }
    }
}

/// Header value from a raw request head.
func headerValue(_ head: String, _ name: String) -> String? {
    for line in head.components(separatedBy: "\r\n") {
        if let c = line.firstIndex(of: ":"), line[..<c].lowercased() == name.lowercased() {
            return line[line.index(after: c)...].trimmingCharacters(in: .whitespaces)
        }
    }
    return nil
}

/// A minimal OK response with a body.
func okResponse(_ body: String, extra: String = "") -> String {
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n\(extra)\r\n\(body)"
}
