import Backends
import Glibc
import Policy
import Runtime

/// The phase driver: the only place the order of phases is written.
extension ClientConnection {
    func advance() {
        while state == .proxying {
            let result: PhaseResult
            switch exchange.phase {
            case .route: result = routePhase()
            case .resolveClient: result = resolveClientPhase()
            case .extractCredential: result = extractCredentialPhase()
            case .lookupKey: result = lookupKeyPhase()
            case .authorize: result = authorizePhase()
            case .admit: result = admitPhase()
            case .forward:
                state = .proxying
                forward(headLength: exchange.headLength)
                return
            }
            if !apply(result) { return }
        }
    }

    /// Moves the exchange on by a phase's result; false when the driver must stop.
    private func apply(_ result: PhaseResult) -> Bool {
        switch result {
        case .next:
            if exchange.phase == .resolveClient, let route = exchange.route, route.isPublic {
                // No credential work on a public route; the HTTPS requirement still holds.
                if route.requiresHTTPS && !exchange.isHTTPS { return apply(.reply(Denial(.httpsRequired))) }
                exchange.phase = .forward
            } else {
                exchange.phase = Phase(rawValue: exchange.phase.rawValue &+ 1) ?? .forward
            }
            return true
        case .wait:
            state = .waiting
            return false
        case .replied:
            return false
        case .reply(let denial):
            state = .proxying
            exchange.retryAfterSeconds = denial.retryAfterSeconds ?? 0
            deny(denial.code, headLength: exchange.headLength)
            return false
        }
    }

    /// The store answered the phase this exchange waits in (never called from inside the
    /// call that started the wait: the Redis client defers every completion).
    func redisCompleted(token: UInt64, result: RedisResult) {
        guard state == .waiting, token == exchange.token else { return }
        state = .proxying
        let r = context.completeStore(for: self, result: result)
        if apply(r) { advance() }
        drive()
    }

    // MARK: phases

    /// Normalise the path once, match the route on the normalised form.
    private func routePhase() -> PhaseResult {
        let head = inBuf.readable
        let out = UnsafeMutableRawBufferPointer(start: pathBuffer, count: pathCapacity)
        if request.form == .asterisk || request.form == .authority { return .reply(Denial(.noRoute)) }
        if request.path.isEmpty {
            out[0] = 0x2F
            exchange.pathCount = 1
        } else {
            let raw = UnsafeRawBufferPointer(rebasing: head[Int(request.path.offset)..<request.path.end])
            switch PathNormalizer.normalize(raw, into: out) {
            case .normalized(let n): exchange.pathCount = n
            case .rejected: return .reply(Denial(.badRequest))
            }
        }
        let method = MethodSet(rawValue: 1 << UInt16(request.method.rawValue))
        let path = UnsafeRawBufferPointer(start: pathBuffer, count: exchange.pathCount)
        guard let route = exchange.snapshot.route(method: method, path: path) else { return .reply(Denial(.noRoute)) }
        exchange.routeIndex = route.index
        // Keep-alive connections mostly send the same route again: the route and pool kept
        // from the last exchange are reused without a retain/release pair each. (A reload
        // brings new route objects, so a changed snapshot always picks its own pool; a
        // retired pool is never reused either way.)
        if exchange.route !== route || exchange.pool?.isRetired != false {
            exchange.route = route
            exchange.pool = context.pools[route.backend]
        }
        maxBodyBytes = route.maxBodyBytes
        if case .contentLength(let n) = request.framing, n > Int64(maxBodyBytes) {
            replyLocal(status: 413, code: .badRequest, message: "request body larger than the route allows",
                       headLength: exchange.headLength, forceClose: true)
            return .replied
        }
        return .next
    }

    /// The client address: the peer, or X-Forwarded-For walked through trusted proxies only.
    private func resolveClientPhase() -> PhaseResult {
        exchange.isHTTPS = isTLS
        if !context.hasClientRules {
            // No trusted proxies, no deny/allow lists: the peer is the client, and admitted.
            exchange.isPeerTrusted = false
            exchange.clientIP = peerIP
            return .next
        }
        let rules = exchange.snapshot.clients
        exchange.isPeerTrusted = !rules.trustedProxies.isEmpty && rules.trustedProxies.contains(peerIP)
        if exchange.isPeerTrusted {
            let head = inBuf.readable
            var xff: UnsafeRawBufferPointer?
            var xfp: UnsafeRawBufferPointer?
            for i in 0..<headers.count {
                let f = headers[i]
                let np = head.baseAddress! + Int(f.name.offset)
                // The last line of each wins (the nearest proxy appends last).
                switch HeaderNames.classify(np, Int(f.name.count)) {
                case .xForwardedFor: xff = UnsafeRawBufferPointer(rebasing: head[Int(f.value.offset)..<f.value.end])
                case .xForwardedProto: xfp = UnsafeRawBufferPointer(rebasing: head[Int(f.value.offset)..<f.value.end])
                default: break
                }
            }
            // X-Forwarded-Proto: the last value of the last line, exactly `https` (any case);
            // anything else is plain HTTP. A TLS listener is HTTPS whatever the header says.
            if !isTLS, let v = xfp { exchange.isHTTPS = Self.isLastValueHTTPS(v) }
            exchange.clientIP = rules.resolveClient(peer: peerIP, forwardedFor: xff)
        } else {
            exchange.clientIP = peerIP
        }
        if !rules.admits(exchange.clientIP) { return .reply(Denial(.ipDenied)) }
        return .next
    }

    /// The key: a configured header, `Authorization: Bearer`, or the query parameter if enabled.
    private func extractCredentialPhase() -> PhaseResult {
        let rule = exchange.snapshot.credentials
        let head = inBuf.readable
        let base = head.baseAddress!
        var bearerIndex = -1
        search: for i in 0..<headers.count {
            let f = headers[i]
            let np = base + Int(f.name.offset)
            let nn = Int(f.name.count)
            for name in rule.headerNamesLowercased where name.count == nn {
                if name.withUnsafeBytes({ Self.caselessEquals(np, $0.baseAddress!, nn) }), f.value.count > 0 {
                    exchange.credentialSource = .header
                    exchange.credentialHeader = i
                    exchange.credential = f.value
                    break search
                }
            }
            if bearerIndex < 0 && nn == 13 && HeaderNames.lowerEquals(np, 13, HeaderNames.authorization) { bearerIndex = i }
        }
        if exchange.credentialSource == .none && bearerIndex >= 0 {
            let f = headers[bearerIndex]
            let value = UnsafeRawBufferPointer(rebasing: head[Int(f.value.offset)..<f.value.end])
            if let r = CredentialRule.bearerToken(in: value), !r.isEmpty {
                exchange.credentialSource = .bearer
                exchange.credentialHeader = bearerIndex
                exchange.credential = ByteRange(offset: Int(f.value.offset) + r.lowerBound, count: r.count)
            }
        }
        if exchange.credentialSource == .none, let q = rule.queryParam, request.hasQuery {
            let query = UnsafeRawBufferPointer(rebasing: head[Int(request.query.offset)..<request.query.end])
            if let r = CredentialRule.queryValue(named: q, in: query), !r.isEmpty {
                exchange.credentialSource = .query
                exchange.credential = ByteRange(offset: Int(request.query.offset) + r.lowerBound, count: r.count)
            }
        }
        if exchange.credentialSource == .none { return .reply(Denial(.missingCredential)) }
        let key = UnsafeRawBufferPointer(rebasing: head[Int(exchange.credential.offset)..<exchange.credential.end])
        // A key in Tollgate's own format with a bad checksum is refused without any lookup.
        if KeyFormat.classify(key) == .mintedBadChecksum { return .reply(Denial(.invalidKey)) }
        exchange.keyHash = context.keyHashes.sha256(key)
        return .next
    }

    /// In-process key directory, or the shared store (which may wait for Redis).
    private func lookupKeyPhase() -> PhaseResult {
        context.lookup(for: self)
    }

    /// Status, expiry, the key's IP allow-list, scopes, HTTPS: checks that consume nothing.
    private func authorizePhase() -> PhaseResult {
        guard let record = exchange.record, let route = exchange.route else { return .reply(Denial(.invalidKey)) }
        switch Authorizer.authorize(record: record, route: route, clientIP: exchange.clientIP,
                                    isHTTPS: exchange.isHTTPS, now: Int64(time(nil))) {
        case .allow: return .next
        case .deny(let d): return .reply(d)
        }
    }

    /// Rate limits of the key's plan: every window at once, all or nothing.
    private func admitPhase() -> PhaseResult {
        guard let record = exchange.record, let planIndex = record.planIndex else { return .next }
        let plans = exchange.snapshot.plans
        guard planIndex < plans.count, !plans[planIndex].windows.isEmpty else { return .next }
        return context.admit(for: self, plan: plans[planIndex])
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

    /// ASCII case-insensitive comparison of two byte runs.
    @inline(__always)
    static func caselessEqualsMixed(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> Bool {
        var i = 0
        while i < n {
            var x = a.load(fromByteOffset: i, as: UInt8.self)
            var y = b.load(fromByteOffset: i, as: UInt8.self)
            if x &- 0x41 < 26 { x |= 0x20 }
            if y &- 0x41 < 26 { y |= 0x20 }
            if x != y { return false }
            i &+= 1
        }
        return true
    }

    @inline(__always)
    static func caselessEquals(_ a: UnsafeRawPointer, _ lower: UnsafeRawPointer, _ n: Int) -> Bool {
        var i = 0
        while i < n {
            var c = a.load(fromByteOffset: i, as: UInt8.self)
            if c &- 0x41 < 26 { c |= 0x20 }
            if c != lower.load(fromByteOffset: i, as: UInt8.self) { return false }
            i &+= 1
        }
        return true
    }
}
