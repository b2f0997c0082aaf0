// TEMPORARY stand-in for the Policy module while it is being written (replaced at merge).
package struct MethodSet: OptionSet, Sendable {
    package let rawValue: UInt16
    package init(rawValue: UInt16) { self.rawValue = rawValue }
}
package struct ListenerSpec: Sendable { package var host: String; package var port: UInt16; package var isIPv6: Bool
    package init(host: String, port: UInt16, isIPv6: Bool = false) { self.host = host; self.port = port; self.isIPv6 = isIPv6 } }
package struct BackendSpec: Sendable {
    package var name: String; package var scheme: String; package var host: String; package var port: UInt16
    package var basePath: String = ""
    package var connectTimeout: Duration = .seconds(2); package var responseTimeout: Duration = .seconds(30)
    package var idleTimeout: Duration = .seconds(300); package var maxIdle: Int = 64
    package init(name: String, host: String, port: UInt16) { self.name = name; self.scheme = "http"; self.host = host; self.port = port }
}
package struct RouteSpec: Sendable {
    package var index: Int; package var name: String; package var backend: Int
    package var requiresHTTPS = false; package var isPublic = true; package var maxBodyBytes = 10 << 20
    package var prefix: [UInt8]
    package init(index: Int, name: String, backend: Int, prefix: String) { self.index = index; self.name = name; self.backend = backend; self.prefix = Array(prefix.utf8) }
}
package final class PolicySnapshot: Sendable {
    package let listeners: [ListenerSpec]; package let backends: [BackendSpec]; package let routes: [RouteSpec]
    package init(listeners: [ListenerSpec], backends: [BackendSpec], routes: [RouteSpec]) { self.listeners = listeners; self.backends = backends; self.routes = routes }
    package func route(method: MethodSet, path: UnsafeRawBufferPointer) -> RouteSpec? {
        for r in routes where path.count >= r.prefix.count && r.prefix.withUnsafeBytes({ memcmp($0.baseAddress!, path.baseAddress!, r.prefix.count) == 0 }) { return r }
        return nil
    }
}
import Glibc
package enum DenialCode: String, CaseIterable, Sendable {
    case missingCredential = "MISSING_CREDENTIAL", invalidKey = "INVALID_KEY", expired = "EXPIRED", revoked = "REVOKED"
    case disabled = "DISABLED", ipDenied = "IP_DENIED", insufficientScope = "INSUFFICIENT_SCOPE", httpsRequired = "HTTPS_REQUIRED"
    case lockedOut = "LOCKED_OUT", rateLimited = "RATE_LIMITED", quotaExceeded = "QUOTA_EXCEEDED"
    case insufficientCredits = "INSUFFICIENT_CREDITS", noRoute = "NO_ROUTE", badRequest = "BAD_REQUEST"
    case storeUnavailable = "STORE_UNAVAILABLE", upstreamUnavailable = "UPSTREAM_UNAVAILABLE"
    package var status: Int { switch self { case .noRoute: 404; case .badRequest: 400; case .upstreamUnavailable: 502; default: 403 } }
    package var defaultMessage: String { rawValue }
}
package struct PolicyError: Error, CustomStringConvertible, Sendable { package var description: String }
package struct PolicyLoadError: Error, Sendable { package var errors: [PolicyError] }
/// TEMPORARY: env-configured snapshot (STUB_LISTEN_PORT, STUB_BACKEND_PORT).
package enum PolicyLoader {
    package static func load(path: String) throws(PolicyLoadError) -> PolicySnapshot {
        let lp = UInt16(String(cString: getenv("STUB_LISTEN_PORT") ?? strdup("18080"))) ?? 18080
        let bp = UInt16(String(cString: getenv("STUB_BACKEND_PORT") ?? strdup("17001"))) ?? 17001
        return PolicySnapshot(listeners: [ListenerSpec(host: "127.0.0.1", port: lp)],
                              backends: [BackendSpec(name: "b", host: "127.0.0.1", port: bp)],
                              routes: [RouteSpec(index: 0, name: "all", backend: 0, prefix: "/")])
    }
}
