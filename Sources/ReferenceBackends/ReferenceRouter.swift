/// Method + path-pattern routing for the reference backends.
///
/// Patterns are literal segments and `{name}` captures:
/// `/api/finance/accounts/{id}`. The method `*` matches any method. A route
/// for `GET` also answers `HEAD` (the server drops the body).
public struct ReferenceRouter: Sendable {
    public typealias Handler = @Sendable (ReferenceRequest) throws -> ReferenceResponse

    private enum Segment: Sendable, Equatable {
        case literal(String)
        case capture(String)
    }

    private struct Route: Sendable {
        var method: String
        var segments: [Segment]
        var handler: Handler
    }

    /// The outcome of matching one request.
    public enum Match: Sendable {
        case found(Handler, parameters: [String: String])
        case methodNotAllowed(allowed: [String])
        case notFound
    }

    private var routes: [Route] = []

    public init() {}

    public mutating func add(_ method: String, _ pattern: String, _ handler: @escaping Handler) {
        let segments = Self.split(pattern).map { part -> Segment in
            if part.hasPrefix("{") && part.hasSuffix("}") {
                return .capture(String(part.dropFirst().dropLast()))
            }
            return .literal(part)
        }
        routes.append(Route(method: method, segments: segments, handler: handler))
    }

    public func match(method: String, path: String) -> Match {
        let parts = Self.split(path)
        var allowed: [String] = []
        for route in routes {
            guard let parameters = Self.bind(route.segments, to: parts) else { continue }
            if route.method == "*" || route.method == method || (method == "HEAD" && route.method == "GET") {
                // An exact HEAD route wins over GET; otherwise the first match.
                if method == "HEAD" && route.method == "GET",
                   let exact = routes.first(where: { $0.method == "HEAD" && Self.bind($0.segments, to: parts) != nil }) {
                    return .found(exact.handler, parameters: Self.bind(exact.segments, to: parts) ?? [:])
                }
                return .found(route.handler, parameters: parameters)
            }
            allowed.append(route.method)
        }
        if allowed.isEmpty { return .notFound }
        if allowed.contains("GET") && !allowed.contains("HEAD") { allowed.append("HEAD") }
        return .methodNotAllowed(allowed: allowed)
    }

    private static func split(_ path: String) -> [String] {
        path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
    }

    private static func bind(_ segments: [Segment], to parts: [String]) -> [String: String]? {
        guard segments.count == parts.count else { return nil }
        var parameters: [String: String] = [:]
        for (segment, part) in zip(segments, parts) {
            switch segment {
            case .literal(let literal):
                guard literal == part else { return nil }
            case .capture(let name):
                parameters[name] = PercentCoding.decode(part, plusIsSpace: false)
            }
        }
        return parameters
    }
}
