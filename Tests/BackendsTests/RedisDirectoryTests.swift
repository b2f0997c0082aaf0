import Backends
import Foundation
import Glibc
import Policy
import Runtime
import Synchronization
import Testing

struct RedisDirectoryTests {
    @Test func putListGetAndStatus() throws {
        let server = try RedisServer()
        defer { server.stop() }
        let dir = try server.client()
        let h1 = KeyHash.sha256("tg_a"), h2 = KeyHash.sha256("tg_b")
        try dir.put(KeyLogEntry(op: .put, id: "a", hash: "sha256:" + h1.hex, prefix: "tg_a", consumer: "acme",
                                plan: "free", scopes: ["read"], at: 10))
        try dir.put(KeyLogEntry(op: .put, id: "b", hash: h2.hex, plan: "pro", at: 20))
        #expect(try dir.list().map(\.id) == ["a", "b"])
        #expect(try dir.get(id: "a")?.scopes == ["read"])
        #expect(try dir.get(id: "a")?.status == "active")
        #expect(try dir.get(id: "b")?.hash == "sha256:" + h2.hex)
        #expect(try dir.get(id: "zzz") == nil)
        let r = try dir.setStatus(id: "a", status: "disabled", at: 30)
        #expect(r.status == "disabled" && r.at == 30)
        #expect(try dir.get(hash: h1)?.status == "disabled")
        #expect(throws: RedisStoreError.notFound(id: "nope")) { try dir.setStatus(id: "nope", status: "revoked") }
        #expect(throws: RedisStoreError.self) { try dir.setStatus(id: "a", status: "bogus") }
        #expect(throws: RedisStoreError.conflictingID(id: "a")) {
            try dir.put(KeyLogEntry(op: .put, id: "a", hash: h2.hex, at: 40))
        }
        // Only hashes are stored.
        guard case .array(let keys) = try dir.run(["KEYS", "*"]) else { Issue.record("no keys"); return }
        #expect(Set(keys.compactMap(\.text)) == [RedisKeys.record(h1), RedisKeys.record(h2), "tg:keyid:a", "tg:keyid:b", "tg:keyids"])
    }

    @Test func statusChangeReachesEverySubscriber() throws {
        let server = try RedisServer()
        defer { server.stop() }
        let dir = try server.client()
        let h = KeyHash.sha256("tg_live_revoke_me")
        try dir.put(KeyLogEntry(op: .put, id: "r1", hash: h.hex, plan: "free", at: 1))

        let messages = Mutex<[String]>([])
        let a = try LiveConnection(url: server.url, instanceID: "a")
        defer { a.shutdown() }
        let b = try LiveConnection(url: server.url, instanceID: "b")
        defer { b.shutdown() }
        #expect(a.waitUp() && b.waitUp())
        for (name, live) in [("a", a), ("b", b)] {
            live.on { conn in
                conn.subscribeInvalidations { bytes in
                    let text = bytes.isEmpty ? "<flush>" : String(decoding: bytes, as: UTF8.self)
                    messages.withLock { $0.append(name + ":" + text) }
                }
            }
        }
        #expect(eventually { a.on { $0.isSubscribedToInvalidations } && b.on { $0.isSubscribedToInvalidations } })
        #expect(messages.withLock { $0 }.filter { $0.hasSuffix("<flush>") }.count == 2)
        try dir.setStatus(id: "r1", status: "revoked")
        #expect(eventually { Set(messages.withLock { $0 }).isSuperset(of: ["a:" + h.hex, "b:" + h.hex]) })
        // The record read through the async path now says revoked.
        let c = Collector()
        a.on { _ = $0.lookupKey(h, waiter: c, token: 1) }
        #expect(eventually { c.count == 1 })
        if case .reply(.string(let json)) = c.results(for: 1).first {
            #expect(try RedisKeyDirectory.decode(json).status == "revoked")
        } else { Issue.record("no record") }
    }

    @Test func subscriptionSurvivesARestart() throws {
        let server = try RedisServer()
        defer { server.stop() }
        let messages = Mutex<[[UInt8]]>([])
        let live = try LiveConnection(url: server.url)
        defer { live.shutdown() }
        #expect(live.waitUp())
        live.on { $0.subscribeInvalidations { b in messages.withLock { $0.append(b) } } }
        #expect(eventually { live.on { $0.isSubscribedToInvalidations } })
        server.kill9()
        #expect(eventually { live.on { $0.health } == .down })
        try server.restart()
        #expect(eventually(15) { live.on { $0.isSubscribedToInvalidations } && live.on { $0.health } == .up })
        let h = KeyHash.sha256("after-restart")
        try server.client().put(KeyLogEntry(op: .put, id: "z", hash: h.hex, at: 1))
        #expect(eventually { messages.withLock { $0 }.contains(Array(h.hex.utf8)) })
        #expect(messages.withLock { $0 }.filter(\.isEmpty).count == 2)   // one flush per (re)subscribe
    }
}
