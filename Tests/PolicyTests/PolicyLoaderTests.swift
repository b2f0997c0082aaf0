import Policy
import Foundation
import Testing
@testable import Policy

struct PolicyLoaderTests {
    func errors(_ yaml: String, file: String = "p.yaml") -> [String] {
        do {
            _ = try PolicyLoader.load(yaml: yaml, file: file)
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    func errors(files: [(name: String, yaml: String)]) -> [String] {
        do {
            _ = try PolicyLoader.load(files: files)
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    static let base = """
    version: 1
    backends:
      finance: {url: http://127.0.0.1:7001}
    plans:
      free:
        rate_limits:
          - {requests: 10, per: 1s}
    """

    @Test func fixtureCompiles() throws {
        let s = try Fixture.snapshot()
        #expect(s.routes.map(\.name) == ["finance-read", "finance-write", "chat", "any-key", "public-health"])
        #expect(s.backends.map(\.name) == ["finance", "flowise"])
        #expect(s.backends[1].port == 7003)  // `http://127.0.0.1:7003/`: a bare "/" is no base path
        #expect(s.backends[0].connectTimeout == .seconds(2))
        #expect(s.backends[0].responseTimeout == .seconds(30))
        #expect(s.backends[0].idleTimeout == .seconds(300))
        #expect(s.backends[0].maxIdle == 64)
        #expect(s.routes[2].maxBodyBytes == 1 << 20)
        #expect(s.routes[0].maxBodyBytes == 10 << 20)
        #expect(s.routes[4].isPublic)
        #expect(s.keys.count == 7)
        #expect(s.credentials.headerNamesLowercased == [Array("x-api-key".utf8)])
        #expect(s.credentials.queryParam == nil)
        #expect(!s.credentials.forwardsCredential)
        #expect(s.store == nil && s.storeFailMode == .closed && s.storeDeadline == .milliseconds(10))
        #expect(s.admin == nil && s.accessLog == nil)
        #expect(s.listeners == [ListenerSpec(host: "127.0.0.1", port: 8080, isIPv6: false)])
        #expect(s.plans[0].windows.map(\.name) == ["free-1s", "free-1d"])
        #expect(s.plans[0].windows[0].burst == 20)
        #expect(s.plans[0].windows[1].burst == 1000)
    }

    /// `store.redis` is read by the same parser the store client uses: a unix socket is
    /// accepted, `rediss://` (no TLS in hiredis 0.14) is refused at its line, and the
    /// password never appears in the message.
    @Test func storeURLsAreTheClientsOwn() throws {
        let unix = try PolicyLoader.load(yaml: Self.base + "\nstore:\n  redis: unix:///run/redis.sock?db=3\n", file: "p.yaml")
        #expect(unix.store?.url == RedisURL(endpoint: .unix(path: "/run/redis.sock"), database: 3))
        let tls = errors(Self.base + "\nstore:\n  redis: rediss://:s3cret-pass@10.0.0.5:6380/1\n")
        #expect(tls.count == 1)
        #expect(tls.first?.hasPrefix("p.yaml:9: store.redis:") == true, "\(tls)")
        #expect(tls.first?.contains("TLS") == true && tls.first?.contains("s3cret-pass") == false, "\(tls)")
        let bad = errors(Self.base + "\nstore:\n  redis: redis://:hunter2@host:notaport\n")
        #expect(bad.count == 1 && bad.first?.contains("hunter2") == false, "\(bad)")
    }

    @Test func routeLookupFirstMatchWinsAndMethodsFilter() throws {
        let s = try Fixture.snapshot()
        #expect(s.route(method: .get, path: "/api/finance/x")?.name == "finance-read")
        #expect(s.route(method: .head, path: "/api/finance/")?.name == "finance-read")
        #expect(s.route(method: .patch, path: "/api/finance/x")?.name == "finance-write")
        #expect(s.route(method: .options, path: "/api/finance/x") == nil)
        #expect(s.route(method: .get, path: "/api/finance") == nil)  // prefix is bytes: trailing slash matters
        #expect(s.route(method: .other, path: "/api/misc/")?.name == "any-key")
        #expect(s.route(method: .get, path: "/health")?.name == "public-health")
        #expect(s.route(method: .get, path: "/health/") == nil)  // exact
        #expect(s.route(method: .get, path: "/healthz") == nil)
        #expect(MethodSet(rawValue: 1 << 9) == .other)
    }

    @Test func fullExampleFromPolicyMDShape() throws {
        let yaml = """
        version: 1
        listen:
          - address: 127.0.0.1:8080
          - address: "[::1]:8443"
        admin:
          address: 127.0.0.1:9901
        access_log:
          path: "-"
        store:
          redis: redis://127.0.0.1:6379/2
          on_error: local
          deadline: 15ms
        clients:
          trusted_proxies: [10.0.0.0/8, "::1/128"]
          deny: [203.0.113.0/24]
          allow: []
        credentials:
          api_key:
            headers: [X-API-Key, X-Other-Key]
            query: api_key
            forward: true
        backends:
          flowise:
            url: http://flowise.internal:3000/
            timeouts: {connect: 500ms, response: 2m, idle: 1h}
            pool: {max_idle: 8}
        routes:
          - name: chat
            match: {methods: [POST], path_prefix: /api/v1/prediction/}
            backend: flowise
        """
        let s = try PolicyLoader.load(yaml: yaml, file: "full.yaml")
        #expect(s.listeners[1] == ListenerSpec(host: "::1", port: 8443, isIPv6: true))
        #expect(s.admin == AdminSpec(host: "127.0.0.1", port: 9901, isIPv6: false))
        #expect(s.accessLog == AccessLogSpec(target: .stdout))
        #expect(s.store?.url == RedisURL(endpoint: .tcp(host: "127.0.0.1", port: 6379), database: 2))
        #expect(s.store?.onError == .local && s.store?.deadline == .milliseconds(15))
        #expect(s.clients.trustedProxies.contains(IPAddress("::1")!))
        #expect(s.credentials.headerNamesLowercased.count == 2)
        #expect(s.credentials.queryParam == Array("api_key".utf8))
        #expect(s.credentials.forwardsCredential)
        let b = s.backends[0]
        #expect(b.host == "flowise.internal" && b.port == 3000 && !b.isIPv6)
        #expect(b.connectTimeout == .milliseconds(500) && b.responseTimeout == .seconds(120))
        #expect(b.idleTimeout == .seconds(3600) && b.maxIdle == 8)
    }

    // MARK: exact error texts

    @Test func unknownField() {
        #expect(errors(Self.base + "\nroutes:\n  - name: r\n    match: {path: /x}\n    backend: finance\n    scope: [a]\n")
            == ["p.yaml:12: routes[0].scope: unknown field"])
    }

    @Test func unknownFieldInsideMatch() {
        #expect(errors(Self.base + "\nroutes:\n  - name: r\n    match: {path: /x, prefix: /y}\n    backend: finance\n")
            == ["p.yaml:10: routes[0].match.prefix: unknown field"])
    }

    @Test func badDuration() {
        let yaml = """
        version: 1
        plans:
          free:
            rate_limits:
              - {requests: 10, per: 1s}
              - {requests: 10, per: 10x}
        """
        #expect(errors(yaml)
            == ["p.yaml:6: plans.free.rate_limits[1].per: invalid duration '10x' (expected a number followed by ms, s, m, h or d)"])
    }

    @Test func danglingBackend() {
        #expect(errors(Self.base + "\nroutes:\n  - name: r\n    match: {path: /x}\n    backend: nope\n")
            == ["p.yaml:11: routes[0].backend: unknown backend 'nope'"])
    }

    @Test func danglingPlan() {
        let yaml = Self.base + "\nkeys:\n  - id: k1\n    hash: \(Fixture.hash("a"))\n    consumer: c\n    plan: gold\n"
        #expect(errors(yaml) == ["p.yaml:12: keys[0].plan: unknown plan 'gold'"])
    }

    @Test func badCIDR() {
        let yaml = "version: 1\nclients:\n  deny: [10.0.0.0/8, 10.0.0.0/33]\n  allow: [10.1.0.0/8]\n"
        #expect(errors(yaml) == [
            "p.yaml:3: clients.deny[1]: invalid CIDR '10.0.0.0/33'",
            "p.yaml:4: clients.allow[0]: invalid CIDR '10.1.0.0/8' (address has bits set beyond the prefix)",
        ])
    }

    @Test func badHash() {
        let yaml = "version: 1\nkeys:\n  - id: k1\n    hash: sha256:ABCDEF\n    consumer: c\n"
        #expect(errors(yaml)
            == ["p.yaml:4: keys[0].hash: invalid hash (expected sha256: followed by 64 lowercase hex digits)"])
        let upper = "version: 1\nkeys:\n  - id: k1\n    hash: sha256:\(KeyHash.sha256("x").hex.uppercased())\n    consumer: c\n"
        #expect(errors(upper).count == 1)
    }

    @Test func duplicateBackendAcrossFiles() {
        let a = "version: 1\nbackends:\n  finance: {url: http://127.0.0.1:7001}\n"
        let b = "version: 1\nbackends:\n  other: {url: http://127.0.0.1:7009}\n  finance: {url: http://127.0.0.1:7002}\n"
        #expect(errors(files: [("a.yaml", a), ("b.yaml", b)])
            == ["b.yaml:4: backends.finance: backend 'finance' already defined at a.yaml:3"])
    }

    @Test func duplicatePlanAndScalarBlockAcrossFiles() {
        let a = "version: 1\nadmin:\n  address: 127.0.0.1:9901\nplans:\n  free: {rate_limits: [{requests: 1, per: 1s}]}\n"
        let b = "version: 1\nplans:\n  free: {rate_limits: [{requests: 2, per: 1s}]}\nadmin:\n  address: 127.0.0.1:9902\n"
        #expect(errors(files: [("a.yaml", a), ("b.yaml", b)]) == [
            "b.yaml:3: plans.free: plan 'free' already defined at a.yaml:5",
            "b.yaml:4: admin: already defined at a.yaml:2; 'admin' may appear in one file only",
        ])
    }

    @Test func duplicateKeyIDsHashesAndRouteNames() {
        let h = Fixture.hash("same")
        let yaml = Self.base + """

        routes:
          - {name: r, match: {path: /a}, backend: finance}
          - {name: r, match: {path: /b}, backend: finance}
        keys:
          - {id: k1, hash: \(h), consumer: c}
          - {id: k1, hash: \(Fixture.hash("other")), consumer: c}
          - {id: k2, hash: \(h), consumer: c}
        """
        #expect(errors(yaml) == [
            "p.yaml:10: routes[1].name: duplicate route name 'r' (first at p.yaml:9)",
            "p.yaml:13: keys[1].id: duplicate key id 'k1' (first at p.yaml:12)",
            "p.yaml:14: keys[2].hash: hash already declared for key 'k1' (p.yaml:12)",
        ])
    }

    @Test func collectsEveryErrorNotJustTheFirst() {
        let yaml = """
        version: 1
        listen:
          - address: 127.0.0.1
        store:
          on_error: maybe
          deadline: soon
        backends:
          b: {url: ftp://x}
        routes:
          - name: r
            match: {methods: [FETCH], path: /a/../b}
            backend: b
            auth: sometimes
            max_body: 10MB
        keys:
          - id: k
            hash: sha256:00
            consumer: c
            expires: tomorrow
            status: gone
        """
        #expect(errors(yaml) == [
            "p.yaml:3: listen[0].address: invalid address '127.0.0.1' (expected IPv4:port, [IPv6]:port or localhost:port)",
            "p.yaml:5: store.on_error: invalid value 'maybe' (expected closed, open or local)",
            "p.yaml:6: store.deadline: invalid duration 'soon' (expected a number followed by ms, s, m, h or d)",
            "p.yaml:8: backends.b.url: invalid URL 'ftp://x' (expected http://host:port)",
            "p.yaml:11: routes[0].match.methods[0]: unknown method 'FETCH'",
            "p.yaml:11: routes[0].match.path: '/a/../b' is not in normalised form (no '//', '.', '..', ';' or encoded unreserved characters)",
            "p.yaml:13: routes[0].auth: invalid value 'sometimes' (expected none or required)",
            "p.yaml:14: routes[0].max_body: invalid size '10MB' (expected bytes, or a number followed by KiB, MiB or GiB)",
            "p.yaml:17: keys[0].hash: invalid hash (expected sha256: followed by 64 lowercase hex digits)",
            "p.yaml:19: keys[0].expires: invalid timestamp 'tomorrow' (expected RFC 3339, e.g. 2027-01-01T00:00:00Z)",
            "p.yaml:20: keys[0].status: invalid value 'gone' (expected active, disabled or revoked)",
        ])
    }

    @Test func wrongTypesAndMissingFields() {
        let yaml = """
        version: 1
        backends:
          b: {url: http://127.0.0.1:1}
        plans:
          p:
            rate_limits:
              - {requests: ten, per: 1s}
              - {per: 1s}
        routes:
          - name: r
            match: {path: /a}
            backend: b
            require_https: yes please
          - match: {path: /b}
            backend: b
        keys: {id: k}
        """
        #expect(errors(yaml) == [
            "p.yaml:7: plans.p.rate_limits[0].requests: expected an integer, found 'ten'",
            "p.yaml:8: plans.p.rate_limits[1].requests: missing required field",
            "p.yaml:13: routes[0].require_https: expected true or false, found 'yes please'",
            "p.yaml:14: routes[1].name: missing required field",
            "p.yaml:16: keys: expected a list, found a mapping",
        ])
    }

    @Test func emptySectionsAreEmpty() throws {
        let s = try PolicyLoader.load(yaml: "version: 1\nkeys:\nroutes:\nbackends:\n", file: "e.yaml")
        #expect(s.keys.isEmpty && s.routes.isEmpty && s.backends.isEmpty)
    }

    @Test func versionIsRequired() {
        #expect(errors("backends: {}\n") == ["p.yaml:1: version: missing required field (expected version: 1)"])
        // A keys-only file may leave `version` out (the bench adapter writes such files).
        #expect(errors("keys: []\n") == [])
        #expect(errors("version: 2\n") == ["p.yaml:1: version: unsupported version 2 (expected 1)"])
    }

    @Test func unparseableYAMLReportsTheLine() {
        let e = errors("version: 1\nroutes:\n  - name: [unclosed\n  - x\n")
        #expect(e.count == 1)
        #expect(e.first?.hasPrefix("p.yaml:") == true)
        #expect(e.first?.contains("invalid YAML") == true)
        let dup = errors("version: 1\nadmin: {address: 127.0.0.1:1}\nadmin: {address: 127.0.0.1:2}\n")
        #expect(dup.count == 1 && dup[0].contains("duplicate key 'admin'"))
    }

    // MARK: merging

    @Test func mergeConcatenatesListsInFileOrderAndMergesMaps() throws {
        let a = """
        version: 1
        listen: [{address: 127.0.0.1:8080}]
        backends:
          finance: {url: http://127.0.0.1:7001}
        plans:
          free: {rate_limits: [{requests: 1, per: 1s}]}
        routes:
          - {name: a, match: {path_prefix: /a/}, backend: finance, scopes: [x]}
        """
        let b = """
        version: 1
        listen: [{address: 127.0.0.1:8081}]
        backends:
          accounting: {url: http://127.0.0.1:7002}
        routes:
          - {name: b, match: {path_prefix: /a/}, backend: accounting}
          - {name: c, match: {path_prefix: /c/}, backend: finance, scopes: [y]}
        keys:
          - {id: k, hash: \(Fixture.hash("k")), consumer: c, plan: free, scopes: [x, y]}
        """
        let s = try PolicyLoader.load(files: [("00-a.yaml", a), ("10-b.yaml", b)])
        #expect(s.listeners.map(\.port) == [8080, 8081])
        #expect(s.backends.map(\.name) == ["finance", "accounting"])
        #expect(s.routes.map(\.name) == ["a", "b", "c"])
        #expect(s.route(method: .get, path: "/a/z")?.name == "a")  // first file wins
        #expect(s.routes[1].backend == 1)
        let k = try #require(s.declaredKey(.sha256("k")))
        #expect(k.planIndex == 0)
        #expect(k.scopes.isSuperset(of: s.routes[0].scopes) && k.scopes.isSuperset(of: s.routes[2].scopes))
    }

    @Test func directoryLoadMergesYamlFilesInNameOrder() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-policy-\(UInt64.random(in: 0...UInt64.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func write(_ name: String, _ text: String) throws {
            try text.write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        try write("20-routes.yaml", "version: 1\nroutes:\n  - {name: second, match: {path: /x}, backend: finance}\n")
        try write("10-base.yaml", "version: 1\nbackends:\n  finance: {url: http://127.0.0.1:7001}\nroutes:\n  - {name: first, match: {path: /x}, backend: finance}\n")
        try write("notes.txt", "not yaml: [")
        try write(".hidden.yaml", "garbage: [")
        let s = try PolicyLoader.load(path: dir.path)
        #expect(s.routes.map(\.name) == ["first", "second"])
        #expect(PolicySnapshot.check(path: dir.path).isEmpty)

        try write("30-dup.yaml", "version: 1\nbackends:\n  finance: {url: http://127.0.0.1:7009}\n")
        #expect(PolicySnapshot.check(path: dir.path).map(\.description)
            == ["\(dir.path)/30-dup.yaml:3: backends.finance: backend 'finance' already defined at \(dir.path)/10-base.yaml:3"])
        #expect(PolicySnapshot.check(path: dir.path + "/missing").map(\.reason) == ["no such file or directory"])
    }

    /// The repository's example policies load (reads `policies/`, nothing else).
    @Test func examplePoliciesLoad() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("policies").path
        let s = try PolicyLoader.load(path: root)
        #expect(s.routes.map(\.name) == ["finance-read", "finance-write", "credits", "usage", "chat", "chatflows",
                                         "admin", "public-health"])
        let alice = try #require(s.declaredKey(.sha256("demo-key-alice")))
        #expect(alice.id == "key_demo_alice" && alice.consumer == "alice")
        let route = try #require(s.route(method: .get, path: "/api/finance/accounts"))
        #expect(Authorizer.authorize(record: alice, route: route, clientIP: IPAddress("127.0.0.1")!, isHTTPS: false,
                                     now: Fixture.now) == .allow)
    }
}
