import Foundation
import Synchronization

/// A handler's refusal: answered as JSON with `status`.
public struct ReferenceHTTPError: Error, Sendable {
    public var status: Int
    public var body: JSONValue
    public var headers: [(name: String, value: String)]

    public init(_ status: Int, _ body: JSONValue, headers: [(name: String, value: String)] = []) {
        self.status = status
        self.body = body
        self.headers = headers
    }

    /// `{"error": message}` with `status`.
    public static func message(_ status: Int, _ message: String) -> ReferenceHTTPError {
        ReferenceHTTPError(status, ["error": .string(message)])
    }
}

/// Identity headers the proxy adds in front of the reference backends.
public enum TollgateHeader {
    public static let keyID = "X-Tollgate-Key-Id"
    public static let consumer = "X-Tollgate-Consumer"
    public static let scopes = "X-Tollgate-Scopes"
    /// Records without a consumer header belong to this owner.
    public static let anonymousConsumer = "anonymous"
}

extension ReferenceRequest {
    /// The consumer named by the proxy, or `anonymous`.
    var consumer: String {
        guard let value = header(TollgateHeader.consumer), !value.isEmpty else { return TollgateHeader.anonymousConsumer }
        return value
    }

    /// The body as a JSON object; `400` when it is missing or not an object.
    func jsonObject() throws(ReferenceHTTPError) -> JSONValue {
        guard !body.isEmpty else { throw .message(400, "request body must be a JSON object") }
        guard let value = try? JSONValue.parse(body), value.isObject else {
            throw .message(400, "request body must be a JSON object")
        }
        return value
    }
}

enum Timestamp {
    static func iso(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    static func iso(_ date: Date?) -> JSONValue {
        date.map { .string(iso($0)) } ?? .null
    }
}

enum Money {
    /// Rounds to two decimal places (currency minor units).
    static func rounded(_ value: Decimal) -> Decimal {
        var input = value
        var output = Decimal()
        NSDecimalRound(&output, &input, 2, .plain)
        return output
    }
}

/// Counts requests per backend for `/admin/stats`.
final class RequestCounter: Sendable {
    private let count = Atomic(0)
    private let started = Date()

    func wrap(_ handler: @escaping ReferenceRouter.Handler) -> ReferenceRouter.Handler {
        { [self] request in
            count.add(1, ordering: .relaxed)
            return try handler(request)
        }
    }

    var value: Int { count.load(ordering: .relaxed) }
    var uptimeSeconds: Double { Date().timeIntervalSince(started) }
}

extension ReferenceRouter {
    mutating func add(_ method: String, _ pattern: String, counting counter: RequestCounter,
                      _ handler: @escaping Handler) {
        add(method, pattern, counter.wrap(handler))
    }
}

extension Substring {
    func trimmed(of set: String) -> String {
        var view = self[...]
        while let first = view.first, set.contains(first) { view = view.dropFirst() }
        while let last = view.last, set.contains(last) { view = view.dropLast() }
        return String(view)
    }
}
