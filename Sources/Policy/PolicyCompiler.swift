/// Documents (one per file, in file-name order) → one immutable ``PolicySnapshot``.
///
/// Merge rules (POLICY.md): `listen`, `routes` and `keys` concatenate in file order;
/// `backends` and `plans` merge and a name defined twice is an error; `store`, `admin`,
/// `access_log`, `audit`, `secrets`, `clients` and `credentials` may appear in one file only. Then cross-references are
/// resolved: route → backend, key → plan, unique route names, key ids and key hashes,
/// scopes → bits. Every problem is collected; nothing is built if there is one.
enum PolicyCompiler {
    static func compile(_ docs: [PolicyDocument], sources: [PolicySource] = [], environment: PolicyEnvironment = .process,
                        errors: inout [PolicyError]) -> PolicySnapshot? {
        var found: [PolicyError] = []

        // Scalar blocks: one file only.
        func single<T>(_ pick: (PolicyDocument) -> PolicyDocument.Block<T>?, _ key: String) -> T? {
            var first: PolicyDocument.Block<T>?
            for d in docs {
                guard let b = pick(d) else { continue }
                if let f = first {
                    found.append(b.at.error("already defined at \(f.at.short); '\(key)' may appear in one file only"))
                } else {
                    first = b
                }
            }
            return first?.value
        }
        let admin = single({ $0.admin }, "admin")
        let accessLog = single({ $0.accessLog }, "access_log")
        let usage = single({ $0.usage }, "usage")
        let audit = single({ $0.audit }, "audit")
        let store = single({ $0.store }, "store")
        let credits = single({ $0.credits }, "credits")
        let secrets = single({ $0.secrets }, "secrets")
        let security = mergeSecurity(docs.compactMap(\.security), found: &found).map {
            compileSecurity($0, environment: environment, found: &found)
        }
        if let c = credits, c.ledger == .redis, store?.redis == nil,
           let at = docs.lazy.compactMap({ $0.credits?.at }).first {
            found.append(SourceLocation(file: at.file, line: at.line, keyPath: "credits.ledger")
                .error("the redis ledger needs store.redis (it keeps balances in the store's Redis)"))
        }
        if let u = usage, store?.redis == nil, u.sinks.contains(where: { if case .redisStream = $0.kind { return true }; return false }),
           let at = docs.lazy.compactMap({ $0.usage?.at }).first {
            found.append(at.error("a redis_stream sink needs store.redis (it writes to the store's Redis)"))
        }
        let clients = single({ $0.clients }, "clients") ?? ClientRules()
        let creds = single({ $0.credentials }, "credentials") ?? PolicyDocument.Credentials()

        let listeners = docs.flatMap(\.listen).map {
            ListenerSpec(host: $0.address.host, port: $0.address.port, isIPv6: $0.address.isIPv6, tls: $0.tls)
        }

        // Backends.
        var backends: [BackendSpec] = []
        var backendIndex: [String: (Int, SourceLocation)] = [:]
        for b in docs.flatMap(\.backends) {
            if let (_, first) = backendIndex[b.name] {
                found.append(b.at.error("backend '\(b.name)' already defined at \(first.short)"))
                continue
            }
            backendIndex[b.name] = (backends.count, b.at)
            if b.inject != nil, secrets == nil, let at = b.injectAt {
                found.append(at.error("inject needs the top-level secrets block (the master key of the secret store)"))
            }
            backends.append(BackendSpec(
                index: backends.count, name: b.name, host: b.host, port: b.port, isIPv6: b.isIPv6, tls: b.tls,
                connectTimeout: b.connectTimeout,
                responseTimeout: b.responseTimeout, idleTimeout: b.idleTimeout, maxIdle: b.maxIdle, inject: b.inject))
        }

        if let c = credits, c.ledger == .accounting, let name = c.accountingBackend,
           let at = docs.lazy.compactMap({ $0.credits?.at }).first {
            let where_ = SourceLocation(file: at.file, line: at.line, keyPath: "credits.accounting.backend")
            if backendIndex[name] == nil {
                found.append(where_.error("unknown backend '\(name)'"))
            }
        }

        // Plans.
        var plans: [PlanSpec] = []
        var planIndex: [String: (Int, SourceLocation)] = [:]
        for p in docs.flatMap(\.plans) {
            if let (_, first) = planIndex[p.name] {
                found.append(p.at.error("plan '\(p.name)' already defined at \(first.short)"))
                continue
            }
            if p.windows.count > PlanSpec.maxWindows {
                found.append(p.at.error("at most \(PlanSpec.maxWindows) rate_limits per plan"))
                continue
            }
            var windows: [RateWindow] = []
            var seen: Set<String> = []
            var ok = true
            for w in p.windows {
                let rw = RateWindow(plan: p.name, requests: w.requests, per: w.per, burst: w.burst)
                if !seen.insert(rw.name).inserted {
                    found.append(SourceLocation(file: w.at.file, line: w.at.line, keyPath: w.at.keyPath + ".per")
                        .error("another window of plan '\(p.name)' has the same period"))
                    ok = false
                }
                windows.append(rw)
            }
            guard ok else { continue }
            planIndex[p.name] = (plans.count, p.at)
            plans.append(PlanSpec(index: plans.count, name: p.name, windows: windows, quotas: p.quotas))
        }

        // JWTs: the secret and the keys file are read here, at every load.
        let jwtDoc = creds.jwt
        let jwt = jwtDoc.flatMap { compileJWT($0, environment: environment, found: &found) }
        var jwtPlan: Int?
        if let j = jwtDoc, let name = j.plan, let at = j.planAt {
            jwtPlan = planIndex[name]?.0
            if jwtPlan == nil { found.append(at.error("unknown plan '\(name)'")) }
        }

        // Routes: scopes are interned in route order.
        var scopeTable = ScopeTable()
        var routes: [RouteSpec] = []
        var routeNames: [String: SourceLocation] = [:]
        for r in docs.flatMap(\.routes) {
            var ok = true
            if let first = routeNames[r.name] {
                found.append(r.nameAt.error("duplicate route name '\(r.name)' (first at \(first.short))"))
                ok = false
            } else {
                routeNames[r.name] = r.nameAt
            }
            let backend = backendIndex[r.backend]?.0
            if backend == nil {
                found.append(r.backendAt.error("unknown backend '\(r.backend)'"))
                ok = false
            }
            var scopes = ScopeSet()
            for s in r.scopes {
                if let bit = scopeTable.intern(s) { scopes.insert(bit: bit) } else {
                    found.append(r.scopesAt.error("more than \(ScopeSet.capacity) distinct scopes across routes"))
                    ok = false
                    break
                }
            }
            if r.credits != nil, credits == nil, let at = r.creditsAt {
                found.append(at.error("a route with credits needs the top-level credits block (which ledger to charge)"))
                ok = false
            }
            if let kinds = r.credentials, kinds.contains(.jwt), jwtDoc == nil, let at = r.credentialsAt {
                found.append(at.error("jwt needs credentials.jwt (algorithms and keys)"))
                ok = false
            }
            if r.credits != nil, r.isPublic, let at = r.creditsAt {
                found.append(at.error("a route with auth: none has nobody to charge"))
                ok = false
            }
            guard ok, let backend else { continue }
            routes.append(RouteSpec(
                index: routes.count, name: r.name, backend: backend, scopes: scopes, scopeNames: r.scopes,
                requiresHTTPS: r.requiresHTTPS, isPublic: r.isPublic, maxBodyBytes: r.maxBodyBytes, methods: r.methods, path: r.path, isPrefix: r.isPrefix,
                credits: r.credits, credentials: r.credentials ?? (jwtDoc == nil ? .apiKey : [.apiKey, .jwt])))
        }

        // Keys: thousands of them, so no per-key location or String key path is built
        // unless there is an error (``PolicyDocument/Key/at(_:line:in:)``).
        let keyCount = docs.reduce(0) { $0 + $1.keys.count }
        var keys: [KeyRecord] = []
        keys.reserveCapacity(keyCount)
        var byHash = KeyHashMap<KeyRecord>(minimumCapacity: keyCount)
        // Key id → position among all keys (= in `keys` when there is no error).
        var ids: [String: Int] = [:]
        ids.reserveCapacity(keyCount)
        var hashes = KeyHashMap<Int>(minimumCapacity: keyCount)
        // Position among all keys → (document, position in it), for "first at" messages.
        func origin(_ position: Int) -> (file: String, key: PolicyDocument.Key) {
            var p = position
            for d in docs {
                if p < d.keys.count { return (d.file, d.keys[p]) }
                p -= d.keys.count
            }
            preconditionFailure("key position out of range")
        }
        var position = 0
        for d in docs {
            for k in d.keys {
                defer { position += 1 }
                var ok = true
                if let first = ids.updateValue(position, forKey: k.id) {  // one hash of the id when it is new
                    ids[k.id] = first
                    let (file, f) = origin(first)
                    found.append(k.at("id", line: k.idLine, in: d.file)
                        .error("duplicate key id '\(k.id)' (first at \(file):\(f.idLine))"))
                    ok = false
                }
                if let slot = hashes.index(forKey: k.hash) {
                    let (file, f) = origin(hashes[slot: slot])
                    found.append(k.at("hash", line: k.hashLine, in: d.file)
                        .error("hash already declared for key '\(f.id)' (\(file):\(f.hashLine))"))
                    ok = false
                } else {
                    hashes.insert(k.hash, position)
                }
                var plan: Int?
                if let name = k.plan {
                    plan = planIndex[name]?.0
                    if plan == nil {
                        found.append(k.at("plan", line: k.planLine, in: d.file).error("unknown plan '\(name)'"))
                        ok = false
                    }
                }
                guard ok else { continue }
                let rec = KeyRecord(id: k.id, hash: k.hash, prefix: "", consumer: k.consumer, planIndex: plan,
                                    scopes: scopeTable.set(of: k.scopes), scopeNames: k.scopes, allowIPs: k.allowIPs,
                                    expiresAt: k.expiresAt, status: k.status)
                keys.append(rec)
                byHash[k.hash] = rec
            }
        }

        errors.append(contentsOf: found)
        guard errors.isEmpty else { return nil }
        return PolicySnapshot(
            listeners: listeners,
            admin: admin.map { AdminSpec(host: $0.address.host, port: $0.address.port, isIPv6: $0.address.isIPv6,
                                         tokensFile: $0.tokensFile) },
            accessLog: accessLog.map { AccessLogSpec(target: $0.target) },
            store: store.map { s in
                s.redis.map {
                    StoreSpec(url: $0, onError: s.onError, deadline: s.deadline)
                }
            } ?? nil,
            storeFailMode: store?.onError ?? .closed,
            storeDeadline: store?.deadline ?? .milliseconds(10),
            backends: backends,
            credentials: CredentialRule(headerNames: creds.headers, queryParam: creds.query,
                                        forwardsCredential: creds.forward),
            clients: clients, plans: plans, routes: RouteTable(routes), scopeTable: scopeTable,
            keys: keys, keyIndex: byHash, idIndex: ids, usage: usage, credits: credits, secrets: secrets,
            audit: audit.map {
                AuditSpec(path: $0.path, signingKey: $0.signingKey, signingKeyLocation: $0.signingKeyAt?.short ?? "",
                          checkpointEvery: $0.every, checkpointInterval: $0.interval)
            },
            sources: sources, jwt: jwt, jwtPlanIndex: jwtPlan, security: security)
    }

    /// The verifier of `credentials.jwt`, its secret read from the environment and its keys
    /// file from disk; nil (with the errors) when either is missing or unusable, or a pinned
    /// algorithm has no key. Messages name variables and files, never a secret's bytes.
    static func compileJWT(_ j: PolicyDocument.JWT, environment: PolicyEnvironment, found: inout [PolicyError]) -> JWTVerifier? {
        var keys: [JWTKey] = []
        var ok = true
        if let name = j.secretEnv, let at = j.secretEnvAt {
            if let raw = environment.variable(name) {
                var secret = raw
                if j.secretIsBase64URL {
                    var text = String(decoding: raw, as: UTF8.self)
                    while text.hasSuffix("\n") || text.hasSuffix("\r") { text.removeLast() }
                    if let b = Base64URL.decode(text) { secret = b } else {
                        found.append(at.error("environment variable \(name) is not base64url (secret_encoding: base64url: no padding, no spaces)"))
                        ok = false
                    }
                }
                if ok && secret.isEmpty {
                    found.append(at.error("environment variable \(name) is empty"))
                    ok = false
                }
                if ok { keys.append(.secret(secret, origin: "secret_env " + name)) }
            } else {
                found.append(at.error("environment variable \(name) is not set"))
                ok = false
            }
            if !j.algorithms.contains(where: { $0.keyType == .oct }) {
                found.append(at.error("a secret verifies HS256, HS384 or HS512 only, and none is pinned in algorithms"))
                ok = false
            }
        }
        if let path = j.keysFile, let at = j.keysFileAt {
            if let bytes = environment.file(path) {
                do { keys += try JWTKeyFile.read(bytes) } catch {
                    found.append(at.error("keys file '\(path)': \(error.description)"))
                    ok = false
                }
            } else {
                found.append(at.error("cannot read keys file '\(path)'"))
                ok = false
            }
        }
        guard ok else { return nil }
        for a in j.algorithms where !keys.contains(where: { $0.verifies(a) }) {
            found.append(j.algorithmsAt.error("\(a.rawValue) is pinned but no key verifies it (it needs \(a.keyDescription))"))
            ok = false
        }
        guard ok else { return nil }
        var settings = JWTSettings(algorithms: j.algorithms)
        settings.issuers = j.issuers
        settings.audiences = j.audiences
        settings.requiredClaims = j.requiredClaims
        settings.leewaySeconds = j.leeway.components.seconds
        settings.consumerClaim = j.consumerClaim
        settings.scopesClaim = j.scopesClaim
        return JWTVerifier(settings: settings, keys: keys)
    }
}
