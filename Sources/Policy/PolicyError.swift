/// One problem in a policy file: `file:line: key.path: reason`.
package struct PolicyError: Error, Sendable, Equatable, CustomStringConvertible {
    package var file: String
    /// 1-based.
    package var line: Int
    /// `routes[2].match.path_prefix`, `plans.free.rate_limits[0].per`; "" for the document.
    package var keyPath: String
    package var reason: String

    package init(file: String, line: Int, keyPath: String, reason: String) {
        self.file = file; self.line = line; self.keyPath = keyPath; self.reason = reason
    }

    package var description: String {
        keyPath.isEmpty ? "\(file):\(line): \(reason)" : "\(file):\(line): \(keyPath): \(reason)"
    }
}

/// Every problem found while loading (not just the first), in file and line order.
package struct PolicyLoadError: Error, Sendable, Equatable, CustomStringConvertible {
    package var errors: [PolicyError]
    package init(errors: [PolicyError]) { self.errors = errors }
    package var description: String { errors.map(\.description).joined(separator: "\n") }
}
