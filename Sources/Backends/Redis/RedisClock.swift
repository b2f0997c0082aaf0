import Runtime

/// Redis's clock as one connection tracks it, so that limiter scripts need not call `TIME`.
///
/// Each `TIME` reply is a sample: Redis read its clock somewhere between the moment the
/// command was queued (`sentAt`, before the write) and the moment the reply was handled
/// (`receivedAt`, after it arrived), so taking the midpoint is wrong by at most half that
/// round trip. The sample with the smallest such bound wins; the bound of the one in use
/// grows by 100 ppm of the time since it was taken (two monotonic clocks drifting apart), so
/// a fresher sample replaces it once it is at least as good. On loopback or a LAN the bound
/// is tens of µs — far below any emission interval a plan can have.
public struct RedisClock: Sendable {
    /// Redis µs minus local monotonic µs.
    public private(set) var offsetMicros: Int64 = 0
    /// Half the round trip of the sample in use, µs; `.max` before the first.
    public private(set) var errorMicros: UInt64 = .max
    private var sampledAt: UInt64 = 0

    public init() {}

    public var isSet: Bool { errorMicros != .max }

    /// The bound of the sample in use at local time `now` (ns), drift included.
    public func error(at now: UInt64) -> UInt64 {
        isSet ? errorMicros &+ (now &- sampledAt) / 10_000_000 : .max
    }

    /// A `TIME` reading `server` (µs) for a command queued at `sentAt` and answered by
    /// `receivedAt` (local monotonic ns).
    public mutating func add(server: Int64, sentAt: UInt64, receivedAt: UInt64) {
        guard receivedAt >= sentAt else { return }
        let bound = (receivedAt - sentAt) / 2000
        guard bound <= error(at: receivedAt) else { return }
        let midpoint = Int64((sentAt / 2 + receivedAt / 2) / 1000)
        offsetMicros = server &- midpoint
        errorMicros = bound
        sampledAt = receivedAt
    }

    /// Redis's time in µs at local monotonic time `local` (ns).
    @inline(__always)
    public func micros(atLocal local: UInt64) -> Int64 { Int64(local / 1000) &+ offsetMicros }
}
