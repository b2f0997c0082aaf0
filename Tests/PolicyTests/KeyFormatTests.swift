import Testing
@testable import Policy

struct KeyFormatTests {
    @Test func mintedKeysRoundTrip() {
        var seen = Set<String>()
        for _ in 0..<200 {
            let k = KeyFormat.mint()
            #expect(k.utf8.count == 41)
            #expect(k.hasPrefix("tg_"))
            #expect(KeyFormat.classify(k) == .minted)
            #expect(KeyFormat.displayPrefix(of: k) == String(k.prefix(8)))
            seen.insert(k)
        }
        #expect(seen.count == 200)
    }

    @Test func everySingleCharacterChangeBreaksTheChecksumOrShape() {
        let k = Array(KeyFormat.mint().utf8)
        var detected = 0, total = 0
        for i in 3..<k.count {
            var m = k
            m[i] = m[i] == UInt8(ascii: "Z") ? UInt8(ascii: "Y") : UInt8(ascii: "Z")
            total += 1
            let kind = m.withUnsafeBytes { KeyFormat.classify($0) }
            if kind == .mintedBadChecksum { detected += 1 }
        }
        #expect(detected == total)
    }

    @Test(arguments: ["", "demo-key-alice", "tg_", "tg_short", "TG_" + String(repeating: "a", count: 38),
                      "tg_" + String(repeating: "a", count: 37) + "-", "tg_" + String(repeating: "a", count: 39)])
    func otherShapesAreForeign(_ key: String) {
        #expect(KeyFormat.classify(key) == .foreign)
    }

    @Test func displayPrefixNeverRevealsShortForeignKeys() {
        #expect(KeyFormat.displayPrefix(of: "short-key") == "")
        #expect(KeyFormat.displayPrefix(of: "sk-live-0123456789abcdef") == "sk-l")
    }

    @Test func keyHashHexRoundTrip() {
        let h = KeyHash.sha256("demo-key-alice")
        #expect(h.hex == "f80024220afd493b4d9592af870de7afe98061992d28fdb75480c9b717783fa2")
        #expect(KeyHash(hex: h.hex) == h)
        #expect(KeyHash(hex: h.hex.uppercased()) == nil)
        #expect(KeyHash.sha256("").hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(h.description.hasPrefix("sha256:"))
    }

    @Test func scopeSets() {
        var t = ScopeTable()
        for i in 0..<128 { #expect(t.intern("s\(i)") == i) }
        #expect(t.intern("one-too-many") == nil)
        let all = t.set(of: (0..<128).map { "s\($0)" })
        let some = t.set(of: ["s0", "s64", "s127", "unknown"])
        #expect(all.isSuperset(of: some))
        #expect(!some.isSuperset(of: all))
        #expect(some.isSuperset(of: .empty))
        #expect(t.names(of: some) == ["s0", "s64", "s127"])
    }
}
