/// The immutable compiled policy: shared by every loop, swapped whole on reload.
///
/// Everything here is index-addressed (backend ids, plan ids, scope bits) and the
/// per-request lookups (``route(method:path:)``, ``declaredKey(_:)``) do not allocate.
package final class PolicySnapshot: Sendable {
    package let listeners: [ListenerSpec]
    package let admin: AdminSpec?
    /// Set when the policy names a Redis store; nil means the embedded store.
    package let store: StoreSpec?
    /// `store.on_error` / `store.deadline`, also when no Redis URL is given.
    package let storeFailMode: StoreFailMode
    package let storeDeadline: Duration
    /// Position = backend id (``RouteSpec/backend``).
    package let backends: [BackendSpec]
    package let credentials: CredentialRule
    package let clients: ClientRules
    /// Position = plan id (``KeyRecord/planIndex``).
    package let plans: [PlanSpec]
    package let routeTable: RouteTable
    package let scopeTable: ScopeTable
    /// Declared keys, in declaration order.
    package let keys: [KeyRecord]
    let keyIndex: [KeyHash: KeyRecord]

    init(listeners: [ListenerSpec], admin: AdminSpec?, store: StoreSpec?, storeFailMode: StoreFailMode,
         storeDeadline: Duration, backends: [BackendSpec], credentials: CredentialRule, clients: ClientRules,
         plans: [PlanSpec], routes: RouteTable, scopeTable: ScopeTable, keys: [KeyRecord],
         keyIndex: [KeyHash: KeyRecord]) {
        self.listeners = listeners; self.admin = admin; self.store = store; self.storeFailMode = storeFailMode
        self.storeDeadline = storeDeadline; self.backends = backends; self.credentials = credentials
        self.clients = clients; self.plans = plans; self.routeTable = routes; self.scopeTable = scopeTable
        self.keys = keys; self.keyIndex = keyIndex
    }

    package var routes: [RouteSpec] { routeTable.routes }

    /// First route (declaration order across files) whose methods include `method` and
    /// whose path (exact) or path prefix matches the normalised `path`.
    @inline(__always)
    package func route(method: MethodSet, path: UnsafeRawBufferPointer) -> RouteSpec? {
        routeTable.match(method: method, path: path)
    }

    /// Convenience for tests and tools.
    package func route(method: MethodSet, path: String) -> RouteSpec? {
        var p = path
        return p.withUTF8 { route(method: method, path: UnsafeRawBufferPointer($0)) }
    }

    /// The declared key with this hash (policy files only; the store is the proxy's job).
    @inline(__always)
    package func declaredKey(_ hash: KeyHash) -> KeyRecord? { keyIndex[hash] }

    package func declaredKey(id: String) -> KeyRecord? { keys.first { $0.id == id } }

    package func plan(named name: String) -> PlanSpec? { plans.first { $0.name == name } }

    package func backend(named name: String) -> BackendSpec? { backends.first { $0.name == name } }

    /// Scope names → bits of this snapshot (for records built from the store).
    package func scopeSet(of names: [String]) -> ScopeSet { scopeTable.set(of: names) }

    /// `tollgate check PATH`: every problem, or [] when the policy is valid.
    package static func check(path: String) -> [PolicyError] {
        do {
            _ = try PolicyLoader.load(path: path)
            return []
        } catch {
            return error.errors
        }
    }
}
