import Backends
import Policy

extension Pipeline {
    static let noUpstreamCredentialMessage =
        "The upstream service needs a credential, and none is set for this consumer (nor a system one)."

    /// A backend with `inject`: the consumer's own secret when one is set, else the system
    /// one, chosen when the key is authorized (or, on a public route, before forwarding), so
    /// a request that cannot be sent costs no rate-limit, quota or credit. Neither: 503
    /// `UPSTREAM_UNAVAILABLE`, and nothing reaches the backend.
    static func resolveSecret(_ x: Exchange) -> PhaseResult {
        // Most backends inject nothing: decided by one flag of the route's pool.
        guard let pool = x.facts.pool, pool.injects, let route = x.facts.route else { return .next }
        let backends = x.facts.snapshot.backends
        guard route.backend < backends.count, let inject = backends[route.backend].inject else { return .next }
        let table = x.context.secrets
        guard let found = table.resolve(secret: inject.secret, consumer: x.facts.record?.consumer) else {
            return .noUpstreamCredential
        }
        x.facts.secretTable = table
        x.facts.secretSource = found.source
        x.facts.secretSlot = found.slot
        return .next
    }
}
