import Foundation

extension PolicyDocument {
    /// `security`, as read: webhook secrets are named here (a variable or a file) and read
    /// when the policy is compiled.
    struct Security {
        var file = ""
        /// The line of each key of the block.
        var lines: [String: Int] = [:]
        var spec = SecuritySpec()
        var webhooks: [Webhook] = []
    }

    struct Webhook {
        /// Everything but the secrets (filled in by the compiler).
        var spec: WebhookSpec
        var secretEnv: String?
        var secretFile: String?
        var secretAt: SourceLocation
        /// Where `ca_file` is written (the file is read when the policy is compiled).
        var caAt: SourceLocation?
    }
}

extension NodeReader {
    /// `security: {lockout, auto_disable, webhooks, webhook_spool}`.
    mutating func readSecurity(_ n: PolicyNode, _ path: String) -> PolicyDocument.Security? {
        guard let m = mapping(n, path) else { return nil }
        var s = PolicyDocument.Security()
        s.file = file
        var ok = true
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            s.lines[k] = kn.line
            switch k {
            case "lockout":
                if NodeReader.isNull(v) { continue }
                if let l = readLockout(v, p) { s.spec.lockout = l } else { ok = false }
            case "auto_disable":
                if NodeReader.isNull(v) { continue }
                guard let items = sequence(v, p) else { ok = false; continue }
                for (i, item) in items.enumerated() {
                    ok = readAutoDisable(item, "\(p)[\(i)]", into: &s.spec) && ok
                }
            case "webhooks":
                if NodeReader.isNull(v) { continue }
                guard let items = sequence(v, p) else { ok = false; continue }
                for (i, item) in items.enumerated() {
                    if let w = readWebhook(item, "\(p)[\(i)]") { s.webhooks.append(w) } else { ok = false }
                }
            case "webhook_spool":
                if let d = nonEmptyString(v, p) { s.spec.webhookSpool = PolicyValues.resolve(d, relativeToFileAt: file) } else { ok = false }
            default: unknown(kn, p); ok = false
            }
        }
        return ok ? s : nil
    }

    private mutating func readLockout(_ n: PolicyNode, _ path: String) -> SecuritySpec.LockoutSpec? {
        guard let m = mapping(n, path) else { return nil }
        var count: Int?
        var per: Duration?
        var banFor: Duration?
        var maxTracked = 65_536
        var ok = true
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "invalid_keys": count = int(v, p, min: 1, max: 1_000_000); ok = ok && count != nil
            case "per": per = duration(v, p); ok = ok && per != nil
            case "for": banFor = duration(v, p); ok = ok && banFor != nil
            case "max_tracked": if let t = int(v, p, min: 64, max: 16_777_216) { maxTracked = t } else { ok = false }
            default: unknown(kn, p); ok = false
            }
        }
        for f in ["invalid_keys", "per", "for"] where !m.contains(where: { $0.key == f }) { missing(n, path, f); ok = false }
        guard ok, let count, let per, let banFor else { return nil }
        return SecuritySpec.LockoutSpec(invalidKeys: count, per: per, banFor: banFor, maxTracked: maxTracked)
    }

    /// One `auto_disable` rule: `{refusals, per}` or `{networks, per}` (each kind at most once).
    private mutating func readAutoDisable(_ n: PolicyNode, _ path: String, into spec: inout SecuritySpec) -> Bool {
        guard let m = mapping(n, path) else { return false }
        var refusals: Int?
        var networks: Int?
        var per: Duration?
        var ok = true
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "refusals": refusals = int(v, p, min: 1, max: 1_000_000); ok = ok && refusals != nil
            case "networks": networks = int(v, p, min: 1, max: 1_000); ok = ok && networks != nil
            case "per": per = duration(v, p); ok = ok && per != nil
            default: unknown(kn, p); ok = false
            }
        }
        guard ok else { return false }
        if !m.contains(where: { $0.key == "per" }) { missing(n, path, "per"); return false }
        guard let per else { return false }
        switch (refusals, networks) {
        case (let r?, nil):
            if spec.refusalRule != nil { fail(n, path, "a refusals rule is already given"); return false }
            spec.refusalRule = .init(refusals: r, per: per)
        case (nil, let c?):
            if spec.networkRule != nil { fail(n, path, "a networks rule is already given"); return false }
            spec.networkRule = .init(networks: c, per: per)
        case (nil, nil):
            fail(n, path, "expected refusals or networks"); return false
        default:
            fail(n, path, "one rule per entry: refusals or networks, not both"); return false
        }
        return true
    }

    private mutating func readWebhook(_ n: PolicyNode, _ path: String) -> PolicyDocument.Webhook? {
        guard let m = mapping(n, path) else { return nil }
        var url: PolicyValues.ParsedURL?
        var urlText = ""
        var secretEnv: String?
        var secretFile: String?
        var secretAt = SourceLocation(file: file, line: n.line, keyPath: path)
        var events: Set<WebhookEventType>?
        var consumers: Set<String>?
        var timeout: Duration = .seconds(5)
        var tries = 8
        var firstRetry: Duration = .seconds(1)
        var isTLS = false
        var caFile: String?
        var caAt: SourceLocation?
        var ok = true
        for (k, kn, v) in m {
            let p = NodeReader.join(path, k)
            switch k {
            case "ca_file":
                caFile = nonEmptyString(v, p).map { PolicyValues.resolve($0, relativeToFileAt: file) }
                ok = ok && caFile != nil
                caAt = SourceLocation(file: file, line: v.line, keyPath: p)
            case "url":
                guard let s = nonEmptyString(v, p) else { ok = false; continue }
                guard let u = PolicyValues.url(s, schemes: ["http": 80, "https": 443]) else {
                    fail(v, p, "invalid URL '\(s)' (expected http(s)://host[:port][/path])"); ok = false; continue
                }
                url = u
                urlText = s
                isTLS = s.hasPrefix("https://")
            case "secret_env":
                secretEnv = nonEmptyString(v, p); ok = ok && secretEnv != nil
                secretAt = SourceLocation(file: file, line: v.line, keyPath: p)
            case "secret_file":
                secretFile = nonEmptyString(v, p).map { PolicyValues.resolve($0, relativeToFileAt: file) }
                ok = ok && secretFile != nil
                secretAt = SourceLocation(file: file, line: v.line, keyPath: p)
            case "events":
                guard let list = stringList(v, p) else { ok = false; continue }
                var set = Set<WebhookEventType>()
                for (i, e) in list.enumerated() {
                    if let t = WebhookEventType(rawValue: e) { set.insert(t) } else {
                        let names = WebhookEventType.allCases.map(\.rawValue).joined(separator: ", ")
                        fail(v, "\(p)[\(i)]", "unknown event '\(e)' (expected one of \(names))"); ok = false
                    }
                }
                if list.isEmpty { fail(v, p, "must not be empty"); ok = false }
                events = set
            case "consumers":
                guard let list = stringList(v, p) else { ok = false; continue }
                consumers = Set(list)
            case "timeout": if let d = duration(v, p) { timeout = d } else { ok = false }
            case "tries": if let t = int(v, p, min: 1, max: 100) { tries = t } else { ok = false }
            case "first_retry": if let d = duration(v, p) { firstRetry = d } else { ok = false }
            default: unknown(kn, p); ok = false
            }
        }
        if !m.contains(where: { $0.key == "url" }) { missing(n, path, "url"); ok = false }
        if !m.contains(where: { $0.key == "events" }) { missing(n, path, "events"); ok = false }
        if secretEnv != nil && secretFile != nil {
            fail(n, path, "give secret_env or secret_file, not both"); ok = false
        } else if secretEnv == nil && secretFile == nil && ok {
            missing(n, path, "secret_env"); ok = false
        }
        if let at = caAt, !isTLS, ok {
            errors.append(at.error("ca_file needs an https:// url")); ok = false
        }
        guard ok, let url, let events else { return nil }
        let spec = WebhookSpec(host: url.host, port: url.port, isIPv6: url.isIPv6,
                               path: url.basePath.isEmpty ? "/" : url.basePath, isTLS: isTLS, caFile: caFile, url: urlText,
                               secrets: WebhookSecrets([]), events: events, consumers: consumers,
                               timeout: timeout, tries: tries, firstRetry: firstRetry,
                               id: "wh-" + PolicyValues.shortDigest(urlText))
        return PolicyDocument.Webhook(spec: spec, secretEnv: secretEnv, secretFile: secretFile, secretAt: secretAt, caAt: caAt)
    }
}

extension PolicyCompiler {
    /// `security` may be split across files (one file's lock-out, another's webhooks: a
    /// deployment can keep endpoints and their secrets apart); each setting once.
    static func mergeSecurity(_ blocks: [PolicyDocument.Block<PolicyDocument.Security>],
                              found: inout [PolicyError]) -> PolicyDocument.Security? {
        guard var merged = blocks.first?.value else { return nil }
        for b in blocks.dropFirst() {
            let v = b.value
            var duplicates: [String] = []
            if let l = v.spec.lockout {
                if merged.spec.lockout == nil { merged.spec.lockout = l; merged.lines["lockout"] = v.lines["lockout"] } else { duplicates.append("lockout") }
            }
            if let r = v.spec.refusalRule {
                if merged.spec.refusalRule == nil { merged.spec.refusalRule = r; merged.lines["auto_disable"] = v.lines["auto_disable"] } else { duplicates.append("auto_disable") }
            }
            if let n = v.spec.networkRule {
                if merged.spec.networkRule == nil { merged.spec.networkRule = n; merged.lines["auto_disable"] = v.lines["auto_disable"] } else { duplicates.append("auto_disable") }
            }
            if let w = v.spec.webhookSpool {
                if merged.spec.webhookSpool == nil { merged.spec.webhookSpool = w } else { duplicates.append("webhook_spool") }
            }
            for key in duplicates {
                let at = SourceLocation(file: v.file, line: v.lines[key] ?? b.at.line, keyPath: "security." + key)
                let first = blocks.first { $0.value.lines[key] != nil }.map { "\($0.value.file):\($0.value.lines[key]!)" } ?? merged.file
                found.append(at.error("already defined at \(first); each security setting may appear in one file only"))
            }
            merged.webhooks += v.webhooks
        }
        return merged
    }

    /// The `security` block with each webhook's secrets read (from the environment or a
    /// file); nil with errors when one is missing or unusable. Messages never quote a secret.
    static func compileSecurity(_ s: PolicyDocument.Security, environment: PolicyEnvironment,
                                found: inout [PolicyError]) -> SecuritySpec {
        var spec = s.spec
        var seen: [String: SourceLocation] = [:]
        for w in s.webhooks {
            var raw: [UInt8]?
            if let name = w.secretEnv {
                raw = environment.variable(name)
                if raw == nil && !environment.webhookSecretsOptional {
                    found.append(w.secretAt.error("environment variable \(name) is not set")); continue
                }
            } else if let f = w.secretFile {
                raw = environment.file(f)
                if raw == nil && !environment.webhookSecretsOptional { found.append(w.secretAt.error("cannot read \(f)")); continue }
            }
            // A command that never signs: the endpoint is kept (its events go to the spool's
            // inbox and the server signs them) without its secret.
            if raw == nil { raw = Array("unavailable-to-this-command".utf8) }
            guard let raw, let secrets = WebhookSecrets.parse(raw) else {
                found.append(w.secretAt.error("the webhook secret is empty or a whsec_ value is not base64"))
                continue
            }
            if let ca = w.spec.caFile, let at = w.caAt, environment.file(ca) == nil {
                found.append(at.error("cannot read \(ca)")); continue
            }
            if let first = seen[w.spec.id] {
                found.append(w.secretAt.error("webhook \(w.spec.url) already defined at \(first.short)"))
                continue
            }
            seen[w.spec.id] = w.secretAt
            var spec1 = w.spec
            spec1.secrets = secrets
            spec.webhooks.append(spec1)
        }
        return spec
    }
}
