/// Reads the `keys:` list of a policy file straight from its bytes, for the shape
/// thousands of declared keys are written in: a block list of flat mappings, each entry
/// either on one line (`- {id: k1, hash: "sha256:…", scopes: [a, b]}`) or one field a
/// line (`- id: k1` / `  hash: sha256:…`), with plain, single- or double-quoted scalars
/// on one line and lists of them (one-line flow lists, or `- item` lines below the
/// field's key), blank lines and comments, LF or CRLF.
///
/// Through Yams, loading such a file cost ≈ 380,000 instructions per key (a node tree
/// of tagged scalars, and a duplicate-key check per mapping that hashes keys through the
/// tag resolver's regular expressions); with this path the whole load (reading,
/// compiling, the key records) costs 15,000–19,000 (callgrind, `tollgate check` of
/// `scripts/keys-policy.py` output).
///
/// It is a fast path, not a second YAML parser:
/// - Whenever it meets anything it does not fully understand (anchors, tags, aliases,
///   escapes, multi-line or empty values, nested mappings, tabs, control characters or
///   the line breaks YAML sees beyond LF and CR (NEL, LS, PS), a repeated field, a flow
///   collection not closed on its line, an indicator starting a plain scalar…) it
///   answers nil and the whole file goes through Yams as before.
/// - When it answers, the rest of the file (the section's lines emptied, so every line
///   keeps its number) still goes through Yams, and
///   ``PolicyDocument/read(yaml:file:errors:fastKeys:)`` checks there that `keys` is a
///   key of the top-level mapping at the line the scanner found, before using the keys.
/// - An entry whose every field is valid becomes a ``PolicyDocument/Key`` directly.
///   Any other entry is turned into the ``PolicyNode``s Yams would give (lines
///   included) and read by ``NodeReader/readKey(_:index:)``: every error about a key
///   comes from the one reader, whichever path read the file.
enum KeysScanner {
    struct Result {
        /// The file's text with the section's lines emptied: same number of lines.
        var rest: String
        /// 1-based line of `keys:`.
        var keysLine: Int
        var keys: [PolicyDocument.Key]
        /// Errors about the entries (from ``NodeReader/readKey(_:index:)``).
        var errors: [PolicyError]
    }

    /// The keys of `text` and the text left for Yams; nil when the file is not of the
    /// shape this understands (then read all of it with Yams).
    static func read(_ text: String, file: String) -> Result? {
        var keys: [PolicyDocument.Key] = []
        var reader = NodeReader(file: file)
        let scanned = scan(text) { s, entry, index in
            if let k = s.key(entry, index: index) {
                keys.append(k)
            } else if let k = reader.readKey(s.node(entry), index: index) {
                keys.append(k)  // valid after all: the direct reading is only ever stricter
            }
        }
        guard let (rest, keysLine) = scanned else { return nil }
        return Result(rest: rest, keysLine: keysLine, keys: keys, errors: reader.errors)
    }

    /// The `keys` list of `text` as nodes (what Yams would give), and the line of `keys:`;
    /// nil when the scanner does not understand the file. For tests.
    static func nodes(_ text: String) -> (keysLine: Int, keys: PolicyNode)? {
        var entries: [PolicyNode] = []
        guard let (_, keysLine) = scan(text, { s, entry, _ in entries.append(s.node(entry)) }),
              let first = entries.first
        else { return nil }
        return (keysLine, PolicyNode(.sequence(entries), line: first.line))
    }

    /// Finds and scans the section, calling `visit` for each entry (with its position)
    /// while the text's bytes are at hand; answers the text left for Yams and the line of
    /// `keys:`, or nil (the visits made so far are then to be discarded).
    private static func scan(_ text: String, _ visit: (Scanner, Entry, Int) -> Void) -> (String, Int)? {
        var text = text
        return text.withUTF8 { utf8 in
            KeysScanner.classes.withUnsafeBufferPointer { classes in
                let s = Scanner(bytes: UnsafeRawBufferPointer(utf8), classes: classes)
                guard let (keysLineEnd, keysLine) = s.findKeysLine(),
                      let sectionEnd = s.scanSection(from: keysLineEnd, firstLine: keysLine + 1, visit)
                else { return nil }
                var rest = String(decoding: UnsafeRawBufferPointer(rebasing: s.b[0..<keysLineEnd]), as: UTF8.self)
                if sectionEnd < s.b.count {
                    let sectionLines = s.countLines(keysLineEnd, sectionEnd)
                    rest.reserveCapacity(rest.utf8.count + sectionLines + s.b.count - sectionEnd)
                    rest += String(repeating: "\n", count: sectionLines)
                    rest += String(decoding: UnsafeRawBufferPointer(rebasing: s.b[sectionEnd...]), as: UTF8.self)
                }
                return (rest, keysLine)
            }
        }
    }

    /// One scalar as written on its line: bytes `[start, end)` inside its quotes.
    struct Scalar {
        enum Style { case plain, singleQuoted, doubleQuoted }
        var start: Int
        var end: Int
        var style: Style
        var line: Int
    }

    /// `key: value` of an entry.
    struct Field {
        var keyStart: Int
        var keyEnd: Int
        /// Index in ``KeysScanner/knownKeys``, or -1.
        var known: Int
        /// The key's line, and the value's but for a block list (`key:` then `- item` lines).
        var line: Int
        /// The value when it is a scalar.
        var scalar: Scalar
        /// The value when it is a list (flow, or block below the key): its items in
        /// ``Entry/items``, the first on `listLine`.
        var isList: Bool
        var items: Range<Int>
        var listLine: Int
    }

    /// The entry being scanned (storage reused from entry to entry).
    struct Entry {
        var line = 0
        var fields: [Field] = []
        var items: [Scalar] = []
        /// A bit per known field present.
        var seen: UInt32 = 0

        mutating func reset(line: Int) {
            self.line = line
            fields.removeAll(keepingCapacity: true)
            items.removeAll(keepingCapacity: true)
            seen = 0
        }
    }

    /// Byte classes (bits) for the scanning loops.
    static let classes: [UInt8] = (0..<256).map { i -> UInt8 in
        let c = UInt8(i)
        let isAlnum = (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || (c >= 0x30 && c <= 0x39)
        var bits: UInt8 = 0
        // Inside a plain scalar without a second look: printable ASCII but space : , [ ] { } #
        if c > 0x20, c < 0x7F, !":,[]{}#".utf8.contains(c) { bits |= ordinary }
        if isAlnum || "_./+~$".utf8.contains(c) { bits |= plainStart }
        if isAlnum || c == 0x5F { bits |= keyByte }
        if isAlnum || "/:_.-+".utf8.contains(c) { bits |= afterColon }
        return bits
    }
    static let ordinary: UInt8 = 1, plainStart: UInt8 = 2, keyByte: UInt8 = 4, afterColon: UInt8 = 8

    /// The fields of a key entry: their names are not decoded again for every entry, and
    /// a repeated one is noticed by bit.
    static let knownKeys: [String] = ["id", "hash", "consumer", "plan", "scopes", "allow_ips", "expires", "status"]
    enum Known {
        static let id = 0, hash = 1, consumer = 2, plan = 3, scopes = 4, allowIPs = 5, expires = 6, status = 7
    }

    /// The index of a field name in ``knownKeys``, or -1.
    static func known(_ k: UnsafeRawBufferPointer) -> Int {
        func equals(_ s: StaticString) -> Bool {
            s.utf8CodeUnitCount == k.count
                && UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount).elementsEqual(k)
        }
        switch (k.count, k.first) {
        case (2, UInt8(ascii: "i")): return equals("id") ? Known.id : -1
        case (4, UInt8(ascii: "h")): return equals("hash") ? Known.hash : -1
        case (8, UInt8(ascii: "c")): return equals("consumer") ? Known.consumer : -1
        case (4, UInt8(ascii: "p")): return equals("plan") ? Known.plan : -1
        case (6, UInt8(ascii: "s")): return equals("scopes") ? Known.scopes : equals("status") ? Known.status : -1
        case (9, UInt8(ascii: "a")): return equals("allow_ips") ? Known.allowIPs : -1
        case (7, UInt8(ascii: "e")): return equals("expires") ? Known.expires : -1
        default: return -1
        }
    }
}

private let space = UInt8(ascii: " ")
private let newline = UInt8(ascii: "\n")
private let cr = UInt8(ascii: "\r")
private let hash = UInt8(ascii: "#")
private let colon = UInt8(ascii: ":")
private let dash = UInt8(ascii: "-")
private let comma = UInt8(ascii: ",")
private let quote = UInt8(ascii: "'")
private let dquote = UInt8(ascii: "\"")
private let backslash = UInt8(ascii: "\\")
private let openBracket = UInt8(ascii: "[")
private let closeBracket = UInt8(ascii: "]")
private let openBrace = UInt8(ascii: "{")
private let closeBrace = UInt8(ascii: "}")

extension KeysScanner {
    /// Positions are byte offsets into the file; a line is `[start, end)` without its
    /// line break (a CR before the LF is not part of it).
    struct Scanner {
        let b: UnsafeRawBufferPointer
        let classes: UnsafeBufferPointer<UInt8>

        init(bytes: UnsafeRawBufferPointer, classes: UnsafeBufferPointer<UInt8>) {
            b = bytes
            self.classes = classes
        }

        @inline(__always)
        func has(_ c: UInt8, _ bits: UInt8) -> Bool { classes[Int(c)] & bits != 0 }

        /// End of the line starting at `i` (the LF, or the CR of CRLF, or the end of text),
        /// and where the next line starts.
        @inline(__always)
        func lineEnd(from i: Int) -> (end: Int, next: Int) {
            var j = i
            let n = b.count
            while j < n, b[j] != newline { j &+= 1 }
            if j == n { return (n, n) }
            if j > i, b[j - 1] == cr { return (j - 1, j + 1) }
            return (j, j + 1)
        }

        func countLines(_ from: Int, _ to: Int) -> Int {
            var n = 0
            var i = from
            while i < to { if b[i] == newline { n += 1 }; i += 1 }
            return n
        }

        /// Spaces, then the end of the line or a comment.
        func isBlankOrComment(_ i: Int, _ end: Int) -> Bool {
            var j = i
            while j < end, b[j] == space { j += 1 }
            return j == end || b[j] == hash
        }

        /// The first top-level `keys:` line with nothing after it but a comment, provided
        /// the document is a block mapping (its first content line starts with a plain
        /// key at column 0): (where the next line starts, its 1-based number).
        func findKeysLine() -> (Int, Int)? {
            var i = 0
            var line = 1
            var sawContent = false
            let keys: [UInt8] = Array("keys:".utf8)
            while i < b.count {
                let (end, next) = lineEnd(from: i)
                if !isBlankOrComment(i, end) {
                    if !sawContent {
                        sawContent = true
                        let c = b[i]
                        guard (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || c == 0x5F else { return nil }
                    }
                    if end - i >= 5, b[i] == keys[0], b[i + 1] == keys[1], b[i + 2] == keys[2], b[i + 3] == keys[3],
                       b[i + 4] == keys[4], end == i + 5 || (b[i + 5] == space && isBlankOrComment(i + 5, end)) {
                        return (next, line)
                    }
                }
                i = next
                line += 1
            }
            return nil
        }

        /// Scans the entries from `start` (the line after `keys:`) to the first line at
        /// column 0 that is not an entry, a comment or blank, and answers where that line
        /// starts; nil when a line is not understood or there is no entry.
        func scanSection(from start: Int, firstLine: Int, _ visit: (Scanner, Entry, Int) -> Void) -> Int? {
            var entry = Entry()
            entry.fields.reserveCapacity(8)
            entry.items.reserveCapacity(16)
            var count = 0
            var seqIndent = -1
            // The column of the block entry's keys, while one is being read; -1 otherwise.
            var keyColumn = -1
            // The field of that entry whose value is a block list below its key (`scopes:`
            // then `- a` lines), and the column of its items (-1 until the first); -1, -1.
            var listField = -1, listIndent = -1
            var i = start
            var line = firstLine
            while i < b.count {
                let (end, next) = lineEnd(from: i)
                var p = i
                while p < end, b[p] == space { p += 1 }
                let indent = p - i
                if p == end || b[p] == hash {  // blank or comment (at any column)
                    i = next; line += 1; continue
                }
                let isDash = b[p] == dash && (p + 1 == end || b[p + 1] == space)
                if listField >= 0 {
                    // Right after `key:` only a list item is understood (nothing is null, a
                    // deeper line a nested mapping: leave those to Yams).
                    if listIndent < 0 {
                        guard isDash, indent >= keyColumn else { return nil }
                        listIndent = indent
                        entry.fields[listField].listLine = line
                    }
                    if isDash, indent == listIndent {
                        guard listItem(p, end, line: line, field: listField, into: &entry) else { return nil }
                        i = next; line += 1; continue
                    }
                    listField = -1; listIndent = -1  // the list is complete
                }
                if indent == 0, !isDash { break }  // the next top-level key
                if isDash {
                    if seqIndent < 0 { seqIndent = indent } else if indent != seqIndent { return nil }
                    if keyColumn >= 0 {  // the previous block entry is complete
                        visit(self, entry, count); count += 1
                        keyColumn = -1
                    }
                    var q = p + 1
                    while q < end, b[q] == space { q += 1 }
                    guard q < end, b[q] != hash else { return nil }  // entry continues below: not handled
                    entry.reset(line: line)
                    if b[q] == openBrace {
                        guard let after = flowMapping(q, end, line: line, into: &entry), trailer(after, end) else {
                            return nil
                        }
                        visit(self, entry, count); count += 1
                    } else {
                        keyColumn = q - i
                        guard let isListBelow = blockField(q, end, line: line, into: &entry) else { return nil }
                        if isListBelow { listField = entry.fields.count - 1 }
                    }
                } else {
                    // Another field of the block entry being read, at exactly its key column.
                    guard keyColumn >= 0, indent == keyColumn,
                          let isListBelow = blockField(p, end, line: line, into: &entry) else { return nil }
                    if isListBelow { listField = entry.fields.count - 1 }
                }
                i = next; line += 1
            }
            if listField >= 0, listIndent < 0 { return nil }  // `key:` and nothing: null
            if keyColumn >= 0 { visit(self, entry, count); count += 1 }
            return count > 0 ? i : nil
        }

        /// `- scalar` of a block list, into the items of `entry.fields[field]`.
        func listItem(_ dash: Int, _ end: Int, line: Int, field: Int, into entry: inout Entry) -> Bool {
            var p = dash + 1
            while p < end, b[p] == space { p += 1 }
            guard p < end, b[p] != hash, let (item, after) = scalar(p, end, line: line, isFlow: false),
                  trailer(after, end) else { return false }
            entry.items.append(item)
            entry.fields[field].items = entry.fields[field].items.lowerBound..<entry.items.count
            return true
        }

        /// Spaces, then the end of the line or a comment (after at least one space).
        func trailer(_ i: Int, _ end: Int) -> Bool {
            if i == end { return true }
            guard b[i] == space else { return false }
            return isBlankOrComment(i, end)
        }

        /// `key: value` of a block mapping on one line: false when done, true when the
        /// value is to come below (`key:` alone: a block list may follow), nil when not
        /// understood.
        func blockField(_ start: Int, _ end: Int, line: Int, into entry: inout Entry) -> Bool? {
            guard var field = key(start, end, line: line, in: &entry, endsLine: true) else { return nil }
            var p = field.keyEnd + 1
            while p < end, b[p] == space { p += 1 }
            if p == end || b[p] == hash {
                guard p == end || p > field.keyEnd + 1 else { return nil }  // `key:#`: not a comment
                field.isList = true
                field.items = entry.items.count..<entry.items.count
                entry.fields.append(field)
                return true
            }
            guard let after = value(p, end, into: &field, entry: &entry), trailer(after, end) else { return nil }
            entry.fields.append(field)
            return false
        }

        /// `name:` followed by a space (or, `endsLine`, by the line's end): a plain key
        /// of letters, digits and `_` that the entry does not have yet (Yams refuses a
        /// repeated key: leave that to it). The field answered has no value yet.
        func key(_ start: Int, _ end: Int, line: Int, in entry: inout Entry, endsLine: Bool = false) -> Field? {
            var p = start
            while p < end, has(b[p], KeysScanner.keyByte) { p += 1 }
            guard p > start, p < end, b[p] == colon,
                  p + 1 < end ? b[p + 1] == space : endsLine else { return nil }
            let bytes = UnsafeRawBufferPointer(rebasing: b[start..<p])
            let known = KeysScanner.known(bytes)
            if known >= 0 {
                guard entry.seen & (1 << known) == 0 else { return nil }
                entry.seen |= 1 << known
            }
            if known < 0 {
                for f in entry.fields where f.known < 0 && f.keyEnd - f.keyStart == bytes.count {
                    if UnsafeRawBufferPointer(rebasing: b[f.keyStart..<f.keyEnd]).elementsEqual(bytes) { return nil }
                }
            }
            return Field(keyStart: start, keyEnd: p, known: known, line: line,
                         scalar: Scalar(start: 0, end: 0, style: .plain, line: line), isList: false, items: 0..<0,
                         listLine: line)
        }

        /// A scalar or a one-line flow list of scalars at `start` into `field`; answers
        /// the position after it.
        func value(_ start: Int, _ end: Int, into field: inout Field, entry: inout Entry) -> Int? {
            if b[start] == openBracket {
                let first = entry.items.count
                guard let after = flowList(start, end, line: field.line, into: &entry.items) else { return nil }
                field.isList = true
                field.items = first..<entry.items.count
                return after
            }
            guard let (scalar, after) = self.scalar(start, end, line: field.line, isFlow: false) else { return nil }
            field.scalar = scalar
            return after
        }

        func scalar(_ start: Int, _ end: Int, line: Int, isFlow: Bool) -> (Scalar, Int)? {
            switch b[start] {
            case quote: return singleQuoted(start, end, line: line)
            case dquote: return doubleQuoted(start, end, line: line)
            default: return plain(start, end, line: line, isFlow: isFlow)
            }
        }

        /// A plain scalar on one line. Only unambiguous text: it starts with a letter, a
        /// digit, one of `_ . / + ~ $` or a non-ASCII character (see ``multibyte(_:_:)``);
        /// a `:` inside must be followed by a letter, digit, `/`, `:`, `_`, `.`, `-` or `+`;
        /// no `#` or control byte; in a block value no flow indicator. It ends at the line's end or a comment, or (in a flow
        /// collection) at `,` `]` `}`; inner spaces are kept, trailing ones dropped.
        func plain(_ start: Int, _ end: Int, line: Int, isFlow: Bool) -> (Scalar, Int)? {
            guard has(b[start], KeysScanner.plainStart) || multibyte(start, end) != nil else { return nil }
            var p = start
            var last = start  // one past the last non-space byte
            while p < end {
                let c = b[p]
                if has(c, KeysScanner.ordinary) { p += 1; last = p; continue }
                if c >= 0x80 {
                    guard let n = multibyte(p, end) else { return nil }
                    p += n; last = p
                    continue
                }
                if c == space {
                    var q = p
                    while q < end, b[q] == space { q += 1 }
                    if q == end { p = q; break }
                    if b[q] == hash { break }  // a comment (in a flow list: not closed on this line)
                    if isFlow, b[q] == comma || b[q] == closeBracket || b[q] == closeBrace { p = q; break }
                    p = q
                    continue
                }
                if c == colon {
                    guard p + 1 < end, has(b[p + 1], KeysScanner.afterColon) else { return nil }
                    p += 1; last = p
                    continue
                }
                guard isFlow, c == comma || c == closeBracket || c == closeBrace else { return nil }
                break
            }
            return (Scalar(start: start, end: last, style: .plain, line: line), p)
        }

        /// `'…'` on one line (`''` is a quote); printable characters only.
        func singleQuoted(_ start: Int, _ end: Int, line: Int) -> (Scalar, Int)? {
            var p = start + 1
            while p < end {
                let c = b[p]
                if c == quote {
                    if p + 1 < end, b[p + 1] == quote { p += 2; continue }
                    return (Scalar(start: start + 1, end: p, style: .singleQuoted, line: line), p + 1)
                }
                if c >= 0x80 {
                    guard let n = multibyte(p, end) else { return nil }
                    p += n
                    continue
                }
                guard c >= 0x20, c < 0x7F else { return nil }
                p += 1
            }
            return nil
        }

        /// `"…"` on one line without escapes; printable characters only.
        func doubleQuoted(_ start: Int, _ end: Int, line: Int) -> (Scalar, Int)? {
            var p = start + 1
            while p < end {
                let c = b[p]
                if c == dquote { return (Scalar(start: start + 1, end: p, style: .doubleQuoted, line: line), p + 1) }
                if c >= 0x80 {
                    guard let n = multibyte(p, end) else { return nil }
                    p += n
                    continue
                }
                guard c >= 0x20, c < 0x7F, c != backslash else { return nil }
                p += 1
            }
            return nil
        }

        /// The length of the UTF-8 character at `p` when YAML reads it as an ordinary
        /// printable one: from U+00A0 on, but not LS or PS (line breaks to YAML), the byte
        /// order mark, U+FFFE or U+FFFF (below U+00A0: NEL, a line break, and controls).
        /// The text is valid UTF-8 (a Swift String).
        func multibyte(_ p: Int, _ end: Int) -> Int? {
            let c0 = UInt32(b[p])
            let n: Int
            var cp: UInt32
            switch c0 {
            case 0xC2...0xDF: n = 2; cp = c0 & 0x1F
            case 0xE0...0xEF: n = 3; cp = c0 & 0x0F
            case 0xF0...0xF4: n = 4; cp = c0 & 0x07
            default: return nil
            }
            guard p + n <= end else { return nil }
            for k in 1..<n { cp = cp << 6 | UInt32(b[p + k] & 0x3F) }
            guard cp >= 0xA0, cp != 0x2028, cp != 0x2029, cp != 0xFEFF, cp != 0xFFFE, cp != 0xFFFF else { return nil }
            return n
        }

        /// After a flow item: spaces, then `,` (more follow) or the closing byte.
        func afterItem(_ i: Int, _ end: Int, close: UInt8) -> (isLast: Bool, next: Int)? {
            var p = i
            while p < end, b[p] == space { p += 1 }
            guard p < end else { return nil }
            if b[p] == close { return (true, p + 1) }
            guard b[p] == comma else { return nil }
            p += 1
            while p < end, b[p] == space { p += 1 }
            guard p < end, b[p] != close, b[p] != comma else { return nil }  // `[a,]`, `[a,,b]`: leave to Yams
            return (false, p)
        }

        /// `[a, "b", 'c']` (or `[]`) closed on this line; items are scalars.
        func flowList(_ start: Int, _ end: Int, line: Int, into items: inout [Scalar]) -> Int? {
            var p = start + 1
            while p < end, b[p] == space { p += 1 }
            guard p < end else { return nil }
            if b[p] == closeBracket { return p + 1 }
            while true {
                guard p < end, b[p] != comma, b[p] != openBracket, b[p] != openBrace,
                      let (item, after) = scalar(p, end, line: line, isFlow: true),
                      let (isLast, next) = afterItem(after, end, close: closeBracket)
                else { return nil }
                items.append(item)
                p = next
                if isLast { return p }
            }
        }

        /// `{key: value, …}` closed on this line, at least one pair; values are scalars or
        /// flow lists of scalars.
        func flowMapping(_ start: Int, _ end: Int, line: Int, into entry: inout Entry) -> Int? {
            var p = start + 1
            while p < end, b[p] == space { p += 1 }
            while true {
                guard p < end, var field = key(p, end, line: line, in: &entry) else { return nil }
                p = field.keyEnd + 1
                while p < end, b[p] == space { p += 1 }
                guard p < end, b[p] != comma, b[p] != closeBrace, b[p] != openBrace, b[p] != hash else { return nil }
                if b[p] == openBracket {
                    let first = entry.items.count
                    guard let after = flowList(p, end, line: line, into: &entry.items) else { return nil }
                    field.isList = true
                    field.items = first..<entry.items.count
                    p = after
                } else {
                    guard let (scalar, after) = scalar(p, end, line: line, isFlow: true) else { return nil }
                    field.scalar = scalar
                    p = after
                }
                guard let (isLast, next) = afterItem(p, end, close: closeBrace) else { return nil }
                entry.fields.append(field)
                p = next
                if isLast { return p }
            }
        }
    }
}

// MARK: - Entries → keys and nodes

extension KeysScanner.Scanner {
    func bytes(_ s: KeysScanner.Scalar) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: b[s.start..<s.end]) }

    /// The scalar's value (quotes undone).
    func text(_ s: KeysScanner.Scalar) -> String {
        if s.style == .singleQuoted {
            var out: [UInt8] = []
            out.reserveCapacity(s.end - s.start)
            var p = s.start
            while p < s.end {
                out.append(b[p])
                p += b[p] == UInt8(ascii: "'") ? 2 : 1  // '' is one quote
            }
            return String(decoding: out, as: UTF8.self)
        }
        return String(decoding: bytes(s), as: UTF8.self)
    }

    /// YAML null as ``NodeReader/isNull(_:)`` decides it (a plain scalar is never empty here).
    func isNull(_ s: KeysScanner.Scalar) -> Bool {
        guard s.style == .plain else { return false }
        let t = bytes(s)
        switch t.count {
        case 1: return t[0] == UInt8(ascii: "~")
        case 4: return t.elementsEqual("null".utf8) || t.elementsEqual("Null".utf8) || t.elementsEqual("NULL".utf8)
        default: return false
        }
    }

    /// A string value as ``NodeReader/string(_:_:)`` accepts it (a scalar, not null).
    func string(_ f: KeysScanner.Field) -> KeysScanner.Scalar? {
        f.isList || isNull(f.scalar) ? nil : f.scalar
    }

    /// The entry as a ``PolicyDocument/Key`` when every field is valid, as
    /// ``NodeReader/readKey(_:index:)`` would read it; nil for anything else (that reader
    /// then says what is wrong).
    func key(_ e: KeysScanner.Entry, index: Int) -> PolicyDocument.Key? {
        typealias K = KeysScanner.Known
        var id: String?, idLine = e.line
        var hash: KeyHash?, hashLine = e.line
        var consumer: String?
        var plan: String?, planLine = e.line
        var scopes: [String] = []
        var allow: CIDRSet?
        var expires: Int64?
        var status = KeyStatus.active
        for f in e.fields {
            switch f.known {
            case K.id:
                guard let s = string(f), s.style != .singleQuoted, PolicyValues.isName(bytes(s)) else { return nil }
                id = text(s); idLine = f.line
            case K.hash:
                guard let s = string(f), s.style != .singleQuoted, let h = PolicyValues.hash(bytes(s)) else { return nil }
                hash = h; hashLine = f.line
            case K.consumer:
                guard let s = string(f), s.end > s.start else { return nil }
                consumer = text(s)
            case K.plan:
                planLine = f.line
                if !f.isList, isNull(f.scalar) { continue }
                guard let s = string(f) else { return nil }
                plan = text(s)
            case K.scopes:
                guard f.isList else { return nil }
                scopes.reserveCapacity(f.items.count)
                for s in e.items[f.items] {
                    guard !isNull(s), s.end > s.start else { return nil }
                    scopes.append(text(s))
                }
            case K.allowIPs:
                if !f.isList, isNull(f.scalar) { continue }
                guard f.isList else { return nil }
                var blocks: [CIDR] = []
                blocks.reserveCapacity(f.items.count)
                for s in e.items[f.items] {
                    guard !isNull(s), case .success(let c) = CIDR.parse(text(s)) else { return nil }
                    blocks.append(c)
                }
                allow = CIDRSet(blocks)
            case K.expires:
                if !f.isList, isNull(f.scalar) { continue }
                guard let s = string(f), s.style != .singleQuoted, let t = PolicyValues.timestamp(bytes(s)) else {
                    return nil
                }
                expires = t
            case K.status:
                guard let s = string(f) else { return nil }
                switch text(s) {
                case "active": status = .active
                case "disabled": status = .disabled
                case "revoked": status = .revoked
                default: return nil
                }
            default:
                return nil  // an unknown field
            }
        }
        guard let id, let hash, let consumer else { return nil }
        return PolicyDocument.Key(index: index, id: id, idLine: idLine, hash: hash, hashLine: hashLine,
                                  consumer: consumer, plan: plan, planLine: planLine, scopes: scopes,
                                  allowIPs: allow, expiresAt: expires, status: status)
    }

    /// The entry as the nodes Yams gives for it.
    func node(_ e: KeysScanner.Entry) -> PolicyNode {
        func scalarNode(_ s: KeysScanner.Scalar) -> PolicyNode {
            PolicyNode(.scalar(text(s), isPlain: s.style == .plain), line: s.line)
        }
        var pairs: [PolicyNode.Pair] = []
        pairs.reserveCapacity(e.fields.count)
        for f in e.fields {
            let name = f.known >= 0
                ? KeysScanner.knownKeys[f.known]
                : String(decoding: UnsafeRawBufferPointer(rebasing: b[f.keyStart..<f.keyEnd]), as: UTF8.self)
            let value = f.isList
                ? PolicyNode(.sequence(e.items[f.items].map(scalarNode)), line: f.listLine)
                : scalarNode(f.scalar)
            pairs.append(PolicyNode.Pair(key: PolicyNode(.scalar(name, isPlain: true), line: f.line), value: value))
        }
        return PolicyNode(.mapping(pairs), line: e.line)
    }
}
