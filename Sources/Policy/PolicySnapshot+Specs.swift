/// The compiled, index-addressed pieces of a ``PolicySnapshot``.

/// One listening socket.
package struct ListenerSpec: Sendable, Equatable {
    package var host: String
    package var port: UInt16
    package var isIPv6: Bool
    /// PEM paths as written (relative paths are relative to the working directory).
    package var tlsCertificatePath: String?
    package var tlsPrivateKeyPath: String?
    package var hasTLS: Bool { tlsCertificatePath != nil }
}

package struct AdminSpec: Sendable, Equatable {
    package var host: String
    package var port: UInt16
    package var isIPv6: Bool
}

/// What the gate does when the store cannot answer in time.
package enum StoreFailMode: String, Sendable, CaseIterable {
    /// Refuse with `STORE_UNAVAILABLE` (default).
    case closed
    /// Let the request through (counted and logged).
    case open
    /// Decide with in-process state only (declared keys, local limiter).
    case local
}

package struct StoreSpec: Sendable, Equatable {
    /// The URL as written.
    package var url: String
    package var isTLS: Bool
    package var host: String
    package var port: UInt16
    package var database: Int
    package var password: String?
    package var onError: StoreFailMode
    package var deadline: Duration
}

package enum BackendScheme: String, Sendable {
    case http, https
}

/// One upstream service; its position in ``PolicySnapshot/backends`` is its id.
package struct BackendSpec: Sendable, Equatable {
    package var index: Int
    package var name: String
    package var scheme: BackendScheme
    package var host: String
    package var port: UInt16
    package var isIPv6: Bool
    /// "" or `/base` (no trailing slash), prefixed to the request path upstream.
    package var basePath: String
    /// Upstream credential: header name and the secret-store name (not the secret).
    package var injectHeader: String?
    package var injectSecret: String?
    package var connectTimeout: Duration
    package var responseTimeout: Duration
    package var idleTimeout: Duration
    /// Idle keep-alive connections kept per loop.
    package var maxIdle: Int
}
