import ReferenceBackends
import Policy
import Synchronization

/// The admin listener (`admin.address`): `/healthz`, `/readyz`, `/metrics`, the key and
/// usage APIs and the dashboard (``Dashboard``), on threads of its own, so no request waits on a scrape and a scrape never waits on the loops (the
/// counters are read without a lock).
final class AdminServer: Sendable {
    let server: ReferenceServer

    /// What `/readyz` looks at.
    final class Readiness: Sendable {
        let isServing = Atomic<Bool>(false)
        let isDraining = Atomic<Bool>(false)
        /// `store.on_error: closed`: a store that does not answer makes the instance unready.
        let storeMustAnswer: Bool
        init(storeMustAnswer: Bool) { self.storeMustAnswer = storeMustAnswer }
    }

    init(spec: AdminSpec, readiness: Readiness, usage: UsageAggregates? = nil, keys: KeyAPI? = nil,
         security: SecurityMonitor? = nil) throws(ReferenceServerError) {
        var router = ReferenceRouter()
        if let usage {
            // Per-key usage, aggregated by the spool writer (`UsageAggregates`); behind the
            // admin credential like every `/v1/…` path.
            router.add("GET", "/v1/usage") { request in
                if let keys, let refusal = keys.refusal(request) { return refusal }
                let (status, body) = usage.answer(keyID: request.query("key_id"), from: request.query("from"),
                                                  to: request.query("to"), by: request.query("by"))
                return ReferenceResponse(status: status, headers: [("Content-Type", "application/json")], body: .bytes(Array(body.utf8)))
            }
        }
        keys?.register(into: &router)
        if let keys, let security { SecurityAPI(keys: keys, monitor: security).register(into: &router) }
        // The dashboard (`/`, `/login`, `/logout`, `/v1/dashboard/links`): behind the same
        // admin credential, so only with the key API.
        if let keys { Dashboard(keys: keys, usage: usage, readiness: readiness).register(into: &router) }
        router.add("GET", "/healthz") { _ in .text(200, "ok\n") }
        router.add("GET", "/readyz") { _ in
            let (ready, why) = Self.ready(readiness)
            return .text(ready ? 200 : 503, why + "\n")
        }
        router.add("GET", "/metrics") { _ in
            ReferenceResponse(status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                              body: .bytes(Array(MetricsRegistry.shared.render().utf8)))
        }
        server = try ReferenceServer(host: spec.host, port: spec.port, router: router)
    }

    /// Policy loaded and listeners up (serving, not draining), and the store answering unless
    /// the policy says how to go on without it.
    static func ready(_ r: Readiness) -> (Bool, String) {
        if r.isDraining.load(ordering: .relaxed) { return (false, "draining") }
        if !r.isServing.load(ordering: .relaxed) { return (false, "starting") }
        switch MetricsRegistry.shared.storeState() {
        case .none: return (true, "ready")
        case .up: return (true, "ready (store up)")
        case .down: return r.storeMustAnswer ? (false, "store unavailable (on_error: closed)") : (true, "ready (store unavailable: degraded)")
        }
    }

    func stop() { server.stop() }
}

extension MetricsRegistry {
    enum StoreState { case none, up, down }

    /// No store configured, at least one loop's Redis connection up, or none.
    func storeState() -> StoreState {
        if gaugeSum(.storeConfigured) == 0 { return .none }
        return gaugeSum(.storeUp) > 0 ? .up : .down
    }
}
