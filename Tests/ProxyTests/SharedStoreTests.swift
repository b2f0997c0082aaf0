import Backends
import Foundation
import Glibc
import Policy
import Runtime
import Testing

/// Redis mode end to end: several real `tollgate` processes (each its own policy directory,
/// the same policy but the port) on one real `redis-server`, a scripted upstream behind them.
@Suite(.serialized) struct SharedStoreTests {
    // MARK: 1. one limit across every instance

    @Test func concurrentClientsShareOneLimitAcrossInstances() throws {
        let fleet = try RedisFleet(count: 3)
        defer { fleet.stop() }
        // plan shared: {requests: 50, per: 1h, burst: 50}; minted in Redis through the CLI.
        let minted = try fleet.mint(consumer: "burst", plan: "shared", id: "key_burst")
        let key = minted.key

        let clients = 200
        let results = Tally()
        let gate = DispatchGroup()
        gate.enter()
        let done = DispatchGroup()
        for i in 0..<clients {
            let port = fleet.ports[i % fleet.ports.count]
            done.enter()
            let t = Thread {
                gate.wait()
                results.add(i, Result { try timedGet(port, "/api/burst/\(i)", key: key) })
                done.leave()
            }
            t.stackSize = 256 * 1024
            t.start()
        }
        usleep(50_000)   // let every thread reach the gate
        gate.leave()
        #expect(done.wait(timeout: .now() + 30) == .success, "clients did not finish")

        let indexed = results.all
        let all = indexed.map(\.1)
        let errors = all.compactMap { if case .failure(let e) = $0 { "\(e)" } else { nil } }
        let responses = all.compactMap { try? $0.get().response }
        let admitted = responses.filter { $0.status == 200 }.count
        let limited = responses.filter { $0.status == 429 && $0.errorCode == "RATE_LIMITED" }.count
        let perInstance = fleet.ports.map { p in
            indexed.filter { fleet.ports[$0.0 % fleet.ports.count] == p }
                .filter { (try? $0.1.get().response.status) == 200 }.count
        }
        print("shared limit: \(admitted) admitted (per instance \(perInstance)), \(limited) limited, "
              + "\(errors.count) errors; upstream saw \(fleet.heads.count)")
        #expect(errors.isEmpty, "\(errors.prefix(3))")
        #expect(admitted == 50, "admitted \(admitted) of \(clients) with a limit of 50")
        #expect(limited == clients - 50, "statuses: \(Dictionary(grouping: responses, by: \.status).mapValues(\.count))")
        #expect(fleet.heads.count == 50, "the upstream must see exactly the admitted requests")
        // The admitted ones were decided by Redis, not by a fallback.
        #expect(responses.allSatisfy { $0.header("X-Tollgate-Degraded") == nil })
        #expect(fleet.processes.allSatisfy { $0.process.isRunning })
    }

    // MARK: 2. revocation reaches every instance

    @Test func revocationThroughOneInstancePropagatesToTheOthers() throws {
        let fleet = try RedisFleet(count: 3)
        defer { fleet.stop() }
        let minted = try fleet.mint(consumer: "rita", plan: nil, id: "key_rita")
        // Works everywhere first: a miss goes to Redis, later requests hit the loop caches.
        // Several fresh connections per instance so that every loop (SO_REUSEPORT) caches it.
        for port in fleet.ports {
            for i in 0..<8 {
                let r = try get(port, "/api/rita/\(i)", headers: ["X-API-Key": minted.key])
                #expect(r.status == 200, "before revoking, :\(port): \(r.status) \(r.text)")
            }
        }

        // Disable and enable through instance 1's CLI: both directions of the invalidation.
        try fleet.cli(["keys", "disable", "key_rita", "--policies", fleet.dirs[1]])
        for port in fleet.ports {
            let took = try fleet.untilEveryLoop(port, key: minted.key) { $0.status == 403 && $0.errorCode == "DISABLED" }
            #expect(took != nil, "DISABLED never reached :\(port)")
        }
        try fleet.cli(["keys", "enable", "key_rita", "--policies", fleet.dirs[1]])
        for port in fleet.ports {
            let took = try fleet.untilEveryLoop(port, key: minted.key) { $0.status == 200 }
            #expect(took != nil, "enabling never reached :\(port)")
        }

        // Revoke through instance 0's CLI; the other two (and 0 itself) refuse it within 1 s.
        let cliStart = monotonicNanos()
        try fleet.cli(["keys", "revoke", "key_rita", "--policies", fleet.dirs[0]])
        let revokedAt = monotonicNanos()
        var seconds: [Double] = []
        for port in fleet.ports {
            let took = try fleet.untilEveryLoop(port, key: minted.key, since: revokedAt) {
                $0.status == 401 && $0.errorCode == "REVOKED"
            }
            #expect(took != nil, "REVOKED never reached :\(port)")
            if let took {
                seconds.append(took)
                // Propagation time is the requirement: the one timing assertion of this suite.
                #expect(took < 1.0, "revocation took \(took) s to reach :\(port)")
            }
        }
        print(String(format: "revocation: CLI %.0f ms; refused by instances 0,1,2 after %@ s",
                     Double(revokedAt - cliStart) / 1e6, seconds.map { String(format: "%.3f", $0) }.joined(separator: ",")))
        // And no loop anywhere still serves it.
        for port in fleet.ports {
            for i in 0..<10 {
                expectDenial(try get(port, "/api/rita/after\(i)", headers: ["X-API-Key": minted.key]), "REVOKED", 401)
            }
        }
        // A revoked key cannot be enabled again.
        let (status, out) = try runTollgate(["keys", "enable", "key_rita", "--policies", fleet.dirs[2]])
        #expect(status != 0, "enable after revoke: \(out)")
        expectDenial(try get(fleet.ports[2], "/api/rita/x", headers: ["X-API-Key": minted.key]), "REVOKED", 401)
    }

    // MARK: 3 + 4. Redis killed mid-load, then restarted

    @Test func redisOutageFollowsEachModeAndRecovers() throws {
        // One instance per mode, deadline 20 ms. plan outage: {requests: 90, per: 1h, burst: 90}.
        let fleet = try RedisFleet(modes: ["closed", "open", "local"], deadline: "20ms", keys: OutageKeys.yaml)
        defer { fleet.stop() }
        let closed = fleet.ports[0], open = fleet.ports[1], local = fleet.ports[2]
        let latencies = LatencyLog()
        func timed(_ port: UInt16, _ path: String, _ key: String) throws -> HTTPResponse {
            let t = try timedGet(port, path, key: key)
            latencies.add(t.nanos)
            return t.response
        }

        // The heartbeat counts processes (3), not loops (6): `local` divides by it.
        let announced = try poll(timeout: 5) { try fleet.redis.client().run(["ZCARD", RedisKeys.instances]).text == "3" }
        let members = try fleet.redis.client().run(["ZRANGE", RedisKeys.instances, "0", "-1"])
        #expect(announced != nil, "tg:instances: \(members)")
        // Every loop announces itself each second: let all of them see all three processes.
        usleep(1_500_000)
        // Every loop's invalidation subscription is confirmed (a confirmation drops that loop's
        // cache, so warming before it would be undone): 3 processes × 2 loops.
        let subscribed = try poll(timeout: 5) {
            if case .array(let r) = try fleet.redis.client().run(["PUBSUB", "NUMSUB", RedisKeys.invalidationChannel]),
               r.count == 2, r[1].text == "6" { return true }
            return false
        }
        #expect(subscribed != nil, "not every loop subscribed to \(RedisKeys.invalidationChannel)")
        // Warm: the planned and the plan-less key are cached on every loop of every instance
        // (25 connections per key and port, 75 of the planned key's 90: the kernel spreads them
        // over both loops).
        // (A 503 here can only be a 20 ms deadline missed on a loaded machine: tried again.)
        for port in fleet.ports {
            for i in 0..<25 {
                for key in [OutageKeys.warm, OutageKeys.free] {
                    var r = try timed(port, "/api/warm/\(i)", key)
                    for _ in 0..<5 where r.status == 503 { r = try timed(port, "/api/warm/\(i)", key) }
                    #expect(r.status == 200 && r.header("X-Tollgate-Degraded") == nil, ":\(port) warm-up: \(r.status) \(r.headers)")
                }
            }
        }
        // Health lines so far (none, unless a loaded machine already tripped a breaker).
        func count(_ text: String, _ tg: TollgateProcess) -> Int { tg.log.components(separatedBy: text).count - 1 }
        let downBefore = fleet.processes.map { count("store unavailable", $0) }
        let upBefore = fleet.processes.map { count("store recovered", $0) }
        #expect(downBefore == [0, 0, 0], "before the kill: \(fleet.processes.map(\.log))")

        // Load on every instance (its own planned key), through the kill and the restart.
        let load = LoadRun(ports: fleet.ports, key: OutageKeys.load, latencies: latencies)
        defer { load.stop() }
        usleep(300_000)
        let killedAt = monotonicNanos()
        fleet.redis.kill9()
        for (i, tg) in fleet.processes.enumerated() {
            let seen = poll(timeout: 5) { tg.log.contains("store unavailable") }
            #expect(seen != nil, "instance \(i) never logged the outage: \(tg.log)")
        }
        print(String(format: "outage: every instance logged it %.0f ms after the kill", Double(monotonicNanos() - killedAt) / 1e6))

        // closed: the cached key's limited route is refused 503, Retry-After.
        for i in 0..<20 {
            let r = try timed(closed, "/api/c/\(i)", OutageKeys.warm)
            expectStoreUnavailable(r)
        }
        // open: admitted, marked.
        for i in 0..<20 {
            let r = try timed(open, "/api/o/\(i)", OutageKeys.warm)
            #expect(r.status == 200, "open: \(r.status) \(r.text)")
            #expect(r.header("X-Tollgate-Degraded") == "store-unavailable; limits=open", "\(r.headers)")
        }
        // local: the in-process limiter with the window divided among the 3 live instances:
        // burst 90 / 3 = 30 admitted (a fresh local cell: Redis decided everything before), then 429.
        var localAdmitted = 0
        var localStatuses: [Int] = []
        for i in 0..<45 {
            let r = try timed(local, "/api/l/\(i)", OutageKeys.warm)
            localStatuses.append(r.status)
            if r.status == 200 {
                localAdmitted += 1
                #expect(r.header("X-Tollgate-Degraded") == "store-unavailable; limits=local", "\(r.headers)")
            } else {
                expectDenial(r, "RATE_LIMITED", 429)
            }
        }
        print("outage, local mode: \(localAdmitted) admitted before 429 (plan burst 90, 3 instances)")
        #expect(localAdmitted == 30, "local mode admitted \(localAdmitted), statuses \(localStatuses)")
        #expect(localStatuses.prefix(localAdmitted).allSatisfy { $0 == 200 } && localStatuses.dropFirst(localAdmitted).allSatisfy { $0 == 429 },
                "200s must come first, then only 429s: \(localStatuses)")

        var freeHeaders: [String] = []
        for port in fleet.ports {
            // An uncached key (declared, never seen) cannot be verified: 503 in every mode.
            for i in 0..<5 { expectStoreUnavailable(try timed(port, "/api/cold/\(i)", OutageKeys.cold)) }
            // A cached key whose plan has no limits needs no store decision: served in every mode.
            for i in 0..<5 {
                let r = try timed(port, "/api/free/\(i)", OutageKeys.free)
                #expect(r.status == 200, ":\(port) cached plan-less key: \(r.status) \(r.text)")
                freeHeaders.append(r.header("X-Tollgate-Degraded") ?? "none")
            }
        }
        print("outage, cached plan-less key: X-Tollgate-Degraded = \(Set(freeHeaders))")

        // No hang, no crash, one log line per instance however many requests failed over.
        let outageLoad = load.snapshot()
        print("outage: load \(outageLoad.summary); all requests so far: \(latencies.summary)")
        #expect(latencies.maxMillis < 1000, "a request took \(latencies.maxMillis) ms during the outage")
        #expect(outageLoad.errors.isEmpty, "load errors: \(outageLoad.errors.prefix(3))")
        #expect(outageLoad.requests > 50, "the load did not run: \(outageLoad.summary)")
        for (i, tg) in fleet.processes.enumerated() {
            #expect(tg.process.isRunning, "instance \(i) died: \(tg.log)")
            // One line for the transition, however many requests failed over.
            #expect(count("store unavailable", tg) == downBefore[i] + 1, "instance \(i) log:\n\(tg.log)")
        }

        // 4. Redis back on the same port (empty: no persistence) → normal service again.
        // Keep it down ≥ 2.5 s (load still running) so the reconnect back-off reaches its 1 s cap.
        let down = Double(monotonicNanos() - killedAt) / 1e9
        if down < 2.5 { usleep(UInt32((2.5 - down) * 1e6)) }
        try fleet.redis.restart()
        let answeredAt = monotonicNanos()
        var recovery: [Double] = []
        for port in fleet.ports {
            let took = try fleet.untilEveryLoop(port, key: OutageKeys.warm, timeout: 5, since: answeredAt) {
                $0.status == 200 && $0.header("X-Tollgate-Degraded") == nil
            }
            #expect(took != nil, ":\(port) never recovered")
            recovery.append(took ?? -1)
        }
        print("recovery after Redis answered: " + recovery.map { String(format: "%.3f s", $0) }.joined(separator: ", "))
        // The limits live in Redis again (the restarted server holds the key's TAT) and the
        // uncached key is now looked up (Redis, then the policy).
        let warmHash = KeyHash.sha256(OutageKeys.warm)
        #expect(try fleet.redis.client().run(["EXISTS", RedisKeys.limiter(warmHash, window: 0)]).text == "1")
        for port in fleet.ports {
            let r = try timed(port, "/api/cold/after", OutageKeys.cold)
            #expect(r.status == 200 && r.header("X-Tollgate-Degraded") == nil, ":\(port) \(r.status) \(r.headers)")
        }
        for (i, tg) in fleet.processes.enumerated() {
            let recovered = poll(timeout: 5) { tg.log.contains("store recovered") }
            #expect(recovered != nil, "instance \(i) never logged the recovery: \(tg.log)")
        }
        load.stop()
        let total = load.snapshot()
        print("whole run: load \(total.summary); all requests: \(latencies.summary)")
        #expect(total.errors.isEmpty, "load errors: \(total.errors.prefix(3))")
        #expect(latencies.maxMillis < 1000, "a request took \(latencies.maxMillis) ms")
        for (i, tg) in fleet.processes.enumerated() {
            #expect(tg.process.isRunning, "instance \(i) died: \(tg.log)")
            #expect(count("store unavailable", tg) == downBefore[i] + 1, "instance \(i) log:\n\(tg.log)")
            #expect(count("store recovered", tg) == upBefore[i] + 1, "instance \(i) log:\n\(tg.log)")
        }
    }

    @Test func instanceStartedBeforeRedisServesOnceRedisAnswers() throws {
        // The policy names a Redis that is not there yet.
        let redisPort = Int(freePort())
        let upstream = try ScriptedUpstream { peer in
            while peer.readHead() != nil { peer.write(okResponse("ok")) }
        }
        defer { upstream.stop() }
        let dir = makeTempDir("tgredis")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = freePort()
        writeFile(dir + "/00-gateway.yaml", RedisFleet.policy(port: port, redis: "redis://127.0.0.1:\(redisPort)/0", mode: "open",
                                                           deadline: "20ms", upstream: upstream.port))
        writeFile(dir + "/10-keys.yaml", OutageKeys.yaml)
        let tg = try TollgateProcess(policies: dir, port: port, threads: 2)
        defer { tg.stop() }
        let latencies = LatencyLog()
        // No record can be verified: refused 503 (even in `open` mode, even a declared key), at once.
        for i in 0..<20 {
            let t = try timedGet(port, "/api/early/\(i)", key: OutageKeys.warm)
            latencies.add(t.nanos)
            expectStoreUnavailable(t.response)
        }
        usleep(1_500_000)   // long enough for the reconnect back-off to grow
        print("started without Redis: \(latencies.summary); log: \(tg.log.split(separator: "\n").filter { $0.contains("store") })")
        #expect(latencies.maxMillis < 1000)
        // An operator must see why every request is refused: logged once, not per request.
        #expect(poll(timeout: 5) { tg.log.contains("store unavailable") } != nil, "log:\n\(tg.log)")
        #expect(tg.log.components(separatedBy: "store unavailable").count - 1 == 1, "log:\n\(tg.log)")

        let redis = try RedisServer(port: redisPort)
        defer { redis.stop() }
        let answeredAt = monotonicNanos()
        let took = try poll(timeout: 5) { () throws -> Bool in
            let r = try get(port, "/api/late", headers: ["X-API-Key": OutageKeys.warm])
            return r.status == 200 && r.header("X-Tollgate-Degraded") == nil
        }
        #expect(took != nil, "never served once Redis answered: \(tg.log)")
        print(String(format: "started without Redis: served %.3f s after Redis answered", Double(monotonicNanos() - answeredAt) / 1e9))
        for port in [port] {
            let every = try RedisFleet.untilEveryLoopAnswers(port, key: OutageKeys.warm, timeout: 3) {
                $0.status == 200 && $0.header("X-Tollgate-Degraded") == nil
            }
            #expect(every != nil)
        }
        #expect(tg.process.isRunning)
        let recovered = poll(timeout: 5) { tg.log.contains("store recovered") }
        #expect(recovered != nil, "log:\n\(tg.log)")
        #expect(tg.log.components(separatedBy: "store unavailable").count - 1 == 1, "log:\n\(tg.log)")
    }

    // MARK: 5. the negative cache

    @Test func unknownKeysAreRememberedNotLookedUpEachTime() throws {
        let fleet = try RedisFleet(count: 3)
        defer { fleet.stop() }
        let keys = (0..<50).map { _ in "unknown-" + UUID().uuidString }
        let before = try fleet.redis.commandCalls("get")
        // 1500 requests, round-robin over the instances and over 4 keep-alive connections per
        // instance (so both loops of each instance take part).
        var connections: [RawClient] = []
        for port in fleet.ports { for _ in 0..<4 { connections.append(try RawClient(port: port)) } }
        defer { connections.forEach { $0.close() } }
        var statuses: [String: Int] = [:]
        let started = monotonicNanos()
        for i in 0..<1500 {
            let c = connections[i % connections.count]
            let r = try c.request("GET /api/n/\(i) HTTP/1.1\r\nHost: h\r\nX-API-Key: \(keys[i % keys.count])\r\n\r\n")
            statuses["\(r.status) \(r.errorCode ?? "")", default: 0] += 1
        }
        let seconds = Double(monotonicNanos() - started) / 1e9
        let gets = try fleet.redis.commandCalls("get") - before
        print(String(format: "negative cache: 1500 requests, 50 keys, %.2f s: %d Redis GETs; statuses %@", seconds, gets, "\(statuses)"))
        #expect(statuses == ["401 INVALID_KEY": 1500])
        // Each loop asks Redis at most once per unknown key while its negative entry lives (2 s):
        // ≤ 50 keys × 3 instances × 2 loops = 300 per 2 s of run time (the run takes ~0.3 s; a
        // slower machine gets one more allowance per started 2 s), against 1500 without the cache.
        let bound = 50 * 3 * 2 * (Int(seconds / 2) + 1)
        #expect(gets <= bound, "\(gets) GETs for 1500 requests with 50 distinct keys (bound \(bound))")
        #expect(gets >= 50, "\(gets) GETs: the unknown keys were never looked up in Redis?")
    }

    // MARK: 5b. refusals are remembered for as long as they hold

    /// Limiter decisions Redis made (EVAL/EVALSHA minus the heartbeats, one ZADD each), from
    /// one INFO reply (a heartbeat between two reads would skew the difference).
    private func limiterCalls(_ fleet: RedisFleet) throws -> Int {
        let c = try fleet.redis.commandCalls(["evalsha", "eval", "zadd"])
        return c[0] + c[1] - c[2]
    }

    @Test func aKeyPastItsLimitIsRefusedWithoutAskingRedisAgain() throws {
        let fleet = try RedisFleet(count: 1)
        defer { fleet.stop() }
        let minted = try fleet.mint(consumer: "hammer", plan: "tight", id: "key_hammer")
        let c = try RawClient(port: fleet.ports[0])
        defer { c.close() }
        let before = try limiterCalls(fleet)
        var answers: [HTTPResponse] = []
        for i in 0..<33 {
            answers.append(try c.request("GET /api/h/\(i) HTTP/1.1\r\nHost: h\r\nX-API-Key: \(minted.key)\r\n\r\n"))
        }
        let asked = try limiterCalls(fleet) - before
        #expect(answers.prefix(3).allSatisfy { $0.status == 200 })
        let refused = answers.dropFirst(3)
        #expect(refused.allSatisfy { $0.status == 429 && $0.errorCode == "RATE_LIMITED" },
                "\(refused.map(\.status))")
        // T = 1200 s: every refusal, from Redis or from the memo, says the same wait.
        let waits = refused.compactMap { $0.header("Retry-After").flatMap { Int($0) } }
        #expect(waits.count == 30 && waits.allSatisfy { $0 >= 1195 && $0 <= 1200 }, "\(waits)")
        #expect(refused.allSatisfy { $0.header("RateLimit")?.contains("r=0") == true }, "\(refused.first?.header("RateLimit") ?? "-")")
        // 3 admissions and the first refusal went to Redis; the other 29 did not.
        #expect(asked == 4, "Redis decided \(asked) of 33 requests")
        #expect(fleet.heads.count == 3)
    }

    @Test func aRememberedRefusalLapsesWhenRedisWouldAdmitAgain() throws {
        let fleet = try RedisFleet(count: 1)
        defer { fleet.stop() }
        let minted = try fleet.mint(consumer: "brief", plan: "brief", id: "key_brief")   // 1 per second
        let c = try RawClient(port: fleet.ports[0])
        defer { c.close() }
        func ask(_ i: Int) throws -> HTTPResponse {
            try c.request("GET /api/b/\(i) HTTP/1.1\r\nHost: h\r\nX-API-Key: \(minted.key)\r\n\r\n")
        }
        let before = try limiterCalls(fleet)
        #expect(try ask(0).status == 200)
        let first = try ask(1), second = try ask(2)
        #expect(first.status == 429 && second.status == 429)
        #expect(first.header("Retry-After") == "1" && second.header("Retry-After") == "1")
        usleep(1_050_000)   // past the wait Redis gave (≤ 1 s from its decision)
        let after = try ask(3)
        #expect(after.status == 200, "a remembered refusal outlived Redis's: \(after.status)")
        #expect(try limiterCalls(fleet) - before == 3, "the second refusal should come from the memo")
    }

    // MARK: 6. keys list against Redis

    @Test func aReloadRecompilesCachedRecords() throws {
        // Scope bits are interned per snapshot. A record cached from Redis under the old
        // snapshot must not be judged with the new one's bits after a reload.
        let fleet = try RedisFleet(count: 1)
        defer { fleet.stop() }
        let port = fleet.ports[0]
        let minted = try fleet.mint(consumer: "scoped", plan: nil, id: "key_scoped")
        #expect(try fleet.untilEveryLoop(port, key: minted.key) { $0.status == 200 } != nil)   // cached now
        // A new first route with another scope: `zzz` takes bit 0, `api` moves to bit 1.
        let file = fleet.dirs[0] + "/00-gateway.yaml"
        let policy = try String(contentsOfFile: file, encoding: .utf8)
        writeFile(file, policy.replacingOccurrences(of: "routes:\n", with: """
        routes:
          - name: other
            match: {path_prefix: /other/}
            backend: up
            scopes: [zzz]

        """))
        let reloaded = try poll(timeout: 5) {
            try get(port, "/other/x", headers: ["X-API-Key": minted.key]).status != 404
        }
        #expect(reloaded != nil, "the policy change never took effect")
        for _ in 0..<8 {   // fresh connections: every loop
            #expect(try get(port, "/api/x", headers: ["X-API-Key": minted.key]).status == 200)
            let other = try get(port, "/other/x", headers: ["X-API-Key": minted.key])
            #expect(other.status == 403 && other.errorCode == "INSUFFICIENT_SCOPE")
        }
    }

    @Test func keysListShowsRedisRecordsWithoutSecrets() throws {
        let fleet = try RedisFleet(count: 1)
        defer { fleet.stop() }
        let minted = try fleet.mint(consumer: "carol", plan: "shared", id: "key_carol", scopes: "api,reports:read")
        let (status, out) = try runTollgate(["keys", "list", "--policies", fleet.dirs[0]])
        #expect(status == 0, "\(out)")
        let row = out.split(separator: "\n").first { $0.hasPrefix("key_carol ") }.map(String.init) ?? ""
        #expect(!row.isEmpty, "no row for key_carol:\n\(out)")
        let fields = row.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        #expect(fields.count >= 7, "row: \(row)")
        let prefix = KeyFormat.displayPrefix(of: minted.key)
        #expect(fields.first == "key_carol")
        #expect(fields.contains(prefix), "prefix \(prefix) missing: \(row)")
        #expect(minted.key.hasPrefix(prefix) && prefix.count < minted.key.count)
        #expect(fields.contains("carol") && fields.contains("api,reports:read") && fields.contains("shared"), "row: \(row)")
        #expect(fields.contains("active") && fields.contains("redis"), "row: \(row)")
        // Never the plain key or its hash.
        #expect(!out.contains(minted.key), "the plain key is listed:\n\(out)")
        #expect(!out.contains(minted.hashHex), "the key's hash is listed:\n\(out)")
        #expect(!out.contains("sha256:"), "\(out)")

        // A status change shows in the list; the key's row stays free of secrets.
        try fleet.cli(["keys", "revoke", "key_carol", "--policies", fleet.dirs[0]])
        let (_, after) = try runTollgate(["keys", "list", "--policies", fleet.dirs[0]])
        let row2 = after.split(separator: "\n").first { $0.hasPrefix("key_carol ") }.map(String.init) ?? ""
        #expect(row2.split(separator: " ").contains("revoked"), "\(after)")
        #expect(!after.contains(minted.key) && !after.contains(minted.hashHex))
    }
}

// MARK: - fixture

/// Declared keys of the outage scenario (their SHA-256 in the policy; nothing in Redis).
enum OutageKeys {
    static let warm = "outage-warm-plain-key-0001"   // plan outage; cached before the kill
    static let cold = "outage-cold-plain-key-0001"   // plan outage; never seen before the kill
    static let free = "outage-free-plain-key-0001"   // no plan; cached before the kill
    static let load = "outage-load-plain-key-0001"   // plan outage; the background load's

    static var yaml: String {
        func entry(_ id: String, _ key: String, plan: String?) -> String {
            "  - id: \(id)\n    hash: sha256:\(KeyHash.sha256(key).hex)\n    consumer: \(id)\n    scopes: [api]\n"
                + (plan.map { "    plan: \($0)\n" } ?? "")
        }
        return "version: 1\nkeys:\n" + entry("key_warm", warm, plan: "outage") + entry("key_cold", cold, plan: "outage")
            + entry("key_free", free, plan: nil) + entry("key_load", load, plan: "outage")
    }
}

/// `count` tollgate processes on one fresh redis-server, each with its own policy directory
/// (same policy but the listen port and `on_error`), all in front of one recording upstream.
final class RedisFleet {
    let redis: RedisServer
    let upstream: ScriptedUpstream
    let heads = HeadLog()
    private(set) var dirs: [String] = []
    private(set) var ports: [UInt16] = []
    private(set) var processes: [TollgateProcess] = []

    struct Minted {
        var key: String
        var id: String
        var hashHex: String
    }

    convenience init(count: Int) throws {
        try self.init(modes: Array(repeating: "closed", count: count), deadline: "500ms", keys: nil)
    }

    /// - Parameters:
    ///   - modes: `on_error` of each instance.
    ///   - deadline: `store.deadline` (generous by default: a loaded test machine must not
    ///     turn a slow Redis answer into a 503 where the test expects a decision).
    ///   - keys: a second policy file (declared keys), or nil.
    ///   - extra: more policy text (a `security` block, `clients`), appended to each instance's.
    init(modes: [String], deadline: String, keys: String?, extra: String = "") throws {
        redis = try RedisServer()
        upstream = try recordingUpstream(heads)
        do {
            for mode in modes {
                let dir = makeTempDir("tgredis")
                let port = freePort()
                writeFile(dir + "/00-gateway.yaml", Self.policy(port: port, redis: redis.urlText, mode: mode,
                                                                deadline: deadline, upstream: upstream.port) + extra)
                if let keys { writeFile(dir + "/10-keys.yaml", keys) }
                dirs.append(dir)
                ports.append(port)
                processes.append(try TollgateProcess(policies: dir, port: port, threads: 2))
            }
            for port in ports { try waitUntilStoreReady(port) }
        } catch {
            stop()
            throw error
        }
    }

    /// Stops every process started here (by PID) and removes the policy directories.
    func stop() {
        for p in processes { p.stop() }
        upstream.stop()
        redis.stop()
        for d in dirs { try? FileManager.default.removeItem(atPath: d) }
    }

    static func policy(port: UInt16, redis: String, mode: String, deadline: String, upstream: UInt16) -> String {
        """
        version: 1
        listen:
          - address: 127.0.0.1:\(port)
        store:
          redis: \(redis)
          on_error: \(mode)
          deadline: \(deadline)
        credentials:
          api_key:
            headers: [X-API-Key]
        backends:
          up: {url: "http://127.0.0.1:\(upstream)"}
        plans:
          shared:
            rate_limits:
              - {requests: 50, per: 1h, burst: 50}
          outage:
            rate_limits:
              - {requests: 90, per: 1h, burst: 90}
          tight:
            rate_limits:
              - {requests: 3, per: 1h, burst: 3}
          brief:
            rate_limits:
              - {requests: 1, per: 1s, burst: 1}
        routes:
          - name: api
            match: {path_prefix: /api/}
            backend: up
            scopes: [api]

        """
    }

    /// A loop answers 503 until its Redis connection is up: wait until fresh connections
    /// (spread over the loops) get a Redis answer (401 INVALID_KEY for a random unknown key).
    private func waitUntilStoreReady(_ port: UInt16) throws {
        var streak = 0
        let ready = try poll(timeout: 10, step: 0.01) {
            // From a made-up address each time (when 127.0.0.1 is a trusted proxy): probes must
            // not lock the test's own address out where lock-out is on.
            let r = try get(port, "/api/ready", headers: ["X-API-Key": "probe-" + UUID().uuidString,
                                                          "X-Forwarded-For": "10.\(UInt8.random(in: 0...255)).\(UInt8.random(in: 0...255)).\(UInt8.random(in: 1...254))"])
            streak = r.status == 401 ? streak + 1 : 0
            return streak >= 8
        }
        if ready == nil { throw HarnessError(":\(port) never got its store ready") }
    }

    /// `tollgate ARGS`, which must succeed.
    @discardableResult
    func cli(_ args: [String]) throws -> String {
        let (status, out) = try runTollgate(args)
        if status != 0 { throw HarnessError("tollgate \(args.joined(separator: " ")) → \(status): \(out)") }
        return out
    }

    /// `tollgate keys new` against Redis (through instance 0's policy directory).
    func mint(consumer: String, plan: String?, id: String, scopes: String = "api") throws -> Minted {
        var args = ["keys", "new", "--policies", dirs[0], "--consumer", consumer, "--scopes", scopes, "--id", id]
        if let plan { args += ["--plan", plan] }
        let out = try cli(args)
        var fields: [String: String] = [:]
        for line in out.split(separator: "\n") {
            if let c = line.firstIndex(of: ":") {
                fields[String(line[..<c])] = line[line.index(after: c)...].trimmingCharacters(in: .whitespaces)
            }
        }
        guard let key = fields["key"], fields["id"] == id, let hash = fields["hash"], hash.hasPrefix("sha256:") else {
            throw HarnessError("unexpected keys new output: \(out)")
        }
        #expect(hash == "sha256:" + KeyHash.sha256(key).hex)
        return Minted(key: key, id: id, hashHex: String(hash.dropFirst(7)))
    }

    /// Polls (every 50 ms) until `condition` holds for 4 consecutive requests on fresh
    /// connections (so every loop of the instance answers the same); the seconds since `since`.
    func untilEveryLoop(_ port: UInt16, key: String, timeout: Double = 3, since: UInt64 = monotonicNanos(),
                        _ condition: (HTTPResponse) -> Bool) throws -> Double? {
        try Self.untilEveryLoopAnswers(port, key: key, timeout: timeout, since: since, condition)
    }

    static func untilEveryLoopAnswers(_ port: UInt16, key: String, timeout: Double = 3, since: UInt64 = monotonicNanos(),
                                      _ condition: (HTTPResponse) -> Bool) throws -> Double? {
        let until = since + UInt64(timeout * 1e9)
        var firstOfStreak: UInt64?
        var streak = 0
        var i = 0
        while monotonicNanos() < until {
            let sent = monotonicNanos()
            i += 1
            let r = try get(port, "/api/poll/\(i)", headers: ["X-API-Key": key])
            if condition(r) {
                if streak == 0 { firstOfStreak = sent }
                streak += 1
                if streak >= 4 { return Double(firstOfStreak! - min(since, firstOfStreak!)) / 1e9 }
                continue
            }
            streak = 0
            usleep(50_000)
        }
        return nil
    }
}

// MARK: - clients

struct Timed {
    var response: HTTPResponse
    var nanos: UInt64
}

/// One GET on a fresh connection, timed with the monotonic clock.
func timedGet(_ port: UInt16, _ path: String, key: String) throws -> Timed {
    let start = monotonicNanos()
    let r = try get(port, path, headers: ["X-API-Key": key])
    return Timed(response: r, nanos: monotonicNanos() - start)
}

func expectStoreUnavailable(_ r: HTTPResponse, sourceLocation: SourceLocation = #_sourceLocation) {
    expectDenial(r, "STORE_UNAVAILABLE", 503, sourceLocation: sourceLocation)
    #expect(Int(r.header("Retry-After") ?? "") ?? 0 > 0, "503 without Retry-After: \(r.headers)", sourceLocation: sourceLocation)
}

/// Results of concurrent clients (thread-safe).
final class Tally: @unchecked Sendable {
    // SAFETY: every access goes through `lock`.
    private let lock = NSLock()
    private var items: [(Int, Result<Timed, any Error>)] = []
    func add(_ i: Int, _ r: Result<Timed, any Error>) { lock.lock(); items.append((i, r)); lock.unlock() }
    /// (client index, its result), in completion order.
    var all: [(Int, Result<Timed, any Error>)] { lock.lock(); defer { lock.unlock() }; return items }
}

/// Request latencies (thread-safe).
final class LatencyLog: @unchecked Sendable {
    // SAFETY: every access goes through `lock`.
    private let lock = NSLock()
    private var nanos: [UInt64] = []
    func add(_ n: UInt64) { lock.lock(); nanos.append(n); lock.unlock() }
    var maxMillis: Double { lock.lock(); defer { lock.unlock() }; return Double(nanos.max() ?? 0) / 1e6 }
    var summary: String {
        lock.lock()
        let s = nanos.sorted()
        lock.unlock()
        guard !s.isEmpty else { return "no requests" }
        let p99 = s[min(s.count - 1, s.count * 99 / 100)]
        return String(format: "%d requests, p50 %.1f ms, p99 %.1f ms, max %.1f ms", s.count,
                      Double(s[s.count / 2]) / 1e6, Double(p99) / 1e6, Double(s.last!) / 1e6)
    }
}

/// Background load: one thread per port, a request at a time on fresh connections, until stopped.
final class LoadRun: @unchecked Sendable {
    // SAFETY: `stopped`, `statuses`, `errors` and `count` are guarded by `lock`; `threads` is
    // only touched by the owning test thread.
    private let lock = NSLock()
    private var stopped = false
    private var statuses: [Int: Int] = [:]
    private var errorTexts: [String] = []
    private var count = 0
    private let done = DispatchGroup()

    struct Snapshot {
        var requests: Int
        var statuses: [Int: Int]
        var errors: [String]
        var summary: String { "\(requests) requests, statuses \(statuses.sorted { $0.key < $1.key }), \(errors.count) errors" }
    }

    init(ports: [UInt16], key: String, latencies: LatencyLog) {
        for port in ports {
            done.enter()
            let t = Thread { [self] in
                var i = 0
                while !isStopped {
                    i += 1
                    do {
                        let r = try timedGet(port, "/api/load/\(i)", key: key)
                        latencies.add(r.nanos)
                        record(status: r.response.status, error: [200, 429, 503].contains(r.response.status)
                               ? nil : ":\(port) \(r.response.status) \(r.response.text)")
                    } catch {
                        record(status: nil, error: ":\(port) \(error)")
                    }
                    usleep(2_000)
                }
                done.leave()
            }
            t.start()
        }
    }

    private var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }

    private func record(status: Int?, error: String?) {
        lock.lock()
        count += 1
        if let status { statuses[status, default: 0] += 1 }
        if let error { errorTexts.append(error) }
        lock.unlock()
    }

    func snapshot() -> Snapshot {
        lock.lock()
        defer { lock.unlock() }
        return Snapshot(requests: count, statuses: statuses, errors: errorTexts)
    }

    /// Idempotent; returns once every load thread has finished its last request.
    func stop() {
        lock.lock()
        let first = !stopped
        stopped = true
        lock.unlock()
        if first { _ = done.wait(timeout: .now() + 20) }
    }
}
