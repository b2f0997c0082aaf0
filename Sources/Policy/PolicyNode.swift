import Yams

/// A YAML node as the policy reader sees it: a scalar's text and whether it is plain
/// (where `null`, `true` or `10` mean something), mappings as ordered pairs, lists, and
/// the 1-based line where each node starts.
///
/// Two producers, one reader: Yams' composed tree is converted into it (any file), and
/// ``KeysScanner``, which reads the `keys:` list of a file from its bytes, builds the
/// nodes of any entry it cannot take as valid as they are, so every error about a key
/// comes from the same ``NodeReader`` code whichever path read the file.
struct PolicyNode: Equatable {
    enum Content: Equatable {
        /// The value as written, quotes and escapes undone; tags are not kept (the reader
        /// decides from the text and `isPlain` only).
        case scalar(String, isPlain: Bool)
        case mapping([Pair])
        case sequence([PolicyNode])
        /// Yams resolves aliases while composing; kept for completeness.
        case alias
    }

    struct Pair: Equatable {
        var key: PolicyNode
        var value: PolicyNode
    }

    var content: Content
    /// 1-based.
    var line: Int

    init(_ content: Content, line: Int) {
        self.content = content
        self.line = line
    }

    /// Yams' node, converted whole.
    init(_ n: Node) {
        line = max(1, n.mark?.line ?? 1)
        switch n {
        case .scalar(let s):
            content = .scalar(s.string, isPlain: s.style == .plain)
        case .mapping(let m):
            var pairs: [Pair] = []
            pairs.reserveCapacity(m.count)
            for (k, v) in m { pairs.append(Pair(key: PolicyNode(k), value: PolicyNode(v))) }
            content = .mapping(pairs)
        case .sequence(let s):
            var items: [PolicyNode] = []
            items.reserveCapacity(s.count)
            for item in s { items.append(PolicyNode(item)) }
            content = .sequence(items)
        case .alias:
            content = .alias
        }
    }
}
