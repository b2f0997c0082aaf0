import Foundation
import Glibc
import Testing

/// A policy with one public route to `upstreamPort` (the proxy core, no credentials).
func publicPolicy(listen: UInt16, upstreamPort: UInt16, responseTimeout: String = "2s", extraRoutes: String = "",
                  maxBody: String? = nil) -> String {
    let dir = makeTempDir("tgpol")
    writeFile(dir + "/gateway.yaml", """
    version: 1
    listen:
      - address: 127.0.0.1:\(listen)
    backends:
      up:
        url: http://127.0.0.1:\(upstreamPort)
        timeouts: {connect: 1s, response: \(responseTimeout), idle: 5s}
    routes:
    \(extraRoutes)
      - name: all
        match: {path_prefix: /}
        backend: up
        auth: none
    \(maxBody.map { "    max_body: \($0)" } ?? "")
    """)
    return dir
}

/// An upstream that answers every request on a connection with 200 and echoes the head.
func echoUpstream() throws -> ScriptedUpstream {
    try ScriptedUpstream { peer in
        while let head = peer.readHead() {
            var body: [UInt8] = []
            if let cl = headerValue(head, "Content-Length"), let n = Int(cl) {
                body = peer.read(count: n) ?? []
            } else if headerValue(head, "Transfer-Encoding") != nil {
                body = peer.readChunkedBody() ?? []
            }
            let text = head + "BODY:" + String(decoding: body, as: UTF8.self)
            peer.write(okResponse(text))
        }
    }
}

@Suite(.serialized) struct ProxyCoreTests {
    @Test func keepAliveServesManyRequestsOnOneConnection() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let c = try RawClient(port: port)
        for i in 0..<20 {
            let r = try c.request("GET /r/\(i) HTTP/1.1\r\nHost: example.test\r\n\r\n")
            #expect(r.status == 200)
            #expect(r.text.hasPrefix("GET /r/\(i) HTTP/1.1\r\n"))
        }
        // The pool reused its upstream connection(s) rather than opening one per request.
        #expect(up.connections < 5)
    }

    @Test func pipelinedRequestsAnswerInOrder() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let c = try RawClient(port: port)
        var raw = ""
        for i in 0..<10 { raw += "GET /p/\(i) HTTP/1.1\r\nHost: h\r\n\r\n" }
        try c.send(raw)
        for i in 0..<10 {
            let r = try c.readResponse()
            #expect(r.status == 200)
            #expect(r.text.hasPrefix("GET /p/\(i) "))
        }
    }

    @Test func forwardsHeadersTheWayAProxyMust() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let c = try RawClient(port: port)
        let r = try c.request("""
        GET /h?q=1 HTTP/1.1\r
        Host: api.example.test\r
        Connection: keep-alive, X-Drop-Me, X-Forwarded-For\r
        X-Drop-Me: secret\r
        Keep-Alive: timeout=5\r
        TE: trailers\r
        Upgrade: websocket\r
        X-Forwarded-For: 6.6.6.6\r
        X-Forwarded-Proto: https\r
        X-Tollgate-Consumer: mallory\r
        X-Request-Id: client-id-123\r
        traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r
        X-Keep: yes\r
        \r

        """)
        #expect(r.status == 200)
        let seen = r.text
        #expect(seen.hasPrefix("GET /h?q=1 HTTP/1.1\r\n"))
        #expect(headerValue(seen, "X-Drop-Me") == nil)
        #expect(headerValue(seen, "Keep-Alive") == nil)
        #expect(headerValue(seen, "TE") == nil)
        #expect(headerValue(seen, "Upgrade") == nil)
        #expect(headerValue(seen, "Connection") == nil)
        #expect(headerValue(seen, "X-Tollgate-Consumer") == nil)
        #expect(headerValue(seen, "X-Keep") == "yes")
        #expect(headerValue(seen, "Host") == "api.example.test")
        // Connection cannot remove what Tollgate adds; a spoofed XFF from an untrusted peer is replaced.
        #expect(headerValue(seen, "X-Forwarded-For") == "127.0.0.1")
        #expect(headerValue(seen, "X-Forwarded-Proto") == "http")
        #expect(headerValue(seen, "X-Forwarded-Host") == "api.example.test")
        #expect(headerValue(seen, "X-Request-Id") == "client-id-123")
        #expect(headerValue(seen, "traceparent") == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        #expect(r.header("X-Request-Id") == "client-id-123")
    }

    @Test func generatesARequestIdWhenTheClientSendsNone() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let a = try get(port, "/a")
        let b = try get(port, "/b", headers: ["X-Request-Id": "bad id with spaces"])
        let ida = try #require(headerValue(a.text, "X-Request-Id"))
        let idb = try #require(headerValue(b.text, "X-Request-Id"))
        #expect(ida.count == 16 && idb.count == 16 && ida != idb)
        #expect(a.header("X-Request-Id") == ida)
    }

    @Test func chunkedRequestBodyIsDecodedAndReEncoded() throws {
        let up = try ScriptedUpstream { peer in
            guard let head = peer.readHead() else { return }
            let body = peer.readChunkedBody() ?? []
            let te = headerValue(head, "Transfer-Encoding") ?? "none"
            peer.write(okResponse("te=\(te) len=\(body.count) body=\(String(decoding: body, as: UTF8.self))"))
        }
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let c = try RawClient(port: port)
        try c.send("POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n")
        usleep(50_000)
        try c.send("6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        let r = try c.readResponse()
        #expect(r.status == 200)
        #expect(r.text == "te=chunked len=11 body=hello world")
    }

    @Test func contentLengthBodyStreamsToTheUpstream() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let c = try RawClient(port: port)
        let payload = String(repeating: "0123456789", count: 20_000)   // 200 KB, larger than any buffer
        try c.send("POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: \(payload.utf8.count)\r\n\r\n")
        try c.send(payload)
        let r = try c.readResponse()
        #expect(r.status == 200)
        #expect(r.text.hasSuffix("BODY:" + payload), "body of \(r.body.count) bytes did not end with the payload")
    }

    @Test func chunkedResponseStreamsEventByEvent() throws {
        // The upstream sends one SSE event, then waits until the client has seen it.
        let seen = DispatchSemaphore(value: 0)
        let up = try ScriptedUpstream { peer in
            guard peer.readHead() != nil else { return }
            peer.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in 0..<3 {
                let ev = "message:\ndata:{\"event\":\"token\",\"data\":\"t\(i)\"}\n\n"
                peer.write(String(ev.utf8.count, radix: 16) + "\r\n" + ev + "\r\n")
                // Only continue once the client saw this event: proves nothing is buffered whole.
                if seen.wait(timeout: .now() + 5) == .timedOut { peer.write("0\r\n\r\n"); return }
            }
            peer.write("0\r\n\r\n")
        }
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let c = try RawClient(port: port)
        try c.send("GET /sse HTTP/1.1\r\nHost: h\r\n\r\n")
        let head = try c.readHead()
        #expect(head.status == 200)
        #expect(head.header("Transfer-Encoding") == "chunked")
        var got: [String] = []
        var text = ""
        while got.count < 3 {
            text = String(decoding: c.unreadBytes, as: UTF8.self)
            var progressed = false
            for i in got.count..<3 where text.contains("\"t\(i)\"") {
                got.append("t\(i)")
                seen.signal()
                progressed = true
            }
            if !progressed { try c.fill() }
        }
        #expect(got == ["t0", "t1", "t2"])
    }

    @Test func refusedUpstreamIs502() throws {
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: refusedPort()), port: port)
        defer { tg.stop() }
        let r = try get(port, "/x")
        #expect(r.status == 502)
        #expect(r.errorCode == "UPSTREAM_UNAVAILABLE")
        #expect(r.json.flatMap { ($0["error"] as? [String: Any])?["request_id"] as? String } == r.header("X-Request-Id"))
    }

    @Test func silentUpstreamIs504() throws {
        let up = try ScriptedUpstream { peer in
            _ = peer.readHead()
            usleep(3_000_000)   // never answers within the 500ms response deadline
        }
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port, responseTimeout: "500ms"), port: port)
        defer { tg.stop() }
        let r = try get(port, "/slow")
        #expect(r.status == 504)
        #expect(r.errorCode == "UPSTREAM_UNAVAILABLE")
    }

    @Test func upstreamResetMidResponseClosesTheClient() throws {
        let up = try ScriptedUpstream { peer in
            _ = peer.readHead()
            peer.write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            usleep(100_000)
            peer.reset()
        }
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let c = try RawClient(port: port)
        try c.send("GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        let head = try c.readHead()
        #expect(head.status == 200)
        #expect(c.isClosedByPeer())
    }

    @Test func staleKeepAliveConnectionIsRetriedOnceForIdempotentRequests() throws {
        // Each upstream connection answers one request, keeps the socket open without
        // saying so, then closes it: the next request finds a dead pooled connection.
        let up = try ScriptedUpstream { peer in
            guard peer.readHead() != nil else { return }
            peer.write(okResponse("one"))
            usleep(200_000)
        }
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port, threads: 1)
        defer { tg.stop() }
        let c = try RawClient(port: port)
        #expect(try c.request("GET /1 HTTP/1.1\r\nHost: h\r\n\r\n").status == 200)
        usleep(400_000)
        #expect(try c.request("GET /2 HTTP/1.1\r\nHost: h\r\n\r\n").status == 200)
    }

    @Test func rejectsSmugglingAttemptsAndCloses() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let attacks = [
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\nHost: h\n\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET http://other.test/ HTTP/1.1\r\nHost: h\r\n\r\n",
        ]
        for a in attacks {
            let c = try RawClient(port: port)
            let r = try c.request(a)
            #expect(r.status == 400, "\(a.debugDescription)")
            #expect(r.errorCode == "BAD_REQUEST")
            #expect(r.header("Connection") == "close")
            #expect(c.isClosedByPeer())
        }
        #expect(up.connections == 0)   // nothing reached the backend
    }

    @Test func limitsAnswerWithTheRightStatus() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port, maxBody: "1KiB"), port: port)
        defer { tg.stop() }
        let longURI = "/" + String(repeating: "a", count: 9000)
        #expect(try RawClient(port: port).request("GET \(longURI) HTTP/1.1\r\nHost: h\r\n\r\n").status == 414)
        let bigHeader = "X-Big: " + String(repeating: "b", count: 17000) + "\r\n"
        #expect(try RawClient(port: port).request("GET / HTTP/1.1\r\nHost: h\r\n\(bigHeader)\r\n").status == 431)
        #expect(try RawClient(port: port).request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n").status == 413)
    }

    @Test func expectContinueIsAnsweredBeforeTheBody() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let c = try RawClient(port: port)
        try c.send("POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        let interim = try c.readHead()
        #expect(interim.status == 100)
        try c.send("hello")
        let r = try c.readResponse()
        #expect(r.status == 200)
        #expect(headerValue(r.text, "Expect") == nil)
        #expect(r.text.hasSuffix("BODY:hello"))
    }

    @Test func http10ClientGetsAClosedDelimitedOrLengthResponse() throws {
        let up = try ScriptedUpstream { peer in
            while peer.readHead() != nil {
                peer.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            }
        }
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let c = try RawClient(port: port)
        try c.send("GET /old HTTP/1.0\r\n\r\n")
        let r = try c.readResponse()
        #expect(r.status == 200)
        #expect(r.text == "hello")
        #expect(r.header("Transfer-Encoding") == nil)
    }

    @Test func slowHeadIsCutOffAndIdleConnectionsDoNotStarveOthers() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port,
                                     extra: ["--header-timeout", "0.5", "--idle-timeout", "30"])
        defer { tg.stop() }
        // 1,000 idle connections and 50 half-sent heads (slowloris).
        var idle: [RawClient] = []
        for _ in 0..<1000 { idle.append(try RawClient(port: port)) }
        var slow: [RawClient] = []
        for _ in 0..<50 {
            let s = try RawClient(port: port)
            try s.send("GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ")
            slow.append(s)
        }
        // A normal client is still served.
        #expect(try get(port, "/normal").status == 200)
        // The slow heads are answered 408 and closed.
        let r = try slow[0].readResponse()
        #expect(r.status == 408)
        #expect(slow[0].isClosedByPeer())
        for c in idle { c.close() }
    }

    @Test func sigtermDrainsInFlightRequestsThenExitsZero() throws {
        let started = DispatchSemaphore(value: 0)
        let up = try ScriptedUpstream { peer in
            guard peer.readHead() != nil else { return }
            started.signal()
            usleep(700_000)
            peer.write(okResponse("finished"))
        }
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        let c = try RawClient(port: port)
        try c.send("GET /inflight HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(started.wait(timeout: .now() + 5) == .success)
        tg.signal(SIGTERM)
        let r: HTTPResponse
        do {
            r = try c.readResponse()
        } catch {
            Issue.record("no response after SIGTERM (\(error)); upstream connections: \(up.connections); proxy log: \(tg.log)")
            return
        }
        #expect(r.status == 200)
        #expect(r.text == "finished")
        #expect(r.header("Connection") == "close")
        #expect(tg.waitForExit() == 0)
        // No longer accepting.
        #expect((try? RawClient(port: port)) == nil)
    }
}
