import Glibc

/// A plan's quota: requests (or tokens) per UTC calendar day or month, per key or consumer.
public struct QuotaSpec: Sendable, Equatable {
    public enum Kind: String, Sendable { case requests, tokens }
    public enum Period: String, Sendable { case day, month }
    public enum Subject: String, Sendable { case key, consumer }

    public var kind: Kind
    public var limit: Int64
    public var period: Period
    public var by: Subject

    public init(kind: Kind, limit: Int64, period: Period, by: Subject) {
        self.kind = kind; self.limit = limit; self.period = period; self.by = by
    }

    /// The UTC period holding `now` (Unix seconds): its first second and the first second of
    /// the next one.
    public static func bounds(_ period: Period, now: Int64) -> (start: Int64, end: Int64) {
        switch period {
        case .day:
            let start = now - ((now % 86_400) + 86_400) % 86_400
            return (start, start + 86_400)
        case .month:
            var t = time_t(now)
            var tmv = tm()
            gmtime_r(&t, &tmv)
            var first = tm()
            first.tm_year = tmv.tm_year
            first.tm_mon = tmv.tm_mon
            first.tm_mday = 1
            var next = first
            next.tm_mon += 1
            if next.tm_mon == 12 { next.tm_mon = 0; next.tm_year += 1 }
            return (Int64(timegm(&first)), Int64(timegm(&next)))
        }
    }
}
