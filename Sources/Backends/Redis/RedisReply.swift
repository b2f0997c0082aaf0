import CHiredis
import Policy

/// A Swift copy of one hiredis reply (the C reply is freed as soon as the callback returns).
public enum RedisReply: Sendable, Equatable {
    case status([UInt8])
    case error([UInt8])
    case integer(Int64)
    case string([UInt8])
    case array([RedisReply])
    case `nil`

    /// Copies a hiredis reply tree.
    init(copying r: UnsafePointer<redisReply>) {
        let p = r.pointee
        switch p.type {
        case REDIS_REPLY_STRING: self = .string(RedisReply.bytes(p.str, p.len))
        case REDIS_REPLY_STATUS: self = .status(RedisReply.bytes(p.str, p.len))
        case REDIS_REPLY_ERROR: self = .error(RedisReply.bytes(p.str, p.len))
        case REDIS_REPLY_INTEGER: self = .integer(Int64(p.integer))
        case REDIS_REPLY_ARRAY:
            var items = [RedisReply]()
            items.reserveCapacity(p.elements)
            if let el = p.element {
                for i in 0..<p.elements {
                    if let e = el[i] { items.append(RedisReply(copying: e)) } else { items.append(.nil) }
                }
            }
            self = .array(items)
        default: self = .nil
        }
    }

    static func bytes(_ p: UnsafeMutablePointer<CChar>?, _ n: Int) -> [UInt8] {
        guard let p, n > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }

    /// Text of a status, error or string reply (for logs and tests, never the hot path).
    public var text: String? {
        switch self {
        case .status(let b), .error(let b), .string(let b): String(decoding: b, as: UTF8.self)
        case .integer(let n): String(n)
        case .array, .nil: nil
        }
    }

    public var isError: Bool { if case .error = self { true } else { false } }
}

/// How a command ended. Exactly one per command, delivered to its ``RedisWaiter``.
public enum RedisResult: Sendable {
    /// Redis answered (an error reply, such as WRONGTYPE, is still an answer).
    case reply(RedisReply)
    /// The limiter script answered, decoded (only for ``RedisConnection/admit(_:plan:waiter:token:)``).
    case limit(LimitVerdict)
    /// No answer within the command deadline; a late answer is dropped.
    case timedOut
    /// Not sent: the breaker is open (Redis is down or unreachable) or the connection is stopping.
    case unavailable
    /// Sent, but the connection dropped before the answer came.
    case disconnected
}

/// The breaker's view of the store. Reported through `onStateChange` once per transition.
public enum RedisHealth: Sendable, Equatable {
    /// Connected, handshake done, answering within deadlines.
    case up
    /// Breaker open: not connected, or too many consecutive timeouts. Commands fail fast.
    case down
}

/// Receives the result of a command started on a ``RedisConnection``. Called on the
/// connection's loop, never from inside the call that started the command.
public protocol RedisWaiter: AnyObject {
    func redisCompleted(token: UInt64, result: RedisResult)
}
