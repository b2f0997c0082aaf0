import ReferenceBackends
import Dispatch
import Foundation
import Testing

struct ReferenceServerTests {
    private func withEchoServer(_ body: (ReferenceServer) throws -> Void) throws {
        let directory = TemporaryDirectory()
        let finance = try FinanceBackend(dataDirectory: directory.path)
        let server = try ReferenceServer(host: "127.0.0.1", port: 0, router: finance.router())
        defer {
            server.stop()
            finance.shutdown()
        }
        #expect(server.port != 0)
        try body(server)
    }

    @Test func servesSeveralRequestsOnOneKeptAliveConnection() throws {
        try withEchoServer { server in
            let client = try TestHTTPClient(port: server.port)
            for index in 0..<3 {
                let response = try client.request("GET", "/health?n=\(index)")
                #expect(response.status == 200)
                #expect(try response.json["status"]?.stringValue == "ok")
                #expect(response.header("Connection") == nil)
            }
        }
    }

    @Test func answersPipelinedRequestsInOrder() throws {
        try withEchoServer { server in
            let client = try TestHTTPClient(port: server.port)
            try client.send("GET /api/finance/echo?a=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /api/finance/echo?a=2 HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(try client.readResponse().json["query"]?.stringValue == "a=1")
            #expect(try client.readResponse().json["query"]?.stringValue == "a=2")
        }
    }

    @Test func decodesChunkedRequestBodies() throws {
        try withEchoServer { server in
            let client = try TestHTTPClient(port: server.port)
            let payload = Array("hello, chunked world".utf8)
            try client.send("POST /api/finance/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + "5\r\nhello\r\nf;ext=1\r\n, chunked world\r\n0\r\nX-Trailer: y\r\n\r\n")
            let echo = try client.readResponse().json
            #expect(echo["bodyLength"]?.intValue == payload.count)
            #expect(echo["bodySha256"]?.stringValue == ReferenceCrypto.hex(ReferenceCrypto.sha256(payload)))
        }
    }

    @Test func echoesContentLengthBodiesByHash() throws {
        try withEchoServer { server in
            let client = try TestHTTPClient(port: server.port)
            let payload = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            let echo = try client.request("PUT", "/api/finance/echo?x=y", headers: [("X-Custom", "1")], body: payload).json
            #expect(echo["method"]?.stringValue == "PUT")
            #expect(echo["bodyLength"]?.intValue == payload.count)
            #expect(echo["bodySha256"]?.stringValue == ReferenceCrypto.hex(ReferenceCrypto.sha256(payload)))
        }
    }

    @Test(arguments: [
        "GARBAGE\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "GET /x HTTP/1.1\r\nHost: x\r\n folded: yes\r\n\r\n",
        "GET /x HTTP/1.1\r\n\r\n",
        "GET /x HTTP/1.1\nHost: x\n\n\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ])
    func refusesMalformedRequestsWith400AndCloses(_ raw: String) throws {
        try withEchoServer { server in
            let client = try TestHTTPClient(port: server.port)
            try client.send(raw)
            let response = try client.readResponse()
            #expect(response.status == 400)
            #expect(response.header("Connection") == "close")
            #expect(client.isClosedByPeer())
        }
    }

    @Test func answersHeadWithoutBody() throws {
        try withEchoServer { server in
            let client = try TestHTTPClient(port: server.port)
            let head = try client.request("HEAD", "/health")
            #expect(head.status == 200)
            #expect(head.body.isEmpty)
            #expect(head.header("Content-Length") == "15")
            // The connection is still in sync afterwards.
            #expect(try client.request("GET", "/health").text == #"{"status":"ok"}"#)
        }
    }

    @Test func answers404And405() throws {
        try withEchoServer { server in
            let client = try TestHTTPClient(port: server.port)
            #expect(try client.request("GET", "/nope").status == 404)
            let wrongMethod = try client.request("PATCH", "/api/finance/accounts")
            #expect(wrongMethod.status == 405)
            #expect(wrongMethod.header("Allow")?.contains("POST") == true)
        }
    }

    @Test func closesWhenTheClientAsks() throws {
        try withEchoServer { server in
            let client = try TestHTTPClient(port: server.port)
            let response = try client.request("GET", "/health", headers: [("Connection", "close")])
            #expect(response.header("Connection") == "close")
            #expect(client.isClosedByPeer())
        }
    }

    @Test func streamsChunkedEventsOnePerChunk() throws {
        try withEchoServer { server in
            let client = try TestHTTPClient(port: server.port)
            try client.sendRequest("GET", "/api/finance/stream?events=3&interval_ms=1")
            let head = try client.readHead()
            #expect(head.status == 200)
            #expect(head.header("Content-Type") == "text/event-stream")
            #expect(head.header("Transfer-Encoding") == "chunked")
            var chunks: [String] = []
            while let chunk = try client.readChunk() { chunks.append(String(decoding: chunk, as: UTF8.self)) }
            #expect(chunks == (1...3).map { "id: \($0)\nevent: tick\ndata: {\"seq\":\($0),\"of\":3}\n\n" })
        }
    }

    @Test func stopClosesIdleConnectionsAndRefusesNewOnes() throws {
        let directory = TemporaryDirectory()
        let finance = try FinanceBackend(dataDirectory: directory.path)
        let server = try ReferenceServer(host: "127.0.0.1", port: 0, router: finance.router())
        let client = try TestHTTPClient(port: server.port)
        #expect(try client.request("GET", "/health").status == 200)
        server.stop()
        finance.shutdown()
        #expect(client.isClosedByPeer())
        #expect(throws: (any Error).self) { _ = try TestHTTPClient(port: server.port).request("GET", "/health") }
    }
}

/// Bounded concurrency: a fixed pool of workers, a bounded queue, 503 past it; idle
/// keep-alive connections hold no worker.
struct ReferenceServerBoundsTests {
    /// A router whose `/block` parks its worker until the test opens the gate.
    private final class Gate: Sendable {
        let entered = DispatchSemaphore(value: 0)
        let open = DispatchSemaphore(value: 0)

        func router() -> ReferenceRouter {
            var router = ReferenceRouter()
            router.add("GET", "/block") { [self] _ in
                entered.signal()
                _ = open.wait(timeout: .now() + 30)
                return .text(200, "released")
            }
            router.add("GET", "/health") { _ in .json(200, ["status": "ok"]) }
            return router
        }
    }

    @Test func pastTheQueueBoundAConnectionGets503AndIsClosed() throws {
        let gate = Gate()
        var limits = ReferenceServer.Limits()
        limits.workerThreads = 1
        limits.queueCapacity = 1
        let server = try ReferenceServer(host: "127.0.0.1", port: 0, router: gate.router(), limits: limits)
        defer { server.stop() }
        // A holds the only worker.
        let a = try TestHTTPClient(port: server.port)
        try a.sendRequest("GET", "/block")
        #expect(gate.entered.wait(timeout: .now() + 10) == .success)
        // B waits in the queue (accepted connections are queued in accept order)…
        let b = try TestHTTPClient(port: server.port)
        try b.sendRequest("GET", "/health")
        // …so C finds the queue full.
        let c = try TestHTTPClient(port: server.port)
        let refused = try c.readResponse()
        #expect(refused.status == 503)
        #expect(refused.header("Connection") == "close")
        #expect(refused.header("Retry-After") == "1")
        #expect(c.isClosedByPeer())
        #expect(server.refusedConnectionCount == 1)
        // Open the gate: A is answered, then B.
        gate.open.signal()
        #expect(try a.readResponse().text == "released")
        #expect(try b.readResponse().status == 200)
        #expect(server.workerThreadCount == 1)
    }

    @Test func idleKeptAliveConnectionsHoldNoWorker() throws {
        let directory = TemporaryDirectory()
        let finance = try FinanceBackend(dataDirectory: directory.path)
        var limits = ReferenceServer.Limits()
        limits.workerThreads = 2
        limits.queueCapacity = 64
        let server = try ReferenceServer(host: "127.0.0.1", port: 0, router: finance.router(), limits: limits)
        defer {
            server.stop()
            finance.shutdown()
        }
        // Forty kept-alive connections, each used twice, served by two threads.
        let clients = try (0..<40).map { _ in try TestHTTPClient(port: server.port) }
        for round in 0..<2 {
            for (index, client) in clients.enumerated() {
                let response = try client.request("GET", "/api/finance/echo?c=\(index)&r=\(round)")
                #expect(response.status == 200)
                #expect(try response.json["query"]?.stringValue == "c=\(index)&r=\(round)")
                #expect(response.header("Connection") == nil)
            }
        }
        #expect(server.workerThreadCount <= 2)
        #expect(server.refusedConnectionCount == 0)
        #expect(server.requestCount == 80)
    }

    @Test func bodiesPastTheBoundAre413() throws {
        let directory = TemporaryDirectory()
        let finance = try FinanceBackend(dataDirectory: directory.path)
        var limits = ReferenceServer.Limits()
        limits.maximumBodyBytes = 1024
        let server = try ReferenceServer(host: "127.0.0.1", port: 0, router: finance.router(), limits: limits)
        defer {
            server.stop()
            finance.shutdown()
        }
        let declared = try TestHTTPClient(port: server.port)
        try declared.send("POST /api/finance/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n")
        #expect(try declared.readResponse().status == 413)
        #expect(declared.isClosedByPeer())

        let chunked = try TestHTTPClient(port: server.port)
        let chunk = String(repeating: "a", count: 600)
        try chunked.send("POST /api/finance/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "258\r\n\(chunk)\r\n258\r\n\(chunk)\r\n0\r\n\r\n")
        #expect(try chunked.readResponse().status == 413)
        #expect(chunked.isClosedByPeer())

        // At the bound: fine, with Expect: 100-continue too.
        let fits = try TestHTTPClient(port: server.port)
        try fits.send("POST /api/finance/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\nExpect: 100-continue\r\n\r\n")
        try fits.send(Array(repeating: UInt8(ascii: "b"), count: 1024))
        #expect(try fits.readResponse().json["bodyLength"]?.intValue == 1024)
    }

    /// The strict codec's other refusals keep their own status.
    @Test(arguments: [
        ("GET /x HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        ("GET /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
        ("GET /x HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        ("GET /x HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        ("GET /x#frag HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GET /x HTTP/1.1\r\nHost: x\r\nX-Long: \(String(repeating: "v", count: 70_000))\r\n\r\n", 431),
    ])
    func theStrictParserDecides(_ raw: String, _ status: Int) throws {
        let directory = TemporaryDirectory()
        let finance = try FinanceBackend(dataDirectory: directory.path)
        let server = try ReferenceServer(host: "127.0.0.1", port: 0, router: finance.router())
        defer {
            server.stop()
            finance.shutdown()
        }
        let client = try TestHTTPClient(port: server.port)
        try client.send(raw)
        let response = try client.readResponse()
        #expect(response.status == status)
        #expect(response.header("Connection") == "close")
        #expect(client.isClosedByPeer())
    }
}

struct ReferencePartsTests {
    @Test func serializesJSONLikeJavaScript() {
        let value: JSONValue = ["a": "x/y \"q\" \n\u{01}", "b": [1, true, nil], "c": .decimal(Decimal(string: "12.50")!)]
        #expect(value.serialized() == #"{"a":"x/y \"q\" \n\u0001","b":[1,true,null],"c":12.5}"#)
    }

    @Test func tokensConcatenateBackToTheAnswer() {
        let text = "Reference answer:  two  spaces\tand tab "
        let tokens = FlowiseBackend.tokenize(text)
        #expect(tokens.joined() == text)
        #expect(tokens.first == "Reference")
        #expect(FlowiseBackend.tokenize("Hi there") == ["Hi", " there"])
    }

    @Test func verifiesHS256AndRefusesTampering() throws {
        let verifier = HS256Verifier(secret: "s3cret")
        let token = verifier.sign(["sub": "alice", "exp": 4_000_000_000])
        #expect(try verifier.verify(token, now: 1_700_000_000)["sub"]?.stringValue == "alice")
        #expect(throws: HS256Failure.badSignature) {
            try HS256Verifier(secret: "other").verify(token, now: 1_700_000_000)
        }
        #expect(throws: HS256Failure.expired) {
            try verifier.verify(verifier.sign(["sub": "alice", "exp": 1_000]), now: 1_700_000_000)
        }
        #expect(ReferenceCrypto.base64URLDecode("aGk") == Array("hi".utf8))
        #expect(ReferenceCrypto.base64URLDecode("a") == nil)
    }

    @Test func parsesListenAddresses() {
        #expect(ReferenceAddress(parsing: "127.0.0.1:7001") == ReferenceAddress(host: "127.0.0.1", port: 7001))
        #expect(ReferenceAddress(parsing: ":7002") == ReferenceAddress(host: "127.0.0.1", port: 7002))
        #expect(ReferenceAddress(parsing: "[::1]:7003") == ReferenceAddress(host: "::1", port: 7003))
        #expect(ReferenceAddress(parsing: "host:notaport") == nil)
    }
}
