/// The time span the usage chart covers (`?window=`), cut into equal slots ending with the
/// current one: the last hour by minute (the aggregates' in-memory minutes), a day by hour,
/// a week by six hours, thirty days by day (UTC).
enum DashboardWindow: String, CaseIterable {
    case hour = "1h", day = "24h", week = "7d", month = "30d"

    var slotSeconds: Int64 {
        switch self {
        case .hour: return 60
        case .day: return 3600
        case .week: return 6 * 3600
        case .month: return 86_400
        }
    }

    var slotCount: Int {
        switch self {
        case .hour: return 60
        case .day: return 24
        case .week: return 28
        case .month: return 30
        }
    }

    var label: String {
        switch self {
        case .hour: return "last hour, by minute"
        case .day: return "last 24 hours, by hour"
        case .week: return "last 7 days, by 6 hours"
        case .month: return "last 30 days, by day"
        }
    }

    /// The slots' starts (Unix seconds), oldest first; the last holds `now`.
    func slotStarts(now: Int64) -> [Int64] {
        let last = now - now % slotSeconds
        return (0..<slotCount).map { last - Int64(slotCount - 1 - $0) * slotSeconds }
    }
}

/// What one rendering of the dashboard shows (gathered by ``Dashboard/gather(caller:window:focus:)``).
struct DashboardModel {
    static let maximumKeys = 500
    static let maximumEvents = 50

    var caller: KeyCaller
    var now: Int64
    var window: DashboardWindow
    var focus: String?
    var focusMissing = false

    var keys: [KeyView] = []
    var isKeyListCut = false
    var keysError: String?
    /// Per key id: the window's slots.
    var series: [String: [UsageAggregates.Bucket]] = [:]
    /// Per key id: the start of the last minute with a request, when within the last hour.
    var lastMinute: [String: Int64] = [:]
    /// Usage records are on (`usage:` in the policy).
    var hasUsage = false

    var events: [DashboardEvents.Event] = []
    var auditPath: String?
    /// Only for callers that see every key.
    var health: Health?

    init(caller: KeyCaller, now: Int64, window: DashboardWindow, focus: String?) {
        self.caller = caller
        self.now = now
        self.window = window
        self.focus = focus
    }

    struct Health {
        var isReady = false
        var readiness = ""
        var store = MetricsRegistry.StoreState.none
        var degradedOpen: UInt64 = 0
        var degradedLocal: UInt64 = 0
        var connections: UInt64 = 0
        var reloadsOK: UInt64 = 0
        var reloadsRejected: UInt64 = 0
        var spool: Spool?
        var sinks: [Sink] = []
        var audit: Audit?
        var security: Security?

        struct Security {
            var bans: UInt64
            var tracked: UInt64
            var lockouts: UInt64
            var autoDisabled: UInt64
        }
        struct Spool {
            var written: UInt64
            var dropped: UInt64
            var spilled: UInt64
            var bytes: UInt64
        }
        struct Sink {
            var label: String
            var delivered: UInt64
            var failed: UInt64
            var lagBytes: UInt64
        }
        struct Audit {
            var path: String
            var bytes: UInt64?
            var modified: Int64?
        }
    }

    /// The keys the chart sums: the focused one, or every key shown.
    var chartedKeys: [String] {
        if let focus, !focusMissing { return [focus] }
        return keys.map(\.id)
    }

    /// The slots summed over `ids`.
    func total(_ ids: [String]) -> [UsageAggregates.Bucket] {
        var out = [UsageAggregates.Bucket](repeating: UsageAggregates.Bucket(), count: window.slotCount)
        for id in ids {
            guard let s = series[id] else { continue }
            for (i, b) in s.enumerated() where i < out.count {
                out[i].add(b)
            }
        }
        return out
    }
}

extension UsageAggregates.Bucket {
    var refused: Int64 { refusals.reduce(0, +) }
    var forwarded: Int64 { max(0, requests - refused) }
}
