import Yams

extension PolicyDocument {
    /// Parses one file's text. Syntax and per-value errors are appended to `errors`;
    /// whatever could be read is returned so the compiler can report further problems.
    ///
    /// The `keys:` list is read by ``KeysScanner`` when the file has the shape it
    /// understands (`fastKeys`; off only to compare both paths in tests): the same keys
    /// and the same errors, without Yams' cost per key.
    static func read(yaml: String, file: String, errors: inout [PolicyError], fastKeys: Bool = true) -> PolicyDocument {
        var r = NodeReader(file: file)
        var doc = PolicyDocument(file: file)
        if fastKeys, let (root, keys) = readFast(yaml: yaml, file: file) {
            r.readDocument(root, into: &doc)
            doc.keys = keys.keys
            errors.append(contentsOf: r.errors)
            errors.append(contentsOf: keys.errors)
            return doc
        }
        let root: PolicyNode?
        do {
            root = try Yams.compose(yaml: yaml).map(PolicyNode.init)
        } catch let e as YamlError {
            errors.append(PolicyError(file: file, line: NodeReader.line(of: e), keyPath: "",
                                      reason: "invalid YAML: " + NodeReader.problem(of: e)))
            return doc
        } catch {
            errors.append(PolicyError(file: file, line: 1, keyPath: "", reason: "invalid YAML: \(error)"))
            return doc
        }
        guard let root else {
            errors.append(PolicyError(file: file, line: 1, keyPath: "", reason: "empty policy file (expected version: 1)"))
            return doc
        }
        r.readDocument(root, into: &doc)
        errors.append(contentsOf: r.errors)
        return doc
    }

    /// The file's tree without its keys (`keys` is null in it), and the keys read by
    /// ``KeysScanner``; nil when the scanner does not understand the file, the rest is
    /// not valid YAML (errors are then reported from the whole text, as without the fast
    /// path), or `keys` is not a top-level key at the line the scanner found it.
    static func readFast(yaml: String, file: String) -> (PolicyNode, KeysScanner.Result)? {
        guard let keys = KeysScanner.read(yaml, file: file),
              let composed = try? Yams.compose(yaml: keys.rest)
        else { return nil }
        let root = PolicyNode(composed)
        guard case .mapping(let pairs) = root.content else { return nil }
        var found = 0
        for pair in pairs {
            guard case .scalar("keys", isPlain: true) = pair.key.content else { continue }
            guard pair.key.line == keys.keysLine, case .scalar("", isPlain: true) = pair.value.content else { return nil }
            found += 1
        }
        guard found == 1 else { return nil }
        return (root, keys)
    }
}

/// Walks a file's nodes with line numbers, reporting every problem it sees.
struct NodeReader {
    let file: String
    var errors: [PolicyError] = []

    init(file: String) { self.file = file }

    static func line(of e: YamlError) -> Int {
        switch e {
        case .scanner(_, _, let m, _), .parser(_, _, let m, _), .composer(_, _, let m, _): return max(1, m.line)
        case .duplicatedKeysInMapping(_, let ctx): return max(1, ctx.mark.line)
        default: return 1
        }
    }

    static func problem(of e: YamlError) -> String {
        switch e {
        case .scanner(let c, let p, _, _), .parser(let c, let p, _, _), .composer(let c, let p, _, _):
            if let c { return "\(p) (\(c.text))" }
            return p
        case .duplicatedKeysInMapping(let d, _): return "duplicate key " + d.map { "'\($0)'" }.joined(separator: ", ")
        default: return "\(e)".split(separator: "\n").first.map(String.init) ?? "unreadable"
        }
    }

    // MARK: - Primitives

    func loc(_ n: PolicyNode, _ path: String) -> SourceLocation {
        SourceLocation(file: file, line: n.line, keyPath: path)
    }

    mutating func fail(_ n: PolicyNode, _ path: String, _ reason: String) {
        errors.append(PolicyError(file: file, line: n.line, keyPath: path, reason: reason))
    }

    static func join(_ path: String, _ key: String) -> String { path.isEmpty ? key : path + "." + key }

    /// The entries of a mapping, keys as strings; nil (with an error) if `n` is not one.
    /// An entry whose key is not a scalar is reported here and skipped by the view.
    mutating func mapping(_ n: PolicyNode, _ path: @autoclosure () -> String) -> Entries? {
        guard case .mapping(let m) = n.content else {
            fail(n, path(), "expected a mapping, found \(NodeReader.kind(n))")
            return nil
        }
        for pair in m {
            guard case .scalar = pair.key.content else {
                fail(pair.key, path(), "mapping keys must be plain strings")
                continue
            }
        }
        return Entries(pairs: m)
    }

    /// A mapping's entries with scalar keys, `(key, keyNode, value)`, without copying them.
    struct Entries: Sequence {
        let pairs: [PolicyNode.Pair]

        struct Iterator: IteratorProtocol {
            let pairs: [PolicyNode.Pair]
            var i = 0

            mutating func next() -> (key: String, keyNode: PolicyNode, value: PolicyNode)? {
                while i < pairs.count {
                    let pair = pairs[i]
                    i += 1
                    if case .scalar(let s, _) = pair.key.content { return (s, pair.key, pair.value) }
                }
                return nil
            }
        }

        func makeIterator() -> Iterator { Iterator(pairs: pairs) }

        var isEmpty: Bool { first { _ in true } == nil }
    }

    mutating func sequence(_ n: PolicyNode, _ path: @autoclosure () -> String) -> [PolicyNode]? {
        guard case .sequence(let s) = n.content else {
            fail(n, path(), "expected a list, found \(NodeReader.kind(n))")
            return nil
        }
        return s
    }

    static func kind(_ n: PolicyNode) -> String {
        switch n.content {
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        case .scalar(let s, _):
            if isNull(n) { return "null" }
            return "'\(s)'"
        }
    }

    /// YAML core-schema null, decided from the text (plain style only) rather than via
    /// Yams' `Node.tag`, whose resolver runs regular expressions for every scalar.
    static func isNull(_ n: PolicyNode) -> Bool {
        guard case .scalar(let s, isPlain: true) = n.content else { return false }
        switch s {
        case "", "~", "null", "Null", "NULL": return true
        default: return false
        }
    }

    mutating func string(_ n: PolicyNode, _ path: @autoclosure () -> String) -> String? {
        guard case .scalar(let s, _) = n.content, !NodeReader.isNull(n) else {
            fail(n, path(), "expected a string, found \(NodeReader.kind(n))")
            return nil
        }
        return s
    }

    mutating func nonEmptyString(_ n: PolicyNode, _ path: @autoclosure () -> String) -> String? {
        guard let s = string(n, path()) else { return nil }
        guard !s.isEmpty else { fail(n, path(), "must not be empty"); return nil }
        return s
    }

    mutating func name(_ n: PolicyNode, _ path: @autoclosure () -> String) -> String? {
        guard let s = string(n, path()) else { return nil }
        guard PolicyValues.isName(s) else {
            fail(n, path(), "invalid name '\(s)' (letters, digits, '-', '_', '.', ':')")
            return nil
        }
        return s
    }

    mutating func int(_ n: PolicyNode, _ path: @autoclosure () -> String, min: Int, max: Int = Int.max) -> Int? {
        guard case .scalar(let s, isPlain: true) = n.content, let v = Int(s) else {
            fail(n, path(), "expected an integer, found \(NodeReader.kind(n))")
            return nil
        }
        guard v >= min, v <= max else {
            fail(n, path(), max == Int.max ? "must be at least \(min)" : "must be between \(min) and \(max)")
            return nil
        }
        return v
    }

    mutating func bool(_ n: PolicyNode, _ path: @autoclosure () -> String) -> Bool? {
        guard case .scalar(let s, isPlain: true) = n.content else {
            fail(n, path(), "expected true or false, found \(NodeReader.kind(n))")
            return nil
        }
        switch s {
        case "true", "True", "TRUE": return true
        case "false", "False", "FALSE": return false
        default:
            fail(n, path(), "expected true or false, found '\(s)'")
            return nil
        }
    }

    mutating func duration(_ n: PolicyNode, _ path: @autoclosure () -> String, allowZero: Bool = false) -> Duration? {
        guard let s = string(n, path()) else { return nil }
        guard let d = PolicyValues.duration(s) else {
            fail(n, path(), "invalid duration '\(s)' (expected a number followed by ms, s, m, h or d)")
            return nil
        }
        guard allowZero || d > .zero else { fail(n, path(), "duration must be greater than zero"); return nil }
        return d
    }

    mutating func size(_ n: PolicyNode, _ path: @autoclosure () -> String) -> Int? {
        guard let s = string(n, path()) else { return nil }
        guard let v = PolicyValues.size(s), v > 0 else {
            fail(n, path(), "invalid size '\(s)' (expected bytes, or a number followed by KiB, MiB or GiB)")
            return nil
        }
        return v
    }

    mutating func stringList(_ n: PolicyNode, _ path: @autoclosure () -> String) -> [String]? {
        guard let items = sequence(n, path()) else { return nil }
        var out: [String] = []
        var ok = true
        for (i, item) in items.enumerated() {
            if let s = nonEmptyString(item, "\(path())[\(i)]") { out.append(s) } else { ok = false }
        }
        return ok ? out : nil
    }

    mutating func cidrs(_ n: PolicyNode, _ path: @autoclosure () -> String) -> CIDRSet? {
        guard let items = sequence(n, path()) else { return nil }
        var out: [CIDR] = []
        var ok = true
        for (i, item) in items.enumerated() {
            guard let s = string(item, "\(path())[\(i)]") else { ok = false; continue }
            switch CIDR.parse(s) {
            case .success(let c): out.append(c)
            case .failure(.hostBitsSet):
                fail(item, "\(path())[\(i)]", "invalid CIDR '\(s)' (address has bits set beyond the prefix)"); ok = false
            case .failure:
                fail(item, "\(path())[\(i)]", "invalid CIDR '\(s)'"); ok = false
            }
        }
        return ok ? CIDRSet(out) : nil
    }

    mutating func address(_ n: PolicyNode, _ path: @autoclosure () -> String) -> PolicyValues.HostPort? {
        guard let s = string(n, path()) else { return nil }
        guard let a = PolicyValues.address(s, allowZeroPort: true) else {
            fail(n, path(), "invalid address '\(s)' (expected IPv4:port, [IPv6]:port or localhost:port)")
            return nil
        }
        return a
    }

    mutating func unknown(_ keyNode: PolicyNode, _ path: String) {
        fail(keyNode, path, "unknown field")
    }

    /// A setting of the contract (POLICY.md) that is not built yet: refused at its key, so
    /// nothing is read and then silently ignored.
    mutating func notSupportedYet(_ keyNode: PolicyNode, _ path: String, _ what: String? = nil) {
        fail(keyNode, path, what.map { "not supported yet (\($0))" } ?? "not supported yet")
    }

    /// Refuses a block that is not built yet; inside a mapping, the contract's `fields`
    /// are accepted (the one error is "not supported yet") and any other is unknown.
    mutating func refuse(_ keyNode: PolicyNode, _ value: PolicyNode, _ path: String, fields: Set<String>) {
        notSupportedYet(keyNode, path)
        guard case .mapping(let m) = value.content else { return }
        for pair in m {
            guard case .scalar(let s, _) = pair.key.content else { continue }
            if !fields.contains(s) { unknown(pair.key, NodeReader.join(path, s)) }
        }
    }

    mutating func missing(_ n: PolicyNode, _ path: String, _ field: String) {
        fail(n, NodeReader.join(path, field), "missing required field")
    }

    // MARK: - Document

    mutating func readDocument(_ root: PolicyNode, into doc: inout PolicyDocument) {
        guard let top = mapping(root, "") else { return }
        for (k, kn, v) in top {
            // An empty list/map section (`keys:` with every entry commented out) is empty.
            if ["listen", "backends", "plans", "routes", "keys"].contains(k), NodeReader.isNull(v) { continue }
            switch k {
            case "version":
                if let n = int(v, k, min: 0) {
                    if n == 1 { doc.version = 1 } else { fail(v, k, "unsupported version \(n) (expected 1)") }
                }
            case "listen":
                guard let items = sequence(v, k) else { continue }
                for (i, item) in items.enumerated() {
                    if let l = readListen(item, "listen[\(i)]") { doc.listen.append(l) }
                }
            case "admin":
                if let a = readAdmin(v, k) { doc.admin = .init(value: a, at: loc(kn, k)) }
            case "access_log":
                if let a = readAccessLog(v, k) { doc.accessLog = .init(value: a, at: loc(kn, k)) }
            case "store":
                if let s = readStore(v, k) { doc.store = .init(value: s, at: loc(kn, k)) }
            case "clients":
                if let c = readClients(v, k) { doc.clients = .init(value: c, at: loc(kn, k)) }
            case "credentials":
                if let c = readCredentials(v, k) { doc.credentials = .init(value: c, at: loc(kn, k)) }
            case "backends":
                guard let m = mapping(v, k) else { continue }
                for (name, nameNode, b) in m {
                    let p = k + "." + name
                    guard PolicyValues.isName(name) else { fail(nameNode, p, "invalid backend name"); continue }
                    if let be = readBackend(b, p, name: name, at: loc(nameNode, p)) { doc.backends.append(be) }
                }
            case "plans":
                guard let m = mapping(v, k) else { continue }
                for (name, nameNode, pl) in m {
                    let p = k + "." + name
                    guard PolicyValues.isName(name) else { fail(nameNode, p, "invalid plan name"); continue }
                    if let plan = readPlan(pl, p, name: name, at: loc(nameNode, p)) { doc.plans.append(plan) }
                }
            case "routes":
                guard let items = sequence(v, k) else { continue }
                for (i, item) in items.enumerated() {
                    if let rt = readRoute(item, "routes[\(i)]") { doc.routes.append(rt) }
                }
            case "keys":
                guard let items = sequence(v, k) else { continue }
                doc.keys.reserveCapacity(items.count)
                for (i, item) in items.enumerated() {
                    if let key = readKey(item, index: i) { doc.keys.append(key) }
                }
            case "usage":
                if let u = readUsage(v, k) { doc.usage = .init(value: u, at: loc(kn, k)) }
            case "audit":
                if let a = readAudit(v, k) { doc.audit = .init(value: a, at: loc(kn, k)) }
            case "credits":
                if let c = readCredits(v, k) { doc.credits = .init(value: c, at: loc(kn, k)) }
            case "secrets":
                if let sp = readSecrets(v, k) { doc.secrets = .init(value: sp, at: loc(kn, k)) }
            case "security":
                if let sec = readSecurity(v, k) { doc.security = .init(value: sec, at: loc(kn, k)) }
            default:
                unknown(kn, k)
            }
        }
        // A keys-only file (thousands of keys kept on their own) may omit `version`.
        let keysOnly = !top.isEmpty && top.allSatisfy { $0.0 == "keys" }
        if doc.version == nil, !keysOnly, !top.contains(where: { $0.0 == "version" }) {
            fail(root, "version", "missing required field (expected version: 1)")
        }
    }

    mutating func readListen(_ n: PolicyNode, _ path: String) -> PolicyDocument.Listen? {
        guard let m = mapping(n, path) else { return nil }
        var address: PolicyValues.HostPort?
        var tls: TLSSpec?
        var ok = true
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "address": address = self.address(v, p); ok = ok && address != nil
            case "tls":
                if let t = readTLS(v, p) { tls = t } else { ok = false }
            default: unknown(kn, p); ok = false
            }
        }
        if !m.contains(where: { $0.key == "address" }) { missing(n, path, "address") }
        guard ok, let address else { return nil }
        return .init(address: address, tls: tls)
    }

    /// `tls: {certificate, private_key}` or `tls: {certificates: [{certificate, private_key}, …]}`,
    /// plus `min_version` ("1.2" | "1.3") and `session_resumption` (bool).
    mutating func readTLS(_ n: PolicyNode, _ path: String) -> TLSSpec? {
        guard let m = mapping(n, path) else { return nil }
        var single: (cert: String?, key: String?) = (nil, nil)
        var many: [TLSSpec.Certificate] = []
        var minVersion = TLSSpec.Version.tls12
        var resumption = true
        var ok = true
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "certificate": single.cert = nonEmptyString(v, p).map { PolicyValues.resolve($0, relativeToFileAt: file) }
            case "private_key": single.key = nonEmptyString(v, p).map { PolicyValues.resolve($0, relativeToFileAt: file) }
            case "certificates":
                guard let items = sequence(v, p) else { ok = false; continue }
                if items.isEmpty { fail(v, p, "at least one certificate is needed"); ok = false }
                for (i, item) in items.enumerated() {
                    let ip = "\(p)[\(i)]"
                    guard let im = mapping(item, ip) else { ok = false; continue }
                    var c: String?, key: String?
                    for (ck, ckn, cv) in im {
                        let cp = NodeReader.join(ip, ck)
                        switch ck {
                        case "certificate": c = nonEmptyString(cv, cp).map { PolicyValues.resolve($0, relativeToFileAt: file) }
                        case "private_key": key = nonEmptyString(cv, cp).map { PolicyValues.resolve($0, relativeToFileAt: file) }
                        default: unknown(ckn, cp); ok = false
                        }
                    }
                    if !im.contains(where: { $0.key == "certificate" }) { missing(item, ip, "certificate"); ok = false }
                    if !im.contains(where: { $0.key == "private_key" }) { missing(item, ip, "private_key"); ok = false }
                    if let c, let key { many.append(.init(certificate: c, privateKey: key)) } else { ok = false }
                }
            case "min_version":
                guard let s = string(v, p) else { ok = false; continue }
                if let ver = TLSSpec.Version(rawValue: s) { minVersion = ver } else {
                    fail(v, p, "unsupported TLS version '\(s)' (expected \"1.2\" or \"1.3\"; nothing older)"); ok = false
                }
            case "session_resumption":
                if let b = bool(v, p) { resumption = b } else { ok = false }
            default: unknown(kn, p); ok = false
            }
        }
        let hasSingle = m.contains(where: { $0.key == "certificate" || $0.key == "private_key" })
        if hasSingle && m.contains(where: { $0.key == "certificates" }) {
            fail(n, path, "give either certificate + private_key or certificates, not both"); ok = false
        } else if hasSingle {
            if !m.contains(where: { $0.key == "certificate" }) { missing(n, path, "certificate"); ok = false }
            if !m.contains(where: { $0.key == "private_key" }) { missing(n, path, "private_key"); ok = false }
            if let c = single.cert, let k = single.key { many = [.init(certificate: c, privateKey: k)] } else { ok = false }
        } else if !m.contains(where: { $0.key == "certificates" }) {
            missing(n, path, "certificate"); ok = false
        }
        guard ok else { return nil }
        return TLSSpec(certificates: many, minVersion: minVersion, sessionResumption: resumption,
                       location: "\(file):\(n.line)")
    }

    mutating func readAdmin(_ n: PolicyNode, _ path: String) -> PolicyDocument.Admin? {
        guard let m = mapping(n, path) else { return nil }
        var address: PolicyValues.HostPort?
        var tokensFile: String?
        var ok = true
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "address": address = self.address(v, p)
            case "tokens_file":
                if NodeReader.isNull(v) { continue }
                if let s = nonEmptyString(v, p) { tokensFile = PolicyValues.resolve(s, relativeToFileAt: file) } else { ok = false }
            default: unknown(kn, p)
            }
            _ = kn
        }
        if !m.contains(where: { $0.key == "address" }) { missing(n, path, "address") }
        guard ok else { return nil }
        return address.map { .init(address: $0, tokensFile: tokensFile) }
    }

    /// `access_log: {path: PATH}`: "-" is standard output; a relative path is resolved
    /// against the directory of the file that names it.
    mutating func readAccessLog(_ n: PolicyNode, _ path: String) -> PolicyDocument.AccessLog? {
        guard let m = mapping(n, path) else { return nil }
        var target: AccessLogSpec.Target?
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "path":
                guard let s = nonEmptyString(v, p) else { continue }
                target = s == "-" ? .stdout : .file(PolicyValues.resolve(s, relativeToFileAt: file))
            default: unknown(kn, p)
            }
        }
        if !m.contains(where: { $0.key == "path" }) { missing(n, path, "path") }
        return target.map { .init(target: $0) }
    }

    mutating func readUsage(_ n: PolicyNode, _ path: String) -> UsageSpec? {
        guard let m = mapping(n, path) else { return nil }
        var spool: String?
        var durability: Duration = .milliseconds(100)
        var sinks: [UsageSinkSpec] = []
        var ok = true
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "spool":
                if let s = nonEmptyString(v, p) { spool = PolicyValues.resolve(s, relativeToFileAt: file) } else { ok = false }
            case "durability":
                if let d = duration(v, p, allowZero: true) { durability = d } else { ok = false }
            case "sinks":
                guard let items = sequence(v, p) else { ok = false; continue }
                for (i, item) in items.enumerated() {
                    if let s = readUsageSink(item, "\(p)[\(i)]") { sinks.append(s) } else { ok = false }
                }
            default:
                unknown(kn, p)
                ok = false
            }
        }
        if !m.contains(where: { $0.key == "spool" }) { missing(n, path, "spool"); ok = false }
        var seen = Set<String>()
        for s in sinks where !seen.insert(s.id).inserted {
            fail(n, path + ".sinks", "two sinks deliver to the same place (\(s.label))")
            ok = false
        }
        guard ok, let spool else { return nil }
        return UsageSpec(spool: spool, durability: durability, sinks: sinks)
    }

    mutating func readUsageSink(_ n: PolicyNode, _ path: String) -> UsageSinkSpec? {
        guard let m = mapping(n, path) else { return nil }
        guard let kindEntry = m.first(where: { $0.key == "kind" }) else { missing(n, path, "kind"); return nil }
        guard let kind = string(kindEntry.value, path + ".kind") else { return nil }
        switch kind {
        case "file":
            var filePath: String?
            var rotate = 100 << 20
            var keep = 10
            var ok = true
            for (k, kn, v) in m {
                let p = NodeReader.join(path, k)
                switch k {
                case "kind": break
                case "path":
                    if let s = nonEmptyString(v, p) { filePath = PolicyValues.resolve(s, relativeToFileAt: file) } else { ok = false }
                case "rotate":
                    guard let r = mapping(v, p) else { ok = false; continue }
                    for (rk, rkn, rv) in r {
                        let rp = NodeReader.join(p, rk)
                        switch rk {
                        case "size": if let s = size(rv, rp) { rotate = s } else { ok = false }
                        case "keep": if let n = int(rv, rp, min: 0, max: 1000) { keep = n } else { ok = false }
                        default: unknown(rkn, rp); ok = false
                        }
                    }
                default: unknown(kn, p); ok = false
                }
            }
            if !m.contains(where: { $0.key == "path" }) { missing(n, path, "path"); ok = false }
            guard ok, let filePath else { return nil }
            return UsageSinkSpec(kind: .file(path: filePath, rotateBytes: rotate, keep: keep),
                                 id: "file-" + PolicyValues.shortDigest(filePath), label: "file:" + filePath)
        case "redis_stream":
            var stream = "tg:usage"
            var maxLength = 1_000_000
            var ok = true
            for (k, kn, v) in m {
                let p = NodeReader.join(path, k)
                switch k {
                case "kind": break
                case "stream": if let s = nonEmptyString(v, p) { stream = s } else { ok = false }
                case "maxlen": if let n = int(v, p, min: 1) { maxLength = n } else { ok = false }
                default: unknown(kn, p); ok = false
                }
            }
            guard ok else { return nil }
            return UsageSinkSpec(kind: .redisStream(stream: stream, maxLength: maxLength),
                                 id: "redis-" + PolicyValues.shortDigest(stream), label: "redis_stream:" + stream)
        case "http":
            var url: PolicyValues.ParsedURL?
            var format = UsageSinkSpec.HTTPFormat.json
            var timeout: Duration = .seconds(5)
            var batch = 100
            var tls = false
            var caFile: String?
            var caNode: PolicyNode?
            var ok = true
            for (k, kn, v) in m {
                let p = NodeReader.join(path, k)
                switch k {
                case "kind": break
                case "url":
                    guard let s = nonEmptyString(v, p) else { ok = false; continue }
                    guard let u = PolicyValues.url(s, schemes: ["http": 80, "https": 443]) else {
                        fail(v, p, "invalid URL '\(s)' (expected http(s)://host[:port][/path])"); ok = false; continue
                    }
                    url = u
                    tls = s.hasPrefix("https://")
                case "ca_file":
                    if let f = nonEmptyString(v, p) { caFile = PolicyValues.resolve(f, relativeToFileAt: file); caNode = v } else { ok = false }
                case "format":
                    guard let s = string(v, p) else { ok = false; continue }
                    if let f = UsageSinkSpec.HTTPFormat(rawValue: s) { format = f } else {
                        fail(v, p, "invalid value '\(s)' (expected json or accounting)"); ok = false
                    }
                case "timeout": if let d = duration(v, p) { timeout = d } else { ok = false }
                case "batch": if let n = int(v, p, min: 1, max: 10_000) { batch = n } else { ok = false }
                default: unknown(kn, p); ok = false
                }
            }
            if !m.contains(where: { $0.key == "url" }) { missing(n, path, "url"); ok = false }
            if let caNode, !tls, ok { fail(caNode, path + ".ca_file", "ca_file needs an https:// url"); ok = false }
            guard ok, let url else { return nil }
            let target = "\(url.isIPv6 ? "[\(url.host)]" : url.host):\(url.port)\(url.basePath.isEmpty ? "/" : url.basePath)"
            return UsageSinkSpec(kind: .http(host: url.host, port: url.port, path: url.basePath.isEmpty ? "/" : url.basePath,
                                             format: format, timeout: timeout, batch: batch, tls: tls, caFile: caFile),
                                 id: "http-" + PolicyValues.shortDigest(target + format.rawValue), label: "http:" + target)
        default:
            fail(kindEntry.value, path + ".kind", "invalid value '\(kind)' (expected file, redis_stream or http)")
            return nil
        }
    }

    /// `audit: {path, signing_key, checkpoint: {every, interval}}`: relative paths are
    /// resolved against the directory of the file that names them. The key file is read by
    /// `check` and `serve` (no I/O here).
    mutating func readAudit(_ n: PolicyNode, _ path: String) -> PolicyDocument.Audit? {
        guard let m = mapping(n, path) else { return nil }
        var target: String?
        var a = PolicyDocument.Audit(path: "")
        var ok = true
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "path":
                target = nonEmptyString(v, p).map { PolicyValues.resolve($0, relativeToFileAt: file) }
                ok = ok && target != nil
            case "signing_key":
                if NodeReader.isNull(v) { continue }
                guard let s = nonEmptyString(v, p) else { ok = false; continue }
                a.signingKey = PolicyValues.resolve(s, relativeToFileAt: file)
                a.signingKeyAt = loc(v, p)
            case "checkpoint":
                guard let cm = mapping(v, p) else { ok = false; continue }
                for (ck, ckn, cv) in cm {
                    let cp = NodeReader.join(p, ck)
                    switch ck {
                    case "every":
                        if let i = int(cv, cp, min: 1, max: 100_000_000) { a.every = i } else { ok = false }
                    case "interval":
                        if let d = duration(cv, cp) { a.interval = d } else { ok = false }
                    default: unknown(ckn, cp); ok = false
                    }
                }
            default: unknown(kn, p); ok = false
            }
        }
        if !m.contains(where: { $0.key == "path" }) { missing(n, path, "path"); ok = false }
        guard ok, let target else { return nil }
        a.path = target
        return a
    }

    mutating func readCredits(_ n: PolicyNode, _ path: String) -> CreditsSpec? {
        guard let m = mapping(n, path) else { return nil }
        var c = CreditsSpec()
        var ok = true
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "ledger":
                guard let s = string(v, p) else { ok = false; continue }
                switch CreditsSpec.Ledger(rawValue: s) {
                case .local?: c.ledger = .local
                case .redis?: c.ledger = .redis
                case .accounting?: c.ledger = .accounting
                case nil: fail(v, p, "invalid value '\(s)' (expected local, redis or accounting)"); ok = false
                }
            case "account":
                guard let s = string(v, p) else { ok = false; continue }
                if let a = CreditsSpec.Account(rawValue: s) { c.account = a } else {
                    fail(v, p, "invalid value '\(s)' (expected consumer or key)"); ok = false
                }
            case "on_error":
                guard let s = string(v, p) else { ok = false; continue }
                if let e = CreditsSpec.OnError(rawValue: s) { c.onError = e } else {
                    fail(v, p, "invalid value '\(s)' (expected closed or open)"); ok = false
                }
            case "path":
                if let s = nonEmptyString(v, p) { c.path = PolicyValues.resolve(s, relativeToFileAt: file) } else { ok = false }
            case "reservation_ttl":
                if let d = duration(v, p) { c.reservationTTL = d } else { ok = false }
            case "accounting":
                guard let am = mapping(v, p) else { ok = false; continue }
                for (ak, akn, av) in am {
                    let ap = NodeReader.join(p, ak)
                    switch ak {
                    case "backend": c.accountingBackend = self.name(av, ap); ok = ok && c.accountingBackend != nil
                    case "token_env": c.accountingTokenEnv = nonEmptyString(av, ap); ok = ok && c.accountingTokenEnv != nil
                    default: unknown(akn, ap); ok = false
                    }
                }
                if c.accountingBackend == nil && ok { missing(v, p, "backend"); ok = false }
                if c.accountingTokenEnv == nil && ok { missing(v, p, "token_env"); ok = false }
            default:
                unknown(kn, p); ok = false
            }
        }
        if ok, c.ledger == .accounting, c.accountingBackend == nil {
            fail(n, path, "ledger: accounting needs accounting: {backend, token_env}"); ok = false
        }
        return ok ? c : nil
    }

    mutating func readRouteCredits(_ n: PolicyNode, _ path: String) -> RouteCredits? {
        guard let m = mapping(n, path) else { return nil }
        var c = RouteCredits()
        var ok = true
        let cap = 1_000_000_000_000
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "per_request":
                if let i = int(v, p, min: 0, max: cap) { c.perRequest = Int64(i) } else { ok = false }
            case "per_token":
                guard let tm = mapping(v, p) else { ok = false; continue }
                var price = RouteCredits.TokenPrice(input: 0, output: 0, per: 1000)
                var sawOutput = false
                for (tk, tkn, tv) in tm {
                    let tp = NodeReader.join(p, tk)
                    switch tk {
                    case "input": if let i = int(tv, tp, min: 0, max: cap) { price.input = Int64(i) } else { ok = false }
                    case "output":
                        sawOutput = true
                        if let i = int(tv, tp, min: 0, max: cap) { price.output = Int64(i) } else { ok = false }
                    case "per": if let i = int(tv, tp, min: 1, max: 1_000_000_000) { price.per = Int64(i) } else { ok = false }
                    default: unknown(tkn, tp); ok = false
                    }
                }
                if !sawOutput { missing(v, p, "output"); ok = false }
                c.perToken = price
            case "stream":
                guard let s = string(v, p) else { ok = false; continue }
                switch s {
                case "flowise": c.stream = .flowise
                case "openai": c.stream = .openai
                default: fail(v, p, "invalid value '\(s)' (expected flowise or openai)"); ok = false
                }
            case "reserve_tokens":
                if let i = int(v, p, min: 1, max: 10_000_000) { c.reserveTokens = Int64(i) } else { ok = false }
            case "refund_on":
                guard let names = stringList(v, p) else { ok = false; continue }
                var set: RouteCredits.Refunds = []
                for (i, s) in names.enumerated() {
                    switch s {
                    case "5xx": set.insert(.serverError)
                    case "4xx": set.insert(.clientError)
                    case "unavailable": set.insert(.unavailable)
                    default: fail(v, "\(p)[\(i)]", "invalid value '\(s)' (expected 5xx, 4xx or unavailable)"); ok = false
                    }
                }
                c.refundOn = set
            default:
                unknown(kn, p); ok = false
            }
        }
        if ok, c.perRequest == 0, c.perToken == nil {
            fail(n, path, "needs per_request or per_token (a price)"); ok = false
        }
        if ok, c.stream != nil, c.perToken == nil, let sn = m.first(where: { $0.key == "stream" }) {
            fail(sn.keyNode, NodeReader.join(path, "stream"), "metering a stream needs per_token (a price per token)"); ok = false
        }
        return ok ? c : nil
    }

    mutating func readStore(_ n: PolicyNode, _ path: String) -> PolicyDocument.Store? {
        guard let m = mapping(n, path) else { return nil }
        var s = PolicyDocument.Store()
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "redis":
                if NodeReader.isNull(v) { continue }
                guard let text = string(v, p) else { continue }
                do { s.redis = try RedisURL(parsing: text) } catch { fail(v, p, error.description) }
            case "on_error":
                guard let text = string(v, p) else { continue }
                if let mode = StoreFailMode(rawValue: text) { s.onError = mode } else {
                    fail(v, p, "invalid value '\(text)' (expected closed, open or local)")
                }
            case "deadline":
                if let d = duration(v, p) { s.deadline = d }
            default: unknown(kn, p)
            }
        }
        return s
    }

    mutating func readClients(_ n: PolicyNode, _ path: String) -> ClientRules? {
        guard let m = mapping(n, path) else { return nil }
        var c = ClientRules()
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "trusted_proxies": if let s = cidrs(v, p) { c.trustedProxies = s }
            case "deny": if let s = cidrs(v, p) { c.deny = s }
            case "allow": if let s = cidrs(v, p) { c.allow = s }
            default: unknown(kn, p)
            }
        }
        return c
    }

    mutating func readCredentials(_ n: PolicyNode, _ path: String) -> PolicyDocument.Credentials? {
        guard let m = mapping(n, path) else { return nil }
        var c = PolicyDocument.Credentials()
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "api_key":
                guard let a = mapping(v, p) else { continue }
                for (ak, akn, av) in a {
                    let ap = NodeReader.join(p, ak)
                    switch ak {
                    case "headers":
                        guard let hs = stringList(av, ap) else { continue }
                        var good: [String] = []
                        for (i, h) in hs.enumerated() {
                            if PolicyValues.isToken(h), h.lowercased() != "authorization" { good.append(h) } else {
                                fail(av, "\(ap)[\(i)]", "invalid header name '\(h)'")
                            }
                        }
                        c.headers = good
                    case "query":
                        if NodeReader.isNull(av) { c.query = nil; continue }
                        if let q = nonEmptyString(av, ap) {
                            if q.utf8.allSatisfy({ PathNormalizer.isUnreserved($0) }) { c.query = q } else {
                                fail(av, ap, "invalid query parameter name '\(q)'")
                            }
                        }
                    case "forward":
                        if let b = bool(av, ap) { c.forward = b }
                    default: unknown(akn, ap)
                    }
                }
            case "jwt":
                c.jwt = readJWT(v, p, at: loc(kn, p))
            default: unknown(kn, p)
            }
        }
        return c
    }

    /// `credentials.jwt` (see ``JWTVerifier``). The secret and the keys file are read by the
    /// compiler; here only their names and paths (keys files resolve against this file's
    /// directory).
    mutating func readJWT(_ n: PolicyNode, _ path: String, at: SourceLocation) -> PolicyDocument.JWT? {
        guard let m = mapping(n, path) else { return nil }
        var j = PolicyDocument.JWT(at: at, algorithmsAt: at)
        var ok = true
        var encodingNode: (PolicyNode, String)?
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "algorithms":
                j.algorithmsAt = loc(v, p)
                guard let names = stringList(v, p) else { ok = false; continue }
                if names.isEmpty { fail(v, p, "must pin at least one algorithm"); ok = false }
                for (i, name) in names.enumerated() {
                    let ip = "\(p)[\(i)]"
                    if let a = JWTAlgorithm(rawValue: name) {
                        if j.algorithms.contains(a) { fail(v, ip, "'\(name)' listed twice"); ok = false } else { j.algorithms.append(a) }
                    } else if name.lowercased() == "none" {
                        fail(v, ip, "'\(name)' is never accepted (a token must be signed)"); ok = false
                    } else if let why = JWTAlgorithm.notImplemented(name) {
                        fail(v, ip, "unsupported algorithm '\(name)': \(why)"); ok = false
                    } else {
                        fail(v, ip, "unsupported algorithm '\(name)' (\(JWTAlgorithm.supportedNames))"); ok = false
                    }
                }
            case "secret_env":
                if NodeReader.isNull(v) { continue }
                guard let name = nonEmptyString(v, p) else { ok = false; continue }
                j.secretEnv = name
                j.secretEnvAt = loc(v, p)
            case "secret_encoding":
                if NodeReader.isNull(v) { continue }
                guard let e = string(v, p) else { ok = false; continue }
                switch e {
                case "raw": j.secretIsBase64URL = false
                case "base64url": j.secretIsBase64URL = true
                default: fail(v, p, "invalid value '\(e)' (expected raw or base64url)"); ok = false
                }
                encodingNode = (kn, p)
            case "keys_file":
                if NodeReader.isNull(v) { continue }
                guard let f = nonEmptyString(v, p) else { ok = false; continue }
                j.keysFile = PolicyValues.resolve(f, relativeToFileAt: file)
                j.keysFileAt = loc(v, p)
            case "issuer":
                if NodeReader.isNull(v) { continue }
                if let list = stringOrList(v, p) { j.issuers = list } else { ok = false }
            case "audience":
                if NodeReader.isNull(v) { continue }
                if let list = stringOrList(v, p) { j.audiences = list } else { ok = false }
            case "required_claims":
                if NodeReader.isNull(v) { continue }
                guard let cm = mapping(v, p) else { ok = false; continue }
                for (ck, ckn, cv) in cm {
                    let cp = NodeReader.join(p, ck)
                    guard !ck.isEmpty else { fail(ckn, cp, "a claim name must not be empty"); ok = false; continue }
                    guard case .scalar(let text, let isPlain) = cv.content, !NodeReader.isNull(cv) else {
                        fail(cv, cp, "expected a string, an integer, true or false, found \(NodeReader.kind(cv))"); ok = false; continue
                    }
                    var value = JWTClaimValue.string(text)
                    if isPlain {
                        switch text {
                        case "true", "True", "TRUE": value = .bool(true)
                        case "false", "False", "FALSE": value = .bool(false)
                        default: if let i = Int64(text) { value = .integer(i) }
                        }
                    }
                    j.requiredClaims.append(.init(name: ck, value: value))
                }
                if j.requiredClaims.count > JWTSettings.maxRequiredClaims {
                    fail(v, p, "at most \(JWTSettings.maxRequiredClaims) required claims"); ok = false
                }
            case "leeway":
                guard let d = duration(v, p, allowZero: true) else { ok = false; continue }
                if d > .seconds(JWTSettings.maxLeewaySeconds) {
                    fail(v, p, "at most \(JWTSettings.maxLeewaySeconds / 60)m (clock skew, not a grace period)"); ok = false
                } else if d.components.attoseconds != 0 {
                    fail(v, p, "whole seconds only (claims are in seconds)"); ok = false
                } else {
                    j.leeway = d
                }
            case "consumer_claim":
                if let s = nonEmptyString(v, p) { j.consumerClaim = s } else { ok = false }
            case "scopes_claim":
                if let s = nonEmptyString(v, p) { j.scopesClaim = s } else { ok = false }
            case "plan":
                if NodeReader.isNull(v) { continue }
                guard let s = string(v, p) else { ok = false; continue }
                j.plan = s
                j.planAt = loc(v, p)
            default:
                unknown(kn, p); ok = false
            }
        }
        // Block-level problems are reported at the `jwt:` key.
        func failAtBlock(_ field: String?, _ reason: String) {
            errors.append(PolicyError(file: file, line: at.line, keyPath: field.map { NodeReader.join(path, $0) } ?? path, reason: reason))
            ok = false
        }
        if !m.contains(where: { $0.key == "algorithms" }) { failAtBlock("algorithms", "missing required field") }
        if let (kn, p) = encodingNode, j.secretEnv == nil { fail(kn, p, "secret_encoding needs secret_env"); ok = false }
        if j.secretEnv == nil && j.keysFile == nil && ok {
            failAtBlock(nil, "needs secret_env (HS*) or keys_file (RS*, PS*, ES256, ES384, EdDSA; JWKS or PEM)")
        }
        if j.consumerClaim == j.scopesClaim { failAtBlock("scopes_claim", "must differ from consumer_claim") }
        return ok ? j : nil
    }

    /// A string or a list of strings (`issuer`, `audience`).
    mutating func stringOrList(_ n: PolicyNode, _ path: @autoclosure () -> String) -> [String]? {
        if case .sequence = n.content {
            guard let l = stringList(n, path()) else { return nil }
            if l.isEmpty { fail(n, path(), "must not be empty (omit it, or null, not to check)"); return nil }
            return l
        }
        return nonEmptyString(n, path()).map { [$0] }
    }

    mutating func readBackend(_ n: PolicyNode, _ path: String, name: String, at: SourceLocation) -> PolicyDocument.Backend? {
        guard let m = mapping(n, path) else { return nil }
        var url: PolicyValues.ParsedURL?
        var b = PolicyDocument.Backend(name: name, at: at, host: "", port: 0, isIPv6: false)
        var caFile: String?
        var tlsKey: PolicyNode?
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "url":
                guard let s = string(v, p) else { continue }
                url = PolicyValues.url(s, schemes: ["http": 80, "https": 443])
                guard let u = url else {
                    fail(v, p, "invalid URL '\(s)' (expected http://host:port)")
                    continue
                }
                // Parsed but not honoured yet: refused rather than served without the base.
                if !u.basePath.isEmpty { notSupportedYet(kn, p, "a base path") }
            case "tls":
                tlsKey = kn
                guard let tm = mapping(v, p) else { continue }
                for (tk, tkn, tv) in tm {
                    let tp = NodeReader.join(p, tk)
                    switch tk {
                    case "ca": caFile = nonEmptyString(tv, tp).map { PolicyValues.resolve($0, relativeToFileAt: file) }
                    default: unknown(tkn, tp)
                    }
                }
            case "inject":
                b.injectAt = loc(kn, p)
                b.inject = readInject(v, p)
            case "timeouts":
                guard let tm = mapping(v, p) else { continue }
                for (tk, tkn, tv) in tm {
                    let tp = NodeReader.join(p, tk)
                    switch tk {
                    case "connect": if let d = duration(tv, tp) { b.connectTimeout = d }
                    case "response": if let d = duration(tv, tp) { b.responseTimeout = d }
                    case "idle": if let d = duration(tv, tp) { b.idleTimeout = d }
                    default: unknown(tkn, tp)
                    }
                }
            case "pool":
                guard let pm = mapping(v, p) else { continue }
                for (pk, pkn, pv) in pm {
                    let pp = NodeReader.join(p, pk)
                    switch pk {
                    case "max_idle": if let i = int(pv, pp, min: 0, max: 100_000) { b.maxIdle = i }
                    default: unknown(pkn, pp)
                    }
                }
            default: unknown(kn, p)
            }
        }
        if !m.contains(where: { $0.key == "url" }) { missing(n, path, "url") }
        guard let url else { return nil }
        b.host = url.host; b.port = url.port; b.isIPv6 = url.isIPv6
        if url.scheme == "https" {
            b.tls = BackendTLS(caFile: caFile)
        } else if let tlsKey {
            fail(tlsKey, NodeReader.join(path, "tls"), "tls settings need an https:// url")
        }
        return b
    }

    /// `secrets: {master_key_file: PATH}` or `{master_key_env: NAME}`, exactly one.
    mutating func readSecrets(_ n: PolicyNode, _ path: String) -> SecretsSpec? {
        guard let m = mapping(n, path) else { return nil }
        var key: SecretsSpec.MasterKey?
        var ok = true
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "master_key_file":
                if let s = nonEmptyString(v, p) { key = .file(PolicyValues.resolve(s, relativeToFileAt: file)) } else { ok = false }
            case "master_key_env":
                guard let s = nonEmptyString(v, p) else { ok = false; continue }
                if s.utf8.allSatisfy({ $0 == 0x5F || ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) }) {
                    key = .env(s)
                } else {
                    fail(v, p, "invalid environment variable name '\(s)'"); ok = false
                }
            default: unknown(kn, p); ok = false
            }
        }
        let both = m.contains(where: { $0.key == "master_key_file" }) && m.contains(where: { $0.key == "master_key_env" })
        if both { fail(n, path, "give either master_key_file or master_key_env, not both"); ok = false }
        if !m.contains(where: { $0.key == "master_key_file" || $0.key == "master_key_env" }) {
            missing(n, path, "master_key_file"); ok = false
        }
        guard ok, let key else { return nil }
        return SecretsSpec(masterKey: key)
    }

    /// `inject: {header, format, secret}`: format holds `{secret}` once (default
    /// `"{secret}"`); the header is a valid field name the proxy does not frame or own.
    mutating func readInject(_ n: PolicyNode, _ path: String) -> InjectSpec? {
        guard let m = mapping(n, path) else { return nil }
        var header: String?, format = InjectSpec.placeholder, secret: String?
        var ok = true
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "header":
                guard let s = nonEmptyString(v, p) else { ok = false; continue }
                if let why = InjectSpec.problem(withHeader: s) { fail(v, p, why); ok = false } else { header = s }
            case "format":
                guard let s = nonEmptyString(v, p) else { ok = false; continue }
                if let why = InjectSpec.problem(withFormat: s) { fail(v, p, why); ok = false } else { format = s }
            case "secret":
                if let s = name(v, p) { secret = s } else { ok = false }
            default: unknown(kn, p); ok = false
            }
        }
        if !m.contains(where: { $0.key == "header" }) { missing(n, path, "header"); ok = false }
        if !m.contains(where: { $0.key == "secret" }) { missing(n, path, "secret"); ok = false }
        guard ok, let header, let secret else { return nil }
        return InjectSpec(header: header, format: format, secret: secret)
    }

    mutating func readPlan(_ n: PolicyNode, _ path: String, name: String, at: SourceLocation) -> PolicyDocument.Plan? {
        var plan = PolicyDocument.Plan(name: name, at: at, windows: [])
        if NodeReader.isNull(n) { return plan }
        guard let m = mapping(n, path) else { return nil }
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "rate_limits":
                guard let items = sequence(v, p) else { continue }
                for (i, item) in items.enumerated() {
                    let wp = "\(p)[\(i)]"
                    guard let wm = mapping(item, wp) else { continue }
                    var requests: Int?, per: Duration?, burst: Int?
                    var ok = true
                    for (wk, wkn, wv) in wm {
                        let fp = NodeReader.join(wp, wk)
                        switch wk {
                        case "requests": requests = int(wv, fp, min: 1, max: 1_000_000_000); ok = ok && requests != nil
                        case "per": per = duration(wv, fp); ok = ok && per != nil
                        case "burst": burst = int(wv, fp, min: 1, max: 1_000_000_000); ok = ok && burst != nil
                        default: unknown(wkn, fp); ok = false
                        }
                    }
                    if !wm.contains(where: { $0.key == "requests" }) { missing(item, wp, "requests"); ok = false }
                    if !wm.contains(where: { $0.key == "per" }) { missing(item, wp, "per"); ok = false }
                    if ok, let requests, let per {
                        plan.windows.append(.init(requests: requests, per: per, burst: burst, at: loc(item, wp)))
                    }
                }
            case "quotas":
                guard let items = sequence(v, p) else { continue }
                for (i, item) in items.enumerated() {
                    let qp = "\(p)[\(i)]"
                    guard let qm = mapping(item, qp) else { continue }
                    var kind: QuotaSpec.Kind?, limit: Int?, period: QuotaSpec.Period?, by = QuotaSpec.Subject.key
                    var ok = true
                    for (qk, qkn, qv) in qm {
                        let fp = NodeReader.join(qp, qk)
                        switch qk {
                        case "requests":
                            if kind != nil { fail(qkn, fp, "a quota counts requests or tokens, not both"); ok = false }
                            kind = .requests; limit = int(qv, fp, min: 1, max: 1_000_000_000_000); ok = ok && limit != nil
                        case "tokens":
                            if kind != nil { fail(qkn, fp, "a quota counts requests or tokens, not both"); ok = false }
                            kind = .tokens; limit = int(qv, fp, min: 1, max: 1_000_000_000_000); ok = ok && limit != nil
                        case "per":
                            guard let s = string(qv, fp) else { ok = false; continue }
                            if let pe = QuotaSpec.Period(rawValue: s) { period = pe } else {
                                fail(qv, fp, "invalid value '\(s)' (expected day or month: UTC calendar periods)"); ok = false
                            }
                        case "by":
                            guard let s = string(qv, fp) else { ok = false; continue }
                            if let b = QuotaSpec.Subject(rawValue: s) { by = b } else {
                                fail(qv, fp, "invalid value '\(s)' (expected key or consumer)"); ok = false
                            }
                        default: unknown(qkn, fp); ok = false
                        }
                    }
                    if ok && kind == nil { fail(item, qp, "needs requests (or tokens)"); ok = false }
                    if !qm.contains(where: { $0.key == "per" }) { missing(item, qp, "per"); ok = false }
                    if ok, let kind, let limit, let period {
                        plan.quotas.append(QuotaSpec(kind: kind, limit: Int64(limit), period: period, by: by))
                    }
                }
            default: unknown(kn, p)
            }
        }
        return plan
    }

    mutating func readRoute(_ n: PolicyNode, _ path: String) -> PolicyDocument.Route? {
        guard let m = mapping(n, path) else { return nil }
        var ok = true
        var name: String?, nameAt = loc(n, path + ".name")
        var methods = MethodSet.any
        var matchPath: [UInt8]?, isPrefix = false
        var backend: String?, backendAt = loc(n, path + ".backend")
        var scopes: [String] = [], scopesAt = loc(n, path + ".scopes")
        var requiresHTTPS = false, isPublic = false
        var maxBody = 10 << 20
        var credits: RouteCredits?, creditsAt: SourceLocation?
        var credentials: CredentialKinds?, credentialsAt: SourceLocation?
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "name":
                name = self.name(v, p); nameAt = loc(v, p); ok = ok && name != nil
            case "match":
                guard let mm = mapping(v, p) else { ok = false; continue }
                var seen = 0
                for (mk, mkn, mv) in mm {
                    let mp = NodeReader.join(p, mk)
                    switch mk {
                    case "methods":
                        guard let names = stringList(mv, mp) else { ok = false; continue }
                        var set = MethodSet()
                        for (i, s) in names.enumerated() {
                            if let bit = MethodSet.named(s) { set.insert(bit) } else {
                                fail(mv, "\(mp)[\(i)]", "unknown method '\(s)'"); ok = false
                            }
                        }
                        if names.isEmpty { fail(mv, mp, "must list at least one method (omit it for any)"); ok = false }
                        methods = set
                    case "path", "path_prefix":
                        seen += 1
                        guard let s = string(mv, mp) else { ok = false; continue }
                        guard s.hasPrefix("/") else { fail(mv, mp, "must start with '/'"); ok = false; continue }
                        guard PathNormalizer.normalizedString(s) == s else {
                            fail(mv, mp, "'\(s)' is not in normalised form (no '//', '.', '..', ';' or encoded unreserved characters)")
                            ok = false; continue
                        }
                        matchPath = Array(s.utf8)
                        isPrefix = mk == "path_prefix"
                    default: unknown(mkn, mp); ok = false
                    }
                }
                if seen == 0 { fail(v, p, "needs path or path_prefix"); ok = false }
                if seen > 1 { fail(v, p, "has both path and path_prefix"); ok = false }
            case "backend":
                backend = string(v, p); backendAt = loc(v, p); ok = ok && backend != nil
            case "scopes":
                scopesAt = loc(v, p)
                if let s = stringList(v, p) { scopes = s } else { ok = false }
            case "require_https":
                if let b = bool(v, p) { requiresHTTPS = b } else { ok = false }
            case "auth":
                guard let s = string(v, p) else { ok = false; continue }
                switch s {
                case "none": isPublic = true
                case "required": isPublic = false
                default: fail(v, p, "invalid value '\(s)' (expected none or required)"); ok = false
                }
            case "credits":
                if let c = readRouteCredits(v, p) { credits = c; creditsAt = loc(kn, p) } else { ok = false }
            case "credentials":
                credentialsAt = loc(v, p)
                guard let names = stringList(v, p) else { ok = false; continue }
                var kinds: CredentialKinds = []
                for (i, s) in names.enumerated() {
                    switch s {
                    case "api_key": kinds.insert(.apiKey)
                    case "jwt": kinds.insert(.jwt)
                    default: fail(v, "\(p)[\(i)]", "invalid value '\(s)' (expected api_key or jwt)"); ok = false
                    }
                }
                if names.isEmpty { fail(v, p, "must name at least one credential (or use auth: none)"); ok = false }
                credentials = kinds
            case "max_body":
                if let s = size(v, p) { maxBody = s } else { ok = false }
            default: unknown(kn, p); ok = false
            }
        }
        for required in ["name", "match", "backend"] where !m.contains(where: { $0.key == required }) {
            missing(n, path, required); ok = false
        }
        if isPublic, !scopes.isEmpty {
            fail(n, path + ".scopes", "a route with auth: none cannot require scopes"); ok = false
        }
        if isPublic, credentials != nil {
            fail(n, path + ".credentials", "a route with auth: none takes no credential"); ok = false
        }
        guard ok, let name, let matchPath, let backend else { return nil }
        return .init(name: name, at: loc(n, path), nameAt: nameAt, methods: methods, path: matchPath, isPrefix: isPrefix,
                     backend: backend, backendAt: backendAt, scopes: scopes, scopesAt: scopesAt,
                     requiresHTTPS: requiresHTTPS, isPublic: isPublic, maxBodyBytes: maxBody,
                     credits: credits, creditsAt: creditsAt, credentials: credentials, credentialsAt: credentialsAt)
    }

    /// `keys[index]`. Built for thousands of entries: no key path or location is made
    /// unless there is an error to report.
    mutating func readKey(_ n: PolicyNode, index: Int) -> PolicyDocument.Key? {
        guard let m = mapping(n, "keys[\(index)]") else { return nil }
        var ok = true
        var id: String?, idLine = n.line
        var hash: KeyHash?, hashLine = n.line
        var consumer: String?
        var plan: String?, planLine = n.line
        var scopes: [String] = []
        var allow: CIDRSet?
        var expires: Int64?
        var status = KeyStatus.active
        var hasID = false, hasHash = false, hasConsumer = false
        for (k, kn, v) in m {
            switch k {
            case "id":
                hasID = true
                id = name(v, NodeReader.keyPath(index, k)); idLine = v.line; ok = ok && id != nil
            case "hash":
                hasHash = true
                hashLine = v.line
                guard let s = string(v, NodeReader.keyPath(index, k)) else { ok = false; continue }
                hash = PolicyValues.hash(s)
                if hash == nil {
                    fail(v, NodeReader.keyPath(index, k), "invalid hash (expected sha256: followed by 64 lowercase hex digits)")
                    ok = false
                }
            case "consumer":
                hasConsumer = true
                consumer = nonEmptyString(v, NodeReader.keyPath(index, k)); ok = ok && consumer != nil
            case "plan":
                planLine = v.line
                if NodeReader.isNull(v) { continue }
                plan = string(v, NodeReader.keyPath(index, k)); ok = ok && plan != nil
            case "scopes":
                if let s = stringList(v, NodeReader.keyPath(index, k)) { scopes = s } else { ok = false }
            case "allow_ips":
                if NodeReader.isNull(v) { continue }
                allow = cidrs(v, NodeReader.keyPath(index, k)); ok = ok && allow != nil
            case "expires":
                if NodeReader.isNull(v) { continue }
                guard let s = string(v, NodeReader.keyPath(index, k)) else { ok = false; continue }
                expires = PolicyValues.timestamp(s)
                if expires == nil {
                    fail(v, NodeReader.keyPath(index, k),
                         "invalid timestamp '\(s)' (expected RFC 3339, e.g. 2027-01-01T00:00:00Z)")
                    ok = false
                }
            case "status":
                guard let s = string(v, NodeReader.keyPath(index, k)) else { ok = false; continue }
                if let st = KeyStatus(rawValue: s) { status = st } else {
                    fail(v, NodeReader.keyPath(index, k), "invalid value '\(s)' (expected active, disabled or revoked)")
                    ok = false
                }
            default: unknown(kn, NodeReader.keyPath(index, k)); ok = false
            }
        }
        if !hasID { missing(n, "keys[\(index)]", "id"); ok = false }
        if !hasHash { missing(n, "keys[\(index)]", "hash"); ok = false }
        if !hasConsumer { missing(n, "keys[\(index)]", "consumer"); ok = false }
        guard ok, let id, let hash, let consumer else { return nil }
        return .init(index: index, id: id, idLine: idLine, hash: hash, hashLine: hashLine, consumer: consumer,
                     plan: plan, planLine: planLine, scopes: scopes, allowIPs: allow, expiresAt: expires, status: status)
    }

    static func keyPath(_ index: Int, _ field: String) -> String { "keys[\(index)].\(field)" }
}
