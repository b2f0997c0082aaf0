import Foundation
import Glibc
import Policy
import Testing

/// The holes a review found, each through the real binary: every one of these failed on the
/// code before its fix.
@Suite(.serialized) struct ReviewRegressionTests {
    // MARK: a request that crashed the process

    @Test func hugeHostIsRefusedAndTheProcessLives() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        // ~12,000 bytes of Host: written twice upstream (Host, X-Forwarded-Host), it trapped.
        let host = String(repeating: "h", count: 12_000)
        let r = try RawClient(port: port).request("GET /health HTTP/1.1\r\nHost: \(host)\r\n\r\n")
        #expect(r.status == 431)
        #expect(r.errorCode == "BAD_REQUEST")
        // Just over the cap too; at the cap it is served.
        let over = try RawClient(port: port).request("GET /h HTTP/1.1\r\nHost: \(String(repeating: "a", count: 1025))\r\n\r\n")
        #expect(over.status == 431)
        let at = try RawClient(port: port).request("GET /h HTTP/1.1\r\nHost: \(String(repeating: "a", count: 1024))\r\n\r\n")
        #expect(at.status == 200)
        #expect(tg.process.isRunning)
        #expect(try RawClient(port: port).request("GET /after HTTP/1.1\r\nHost: h\r\n\r\n").status == 200)
    }

    /// A head as large as the parser allows, with a host at the cap, still fits (or is
    /// refused with 431): never a trap.
    @Test func largestHeadsNeverTrapTheWriter() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let host = String(repeating: "a", count: 1024)
        for fill in [14_000, 15_000, 15_300] {
            var head = "GET /x?\(String(repeating: "q", count: 2000)) HTTP/1.1\r\nHost: \(host)\r\n"
            var i = 0
            while head.utf8.count < fill { head += "X-Fill-\(i): \(String(repeating: "v", count: 90))\r\n"; i += 1 }
            let r = try RawClient(port: port).request(head + "\r\n")
            #expect(r.status == 200 || r.status == 431, "status \(r.status)")
        }
        #expect(tg.process.isRunning)
    }

    /// A backend that sends interim responses with many fields (the relay adds a byte per
    /// field): relayed or dropped, never a trap; the final response arrives.
    @Test func interimResponsesFromABackendNeverTrap() throws {
        let up = try ScriptedUpstream { peer in
            while peer.readHead() != nil {
                var interim = "HTTP/1.1 103 Early Hints\r\n"
                for i in 0..<99 { interim += "L\(i):\(String(repeating: "x", count: 150))\r\n" }
                interim += "\r\n"
                for _ in 0..<20 { peer.write(interim) }
                peer.write(okResponse("done"))
            }
        }
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let c = try RawClient(port: port)
        try c.send("GET /hints HTTP/1.1\r\nHost: h\r\n\r\n")
        var r = try c.readResponse()
        while r.status == 103 { r = try c.readResponse() }
        #expect(r.status == 200)
        #expect(r.text == "done")
        #expect(tg.process.isRunning)
    }

    // MARK: a public route that requires HTTPS

    @Test func publicRouteRequiringHTTPSRefusesPlainHTTP() throws {
        let log = HeadLog()
        let up = try recordingUpstream(log)
        defer { up.stop() }
        let port = freePort()
        let dir = publicPolicy(listen: port, upstreamPort: up.port, extraRoutes: """
          - name: public-secure
            match: {path_prefix: /pubsec/}
            backend: up
            auth: none
            require_https: true
        """)
        writeFile(dir + "/05-clients.yaml", "version: 1\nclients:\n  trusted_proxies: [127.0.0.1/32]\n")
        let tg = try TollgateProcess(policies: dir, port: port)
        defer { tg.stop() }
        expectDenial(try get(port, "/pubsec/a"), "HTTPS_REQUIRED", 403)
        #expect(log.count == 0)
        // Behind a trusted TLS terminator it is HTTPS.
        #expect(try get(port, "/pubsec/a", headers: ["X-Forwarded-Proto": "https"]).status == 200)
        #expect(log.count == 1)
    }

    // MARK: identity spoofing and credential leaks

    @Test func identityAliasesNeverReachTheBackend() throws {
        let gate = try PolicyGate(credentials: "  api_key:\n    headers: [X-API-Key]\n    query: api_key")
        defer { gate.stop() }
        let spoofed = [
            "X_Tollgate_Consumer": "root", "x_tollgate_scopes": "admin", "X-TOLLGATE-KEY-ID": "key_admin",
            "Forwarded": "for=10.0.0.1;proto=https", "X-Real-IP": "10.0.0.1", "X_Real_Ip": "10.0.0.2",
            "X-Original-URL": "/admin/", "X-Rewrite-URL": "/admin/", "X-User-Id": "root", "X_User_Id": "root",
            "X_Forwarded_For": "10.0.0.9", "X-Forwarded-Port": "443", "X-Forwarded-Prefix": "/admin",
            "X-HTTP-Method-Override": "DELETE", "True-Client-IP": "10.0.0.1", "X-Client-IP": "10.0.0.1",
            "X-Forwarded-Host": "evil.test", "X-Original-Host": "evil.test",
        ]
        for path in ["/open/x", "/pub/x"] {
            let r = try gate.get(path, key: PlainKey.alice, headers: spoofed)
            #expect(r.status == 200, "\(path): \(r.status) \(r.text)")
            let head = gate.log.heads.last ?? ""
            for name in spoofed.keys {
                let lines = head.split(separator: "\r\n").filter { $0.lowercased().hasPrefix(name.lowercased() + ":") }
                // Tollgate's own X-Forwarded-Host is the request's Host, not the client's;
                // its own key id line names the key that was checked (none on a public route).
                if name == "X-Forwarded-Host" {
                    #expect(lines.count == 1 && !lines[0].contains("evil"), "\(path): \(lines)")
                } else if name == "X-TOLLGATE-KEY-ID" {
                    #expect(lines == (path == "/open/x" ? ["X-Tollgate-Key-Id: key_alice"] : []), "\(path): \(lines)")
                } else {
                    #expect(lines.isEmpty, "\(path): \(name) reached the backend: \(lines)")
                }
            }
            if path == "/open/x" {
                #expect(headerValue(head, "X-Tollgate-Consumer") == "alice")
            } else {
                #expect(headerValue(head, "X-Tollgate-Consumer") == nil)
            }
        }
    }

    @Test func credentialsNeverReachTheBackend() throws {
        let gate = try PolicyGate(credentials: "  api_key:\n    headers: [X-API-Key]\n    query: api_key")
        defer { gate.stop() }
        // A Bearer key to a public route (no credential is read there).
        var r = try gate.get("/pub/a", headers: ["Authorization": "Bearer \(PlainKey.alice)"])
        #expect(r.status == 200)
        #expect(!(gate.log.heads.last ?? "").contains(PlainKey.alice))
        // A key in the query of a public route.
        r = try gate.get("/pub/a?x=1&api_key=\(PlainKey.alice)&y=2")
        #expect(r.status == 200)
        #expect(gate.log.targets.last == "/pub/a?x=1&y=2")
        // Beside X-API-Key, and in a second Authorization line: every credential goes.
        let c = try RawClient(port: gate.port)
        r = try c.request("GET /open/b?api_key=\(PlainKey.admin) HTTP/1.1\r\nHost: h\r\nX-API-Key: \(PlainKey.alice)\r\n"
                          + "Authorization: Bearer \(PlainKey.admin)\r\nAuthorization: bearer  \(PlainKey.revoked) x\r\n"
                          + "Authorization: Basic dXNlcjpwYXNz\r\n\r\n")
        #expect(r.status == 200)
        let head = gate.log.heads.last ?? ""
        for k in [PlainKey.alice, PlainKey.admin, PlainKey.revoked] { #expect(!head.contains(k), "\(k) leaked: \(head)") }
        // Not a credential Tollgate reads: passed through.
        #expect(head.contains("Authorization: Basic dXNlcjpwYXNz"))
        #expect(gate.log.targets.last == "/open/b")
    }

    // MARK: X-Forwarded-For / -Proto from a trusted proxy

    @Test func forwardedForEntriesWithPortsOrGarbage() throws {
        let gate = try PolicyGate(clients: "  trusted_proxies: [127.0.0.1/32]\n  allow: [127.0.0.0/8, 198.51.100.0/24]")
        defer { gate.stop() }
        // A port or brackets are stripped: the client is 198.51.100.7, admitted.
        var r = try gate.get("/pub/a", headers: ["X-Forwarded-For": "198.51.100.7:4711"])
        #expect(r.status == 200)
        #expect(headerValue(gate.log.heads.last ?? "", "X-Forwarded-For") == "198.51.100.7:4711, 127.0.0.1")
        // Not an address: the client is unknown, which no allow list admits (it used to be
        // the trusted proxy itself, 127.0.0.1, which is allowed).
        for garbage in ["unknown", "_hidden", "1.2.3.4, garbage", "[::1"] {
            r = try gate.get("/pub/a", headers: ["X-Forwarded-For": garbage])
            expectDenial(r, "IP_DENIED", 403)
        }
        // An address outside the allow list is refused as before.
        expectDenial(try gate.get("/pub/a", headers: ["X-Forwarded-For": "[2001:db8::1]:443"]), "IP_DENIED", 403)
    }

    @Test func forwardedProtoLastValueWins() throws {
        let gate = try PolicyGate(clients: "  trusted_proxies: [127.0.0.1/32]")
        defer { gate.stop() }
        func secure(_ lines: [String]) throws -> HTTPResponse {
            let c = try RawClient(port: gate.port)
            var head = "GET /secure/x HTTP/1.1\r\nHost: h\r\nX-API-Key: \(PlainKey.alice)\r\n"
            for l in lines { head += "X-Forwarded-Proto: \(l)\r\n" }
            return try c.request(head + "\r\n")
        }
        expectDenial(try secure(["https", "http"]), "HTTPS_REQUIRED", 403)
        expectDenial(try secure(["https, http"]), "HTTPS_REQUIRED", 403)
        expectDenial(try secure(["httpsx"]), "HTTPS_REQUIRED", 403)
        #expect(try secure(["http", "HTTPS"]).status == 200)
        #expect(try secure(["http, https "]).status == 200)
        // What the backend is told is what was decided.
        #expect(headerValue(gate.log.heads.last ?? "", "X-Forwarded-Proto") == "https")
        _ = try gate.get("/open/x", key: PlainKey.alice, headers: ["X-Forwarded-Proto": "https, http"])
        #expect(headerValue(gate.log.heads.last ?? "", "X-Forwarded-Proto") == "http")
    }

    /// A Connection header naming more fields than are tracked: refused, so a field named
    /// past the limit can never be forwarded as if it were end-to-end.
    @Test func connectionNamingTooManyFieldsIsRefused() throws {
        let log = HeadLog()
        let up = try recordingUpstream(log)
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let eight = try RawClient(port: port).request(
            "GET /a HTTP/1.1\r\nHost: h\r\nConnection: a, b, c, d, e, f, g, h\r\nh: hop\r\nz: kept\r\n\r\n")
        #expect(eight.status == 200)
        #expect(headerValue(log.heads.last ?? "", "h") == nil && headerValue(log.heads.last ?? "", "z") == "kept")
        let nine = try RawClient(port: port).request(
            "GET /b HTTP/1.1\r\nHost: h\r\nConnection: a, b, c, d, e, f, g, h, i\r\ni: hop\r\n\r\n")
        #expect(nine.status == 400)
        #expect(log.count == 1)
    }

    // MARK: RFC 9112 §2.2

    @Test func emptyLinesBeforeARequestLineAreIgnored() throws {
        let up = try echoUpstream()
        defer { up.stop() }
        let port = freePort()
        let tg = try TollgateProcess(policies: publicPolicy(listen: port, upstreamPort: up.port), port: port)
        defer { tg.stop() }
        let c = try RawClient(port: port)
        // An older client's CRLF after a POST body, then the next request.
        try c.send("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(try c.readResponse().status == 200)
        let second = try c.readResponse()
        #expect(second.status == 200)
        #expect(second.text.hasPrefix("GET /b "))
        // Split between the CR and the LF, and several of them.
        try c.send("\r")
        try c.send("\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(try c.readResponse().text.hasPrefix("GET /c "))
        // A lone LF or a flood of empty lines is still refused.
        #expect(try RawClient(port: port).request("\nGET /d HTTP/1.1\r\nHost: h\r\n\r\n").status == 400)
        #expect(try RawClient(port: port).request(String(repeating: "\r\n", count: 20) + "GET /e HTTP/1.1\r\nHost: h\r\n\r\n").status == 400)
    }
}
