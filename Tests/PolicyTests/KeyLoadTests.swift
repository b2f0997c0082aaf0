import Testing
@testable import Policy

struct KeyLoadTests {
    /// 10,000 declared keys in their own file: all load and every one is found by hash.
    /// No timing assertion (DESIGN.md); the time is printed for the curious.
    @Test func tenThousandDeclaredKeys() throws {
        let count = 10_000
        var keys = "version: 1\nkeys:\n"
        keys.reserveCapacity(count * 200)
        for i in 0..<count {
            keys += """
              - id: key_\(i)
                hash: \(KeyHash.sha256("plain-\(i)").description)
                consumer: consumer_\(i % 97)
                plan: free
                scopes: [finance:read, s\(i % 300)]

            """
        }
        // The generated file is of the shape the keys scanner reads without Yams.
        #expect(PolicyDocument.readFast(yaml: keys, file: "10-keys.yaml") != nil)
        let clock = ContinuousClock()
        var snap: PolicySnapshot?
        let elapsed = try clock.measure {
            snap = try PolicyLoader.load(files: [("00-gateway.yaml", Fixture.yaml), ("10-keys.yaml", keys)])
        }
        print("loaded \(count + 7) keys in \(elapsed)")
        let s = try #require(snap)
        #expect(s.keys.count == count + 7)
        for i in stride(from: 0, to: count, by: 1) {
            let r = s.declaredKey(.sha256("plain-\(i)"))
            if r?.id != "key_\(i)" { Issue.record("key \(i) not found"); break }
        }
        #expect(s.declaredKey(.sha256("plain-\(count)")) == nil)
        // Scopes no route uses (s0…s299) did not take bits.
        #expect(s.scopeTable.names.count == 3)
    }
}
