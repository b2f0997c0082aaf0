/// Pure decisions over a key record and a route.
///
/// The proxy calls the pieces phase by phase (route → client IP → credential → lookup →
/// ``authorize(record:route:clientIP:isHTTPS:now:)`` → limiter); ``decide(snapshot:facts:lookup:now:limiter:monotonicNanos:)``
/// strings the same pieces together in the same order for tests and tools.
public enum Authorizer {
    /// Checks that consume nothing, in this order: status (revoked → `REVOKED`,
    /// disabled → `DISABLED`), expiry (`EXPIRED`), the key's `allow_ips` (`IP_DENIED`),
    /// route scopes (`INSUFFICIENT_SCOPE`), `require_https` (`HTTPS_REQUIRED`).
    /// - Parameter now: unix seconds.
    @inline(__always)
    public static func authorize(record: KeyRecord, route: RouteSpec, clientIP: IPAddress, isHTTPS: Bool,
                                  now: Int64) -> Decision {
        switch record.status {
        case .revoked: return .deny(.revoked)
        case .disabled: return .deny(.disabled)
        case .active: break
        }
        if let exp = record.expiresAt, now >= exp { return .deny(.expired) }
        if let allow = record.allowIPs, !allow.contains(clientIP) { return .deny(.ipDenied) }
        if !record.scopes.isSuperset(of: route.scopes) { return .deny(.insufficientScope) }
        if route.requiresHTTPS, !isHTTPS { return .deny(.httpsRequired) }
        return .allow
    }

    /// The whole gate for one request: `NO_ROUTE` → global IP rules (`IP_DENIED`) →
    /// public route (allow) → `MISSING_CREDENTIAL` → `INVALID_KEY` (a minted-format key
    /// with a bad checksum is refused without calling `lookup`) → ``authorize`` →
    /// `RATE_LIMITED` when a limiter is given and the key has a plan.
    public static func decide(snapshot: PolicySnapshot, facts: RequestFacts, lookup: (KeyHash) -> KeyRecord?,
                               now: Int64, limiter: RateLimiter? = nil,
                               monotonicNanos: UInt64 = 0) -> (Decision, RouteSpec?) {
        let found = facts.path.withUnsafeBytes { snapshot.route(method: facts.method, path: $0) }
        guard let route = found else { return (.deny(.noRoute), nil) }
        let client: IPAddress
        if let xff = facts.forwardedFor {
            client = xff.withUnsafeBytes { snapshot.clients.resolveClient(peer: facts.peer, forwardedFor: $0) }
        } else {
            client = snapshot.clients.resolveClient(peer: facts.peer, forwardedFor: nil)
        }
        guard snapshot.clients.admits(client) else { return (.deny(.ipDenied), route) }
        if route.isPublic {
            if route.requiresHTTPS, !facts.isHTTPS { return (.deny(.httpsRequired), route) }
            return (.allow, route)
        }
        guard let credential = facts.credential, !credential.isEmpty else { return (.deny(.missingCredential), route) }
        let (kind, hash) = credential.withUnsafeBytes { (KeyFormat.classify($0), KeyHash.sha256($0)) }
        if kind == .mintedBadChecksum { return (.deny(.invalidKey), route) }
        guard let record = lookup(hash) else { return (.deny(.invalidKey), route) }
        let d = authorize(record: record, route: route, clientIP: client, isHTTPS: facts.isHTTPS, now: now)
        guard d == .allow else { return (d, route) }
        if let limiter, let p = record.planIndex, p < snapshot.plans.count {
            let v = limiter.admit(key: hash, plan: snapshot.plans[p], now: monotonicNanos)
            if !v.isAllowed { return (.deny(v.denial), route) }
        }
        return (.allow, route)
    }
}
