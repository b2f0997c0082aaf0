import Foundation
import Glibc
import Testing

/// What idle and slow clients may cost.
@Suite(.serialized) struct ResourceTests {
    static func residentKiB(_ pid: Int32) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        return 0
    }

    /// An idle connection holds no buffers: they are lent when a head arrives and given back
    /// when the connection goes idle (target: 10,000 idle connections in 64 MiB, 6.5 KiB each;
    /// `scripts/idle_memory.py` measures 10,000).
    @Test func idleConnectionsHoldNoBuffers() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port, threads: 1)
        defer { tg.stop() }
        // Warm up: code pages, the first workspace, the pool.
        _ = try get(port, "/warm")
        let before = Self.residentKiB(tg.pid)
        var clients: [RawClient] = []
        for i in 0..<1000 {
            let c = try RawClient(port: port)
            clients.append(c)
            // Half of them make a request and stay open (keep-alive idle).
            if i % 2 == 0 { #expect(try c.request("GET /k/\(i) HTTP/1.1\r\nHost: h\r\n\r\n").status == 200) }
        }
        // A connection gives its buffers back once it has idled a second (the loop's sweep),
        // and the freed memory goes back to the system: wait for that, not for a time.
        var grown = 0
        let settled = poll(timeout: 15, step: 0.2) {
            grown = Self.residentKiB(tg.pid) - before
            return grown < 1000 * 13 / 2
        }
        #expect(settled != nil, "1,000 idle connections grew the proxy by \(grown) KiB")
        for c in clients { c.close() }
    }

    /// The body deadline is a minimum rate: a client trickling its body is cut off once its
    /// first time-out of credit is spent, not one byte per time-out.
    @Test func tricklingBodyIsCutOffAtTheMinimumRate() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port,
                                     extra: ["--body-timeout", "1", "--body-min-rate", "100"])
        defer { tg.stop() }
        let c = try RawClient(port: port)
        try c.send("POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: 200\r\n\r\n")
        // 10 bytes a second against a minimum of 100: each byte buys 10 ms.
        c.setTimeout(0.1)
        var sent = 0
        var answered = false
        let start = Date()
        while sent < 200 && Date().timeIntervalSince(start) < 15 {
            if (try? c.send("x")) == nil { answered = true; break }
            sent += 1
            if (try? c.fill()) == true { answered = true; break }   // the proxy said something (or closed)
        }
        #expect(answered, "still accepting a trickled body after \(sent) bytes")
        #expect(sent < 40, "cut off only after \(sent) bytes")
        c.setTimeout(5)
        if let r = try? c.readResponse() { #expect(r.status == 408) }
    }
}
