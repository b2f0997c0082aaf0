/// The immutable compiled policy: shared by every loop, swapped whole on reload.
///
/// Everything here is index-addressed (backend ids, plan ids, scope bits) and the
/// per-request lookups (``route(method:path:)``, ``declaredKey(_:)``) do not allocate.
public final class PolicySnapshot: Sendable {
    public let listeners: [ListenerSpec]
    /// `admin.address`; nil when the policy names no admin listener.
    public let admin: AdminSpec?
    /// `access_log`; nil (no access log) when omitted.
    public let accessLog: AccessLogSpec?
    /// `usage`; nil (no usage records) when omitted.
    public let usage: UsageSpec?
    /// `credits`; nil when no route has a price.
    public let credits: CreditsSpec?
    /// `secrets`; nil when the policy names no master key (then no backend injects).
    public let secrets: SecretsSpec?
    /// Set when the policy names a Redis store; nil means the embedded store.
    public let store: StoreSpec?
    /// `store.on_error` / `store.deadline`, also when no Redis URL is given.
    public let storeFailMode: StoreFailMode
    public let storeDeadline: Duration
    /// Position = backend id (``RouteSpec/backend``).
    public let backends: [BackendSpec]
    public let credentials: CredentialRule
    /// `credentials.jwt`: the verifier with its keys (read when this snapshot was compiled);
    /// nil when JWTs are not configured.
    public let jwt: JWTVerifier?
    /// `credentials.jwt.plan` (an extension): the plan of every JWT consumer; nil: no limits.
    public let jwtPlanIndex: Int?
    public let clients: ClientRules
    /// Position = plan id (``KeyRecord/planIndex``).
    public let plans: [PlanSpec]
    public let routeTable: RouteTable
    public let scopeTable: ScopeTable
    /// Declared keys, in declaration order.
    public let keys: [KeyRecord]
    let keyIndex: KeyHashMap<KeyRecord>
    /// Declared key id → position in ``keys``.
    let idIndex: [String: Int]
    /// `audit`; nil (no audit trail) when omitted.
    public let audit: AuditSpec?
    /// `security`: lock-out, auto-disable, webhooks; nil when omitted.
    public let security: SecuritySpec?
    /// What `security` turns on, as bits the request path tests without copying the spec:
    /// ``lockoutBit``, ``refusalsBit``, ``networksBit``.
    public let securityFlags: UInt8
    public static let lockoutBit: UInt8 = 1
    public static let refusalsBit: UInt8 = 2
    public static let networksBit: UInt8 = 4
    /// The files this snapshot was compiled from, in merge order, with the SHA-256 of the
    /// bytes read (what `sha256sum` prints): the audit trail records them on every reload.
    public let sources: [PolicySource]

    init(listeners: [ListenerSpec], admin: AdminSpec?, accessLog: AccessLogSpec?, store: StoreSpec?, storeFailMode: StoreFailMode,
         storeDeadline: Duration, backends: [BackendSpec], credentials: CredentialRule, clients: ClientRules,
         plans: [PlanSpec], routes: RouteTable, scopeTable: ScopeTable, keys: [KeyRecord],
         keyIndex: KeyHashMap<KeyRecord>, idIndex: [String: Int], usage: UsageSpec? = nil, credits: CreditsSpec? = nil,
         secrets: SecretsSpec? = nil, audit: AuditSpec? = nil, sources: [PolicySource] = [], jwt: JWTVerifier? = nil,
         jwtPlanIndex: Int? = nil, security: SecuritySpec? = nil) {
        self.security = security
        securityFlags = (security?.lockout != nil ? Self.lockoutBit : 0) | (security?.refusalRule != nil ? Self.refusalsBit : 0)
            | (security?.networkRule != nil ? Self.networksBit : 0)
        self.jwt = jwt
        self.jwtPlanIndex = jwtPlanIndex
        self.usage = usage
        self.credits = credits
        self.secrets = secrets
        self.listeners = listeners; self.admin = admin; self.accessLog = accessLog
        self.store = store; self.storeFailMode = storeFailMode
        self.storeDeadline = storeDeadline; self.backends = backends; self.credentials = credentials
        self.clients = clients; self.plans = plans; self.routeTable = routes; self.scopeTable = scopeTable
        self.keys = keys; self.keyIndex = keyIndex; self.idIndex = idIndex
        self.audit = audit; self.sources = sources
    }

    public var routes: [RouteSpec] { routeTable.routes }

    /// First route (declaration order across files) whose methods include `method` and
    /// whose path (exact) or path prefix matches the normalised `path`.
    @inline(__always)
    public func route(method: MethodSet, path: UnsafeRawBufferPointer) -> RouteSpec? {
        routeTable.match(method: method, path: path)
    }

    /// Convenience for tests and tools.
    public func route(method: MethodSet, path: String) -> RouteSpec? {
        var p = path
        return p.withUTF8 { route(method: method, path: UnsafeRawBufferPointer($0)) }
    }

    /// The declared key with this hash (policy files only; the store is the proxy's job).
    @inline(__always)
    public func declaredKey(_ hash: KeyHash) -> KeyRecord? { keyIndex[hash] }

    /// The declared key with this id (one dictionary probe: the key directory asks this
    /// for every stored key when it is rebuilt).
    public func declaredKey(id: String) -> KeyRecord? { idIndex[id].map { keys[$0] } }

    public func plan(named name: String) -> PlanSpec? { plans.first { $0.name == name } }

    public func backend(named name: String) -> BackendSpec? { backends.first { $0.name == name } }

    /// Scope names → bits of this snapshot (for records built from the store).
    public func scopeSet(of names: [String]) -> ScopeSet { scopeTable.set(of: names) }

    /// `tollgate check PATH`: every problem, or [] when the policy is valid.
    public static func check(path: String, environment: PolicyEnvironment = .process) -> [PolicyError] {
        do {
            _ = try PolicyLoader.load(path: path, environment: environment)
            return []
        } catch {
            return error.errors
        }
    }
}
