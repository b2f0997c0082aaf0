import Backends
import Foundation
import Policy
import ReferenceBackends

/// Lock-outs on the admin listener, behind an admin credential (a consumer's JWT is refused):
/// - `GET /v1/security/bans` → `{"bans": [{"network", "until"}], "tracked": N}`;
/// - `DELETE /v1/security/bans?network=203.0.113.7` (or an IPv6 address or `/64`) lifts a
///   ban here and, with Redis, on every instance (the shared ban is deleted and `unban` is
///   published); audited as `security.unban`.
struct SecurityAPI {
    let keys: KeyAPI
    let monitor: SecurityMonitor

    func register(into router: inout ReferenceRouter) {
        router.add("GET", "/v1/security/bans") { r in
            if let refusal = keys.refusal(r) { return refusal }
            let now = SecurityMonitor.nowMillis()
            let bans = monitor.bans(now: now).sorted { $0.1 < $1.1 }.map { net, until -> [String: Any] in
                ["network": net.description, "until": AuditFormat.time(millis: until)]
            }
            return KeyAPI.json(200, KeyAPI.encode(["bans": bans, "tracked": monitor.trackedNetworks]), replayed: false)
        }
        router.add("DELETE", "/v1/security/bans") { r in
            if let refusal = keys.refusal(r) { return refusal }
            guard let text = r.query("network"), let net = Self.network(text) else {
                return KeyAPI.error(.bad("network: an IPv4 address, or an IPv6 address or /64 (the lock-out's unit)"))
            }
            let caller = (try? keys.authenticate(r).get())?.name ?? "admin"
            let lifted = monitor.liftBan(net)
            var shared = false
            let snapshot = keys.snapshot()
            if let store = snapshot.store {
                do {
                    let redis = try RedisKeyDirectory(url: store.url)
                    _ = try redis.run(["DEL", "tg:sec:{sec}:ban:" + net.wire])
                    _ = try redis.run(["PUBLISH", RedisKeys.invalidationChannel, "unban " + net.wire])
                    shared = true
                } catch {
                    return KeyAPI.error(KeyAPIError(status: 503, code: "STORE_UNAVAILABLE", message: "lifted here only: \(error)"))
                }
            }
            if let audit = try? AuditLog.openForCommand(snapshot) {
                try? audit.record(AuditEvent(.securityUnban, actor: .admin, subject: net.description, details: [
                    ("network", .string(net.description)), ("was_banned_here", .bool(lifted)),
                    ("shared", .bool(shared)), ("by", .string(caller)),
                ]))
            }
            return KeyAPI.json(200, KeyAPI.encode(["network": net.description, "lifted": lifted || shared]), replayed: false)
        }
    }

    /// The lock-out unit of an address: an IPv4 address; an IPv6 address's /64 (`a::1`,
    /// `a::/64` and `a::1/64` all name the same one).
    static func network(_ text: String) -> NetKey? {
        var t = text.trimmingCharacters(in: .whitespaces)
        if let slash = t.firstIndex(of: "/") {
            let bits = t[t.index(after: slash)...]
            t = String(t[..<slash])
            guard let a = IPAddress(t) else { return nil }
            guard (a.isIPv4 && (bits == "32")) || (!a.isIPv4 && bits == "64") else { return nil }
            return NetKey.lockout(a)
        }
        return IPAddress(t).map(NetKey.lockout)
    }
}
