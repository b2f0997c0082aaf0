/// The compiled, index-addressed pieces of a ``PolicySnapshot``.

/// One listening socket.
public struct ListenerSpec: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    public var isIPv6: Bool
    /// TLS on this listener (`listen[].tls`), nil for plain HTTP.
    public var tls: TLSSpec?
}

/// TLS to an `https://` backend: the certificate is verified against the system's CAs or the
/// `tls.ca` file, for the URL's host (SNI too, for a host name).
public struct BackendTLS: Sendable, Equatable {
    /// A PEM file of CA certificates (resolved against the policy file's directory), or nil:
    /// the system store.
    public var caFile: String?
    public init(caFile: String?) { self.caFile = caFile }
}

/// `listen[].tls`: certificates (the first is the default; others chosen by SNI), the
/// lowest protocol version, session resumption. Paths are resolved against the directory of
/// the policy file that names them.
public struct TLSSpec: Sendable, Equatable {
    public struct Certificate: Sendable, Equatable {
        public var certificate: String
        public var privateKey: String
        public init(certificate: String, privateKey: String) { self.certificate = certificate; self.privateKey = privateKey }
    }
    public enum Version: String, Sendable, Equatable { case tls12 = "1.2", tls13 = "1.3" }
    public var certificates: [Certificate]
    public var minVersion: Version = .tls12
    public var sessionResumption = true
    /// Where the block is written (for errors about its files): `file:line`.
    public var location: String
}

/// `admin.address`: the admin listener (health, readiness, metrics).
public struct AdminSpec: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    public var isIPv6: Bool
    /// `admin.tokens_file`: bootstrap bearer tokens for the admin API, one `sha256:<hex>` per
    /// line (resolved like every policy path).
    public var tokensFile: String?
    public init(host: String, port: UInt16, isIPv6: Bool, tokensFile: String? = nil) {
        self.host = host; self.port = port; self.isIPv6 = isIPv6; self.tokensFile = tokensFile
    }
}

/// `usage`: one record per answered request, spooled to disk before any sink is tried.
public struct UsageSpec: Sendable, Equatable {
    /// The spool directory (resolved like every policy path).
    public var spool: String
    /// How often the spool is fsync'd (group commit); zero: after every batch the writer takes.
    public var durability: Duration
    public var sinks: [UsageSinkSpec]
}

public struct UsageSinkSpec: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// JSON lines appended to `path`, rotated at `rotateBytes` (0: never) keeping `keep` old files.
        case file(path: String, rotateBytes: Int, keep: Int)
        /// `XADD stream MAXLEN ~ maxlen` on the store's Redis (`store.redis`).
        case redisStream(stream: String, maxLength: Int)
        /// Batches POSTed to `http://host:port/path`: a JSON array (`json`), or one seed 003
        /// `POST /api/usage/record` per record (`accounting`, the record id as Idempotency-Key).
        /// `https://` (`tls`): the certificate verified against the system's CAs or `caFile`.
        case http(host: String, port: UInt16, path: String, format: HTTPFormat, timeout: Duration, batch: Int,
                  tls: Bool = false, caFile: String? = nil)
    }
    public enum HTTPFormat: String, Sendable, Equatable { case json, accounting }
    public var kind: Kind
    /// Stable across restarts while the sink's configuration is the same: names its cursor.
    public var id: String
    /// For metrics (`tollgate_usage_records_total{sink}`).
    public var label: String
}

/// `access_log`: where one line per answered request goes.
public struct AccessLogSpec: Sendable, Equatable {
    public enum Target: Sendable, Equatable {
        /// `path: "-"`.
        case stdout
        /// A file path, already resolved against the directory of the policy file that
        /// names it (absolute, or relative to the working directory when that file's was).
        case file(String)
    }
    public var target: Target
}

/// `audit`: the hash-chained audit trail of key, secret, credit and policy changes.
public struct AuditSpec: Sendable, Equatable {
    /// The JSON-lines file, resolved against the directory of the policy file that names it.
    public var path: String
    /// An Ed25519 private key (PEM) that signs checkpoints, resolved like `path`; nil:
    /// checkpoints are written unsigned (the chain still detects edits, not a rewrite).
    public var signingKey: String?
    /// Where `signing_key` is written, `file:line` (errors about the key file name it).
    public var signingKeyLocation: String
    /// `checkpoint.every`: a checkpoint after this many entries.
    public var checkpointEvery: Int
    /// `checkpoint.interval`: or once the oldest entry it would cover is this old.
    public var checkpointInterval: Duration

    public init(path: String, signingKey: String? = nil, signingKeyLocation: String = "",
                checkpointEvery: Int = 1000, checkpointInterval: Duration = .seconds(60)) {
        self.path = path; self.signingKey = signingKey; self.signingKeyLocation = signingKeyLocation
        self.checkpointEvery = checkpointEvery; self.checkpointInterval = checkpointInterval
    }
}

/// One policy file as loaded: its name (as errors name it) and the SHA-256 of its bytes.
public struct PolicySource: Sendable, Equatable {
    public var file: String
    /// 64 lowercase hex digits.
    public var sha256: String
    public init(file: String, sha256: String) { self.file = file; self.sha256 = sha256 }
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

/// One upstream service; its position in ``PolicySnapshot/backends`` is its id.
public struct BackendSpec: Sendable, Equatable {
    public var index: Int
    public var name: String
    /// Base paths are refused until they are built.
    public var host: String
    public var port: UInt16
    public var isIPv6: Bool
    /// `https://`: TLS to the backend, its certificate verified.
    public var tls: BackendTLS?
    public var connectTimeout: Duration
    public var responseTimeout: Duration
    public var idleTimeout: Duration
    /// Idle keep-alive connections kept per loop.
    public var maxIdle: Int
    /// `inject`: an upstream credential from the secret store, nil for none.
    public var inject: InjectSpec? = nil
}
