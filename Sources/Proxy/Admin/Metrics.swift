import CSystem
import Policy
import Synchronization

/// The `code` label: every decision code, then `OK` (forwarded).
enum MetricCode {
    // OK comes after every code (aggregates saved by earlier versions had 16 codes + OK, and
    // OK is never a refusal, so a saved file's 17th column is always 0 and reads as INVALID_TOKEN 0).
    static let ok = 17
    static let count = 18

    @inline(__always)
    static func index(_ c: DenialCode) -> Int {
        switch c {
        case .missingCredential: return 0
        case .invalidKey: return 1
        case .expired: return 2
        case .revoked: return 3
        case .disabled: return 4
        case .ipDenied: return 5
        case .insufficientScope: return 6
        case .httpsRequired: return 7
        case .lockedOut: return 8
        case .rateLimited: return 9
        case .quotaExceeded: return 10
        case .insufficientCredits: return 11
        case .noRoute: return 12
        case .badRequest: return 13
        case .storeUnavailable: return 14
        case .upstreamUnavailable: return 15
        case .invalidToken: return 16
        }
    }

    static let names: [String] = {
        var n = [String](repeating: "", count: count)
        for c in DenialCode.allCases { n[index(c)] = c.rawValue }
        n[ok] = "OK"
        return n
    }()
}

/// `tollgate_upstream_errors_total{kind}`.
enum UpstreamErrorKind: Int, CaseIterable {
    case connect, reset, timeout, invalid
    var label: String {
        switch self {
        case .connect: return "connect"
        case .reset: return "reset"
        case .timeout: return "timeout"
        case .invalid: return "invalid"
        }
    }

    init(_ f: UpstreamFailure) {
        switch f {
        case .connect, .tls: self = .connect
        case .connectTimeout, .responseTimeout: self = .timeout
        case .reset, .closedEarly: self = .reset
        case .badResponse: self = .invalid
        }
    }
}

/// Upper bounds of `tollgate_request_duration_seconds` buckets (`+Inf` is the count).
enum DurationBuckets {
    /// The bounds `index` decides by, for the exposition (`fixedCount` of them).
    static let seconds: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    /// `seconds.count`, as a constant (no lazy global on the request path).
    static let fixedCount = 14

    /// The first bucket whose bound is at least `nanos` (`fixedCount`: above them all).
    @inline(__always)
    static func index(_ nanos: UInt64) -> Int {
        if nanos <= 5_000_000 {
            if nanos <= 500_000 { return 0 }
            if nanos <= 1_000_000 { return 1 }
            return nanos <= 2_500_000 ? 2 : 3
        }
        if nanos <= 10_000_000 { return 4 }
        if nanos <= 25_000_000 { return 5 }
        if nanos <= 50_000_000 { return 6 }
        if nanos <= 100_000_000 { return 7 }
        if nanos <= 250_000_000 { return 8 }
        if nanos <= 500_000_000 { return 9 }
        if nanos <= 1_000_000_000 { return 10 }
        if nanos <= 2_500_000_000 { return 11 }
        if nanos <= 5_000_000_000 { return 12 }
        return nanos <= 10_000_000_000 ? 13 : 14
    }
}

/// Request counters of one loop under one policy snapshot (its routes and backends): written
/// by that loop only, without a lock (relaxed single-writer stores); read by the scrape.
///
/// ```
/// storage: [route slot × code] requests | [route slot × (buckets, sum ns, count)] durations
///          | [backend × kind] upstream errors        (route slot 0 = "-": no route matched)
/// ```
final class RequestMetrics: @unchecked Sendable {
    // SAFETY: the names never change; `storage` is written by one loop with relaxed atomic
    // stores and read by other threads with relaxed atomic loads (CSystem's counter shims).
    let routeNames: [String]
    let backendNames: [String]
    private let storage: UnsafeMutablePointer<UInt64>
    private let durationsAt: Int
    private let upstreamAt: Int
    private let size: Int
    static let durationStride = DurationBuckets.fixedCount + 2

    init(snapshot: PolicySnapshot) {
        routeNames = ["-"] + snapshot.routes.map(\.name)
        backendNames = snapshot.backends.map(\.name)
        durationsAt = routeNames.count * MetricCode.count
        upstreamAt = durationsAt + routeNames.count * Self.durationStride
        size = upstreamAt + backendNames.count * UpstreamErrorKind.allCases.count
        storage = .allocate(capacity: max(1, size))
        storage.initialize(repeating: 0, count: max(1, size))
    }

    deinit { storage.deallocate() }

    /// Where an exchange counts: the storage and the durations' offset, as plain values (an
    /// exchange keeps them with its pinned snapshot: no retain per request).
    struct Counters {
        let storage: UnsafeMutablePointer<UInt64>
        let durationsAt: Int
    }
    var counters: Counters { Counters(storage: storage, durationsAt: durationsAt) }

    /// One answered request: `route` is the route's index (-1: none matched).
    @inline(__always)
    func countRequest(route: Int, code: Int, nanos: UInt64) {
        Self.countRequest(counters, route: route, code: code, nanos: nanos)
    }

    @inline(__always)
    static func countRequest(_ c: Counters, route: Int, code: Int, nanos: UInt64) {
        let storage = c.storage
        let slot = route &+ 1
        tollgate_counter_add(storage + (slot &* MetricCode.count &+ code), 1)
        let d = storage + (c.durationsAt &+ slot &* Self.durationStride)
        let b = DurationBuckets.index(nanos)
        if b < DurationBuckets.fixedCount { tollgate_counter_add(d + b, 1) }
        tollgate_counter_add(d + DurationBuckets.fixedCount, nanos)
        tollgate_counter_add(d + (DurationBuckets.fixedCount &+ 1), 1)
    }

    func countUpstreamError(backend: Int, kind: UpstreamErrorKind) {
        guard backend >= 0 && backend < backendNames.count else { return }
        tollgate_counter_add(storage + (upstreamAt + backend * UpstreamErrorKind.allCases.count + kind.rawValue), 1)
    }

    // MARK: reading (any thread)

    func requests(slot: Int, code: Int) -> UInt64 { tollgate_counter_load(storage + (slot * MetricCode.count + code)) }
    /// Non-cumulative bucket counts, then the sum in ns and the count.
    func duration(slot: Int, _ k: Int) -> UInt64 { tollgate_counter_load(storage + (durationsAt + slot * Self.durationStride + k)) }
    func upstreamErrors(backend: Int, kind: UpstreamErrorKind) -> UInt64 {
        tollgate_counter_load(storage + (upstreamAt + backend * UpstreamErrorKind.allCases.count + kind.rawValue))
    }
}

/// Per-loop gauges and counters that outlive policy reloads.
final class LoopGauges: @unchecked Sendable {
    // SAFETY: as `RequestMetrics`: one writer (the loop), relaxed loads elsewhere.
    private let storage: UnsafeMutablePointer<UInt64>
    enum Slot: Int, CaseIterable {
        case http1Connections, h2Connections, degradedOpen, degradedLocal, storeConfigured, storeUp
        case handshakeTimeout, handshakeClosed, handshakeIO, handshakeProtocol
    }

    /// `tollgate_tls_handshake_failures_total{reason}`.
    func countHandshakeFailure(_ reason: String) {
        switch reason {
        case "timeout": add(.handshakeTimeout)
        case "closed": add(.handshakeClosed)
        case "io": add(.handshakeIO)
        default: add(.handshakeProtocol)
        }
    }

    init() {
        storage = .allocate(capacity: Slot.allCases.count)
        storage.initialize(repeating: 0, count: Slot.allCases.count)
    }
    deinit { storage.deallocate() }

    @inline(__always) func add(_ s: Slot, _ v: UInt64 = 1) { tollgate_counter_add(storage + s.rawValue, v) }
    @inline(__always) func subtract(_ s: Slot) { tollgate_counter_add(storage + s.rawValue, UInt64.max) }   // wraps: −1
    func set(_ s: Slot, _ v: UInt64) { tollgate_counter_store(storage + s.rawValue, v) }
    func value(_ s: Slot) -> UInt64 { tollgate_counter_load(storage + s.rawValue) }
}

/// Every loop's metrics, for the scrape. The lists change only at start-up and reload (under
/// the lock); the counters themselves are never locked.
final class MetricsRegistry: Sendable {
    static let shared = MetricsRegistry()

    private struct Loops {
        var gauges: [LoopGauges] = []
        /// Every block ever used (a reload adds one per loop; old ones keep their counts).
        var blocks: [RequestMetrics] = []
    }
    private let loops = Mutex(Loops())
    let reloadsOK = Atomic<UInt64>(0)
    let reloadsRejected = Atomic<UInt64>(0)
    let accessLogDropped = Atomic<UInt64>(0)
    private let usageSpools = Mutex<[UsageSpool]>([])
    /// Credits settled, by route name (`tollgate_credits_charged_total`).
    let credits = CreditCounters()

    func register(usage: UsageSpool) { usageSpools.withLock { $0.append(usage) } }
    /// The usage spools (the dashboard's health section).
    func usageSpoolList() -> [UsageSpool] { usageSpools.withLock { $0 } }
    /// The security monitors with a `security:` block (the dashboard's health section).
    func securityMonitorList() -> [SecurityMonitor] { monitors.withLock { $0 }.filter { $0.spec != nil } }

    private let monitors = Mutex<[SecurityMonitor]>([])
    func register(security: SecurityMonitor) { monitors.withLock { $0.append(security) } }

    func register(_ g: LoopGauges) { loops.withLock { $0.gauges.append(g) } }

    /// A gauge summed over every loop.
    func gaugeSum(_ s: LoopGauges.Slot) -> UInt64 { loops.withLock { $0.gauges }.reduce(0) { $0 &+ $1.value(s) } }
    func register(_ m: RequestMetrics) { loops.withLock { $0.blocks.append(m) } }

    /// Prometheus text exposition format 0.0.4.
    func render() -> String {
        let (gauges, blocks) = loops.withLock { ($0.gauges, $0.blocks) }
        var out = ""
        out.reserveCapacity(8192)

        // Sum by label values across loops and snapshots (route names outlive reloads).
        var requests: [String: [UInt64]] = [:]
        var durations: [String: [UInt64]] = [:]
        var routeOrder: [String] = []
        var upstream: [String: [UInt64]] = [:]
        var backendOrder: [String] = []
        for b in blocks {
            for (slot, name) in b.routeNames.enumerated() {
                if requests[name] == nil {
                    routeOrder.append(name)
                    requests[name] = [UInt64](repeating: 0, count: MetricCode.count)
                    durations[name] = [UInt64](repeating: 0, count: RequestMetrics.durationStride)
                }
                for c in 0..<MetricCode.count { requests[name]![c] &+= b.requests(slot: slot, code: c) }
                for k in 0..<RequestMetrics.durationStride { durations[name]![k] &+= b.duration(slot: slot, k) }
            }
            for (i, name) in b.backendNames.enumerated() {
                if upstream[name] == nil {
                    backendOrder.append(name)
                    upstream[name] = [UInt64](repeating: 0, count: UpstreamErrorKind.allCases.count)
                }
                for k in UpstreamErrorKind.allCases { upstream[name]![k.rawValue] &+= b.upstreamErrors(backend: i, kind: k) }
            }
        }

        out += "# HELP tollgate_requests_total Answered requests by route and decision code (OK: forwarded).\n"
        out += "# TYPE tollgate_requests_total counter\n"
        for name in routeOrder {
            let counts = requests[name]!
            for c in 0..<MetricCode.count where counts[c] > 0 {
                out += "tollgate_requests_total{route=\"\(Self.escape(name))\",code=\"\(MetricCode.names[c])\"} \(counts[c])\n"
            }
        }
        out += "# HELP tollgate_request_duration_seconds From the request head to the last byte sent.\n"
        out += "# TYPE tollgate_request_duration_seconds histogram\n"
        for name in routeOrder {
            let d = durations[name]!
            let total = d[DurationBuckets.fixedCount + 1]
            if total == 0 { continue }
            let label = Self.escape(name)
            var cumulative: UInt64 = 0
            for (k, le) in DurationBuckets.seconds.enumerated() {
                cumulative &+= d[k]
                out += "tollgate_request_duration_seconds_bucket{route=\"\(label)\",le=\"\(Self.format(le))\"} \(cumulative)\n"
            }
            out += "tollgate_request_duration_seconds_bucket{route=\"\(label)\",le=\"+Inf\"} \(total)\n"
            out += "tollgate_request_duration_seconds_sum{route=\"\(label)\"} \(Self.format(Double(d[DurationBuckets.fixedCount]) / 1e9))\n"
            out += "tollgate_request_duration_seconds_count{route=\"\(label)\"} \(total)\n"
        }
        out += "# HELP tollgate_upstream_errors_total Failed exchanges with a backend by kind.\n"
        out += "# TYPE tollgate_upstream_errors_total counter\n"
        for name in backendOrder {
            for k in UpstreamErrorKind.allCases {
                out += "tollgate_upstream_errors_total{backend=\"\(Self.escape(name))\",kind=\"\(k.label)\"} \(upstream[name]![k.rawValue])\n"
            }
        }
        func sum(_ s: LoopGauges.Slot) -> UInt64 { gauges.reduce(0) { $0 &+ $1.value(s) } }
        if sum(.storeConfigured) > 0 {
            out += "# HELP tollgate_store_up 1 while Redis answers.\n# TYPE tollgate_store_up gauge\n"
            out += "tollgate_store_up \(sum(.storeUp) > 0 ? 1 : 0)\n"
            out += "# HELP tollgate_degraded_admits_total Requests admitted without Redis.\n"
            out += "# TYPE tollgate_degraded_admits_total counter\n"
            out += "tollgate_degraded_admits_total{mode=\"open\"} \(sum(.degradedOpen))\n"
            out += "tollgate_degraded_admits_total{mode=\"local\"} \(sum(.degradedLocal))\n"
        }
        out += "# HELP tollgate_connections Open client connections.\n# TYPE tollgate_connections gauge\n"
        out += "tollgate_connections{protocol=\"http1\"} \(sum(.http1Connections))\n"
        out += "tollgate_connections{protocol=\"h2\"} \(sum(.h2Connections))\n"
        out += "# HELP tollgate_tls_handshake_failures_total TLS handshakes that did not complete, by reason.\n"
        out += "# TYPE tollgate_tls_handshake_failures_total counter\n"
        for (label, slot) in [("timeout", LoopGauges.Slot.handshakeTimeout), ("closed", .handshakeClosed), ("io", .handshakeIO),
                              ("protocol", .handshakeProtocol)] {
            out += "tollgate_tls_handshake_failures_total{reason=\"\(label)\"} \(sum(slot))\n"
        }
        out += "# HELP tollgate_policy_reloads_total Policy reloads by result.\n# TYPE tollgate_policy_reloads_total counter\n"
        out += "tollgate_policy_reloads_total{result=\"ok\"} \(reloadsOK.load(ordering: .relaxed))\n"
        out += "tollgate_policy_reloads_total{result=\"rejected\"} \(reloadsRejected.load(ordering: .relaxed))\n"
        out += "# HELP tollgate_access_log_dropped_total Access log lines dropped because the writer fell behind.\n"
        out += "# TYPE tollgate_access_log_dropped_total counter\n"
        out += "tollgate_access_log_dropped_total \(accessLogDropped.load(ordering: .relaxed))\n"
        for spool in usageSpools.withLock({ $0 }) { renderUsage(spool, into: &out) }
        if WebhookEvents.isConfigured {
            out += "# HELP tollgate_webhook_events_total Events handed to the webhook outbox (spooled before any delivery).\n"
            out += "# TYPE tollgate_webhook_events_total counter\n"
            out += "tollgate_webhook_events_total \(WebhookEvents.emitted.load(ordering: .relaxed))\n"
            out += "# HELP tollgate_webhook_deliveries_total Webhook delivery attempts by result (failed: retried or dead-lettered after).\n"
            out += "# TYPE tollgate_webhook_deliveries_total counter\n"
            out += "tollgate_webhook_deliveries_total{result=\"delivered\"} \(WebhookEvents.delivered.load(ordering: .relaxed))\n"
            out += "tollgate_webhook_deliveries_total{result=\"failed\"} \(WebhookEvents.failedAttempts.load(ordering: .relaxed))\n"
            out += "tollgate_webhook_deliveries_total{result=\"dead_lettered\"} \(WebhookEvents.deadLettered.load(ordering: .relaxed))\n"
        }
        let security = monitors.withLock { $0 }.filter { $0.spec != nil }
        if !security.isEmpty {
            func total(_ f: (SecurityMonitor) -> UInt64) -> UInt64 { security.reduce(0) { $0 &+ f($1) } }
            out += "# HELP tollgate_security_tracked_networks Client networks whose credential refusals are counted (bounded by lockout.max_tracked).\n"
            out += "# TYPE tollgate_security_tracked_networks gauge\n"
            out += "tollgate_security_tracked_networks \(total { UInt64($0.trackedNetworks) })\n"
            out += "# HELP tollgate_security_bans Client networks locked out now.\n# TYPE tollgate_security_bans gauge\n"
            out += "tollgate_security_bans \(total { UInt64($0.bansInForce) })\n"
            out += "# HELP tollgate_lockouts_total Lock-outs this instance announced (one per ban across instances).\n"
            out += "# TYPE tollgate_lockouts_total counter\n"
            out += "tollgate_lockouts_total \(total { $0.lockoutsAnnounced.load(ordering: .relaxed) })\n"
            out += "# HELP tollgate_auto_disabled_total Keys this instance auto-disabled, by rule.\n"
            out += "# TYPE tollgate_auto_disabled_total counter\n"
            out += "tollgate_auto_disabled_total{reason=\"refusals\"} \(total { $0.disabledForRefusals.load(ordering: .relaxed) })\n"
            out += "tollgate_auto_disabled_total{reason=\"networks\"} \(total { $0.disabledForNetworks.load(ordering: .relaxed) })\n"
        }
        let charged = credits.snapshot()
        if !charged.isEmpty {
            out += "# HELP tollgate_credits_charged_total Credits settled (charged), by route.\n"
            out += "# TYPE tollgate_credits_charged_total counter\n"
            for (route, n) in charged { out += "tollgate_credits_charged_total{route=\"\(Self.escape(route))\"} \(n)\n" }
        }
        return out
    }

    private func renderUsage(_ spool: UsageSpool, into out: inout String) {
        let c = spool.counters
        out += "# HELP tollgate_usage_records_total Usage records: written to the spool, delivered to or failed at each sink.\n"
        out += "# TYPE tollgate_usage_records_total counter\n"
        out += "tollgate_usage_records_total{sink=\"spool\",result=\"written\"} \(c.written.load(ordering: .relaxed))\n"
        out += "tollgate_usage_records_total{sink=\"spool\",result=\"dropped\"} \(c.dropped.load(ordering: .relaxed))\n"
        for s in spool.sinks {
            let label = Self.escape(s.spec.label)
            out += "tollgate_usage_records_total{sink=\"\(label)\",result=\"delivered\"} \(s.delivered.load(ordering: .relaxed))\n"
            out += "tollgate_usage_records_total{sink=\"\(label)\",result=\"failed\"} \(s.failed.load(ordering: .relaxed))\n"
        }
        out += "# HELP tollgate_usage_spilled_total Usage records that waited in a loop's overflow list (the writer was behind).\n"
        out += "# TYPE tollgate_usage_spilled_total counter\n"
        out += "tollgate_usage_spilled_total \(c.spilled.load(ordering: .relaxed))\n"
        out += "# HELP tollgate_usage_spool_bytes Bytes in the usage spool's segments.\n# TYPE tollgate_usage_spool_bytes gauge\n"
        out += "tollgate_usage_spool_bytes \(c.spoolBytes.load(ordering: .relaxed))\n"
        out += "# HELP tollgate_usage_sink_lag_bytes Spool bytes a sink has not delivered yet.\n# TYPE tollgate_usage_sink_lag_bytes gauge\n"
        for s in spool.sinks {
            out += "tollgate_usage_sink_lag_bytes{sink=\"\(Self.escape(s.spec.label))\"} \(spool.lag(of: s))\n"
        }
    }

    static func escape(_ s: String) -> String {
        var o = ""
        for ch in s {
            switch ch {
            case "\\": o += "\\\\"
            case "\"": o += "\\\""
            case "\n": o += "\\n"
            default: o.append(ch)
            }
        }
        return o
    }

    static func format(_ v: Double) -> String {
        if v == v.rounded() && abs(v) < 1e15 { return String(Int64(v)) }
        return String(v)
    }
}

/// Credits charged per route name (names outlive reloads). Touched once per settled charge.
final class CreditCounters: Sendable {
    private let byRoute = Mutex<[(String, UInt64)]>([])
    func add(route: String, _ n: Int64) {
        guard n > 0 else { return }
        byRoute.withLock { list in
            if let i = list.firstIndex(where: { $0.0 == route }) { list[i].1 &+= UInt64(n) } else { list.append((route, UInt64(n))) }
        }
    }
    func snapshot() -> [(String, UInt64)] { byRoute.withLock { $0 } }
}
