/// The compiled, index-addressed pieces of a ``PolicySnapshot``.

/// One listening socket.
public struct ListenerSpec: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    public var isIPv6: Bool
    /// PEM paths as written (relative paths are relative to the working directory).
    public var tlsCertificatePath: String?
    public var tlsPrivateKeyPath: String?
    public var hasTLS: Bool { tlsCertificatePath != nil }
}

public struct AdminSpec: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    public var isIPv6: Bool
}

/// What the gate does when the store cannot answer in time.
public enum StoreFailMode: String, Sendable, CaseIterable {
    /// Refuse with `STORE_UNAVAILABLE` (default).
    case closed
    /// Let the request through (counted and logged).
    case open
    /// Decide with in-process state only (declared keys, local limiter).
    case local
}

public struct StoreSpec: Sendable, Equatable {
    /// Where Redis is (its password stays out of `description`).
    public var url: RedisURL
    public var onError: StoreFailMode
    public var deadline: Duration
}

public enum BackendScheme: String, Sendable {
    case http, https
}

/// One upstream service; its position in ``PolicySnapshot/backends`` is its id.
public struct BackendSpec: Sendable, Equatable {
    public var index: Int
    public var name: String
    public var scheme: BackendScheme
    public var host: String
    public var port: UInt16
    public var isIPv6: Bool
    /// "" or `/base` (no trailing slash), prefixed to the request path upstream.
    public var basePath: String
    /// Upstream credential: header name and the secret-store name (not the secret).
    public var injectHeader: String?
    public var injectSecret: String?
    public var connectTimeout: Duration
    public var responseTimeout: Duration
    public var idleTimeout: Duration
    /// Idle keep-alive connections kept per loop.
    public var maxIdle: Int
}
