import Testing
import Yams
@testable import Policy

/// The fast path for `keys:` (``KeysScanner``) against Yams: the same nodes, the same
/// keys, the same errors; and everything it does not understand goes to Yams.
struct KeysScannerTests {
    static let h1 = KeyHash.sha256("one").description
    static let h2 = KeyHash.sha256("two").description
    static let h3 = KeyHash.sha256("three").description

    /// Yams' `keys` value and the line of its key.
    func yamsKeys(_ text: String) throws -> (keysLine: Int, keys: PolicyNode)? {
        guard let root = try Yams.compose(yaml: text).map(PolicyNode.init),
              case .mapping(let pairs) = root.content else { return nil }
        for p in pairs where p.key.content == .scalar("keys", isPlain: true) { return (p.key.line, p.value) }
        return nil
    }

    /// Both paths of ``PolicyDocument/read(yaml:file:errors:fastKeys:)``: keys, and errors
    /// in the loader's order (line, then as found).
    func read(_ text: String, fast: Bool, file: String = "k.yaml") -> ([PolicyDocument.Key], [String]) {
        var errors: [PolicyError] = []
        let doc = PolicyDocument.read(yaml: text, file: file, errors: &errors, fastKeys: fast)
        let sorted = errors.enumerated().sorted { a, b in
            a.element.line != b.element.line ? a.element.line < b.element.line : a.offset < b.offset
        }
        return (doc.keys, sorted.map(\.element.description))
    }

    func expectSameReading(_ text: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) {
        let fast = read(text, fast: true), slow = read(text, fast: false)
        #expect(fast.0 == slow.0, "keys differ", sourceLocation: sourceLocation)
        #expect(fast.1 == slow.1, sourceLocation: sourceLocation)
    }

    // MARK: shapes the scanner reads: its nodes are Yams' nodes

    static let understood: [String] = [
        // The shape of POLICY.md, every field, comments and blank lines.
        """
        # keys
        version: 1

        keys:                 # declared keys
          - id: key_demo_alice
            hash: \(h1)
            consumer: alice
            plan: free        # a comment
            scopes: [finance:read, chat]
            allow_ips: [127.0.0.0/8, "2001:db8::/32", '10.0.0.0/8']
            expires: 2027-01-01T00:00:00Z
            status: active
        # between entries, at column 0
          - id: key_bob

            hash: "\(h2)"
            consumer: Bob Smith
          # indented comment
            scopes: []
        """,
        // The bench adapter's shape: a keys-only file of one-line flow mappings.
        """
        keys:
          - {id: k00000, hash: "\(h1)", consumer: k00000, plan: bench, scopes: [bench]}
          - {id: k00001, hash: "\(h2)", consumer: k00001, scopes: [bench]}
        """,
        // An indentless list, wide dashes, a second top-level key after the list.
        """
        version: 1
        keys:
        -   id: a
            hash: \(h1)
            consumer: c
        - {id: b, hash: \(h2), consumer: c}
        routes: []
        """,
        // Quoting: '' inside single quotes; plain scalars with inner spaces and colons;
        // nulls in their spellings; CRLF line ends.
        "version: 1\r\nkeys:\r\n  - id: 'x'\r\n    hash: '\(h1)'\r\n    consumer: 'O''Brien  & co'\r\n"
            + "    plan: ~\r\n    allow_ips: null\r\n    expires: NULL\r\n    scopes: [a b, \"c:d\", 'e', x:y:z]\r\n",
        // Values the reader refuses: the scanner still reads them as they are.
        """
        version: 1
        keys:
          - {id: 'bad id', hash: sha256:ABC, consumer: "", status: gone, expires: soon, scopes: [~, null]}
          - id: ok
            hash: \(h3)
            consumer: c
            colour: blue
            plan: [a]
            allow_ips: 10.0.0.1/8
          - {id: null, hash: Null, consumer: x, scopes: a}
          - {hash: \(h1)}
        """,
        // Keys in the middle of a whole policy.
        Fixture.yaml,
        // Lists as block lists below their key, indented or not.
        """
        version: 1
        keys:
          - id: a
            hash: \(h1)
            consumer: c
            scopes:
              - finance:read   # a comment
              - 'chat'

              - "x y"
            allow_ips:
            - 10.0.0.0/8
            plan: free
          - id: b
            hash: \(h2)
            consumer: c
            scopes:   # below
            - z
        routes: []
        """,
        // Text beyond ASCII.
        """
        version: 1
        keys:
          - {id: a, hash: \(h1), consumer: Zoë, scopes: [日本, 'Ärger', "😀 ok"]}
          - id: b
            hash: \(h2)
            consumer: Émile Zola
        """,
    ]

    @Test(arguments: understood.indices) func scannerNodesAreYamsNodes(_ i: Int) throws {
        let text = Self.understood[i]
        let scanned = try #require(KeysScanner.nodes(text), "the scanner declined case \(i)")
        let yams = try #require(try yamsKeys(text))
        #expect(scanned.keysLine == yams.keysLine)
        #expect(scanned.keys == yams.keys)
        #expect(PolicyDocument.readFast(yaml: text, file: "k.yaml") != nil)
    }

    @Test(arguments: understood.indices) func bothPathsReadTheSame(_ i: Int) {
        expectSameReading(Self.understood[i])
    }

    // MARK: shapes it leaves to Yams

    static let declined: [String] = [
        "version: 1\nkeys:\n  - &a {id: a, hash: \(h1), consumer: c}\n",                       // anchor
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: c, scopes: &s [x]}\n  - {id: b, hash: \(h2), consumer: c, scopes: *s}\n",
        "version: 1\nkeys:\n  - {id: !!str a, hash: \(h1), consumer: c}\n",                     // tag
        "version: 1\nkeys:\n  - id: a\n    hash: \(h1)\n    consumer: long\n      name\n",        // multi-line plain
        "version: 1\nkeys:\n  - id: a\n    hash: \(h1)\n    consumer: |\n      c\n",              // block scalar
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: \"tab\\there\"}\n",               // escape
        "version: 1\nkeys:\n  - id: a\n    hash: \(h1)\n    consumer:\n    plan: free\n",          // empty value
        "version: 1\nkeys:\n  - id: a\n    hash: \(h1)\n    consumer: c\n    scopes:\n    plan: free\n",  // null
        "version: 1\nkeys:\n  - id: a\n    hash: \(h1)\n    consumer: c\n    scopes:\n",   // null at the end
        "version: 1\nkeys:\n  - id: a\n    hash: \(h1)\n    consumer: c\n    scopes:\n      a: b\n",  // nested mapping
        "version: 1\nkeys:\n  - id: a\n    hash: \(h1)\n    consumer: c\n    scopes:\n      - a: b\n",
        "version: 1\nkeys:\n  - id: a\n    hash: \(h1)\n    consumer: c\n    scopes:\n      - a\n     - b\n",
        "version: 1\nkeys:\n  - id: a\n    hash: \(h1)\n    consumer: c\n    scopes:\n      - a\n        b\n",
        "version: 1\nkeys:\n  - id: a\n    hash: \(h1)\n    consumer: c\n    scopes:\n      -\n",
        "version: 1\nkeys:\n  - id: a\n    hash: \(h1)\n    consumer: c\n    scopes:#x\n",
        "version: 1\nkeys:\n  - {id: a, hash: \(h1),\n     consumer: c}\n",                       // flow over two lines
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: a\u{85}b}\n",                     // NEL: a line break
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: 'a\u{2028}b'}\n",                 // LS
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: \"a\u{FEFF}b\"}\n",              // BOM
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer:\tc}\n",                            // tab
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: c, id: b}\n",                      // repeated field
        "version: 1\nkeys:\n  - id: a\n    hash: \(h1)\n    id: b\n    consumer: c\n",
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: c, scopes: [x,]}\n",               // trailing comma
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: a#b}\n",                           // '#' in a scalar
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: c, scopes: [[x]]}\n",              // nested list
        "version: 1\nkeys:\n  -\n    id: a\n    hash: \(h1)\n    consumer: c\n",                  // entry below its dash
        "version: 1\nkeys:\n  - ? id\n    : a\n",                                                 // complex key
        "version: 1\nkeys:\n  - a plain entry\n",                                                 // not a mapping
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: c}\n   - {id: b, hash: \(h2), consumer: c}\n",  // indent
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: c}\n  foo: bar\n",                 // bad YAML
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: c: d}\n",
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: -c}\n",                            // indicator first
        "version: 1\nkeys:\n  - {}\n",
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: 'unclosed}\n",
        "version: 1\nkeys:\n\n",                                                                  // no entries
        "version: 1\nkeys: []\n",
        "version: 1\nkeys: [{id: a, hash: \(h1), consumer: c}]\n",
    ]

    @Test(arguments: declined.indices) func scannerDeclines(_ i: Int) {
        let text = Self.declined[i]
        #expect(KeysScanner.nodes(text) == nil)
        #expect(PolicyDocument.readFast(yaml: text, file: "k.yaml") == nil)
        expectSameReading(text)
    }

    /// The scanner reads its section, but the file around it is not what it looks like:
    /// Yams has the last word on the rest, and the whole file goes to it.
    static let restDecides: [String] = [
        // `keys:` inside a flow mapping spanning lines is not a top-level key.
        "{version: 1,\nkeys:\n  - {id: a, hash: \(h1), consumer: c}\n}\n",
        // …nor inside a flow list of another key.
        "version: [1,\nkeys:\n  - {id: a, hash: \(h1), consumer: c}\n]\n",
        // …nor inside a quoted scalar spanning lines.
        "note: \"a\nkeys:\n  - {id: a, hash: \(h1), consumer: c}\n\"\n",
        // Two `keys:` blocks (Yams: duplicate key).
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: c}\nkeys:\n  - {id: b, hash: \(h2), consumer: c}\n",
        // A syntax error elsewhere is reported as Yams reports it for the whole text.
        "version: 1\nroutes: [\nkeys:\n  - {id: a, hash: \(h1), consumer: c}\n",
        "version: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: c}\n---\nversion: 1\n",
        "--- \nversion: 1\nkeys:\n  - {id: a, hash: \(h1), consumer: c}\n",
    ]

    @Test(arguments: restDecides.indices) func theRestOfTheFileDecides(_ i: Int) {
        let text = Self.restDecides[i]
        #expect(PolicyDocument.readFast(yaml: text, file: "k.yaml") == nil)
        expectSameReading(text)
    }

    // MARK: errors name the file, the line and keys[i].field

    @Test func errorsThroughTheFastPathCarryFileLineAndKeyPath() {
        let keys = """
        version: 1
        keys:
          - id: k1
            hash: \(Self.h1)
            consumer: c
            plan: free
          - id: k2
            hash: sha256:nothex
            consumer: c
          - {id: k1, hash: \(Self.h1), consumer: c, plan: gold}
          - {id: k4, hash: \(Self.h2), consumer: c, scope: [x]}
        """
        #expect(PolicyDocument.readFast(yaml: keys, file: "10-keys.yaml") != nil)
        let gateway = "version: 1\nplans:\n  free: {rate_limits: [{requests: 1, per: 1s}]}\n"
        do {
            _ = try PolicyLoader.load(files: [("00-gateway.yaml", gateway), ("10-keys.yaml", keys)])
            Issue.record("loaded")
        } catch {
            #expect(error.errors.map(\.description) == [
                "10-keys.yaml:8: keys[1].hash: invalid hash (expected sha256: followed by 64 lowercase hex digits)",
                "10-keys.yaml:10: keys[2].id: duplicate key id 'k1' (first at 10-keys.yaml:3)",
                "10-keys.yaml:10: keys[2].hash: hash already declared for key 'k1' (10-keys.yaml:4)",
                "10-keys.yaml:10: keys[2].plan: unknown plan 'gold'",
                "10-keys.yaml:11: keys[3].scope: unknown field",
            ])
        }
    }

    // MARK: many random files, both paths

    /// xorshift64*: reproducible files.
    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            state ^= state >> 12; state ^= state << 25; state ^= state >> 27
            return state &* 2_685_821_657_736_338_717
        }
        mutating func pick<T>(_ xs: [T]) -> T { xs[Int(next() % UInt64(xs.count))] }
        mutating func chance(_ percent: UInt64) -> Bool { next() % 100 < percent }
    }

    /// A key file of `count` entries, mostly valid, in either form, with the odd value the
    /// reader refuses or the scanner leaves to Yams.
    static func randomKeyFile(seed: UInt64, count: Int) -> String {
        var r = Random(state: seed | 1)
        let ids = ["key_1", "k-2", "a.b:c", "'quoted'", "\"dq\"", "bad id!", "null", "~", "k_9"]
        let consumers = ["alice", "Bob Smith", "'O''Brien'", "\"\"", "c:d", "x", "null", "'null'", "a  b", "Zoë",
                         "'Ärger'"]
        let plans = ["free", "pro", "~", "null", "gold", "[free]", "'free'"]
        // "<block>": a block list below the key (a flow list in a one-line entry).
        let scopes = ["[]", "[finance:read]", "[a, b, c]", "['a', \"b\"]", "[a b, c]", "x", "[~]", "[\"\"]", "null",
                      "<block>"]
        let ips = ["[127.0.0.0/8]", "[\"2001:db8::/32\", 10.0.0.0/8]", "[10.1.0.0/8]", "null", "[bad]", "[]", "<block>"]
        let expires = ["2027-01-01T00:00:00Z", "'2027-01-01T00:00:00+02:00'", "2027-13-01T00:00:00Z", "~", "tomorrow"]
        let statuses = ["active", "disabled", "revoked", "gone", "'active'"]
        var text = r.chance(80) ? "version: 1\n" : ""
        if r.chance(30) { text += "# generated\n\n" }
        text += "keys:\n"
        let indent = r.chance(20) ? "" : "  "
        for i in 0..<count {
            var fields: [(String, String)] = []
            let hash = r.chance(95) ? KeyHash.sha256("k\(seed)-\(i % max(1, count - 2))").description : "sha256:zz"
            if r.chance(97) { fields.append(("id", r.chance(70) ? "key_\(i)" : r.pick(ids))) }
            if r.chance(97) { fields.append(("hash", r.chance(50) ? hash : "\"\(hash)\"")) }
            if r.chance(97) { fields.append(("consumer", r.pick(consumers))) }
            if r.chance(60) { fields.append(("plan", r.pick(plans))) }
            if r.chance(80) { fields.append(("scopes", r.pick(scopes))) }
            if r.chance(20) { fields.append(("allow_ips", r.pick(ips))) }
            if r.chance(20) { fields.append(("expires", r.pick(expires))) }
            if r.chance(20) { fields.append(("status", r.pick(statuses))) }
            if r.chance(3) { fields.append(("colour", "blue")) }
            for j in fields.indices.reversed() where r.chance(10) {
                fields.swapAt(j, Int(r.next() % UInt64(j + 1)))
            }
            if fields.isEmpty { fields.append(("id", "lonely")) }
            let blockItems = ["10.0.0.0/8", "'b'", "\"c d\"", "~", "fin:read"]
            if r.chance(50) {
                text += indent + "- {" + fields.map { "\($0.0): \($0.1 == "<block>" ? "[10.0.0.0/8, e]" : $0.1)" }
                    .joined(separator: ", ") + "}"
                text += r.chance(10) ? "   # note\n" : "\n"
            } else {
                for (j, f) in fields.enumerated() {
                    let head = indent + (j == 0 ? "- " : "  ")
                    if f.1 == "<block>" {
                        text += head + "\(f.0):" + (r.chance(20) ? "  # list\n" : "\n")
                        let itemIndent = indent + "  " + (r.chance(50) ? "  " : "")
                        for _ in 0..<(1 + r.next() % 3) { text += itemIndent + "- " + r.pick(blockItems) + "\n" }
                    } else {
                        text += head + "\(f.0): \(f.1)" + (r.chance(5) ? "  # note\n" : "\n")
                    }
                    if r.chance(3) { text += r.chance(50) ? "\n" : "# aside\n" }
                }
            }
        }
        if r.chance(30) { text += "routes: []\n" }
        return text
    }

    @Test(arguments: 0..<400) func randomFilesReadTheSameBothWays(_ seed: Int) {
        let text = Self.randomKeyFile(seed: UInt64(seed) &* 0x9E37_79B9_7F4A_7C15, count: 1 + seed % 20)
        let fast = read(text, fast: true), slow = read(text, fast: false)
        #expect(fast.0 == slow.0, "\(text)")
        #expect(fast.1 == slow.1, "\(text)")
    }

    /// Most of the random files are read by the fast path (otherwise the test above would
    /// compare Yams with itself).
    @Test func randomFilesMostlyTakeTheFastPath() {
        let fast = (0..<400).filter { seed in
            let text = Self.randomKeyFile(seed: UInt64(seed) &* 0x9E37_79B9_7F4A_7C15, count: 1 + seed % 20)
            return PolicyDocument.readFast(yaml: text, file: "k.yaml") != nil
        }.count
        #expect(fast > 300, "\(fast) of 400")
    }

    // MARK: the compiled snapshot

    @Test func declaredKeyByIDIsIndexed() throws {
        let s = try Fixture.snapshot()
        for k in s.keys { #expect(s.declaredKey(id: k.id) === k) }
        #expect(s.declaredKey(id: "nobody") == nil)
    }
}
