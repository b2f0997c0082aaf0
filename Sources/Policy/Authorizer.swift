/// Pure decisions over a key record and a route.
///
/// The proxy's pipeline (`Pipeline` in Proxy) calls the pieces phase by phase (route → client
/// IP → credential → lookup → ``authorize(record:route:clientIP:isHTTPS:now:)`` → limiter);
/// there is no second copy of that order here.
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
        if let exp = record.expiresAt, now >= exp {
            // A rotated key past its overlap is revoked (the refusal says it was rotated).
            return .deny(record.rotatedTo != nil ? .revoked : .expired)
        }
        if let allow = record.allowIPs, !allow.contains(clientIP) { return .deny(.ipDenied) }
        if !record.scopes.isSuperset(of: route.scopes) { return .deny(.insufficientScope) }
        if route.requiresHTTPS || record.requiresHTTPS, !isHTTPS { return .deny(.httpsRequired) }
        return .allow
    }
}
