/// One problem in a policy file: `file:line: key.path: reason`.
public struct PolicyError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    /// 1-based.
    public var line: Int
    /// `routes[2].match.path_prefix`, `plans.free.rate_limits[0].per`; "" for the document.
    public var keyPath: String
    public var reason: String

    public init(file: String, line: Int, keyPath: String, reason: String) {
        self.file = file; self.line = line; self.keyPath = keyPath; self.reason = reason
    }

    public var description: String {
        keyPath.isEmpty ? "\(file):\(line): \(reason)" : "\(file):\(line): \(keyPath): \(reason)"
    }
}

/// Every problem found while loading (not just the first), in file and line order.
public struct PolicyLoadError: Error, Sendable, Equatable, CustomStringConvertible {
    public var errors: [PolicyError]
    public init(errors: [PolicyError]) { self.errors = errors }
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}
