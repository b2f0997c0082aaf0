import CSystem
import Glibc
import Runtime
import Synchronization

/// Per-key usage by hour, kept by the spool writer as records pass (never by scanning
/// files per question): requests, refusals by decision code, credits and tokens. Answers
/// `GET /v1/usage` on the admin listener.
///
/// Bounded: hours older than `retentionHours` are dropped as the clock moves. Saved to
/// `spool/aggregates.tsv` every 10 s and at a clean stop (written whole, then renamed), read
/// back at start; a crash can cost the aggregates the last 10 s (the records themselves are
/// in the spool and the sinks, which are the record of truth).
final class UsageAggregates: Sendable {
    struct Bucket: Equatable {
        var requests: Int64 = 0
        var refusals = [Int64](repeating: 0, count: MetricCode.count)
        var credits: Int64 = 0
        var tokensIn: Int64 = 0
        var tokensOut: Int64 = 0

        /// Adds another bucket's counts (sums over keys, or hours into a wider slot).
        mutating func add(_ b: Bucket) {
            requests += b.requests
            for c in 0..<min(refusals.count, b.refusals.count) { refusals[c] += b.refusals[c] }
            credits += b.credits
            tokensIn += b.tokensIn
            tokensOut += b.tokensOut
        }
    }

    /// One key's hours (a class: updated in place, no copy per record).
    final class Hours: @unchecked Sendable {
        // SAFETY: reached only through `state`, under its lock (or before it is shared, in load).
        var buckets: [Int64: Counter] = [:]
    }
    final class Counter: @unchecked Sendable {
        // SAFETY: as `Hours`.
        var b = Bucket()
    }

    private struct State {
        var byKey: [InlineText: Hours] = [:]
        var newestHour: Int64 = 0
        var isDirty = false
        /// The last hour by minute, per key: memory only (the dashboard's short window; a
        /// restart starts it empty), at most `maximumMinuteBuckets` buckets in all.
        var minutes: [InlineText: [Int64: Bucket]] = [:]
        var newestMinute: Int64 = 0
        var minuteBuckets = 0
    }
    private let state = Mutex(State())
    let path: String
    static let retentionHours: Int64 = 24 * 92
    /// Minutes kept by minute (the current one and the 60 before it).
    static let retentionMinutes: Int64 = 61
    static let maximumMinuteBuckets = 100_000

    init(path: String) {
        self.path = path
        load()
    }

    /// The writer, for each record of a known key.
    func add(_ r: UnsafePointer<UsageRecord>) {
        guard !r.pointee.keyID.isEmpty else { return }
        let hour = r.pointee.time / 1_000_000_000 / 3600
        state.withLock { s in
            let hours: Hours
            if let h = s.byKey[r.pointee.keyID] { hours = h } else {
                hours = Hours()
                s.byKey[r.pointee.keyID] = hours
            }
            let c: Counter
            if let x = hours.buckets[hour] { c = x } else {
                c = Counter()
                hours.buckets[hour] = c
            }
            c.b.requests += 1
            let code = Int(r.pointee.code)
            if code != MetricCode.ok && code < c.b.refusals.count { c.b.refusals[code] += 1 }
            c.b.credits += r.pointee.credits
            c.b.tokensIn += r.pointee.tokensIn
            c.b.tokensOut += r.pointee.tokensOut
            s.isDirty = true
            Self.addMinute(&s, r)
            if hour > s.newestHour {
                s.newestHour = hour
                let cutoff = hour - Self.retentionHours
                for (k, h) in s.byKey where h.buckets.keys.contains(where: { $0 < cutoff }) {
                    h.buckets = h.buckets.filter { $0.key >= cutoff }
                    if h.buckets.isEmpty { s.byKey[k] = nil }
                }
            }
        }
    }

    private static func addMinute(_ s: inout State, _ r: UnsafePointer<UsageRecord>) {
        let minute = r.pointee.time / 1_000_000_000 / 60
        if minute > s.newestMinute {
            s.newestMinute = minute
            let cutoff = minute - retentionMinutes
            for (k, m) in s.minutes where m.keys.contains(where: { $0 <= cutoff }) {
                let kept = m.filter { $0.key > cutoff }
                s.minuteBuckets -= m.count - kept.count
                s.minutes[k] = kept.isEmpty ? nil : kept
            }
        }
        guard minute > s.newestMinute - retentionMinutes else { return }
        let key = r.pointee.keyID
        if s.minutes[key]?[minute] == nil {
            guard s.minuteBuckets < maximumMinuteBuckets else { return }
            s.minuteBuckets += 1
        }
        count(r, into: &s.minutes[key, default: [:]][minute, default: Bucket()])
    }

    private static func count(_ r: UnsafePointer<UsageRecord>, into b: inout Bucket) {
        b.requests += 1
        let code = Int(r.pointee.code)
        if code != MetricCode.ok && code < b.refusals.count { b.refusals[code] += 1 }
        b.credits += r.pointee.credits
        b.tokensIn += r.pointee.tokensIn
        b.tokensOut += r.pointee.tokensOut
    }

    /// `key`'s buckets by minute (start in Unix seconds) from the last hour, oldest first.
    func recentMinutes(key: String) -> [(start: Int64, bucket: Bucket)] {
        var k = InlineText()
        k.set(key)
        let m = state.withLock { s in s.minutes[k] ?? [:] }
        return m.sorted { $0.key < $1.key }.map { ($0.key * 60, $0.value) }
    }

    /// Buckets of `key` whose hour starts in [from, to), summed by hour or by day (UTC).
    func query(key: String, from: Int64, to: Int64, byDay: Bool) -> [(start: Int64, bucket: Bucket)] {
        var k = InlineText()
        k.set(key)
        let hours = state.withLock { s in (s.byKey[k]?.buckets ?? [:]).mapValues { $0.b } }
        var out: [Int64: Bucket] = [:]
        for (hour, b) in hours {
            let start = hour * 3600
            guard start >= from - (byDay ? 0 : 0), start < to else { continue }
            let slot = byDay ? start - start % 86_400 : start
            var sum = out[slot] ?? Bucket()
            sum.requests += b.requests
            for i in 0..<sum.refusals.count { sum.refusals[i] += b.refusals[i] }
            sum.credits += b.credits
            sum.tokensIn += b.tokensIn
            sum.tokensOut += b.tokensOut
            out[slot] = sum
        }
        return out.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    // MARK: saving

    func saveIfDirty() {
        let (dirty, snapshot) = state.withLock { s -> (Bool, [String: [Int64: Bucket]]) in
            let d = s.isDirty
            s.isDirty = false
            guard d else { return (false, [:]) }
            var copy: [String: [Int64: Bucket]] = [:]
            for (k, h) in s.byKey { copy[k.withBytes { String(decoding: $0, as: UTF8.self) }] = h.buckets.mapValues { $0.b } }
            return (true, copy)
        }
        guard dirty else { return }
        var text = ""
        for (key, hours) in snapshot {
            for (hour, b) in hours {
                text += "\(key)\t\(hour)\t\(b.requests)\t\(b.credits)\t\(b.tokensIn)\t\(b.tokensOut)\t"
                text += b.refusals.map(String.init).joined(separator: ",") + "\n"
            }
        }
        let tmp = path + ".tmp"
        let fd = Glibc.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard fd >= 0 else { return }
        let bytes = Array(text.utf8)
        var off = 0
        while off < bytes.count {
            let w = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + off, $0.count - off) }
            if w <= 0 { break }
            off += w
        }
        _ = fdatasync(fd)
        Glibc.close(fd)
        if off == bytes.count { _ = rename(tmp, path) } else { unlink(tmp) }
    }

    private func load() {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        Glibc.close(fd)
        var loaded: [InlineText: Hours] = [:]
        var newest: Int64 = 0
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            let f = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard f.count == 7, let hour = Int64(f[1]), let req = Int64(f[2]), let cr = Int64(f[3]),
                  let ti = Int64(f[4]), let to = Int64(f[5]) else { continue }
            var b = Bucket(requests: req, credits: cr, tokensIn: ti, tokensOut: to)
            for (i, v) in f[6].split(separator: ",").enumerated() where i < b.refusals.count { b.refusals[i] = Int64(v) ?? 0 }
            var key = InlineText()
            key.set(String(f[0]))
            let h = loaded[key] ?? Hours()
            let c = Counter()
            c.b = b
            h.buckets[hour] = c
            loaded[key] = h
            newest = max(newest, hour)
        }
        state.withLock { s in s.byKey = loaded; s.newestHour = newest }
    }

    // MARK: the admin API

    /// The start of the last hour (Unix seconds) in which the key was used, if known: the
    /// key API's coarse "last used".
    func lastUsedHour(keyID: String) -> Int64? {
        var k = InlineText()
        k.set(keyID)
        let newest = state.withLock { s in s.byKey[k]?.buckets.filter { $0.value.b.requests > 0 }.keys.max() }
        return newest.map { $0 * 3600 }
    }

    /// `GET /v1/usage?key_id=…&from=…&to=…&by=day|hour` → (status, JSON).
    func answer(keyID: String?, from: String?, to: String?, by: String?) -> (Int, String) {
        guard let keyID, !keyID.isEmpty else { return (400, Self.error("key_id is required")) }
        let byDay: Bool
        switch by ?? "day" {
        case "day": byDay = true
        case "hour": byDay = false
        default: return (400, Self.error("by must be day or hour"))
        }
        let now = Int64(time(nil))
        guard let start = from.map(Self.parseTime) ?? (now - 30 * 86_400) else { return (400, Self.error("from: expected YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or Unix seconds")) }
        guard let end = to.map(Self.parseTime) ?? (now + 3600) else { return (400, Self.error("to: expected YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or Unix seconds")) }
        var out = "{\"key_id\":\"\(Self.escape(keyID))\",\"by\":\"\(byDay ? "day" : "hour")\",\"from\":\"\(Self.iso(start))\",\"to\":\"\(Self.iso(end))\",\"buckets\":["
        var first = true
        for (slot, b) in query(key: keyID, from: start, to: end, byDay: byDay) {
            if !first { out += "," }
            first = false
            out += "{\"start\":\"\(Self.iso(slot))\",\"requests\":\(b.requests),\"refusals\":{"
            var firstCode = true
            for (i, n) in b.refusals.enumerated() where n > 0 {
                if !firstCode { out += "," }
                firstCode = false
                out += "\"\(MetricCode.names[i])\":\(n)"
            }
            out += "},\"credits\":\(b.credits),\"tokens_in\":\(b.tokensIn),\"tokens_out\":\(b.tokensOut)}"
        }
        return (200, out + "]}")
    }

    static func error(_ message: String) -> String { "{\"error\":{\"code\":\"BAD_REQUEST\",\"message\":\"\(escape(message))\"}}" }

    static func escape(_ s: String) -> String {
        var o = ""
        for ch in s.unicodeScalars {
            switch ch {
            case "\"": o += "\\\""
            case "\\": o += "\\\\"
            case _ where ch.value < 0x20: o += "?"
            default: o.unicodeScalars.append(ch)
            }
        }
        return o
    }

    /// `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ` or Unix seconds.
    static func parseTime(_ s: String) -> Int64? {
        if let n = Int64(s) { return n }
        let parts = s.split(whereSeparator: { "-T:Z".contains($0) }).map { Int32($0) }
        guard parts.count == 3 || parts.count == 6, parts.allSatisfy({ $0 != nil }) else { return nil }
        var tm = tm()
        tm.tm_year = parts[0]! - 1900
        tm.tm_mon = parts[1]! - 1
        tm.tm_mday = parts[2]!
        if parts.count == 6 { tm.tm_hour = parts[3]!; tm.tm_min = parts[4]!; tm.tm_sec = parts[5]! }
        guard (1...12).contains(parts[1]!), (1...31).contains(parts[2]!) else { return nil }
        return Int64(timegm(&tm))
    }

    static func iso(_ t: Int64) -> String {
        var secs = time_t(t)
        var tm = tm()
        gmtime_r(&secs, &tm)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(tm.tm_year + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday))T\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec))Z"
    }
}
