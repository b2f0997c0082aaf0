/// The policy file as written: one value per YAML file, before merging and before
/// cross-references (backend and plan names, duplicates, scopes) are resolved.
///
/// It is built by walking a node tree with lines (``PolicyNode``, from Yams' tree, or for
/// the `keys:` list from ``KeysScanner``; see ``PolicyDocument/read(yaml:file:errors:fastKeys:)``)
/// rather than through `Decodable`, because every error must name the line of the
/// offending key, and unknown keys must be errors; each value that a later check refers
/// to keeps its ``SourceLocation`` (a key, its lines). These are the only String-keyed
/// types; everything after the compiler is indices, bitsets and bytes.
///
/// Fields are those of `shared/POLICY.md` that are built, plus these extensions:
///
/// ```yaml
/// version: 1                        # required in every file (a keys-only file may omit it)
/// listen:
///   - address: 0.0.0.0:8443         # a.b.c.d:port, [v6]:port or localhost:port (port 0 = any)
/// admin:
///   address: 127.0.0.1:9901         # the admin listener
/// access_log:
///   path: logs/access.jsonl         # "-" = standard output; relative to this file's directory
/// audit:
///   path: .state/audit.jsonl        # required; hash-chained JSON lines; relative to this file
///   signing_key: secrets/audit.pem  # optional Ed25519 private key (PEM): signed checkpoints;
///                                   # without it checkpoints are written unsigned
///   checkpoint: {every: 1000, interval: 60s}   # the defaults; every ≥ 1
/// store:
///   redis: redis://[user:password@]host[:port][/db]    # or unix:///path/redis.sock[?db=N]
///   on_error: closed                # closed | open | local (default closed)
///   deadline: 10ms                  # default 10ms
/// credentials:
///   api_key: {headers: [X-API-Key], query: null, forward: false}   # these are the defaults
///   jwt:                            # optional (see JWTVerifier): algorithms is required, and
///     algorithms: [HS256, ES256]    # secret_env and/or keys_file (JWKS or PEM, relative to
///     secret_env: JWT_SECRET        # this file); issuer/audience (string or list),
///     keys_file: keys/jwks.json     # required_claims, leeway (0s, ≤ 5m), consumer_claim (sub),
///     plan: members                 # scopes_claim (scope), secret_encoding (raw | base64url)
/// backends:
///   NAME:
///     url: http://host:port         # a DNS name, IPv4 or [IPv6]; optional trailing "/"
///     timeouts: {connect: 2s, response: 30s, idle: 300s}   # the defaults
///     pool: {max_idle: 64}          # default 64 idle connections per loop
/// plans:
///   NAME:
///     rate_limits:
///       - {requests: 10, per: 1s, burst: 20}   # burst defaults to requests; ≤ 8 windows
/// routes:
///   - name: NAME                    # unique, [A-Za-z0-9_.:-]
///     match: {methods: [GET], path: /exact}     # or path_prefix; exactly one of them;
///                                   # methods omitted = any; paths in normalised form
///     backend: NAME
///     scopes: [a, b]                # all required
///     require_https: false
///     auth: none                    # none | required (default required)
///     max_body: 1MiB                # default 10MiB; bytes, KiB, MiB, GiB
///     credentials: [api_key, jwt]   # default: every configured credential
/// keys:
///   - id: ID                        # unique across files
///     hash: sha256:<64 lowercase hex>   # unique across files
///     consumer: NAME
///     plan: NAME                    # optional: no plan = no rate limits
///     scopes: [a, b]                # default []
///     allow_ips: [CIDR]             # optional
///     expires: 2027-01-01T00:00:00Z # optional, RFC 3339
///     status: active                # active | disabled | revoked
/// ```
///
/// Settings of the contract that are not built yet are refused at their key with
/// `not supported yet` (a setting read and then ignored would be a silent hole):
/// backend base paths.
///
/// Provider secrets (seed 004):
///
/// ```yaml
/// secrets:
///   master_key_file: secrets/master.key   # 64 hex characters; relative to this file
///   # or master_key_env: TOLLGATE_MASTER_KEY (exactly one of the two)
/// backends:
///   flowise:
///     url: http://127.0.0.1:7003
///     inject: {header: Authorization, format: "Bearer {secret}", secret: flowise_api_key}
/// ```
///
/// Durations: an integer and one of `ms`, `s`, `m`, `h`, `d`. CIDRs: `a.b.c.d/n`,
/// `v6/n` or a bare address; host bits must be zero.
struct PolicyDocument {
    var file: String
    var version: Int?
    var listen: [Listen] = []
    var admin: Block<Admin>?
    var accessLog: Block<AccessLog>?
    var usage: Block<UsageSpec>?
    var audit: Block<Audit>?
    var credits: Block<CreditsSpec>?
    var secrets: Block<SecretsSpec>?
    var security: Block<Security>?
    var store: Block<Store>?
    var clients: Block<ClientRules>?
    var credentials: Block<Credentials>?
    var backends: [Backend] = []
    var plans: [Plan] = []
    var routes: [Route] = []
    var keys: [Key] = []

    init(file: String) { self.file = file }

    /// A scalar block (`store`, `admin`, `access_log`, …) that may appear in one file only.
    struct Block<T> {
        var value: T
        var at: SourceLocation
    }

    struct Listen {
        var address: PolicyValues.HostPort
        var tls: TLSSpec?
    }

    struct Admin {
        var address: PolicyValues.HostPort
        var tokensFile: String?
    }

    struct AccessLog {
        var target: AccessLogSpec.Target
    }

    struct Audit {
        var path: String
        var signingKey: String?
        /// Where `signing_key` is written (errors about the key file name it).
        var signingKeyAt: SourceLocation?
        var every = 1000
        var interval: Duration = .seconds(60)
    }

    struct Store {
        var redis: RedisURL?
        var onError: StoreFailMode = .closed
        var deadline: Duration = .milliseconds(10)
    }

    struct Credentials {
        var headers: [String] = ["X-API-Key"]
        var query: String?
        var forward = false
        var jwt: JWT?
    }

    /// `credentials.jwt`, as written (secrets and keys files are read by the compiler).
    struct JWT {
        var at: SourceLocation
        var algorithms: [JWTAlgorithm] = []
        var algorithmsAt: SourceLocation
        var secretEnv: String?
        var secretEnvAt: SourceLocation?
        var secretIsBase64URL = false
        var keysFile: String?
        var keysFileAt: SourceLocation?
        var issuers: [String] = []
        var audiences: [String] = []
        var requiredClaims: [JWTSettings.RequiredClaim] = []
        var leeway: Duration = .zero
        var consumerClaim = "sub"
        var scopesClaim = "scope"
        var plan: String?
        var planAt: SourceLocation?
    }

    struct Backend {
        var name: String
        var at: SourceLocation
        var host: String
        var port: UInt16
        var isIPv6: Bool
        var tls: BackendTLS?
        var connectTimeout: Duration = .seconds(2)
        var responseTimeout: Duration = .seconds(30)
        var idleTimeout: Duration = .seconds(300)
        var maxIdle = 64
        var inject: InjectSpec?
        /// Where `inject` is written (it needs the top-level `secrets` block).
        var injectAt: SourceLocation?
    }

    struct Plan {
        var name: String
        var at: SourceLocation
        var windows: [Window]
        var quotas: [QuotaSpec] = []
    }

    struct Window {
        var requests: Int
        var per: Duration
        var burst: Int?
        var at: SourceLocation
    }

    struct Route {
        var name: String
        var at: SourceLocation
        var nameAt: SourceLocation
        var methods: MethodSet
        var path: [UInt8]
        var isPrefix: Bool
        var backend: String
        var backendAt: SourceLocation
        var scopes: [String]
        var scopesAt: SourceLocation
        var requiresHTTPS: Bool
        var isPublic: Bool
        var maxBodyBytes: Int
        var credits: RouteCredits?
        var creditsAt: SourceLocation?
        /// `credentials: [api_key, jwt]`; nil: every configured credential.
        var credentials: CredentialKinds?
        var credentialsAt: SourceLocation?
    }

    /// One entry of `keys`. Lines rather than ``SourceLocation``s: a file may declare
    /// thousands, and a location is only needed for an error (``at(_:line:in:)``).
    struct Key: Equatable {
        /// Position in this file's `keys` list.
        var index: Int
        var id: String
        var idLine: Int
        var hash: KeyHash
        var hashLine: Int
        var consumer: String
        var plan: String?
        /// The line of `plan` (of the entry when there is none).
        var planLine: Int
        var scopes: [String]
        var allowIPs: CIDRSet?
        var expiresAt: Int64?
        var status: KeyStatus

        /// `file:line` and `keys[index].field`.
        func at(_ field: String, line: Int, in file: String) -> SourceLocation {
            SourceLocation(file: file, line: line, keyPath: NodeReader.keyPath(index, field))
        }
    }
}

/// Where a value was written: file, 1-based line, key path.
struct SourceLocation: Sendable, Equatable {
    var file: String
    var line: Int
    var keyPath: String

    func error(_ reason: String) -> PolicyError {
        PolicyError(file: file, line: line, keyPath: keyPath, reason: reason)
    }

    var short: String { "\(file):\(line)" }
}
