/// A set of request methods; bit i is `HTTPMethod(rawValue: i)` of the codec, so the
/// proxy converts with `MethodSet(rawValue: 1 << m.rawValue)`.
public struct MethodSet: OptionSet, Sendable, Hashable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let get = MethodSet(rawValue: 1 << 0)
    public static let head = MethodSet(rawValue: 1 << 1)
    public static let post = MethodSet(rawValue: 1 << 2)
    public static let put = MethodSet(rawValue: 1 << 3)
    public static let delete = MethodSet(rawValue: 1 << 4)
    public static let patch = MethodSet(rawValue: 1 << 5)
    public static let options = MethodSet(rawValue: 1 << 6)
    public static let trace = MethodSet(rawValue: 1 << 7)
    public static let connect = MethodSet(rawValue: 1 << 8)
    public static let other = MethodSet(rawValue: 1 << 9)
    public static let any = MethodSet(rawValue: 0x3FF)

    /// Policy spelling → bit (case-sensitive, as methods are).
    public static func named(_ s: String) -> MethodSet? {
        switch s {
        case "GET": return .get
        case "HEAD": return .head
        case "POST": return .post
        case "PUT": return .put
        case "DELETE": return .delete
        case "PATCH": return .patch
        case "OPTIONS": return .options
        case "TRACE": return .trace
        case "CONNECT": return .connect
        default: return nil
        }
    }
}

/// One compiled route. A final class so a lookup hands out a reference, not copies of
/// its strings.
public final class RouteSpec: Sendable {
    /// Declaration order across files (the match order).
    public let index: Int
    public let name: String
    /// Index into ``PolicySnapshot/backends``.
    public let backend: Int
    public let scopes: ScopeSet
    public let scopeNames: [String]
    public let requiresHTTPS: Bool
    /// `auth: none`: no credential is read or needed.
    public let isPublic: Bool
    /// Request bodies over this get 413.
    public let maxBodyBytes: Int
    public let methods: MethodSet
    /// The normalised path (exact) or prefix bytes.
    public let path: [UInt8]
    public let isPrefix: Bool
    /// The route's price (`credits:`); nil: free.
    public let credits: RouteCredits?
    /// The credentials it takes (`credentials:`, by default every configured one).
    public let credentials: CredentialKinds

    init(index: Int, name: String, backend: Int, scopes: ScopeSet, scopeNames: [String], requiresHTTPS: Bool,
         isPublic: Bool, maxBodyBytes: Int, methods: MethodSet, path: [UInt8], isPrefix: Bool,
         credits: RouteCredits? = nil, credentials: CredentialKinds = .apiKey) {
        self.credits = credits
        self.credentials = credentials
        self.index = index; self.name = name; self.backend = backend; self.scopes = scopes
        self.scopeNames = scopeNames; self.requiresHTTPS = requiresHTTPS; self.isPublic = isPublic
        self.maxBodyBytes = maxBodyBytes; self.methods = methods
        self.path = path; self.isPrefix = isPrefix
    }

    @inline(__always)
    func matches(method: MethodSet, path p: UnsafeRawBufferPointer) -> Bool {
        guard methods.rawValue & method.rawValue != 0 else { return false }
        let n = path.count
        if isPrefix { if p.count < n { return false } } else if p.count != n { return false }
        return path.withUnsafeBytes { mine in
            n == 0 || memcmpBytes(mine.baseAddress!, p.baseAddress!, n)
        }
    }
}

@inline(__always)
private func memcmpBytes(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> Bool {
    var i = 0
    while i + 8 <= n {
        if a.loadUnaligned(fromByteOffset: i, as: UInt64.self) != b.loadUnaligned(fromByteOffset: i, as: UInt64.self) {
            return false
        }
        i += 8
    }
    while i < n {
        if a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) { return false }
        i += 1
    }
    return true
}

/// Routes in declaration order; first match wins. A linear scan over compiled byte
/// paths: for the tens of routes a gateway has, this beats a trie's pointer chasing.
public struct RouteTable: Sendable {
    public let routes: [RouteSpec]

    init(_ routes: [RouteSpec]) { self.routes = routes }

    @inline(__always)
    public func match(method: MethodSet, path: UnsafeRawBufferPointer) -> RouteSpec? {
        for r in routes where r.matches(method: method, path: path) { return r }
        return nil
    }
}
