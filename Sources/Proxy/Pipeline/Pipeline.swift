import Backends
import Glibc
import Policy
import Runtime

/// The phase driver: the only place the order of phases is written. Protocol-neutral: it
/// reads the exchange's `RequestView` and header list and never touches a socket; the session
/// acts on the `Step` it returns.
enum Pipeline {
    /// Where the exchange stands when the driver stops.
    enum Step {
        /// Every phase admitted it: forward to `facts.pool`.
        case forward
        /// Parked until the store answers (`Exchange.redisCompleted`).
        case wait
        /// Refused: a local reply with the denial's code.
        case refuse(Denial)
        /// A declared body over the route's limit: 413 `BAD_REQUEST`.
        case bodyTooLarge
        /// Read the whole request body (`request.body`), then `run` again.
        case needBody
        /// The backend injects a provider secret and there is none for this consumer: 503.
        case noUpstreamCredential
    }

    /// Runs the phases from the current one until one stops the exchange.
    static func run(_ x: Exchange) -> Step {
        while true {
            let result: PhaseResult
            switch x.facts.phase {
            case .route: result = route(x)
            case .resolveClient: result = resolveClient(x)
            case .extractCredential: result = extractCredential(x)
            case .lookupKey: result = x.facts.isJWT ? x.context.jwt.verify(x) : x.context.lookup(for: x)
            case .authorize: result = authorize(x)
            case .body: result = body(x)
            case .admit: result = admit(x)
            case .quota: result = quota(x)
            case .reserve: result = reserve(x)
            case .forward: return .forward
            }
            if let stop = apply(result, to: x) { return stop }
        }
    }

    /// The store answered the phase the exchange is parked in: go on from there.
    static func resume(_ x: Exchange, with result: RedisResult) -> Step {
        if let stop = apply(x.context.completeStore(for: x, result: result), to: x) { return stop }
        return run(x)
    }

    /// A phase parked on something other than the store answered with `result`: go on.
    static func resume(_ x: Exchange, result: PhaseResult) -> Step {
        if let stop = apply(result, to: x) { return stop }
        return run(x)
    }

    /// Moves the exchange on by a phase's result; the step when the driver must stop.
    private static func apply(_ result: PhaseResult, to x: Exchange) -> Step? {
        switch result {
        case .next:
            if x.facts.phase == .resolveClient, let route = x.facts.route, route.isPublic {
                // No credential work on a public route; the HTTPS requirement still holds.
                if route.requiresHTTPS && !x.facts.isHTTPS { return refuse(Denial(.httpsRequired), x) }
                if case .noUpstreamCredential = resolveSecret(x) { return .noUpstreamCredential }
                x.facts.phase = .forward
            } else {
                x.facts.phase = Phase(rawValue: x.facts.phase.rawValue &+ 1) ?? .forward
            }
            return nil
        case .wait:
            return .wait
        case .reply(let denial):
            return refuse(denial, x)
        case .bodyTooLarge:
            return .bodyTooLarge
        case .needBody:
            return .needBody
        case .noUpstreamCredential:
            return .noUpstreamCredential
        }
    }

    private static func refuse(_ d: Denial, _ x: Exchange) -> Step {
        x.facts.retryAfterSeconds = d.retryAfterSeconds ?? 0
        if x.facts.snapshot.securityFlags != 0 { x.context.security?.refused(x, d) }
        if x.facts.quotaKeys != nil || x.facts.quotaCountedInRedis { x.context.quotas?.giveBack(x) }
        return .refuse(d)
    }

    // MARK: phases

    /// Normalise the path once, match the route on the normalised form.
    static func route(_ x: Exchange) -> PhaseResult {
        let req = x.request
        if req.isOriginless { return .reply(Denial(.noRoute)) }
        let out = UnsafeMutableRawBufferPointer(start: x.pathBuffer, count: x.pathCapacity)
        if req.path.isEmpty {
            out[0] = 0x2F
            x.facts.pathCount = 1
        } else {
            let raw = UnsafeRawBufferPointer(start: req.base + Int(req.path.offset), count: Int(req.path.count))
            switch PathNormalizer.normalize(raw, into: out) {
            case .normalized(let n): x.facts.pathCount = n
            case .rejected: return .reply(Denial(.badRequest))
            }
        }
        let method = MethodSet(rawValue: 1 << UInt16(req.method.rawValue))
        let path = UnsafeRawBufferPointer(start: x.pathBuffer, count: x.facts.pathCount)
        guard let route = x.facts.snapshot.route(method: method, path: path) else { return .reply(Denial(.noRoute)) }
        x.facts.routeIndex = route.index
        // Keep-alive connections mostly send the same route again: the route and pool kept
        // from the last exchange are reused without a retain/release pair each. (A reload
        // brings new route objects, so a changed snapshot always picks its own pool; a
        // retired pool is never reused either way.)
        if x.facts.route !== route || x.facts.pool?.isRetired != false {
            x.facts.route = route
            x.facts.pool = x.context.pools[route.backend]
        }
        if req.declaredBodyLength > Int64(route.maxBodyBytes) {
            return .bodyTooLarge
        }
        return .next
    }

    /// The client address: the peer, or X-Forwarded-For walked through trusted proxies only.
    static func resolveClient(_ x: Exchange) -> PhaseResult {
        let isTLS = x.request.isTLS
        x.facts.isHTTPS = isTLS
        let peer = x.facts.clientIP   // the session put the peer here
        if !x.context.hasClientRules {
            // No trusted proxies, no deny/allow lists: the peer is the client, and admitted.
            x.facts.isPeerTrusted = false
            return .next
        }
        let rules = x.facts.snapshot.clients
        x.facts.isPeerTrusted = !rules.trustedProxies.isEmpty && rules.trustedProxies.contains(peer)
        if x.facts.isPeerTrusted {
            let base = x.request.base
            var xff: UnsafeRawBufferPointer?
            var xfp: UnsafeRawBufferPointer?
            let headers = x.headers
            for i in 0..<headers.count {
                let f = headers[i]
                // The last line of each wins (the nearest proxy appends last).
                switch HeaderNames.classify(base + Int(f.name.offset), Int(f.name.count)) {
                case .xForwardedFor: xff = UnsafeRawBufferPointer(start: base + Int(f.value.offset), count: Int(f.value.count))
                case .xForwardedProto: xfp = UnsafeRawBufferPointer(start: base + Int(f.value.offset), count: Int(f.value.count))
                default: break
                }
            }
            // X-Forwarded-Proto: the last value of the last line, exactly `https` (any case);
            // anything else is plain HTTP. A TLS listener is HTTPS whatever the header says.
            if !isTLS, let v = xfp { x.facts.isHTTPS = isLastValueHTTPS(v) }
            x.facts.clientIP = rules.resolveClient(peer: peer, forwardedFor: xff)
        }
        if !rules.admits(x.facts.clientIP) { return .reply(Denial(.ipDenied)) }
        return .next
    }

    /// The credential the route takes: an API key (a configured header, `Authorization:
    /// Bearer`, or the query parameter if enabled) or a JWT (`Authorization: Bearer`). On a
    /// route taking both, a Bearer value shaped like a JWT is one (POLICY.md); a key header
    /// wins over a Bearer value.
    static func extractCredential(_ x: Exchange) -> PhaseResult {
        // A locked-out network is refused before any credential work or store round trip.
        if x.facts.snapshot.securityFlags & PolicySnapshot.lockoutBit != 0, let d = x.context.security?.lockedOut(x) {
            return .reply(d)
        }
        let rule = x.facts.snapshot.credentials
        let takes = x.facts.route?.credentials ?? .apiKey
        let readsKeys = takes.contains(.apiKey)
        let base = x.request.base
        let headers = x.headers
        var bearerIndex = -1
        search: for i in 0..<headers.count {
            let f = headers[i]
            let np = base + Int(f.name.offset)
            let nn = Int(f.name.count)
            for name in rule.headerNamesLowercased where readsKeys && name.count == nn {
                if name.withUnsafeBytes({ HeaderNames.caselessEquals(np, $0.baseAddress!, nn) }), f.value.count > 0 {
                    x.facts.credentialSource = .header
                    x.facts.credentialHeader = i
                    x.facts.credential = f.value
                    break search
                }
            }
            if bearerIndex < 0 && nn == 13 && HeaderNames.lowerEquals(np, 13, HeaderNames.authorization) { bearerIndex = i }
        }
        if x.facts.credentialSource == .none && bearerIndex >= 0 {
            let f = headers[bearerIndex]
            let value = UnsafeRawBufferPointer(start: base + Int(f.value.offset), count: Int(f.value.count))
            if let r = CredentialRule.bearerToken(in: value), !r.isEmpty {
                let range = ByteRange(offset: Int(f.value.offset) + r.lowerBound, count: r.count)
                if takes.contains(.jwt)
                    && (!readsKeys || x.context.jwt.isJWT(UnsafeRawBufferPointer(rebasing: value[r]), for: x)) {
                    x.facts.credentialSource = .bearer
                    x.facts.credentialHeader = bearerIndex
                    x.facts.credential = range
                    x.facts.isJWT = true
                    return .next
                }
                if readsKeys {
                    x.facts.credentialSource = .bearer
                    x.facts.credentialHeader = bearerIndex
                    x.facts.credential = range
                }
            }
        }
        if readsKeys, x.facts.credentialSource == .none, let q = rule.queryParam, x.request.hasQuery {
            let qr = x.request.query
            let query = UnsafeRawBufferPointer(start: base + Int(qr.offset), count: Int(qr.count))
            if let r = CredentialRule.queryValue(named: q, in: query), !r.isEmpty {
                x.facts.credentialSource = .query
                x.facts.credential = ByteRange(offset: Int(qr.offset) + r.lowerBound, count: r.count)
            }
        }
        if x.facts.credentialSource == .none { return .reply(Denial(.missingCredential)) }
        let key = UnsafeRawBufferPointer(start: base + Int(x.facts.credential.offset), count: Int(x.facts.credential.count))
        // A key in Tollgate's own format with a bad checksum is refused without any lookup.
        if KeyFormat.classify(key) == .mintedBadChecksum { return .reply(Denial(.invalidKey)) }
        x.facts.keyHash = x.context.keyHashes.sha256(key)
        return .next
    }

    /// Status, expiry, the key's IP allow-list, scopes, HTTPS: checks that consume nothing.
    static func authorize(_ x: Exchange) -> PhaseResult {
        guard let record = x.facts.record, let route = x.facts.route else { return .reply(Denial(.invalidKey)) }
        if x.facts.snapshot.securityFlags & (PolicySnapshot.refusalsBit | PolicySnapshot.networksBit) != 0,
           let d = x.context.security?.authorize(x, record) {
            return .reply(d)
        }
        switch Authorizer.authorize(record: record, route: route, clientIP: x.facts.clientIP,
                                    isHTTPS: x.facts.isHTTPS, now: Int64(time(nil))) {
        case .allow: return resolveSecret(x)
        case .deny(let d): return .reply(d)
        }
    }

    /// Rate limits of the key's plan: every window at once, all or nothing.
    static func admit(_ x: Exchange) -> PhaseResult {
        guard let record = x.facts.record, let planIndex = record.planIndex else { return .next }
        let plans = x.facts.snapshot.plans
        guard planIndex < plans.count, !plans[planIndex].windows.isEmpty else { return .next }
        return x.context.admit(for: x, plan: plans[planIndex])
    }

    /// Per-token routes: the request body, read whole, gives the input estimate and the output
    /// the client asks for (the largest of every field a model might honour).
    static func body(_ x: Exchange) -> PhaseResult {
        guard let price = x.facts.route?.credits, price.perToken != nil else { return .next }
        guard x.request.bodyReady else { return .needBody }
        let body = x.request.body
        let hints = body.count > 0 ? RequestTokenHints.scan(body) : RequestTokenHints()
        if hints.invalid && body.count > 0 { return .reply(Denial(.badRequest)) }
        x.facts.inputEstimate = CreditMath.inputEstimate(bodyBytes: Int64(body.count))
        x.facts.outputWanted = max(1, hints.maxOutputTokens ?? price.reserveTokens)
        return .next
    }

    /// Calendar quotas of the key's plan (after the rate limits, before credits).
    static func quota(_ x: Exchange) -> PhaseResult {
        guard let record = x.facts.record, let planIndex = record.planIndex else { return .next }
        let plans = x.facts.snapshot.plans
        guard planIndex < plans.count, !plans[planIndex].quotas.isEmpty, let gate = x.context.quotas else { return .next }
        return gate.check(x, plan: plans[planIndex])
    }

    /// Credits: the route's price held on the payer's account (402 when it cannot be).
    static func reserve(_ x: Exchange) -> PhaseResult {
        guard let price = x.facts.route?.credits else { return .next }
        guard let gate = x.context.credits else {
            // A reload priced a route, but this process started without a ledger.
            return .reply(Denial(.storeUnavailable, retryAfterSeconds: 1))
        }
        return gate.reserve(x, price: price)
    }

    // MARK: helpers

    static let https: StaticString = "https"

    /// The last comma-separated element of a field value is `https` (OWS trimmed, any case).
    static func isLastValueHTTPS(_ v: UnsafeRawBufferPointer) -> Bool {
        guard let p = v.baseAddress else { return false }
        var end = v.count
        while end > 0, HeaderNames.isOWS(v[end - 1]) { end -= 1 }
        var start = end
        while start > 0, v[start - 1] != 0x2C { start -= 1 }
        while start < end, HeaderNames.isOWS(v[start]) { start += 1 }
        return end - start == 5 && HeaderNames.lowerEquals(p + start, 5, https)
    }
}
