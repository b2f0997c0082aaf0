import Testing
@testable import Policy

/// `KeyHashMap` against `Dictionary` as the model, under random inserts, replacements and
/// removals, with hashes crowded into a few buckets so probing, wrap-around, growth and
/// backward-shift deletion all happen.
struct KeyHashMapTests {
    /// A deterministic generator (xorshift) so a failure repeats.
    struct Rng {
        var s: UInt64
        mutating func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
    }

    /// Distinct hashes whose first word (the bucket) takes only a few values, and which
    /// include words near the top so probes wrap around the table's end.
    static func crowded(_ n: Int) -> [KeyHash] {
        (1...n).map { i -> KeyHash in
            let bucket = UInt64(i % 5) &* 0x9E37_79B9
            let high: UInt64 = i % 3 == 0 ? UInt64.max - 2 : 0
            return KeyHash(w0: bucket &+ high, w1: UInt64(i), w2: 7, w3: UInt64(i) << 3)
        }
    }

    @Test func agreesWithDictionaryUnderRandomOperations() {
        var rng = Rng(s: 0x1234_5678_9ABC_DEF1)
        let hashes = Self.crowded(300)
        var map = KeyHashMap<Int>()
        var model: [KeyHash: Int] = [:]
        for step in 0..<20_000 {
            let h = hashes[Int(rng.next() % UInt64(hashes.count))]
            switch rng.next() % 3 {
            case 0, 1:
                map[h] = step
                model[h] = step
            default:
                map.removeValue(forKey: h)
                model[h] = nil
            }
            if step % 97 == 0 {
                #expect(map.count == model.count, "step \(step)")
                for k in hashes { #expect(map[k] == model[k], "step \(step)") }
            }
        }
        for k in hashes { #expect(map[k] == model[k]) }
        var seen = 0
        map.forEach { k, v in
            seen += 1
            #expect(model[k] == v)
        }
        #expect(seen == model.count)
    }

    @Test func slotsAreStableUntilTheNextInsert() {
        var map = KeyHashMap<[Int]>()
        let hashes = Self.crowded(40)
        for (i, h) in hashes.enumerated() { map.insert(h, [i]) }
        for (i, h) in hashes.enumerated() {
            let slot = map.index(forKey: h)
            #expect(slot != nil)
            if let slot {
                map[slot: slot].append(-i)
                #expect(map[h] == [i, -i])
            }
        }
    }

    @Test func filterKeepsWhatItSaysAndTheZeroDigestIsNeverFound() {
        var map = KeyHashMap<Int>(minimumCapacity: 4)
        let hashes = Self.crowded(100)
        for (i, h) in hashes.enumerated() { map.insert(h, i) }
        let evens = map.filter { _, v in v % 2 == 0 }
        #expect(evens.count == 50)
        for (i, h) in hashes.enumerated() { #expect(evens[h] == (i % 2 == 0 ? i : nil)) }
        #expect(map[KeyHash.empty] == nil)
        #expect(map.index(forKey: KeyHash.empty) == nil)
    }
}

/// The identity lines a record hands the backend are built once, from field-value bytes only.
struct KeyRecordIdentityTests {
    @Test func identityLinesCarryNoControlBytes() {
        let r = KeyRecord(id: "key_1", hash: KeyHash.sha256("k"), consumer: "alice\r\nX-Evil: 1\u{0}",
                          planIndex: nil, scopes: ScopeSet(), scopeNames: ["a", "b"], allowIPs: nil,
                          expiresAt: nil, status: .active)
        let text = String(decoding: r.identityLines, as: UTF8.self)
        #expect(text == "X-Tollgate-Key-Id: key_1\r\nX-Tollgate-Consumer: alice??X-Evil: 1?\r\nX-Tollgate-Scopes: a,b\r\n")
    }
}
