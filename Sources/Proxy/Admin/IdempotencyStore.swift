import Backends
import CSystem
import Foundation
import Glibc
import Policy
import Synchronization

/// Idempotency records of the admin API's mutations, kept 24 hours: in Redis when the policy
/// has a store (every instance sees them), else in `admin-idempotency.json` in the state
/// directory (under `flock`). A record holds what was answered, never a plain key.
final class IdempotencyStore: Sendable {
    struct Claim: Sendable {
        let id: String
        let request: String
    }
    enum Outcome {
        case claimed(Claim)
        case replay(Int, [UInt8])
        case mismatch
        case inProgress
        case unavailable
    }

    let path: String
    static let lifetime: Int64 = 86_400
    /// A claim whose request never finished (the process died) is free again after this.
    static let pendingLifetime: Int64 = 60

    init(directory: String) {
        path = (directory as NSString).appendingPathComponent("admin-idempotency.json")
    }

    private static func hex(_ bytes: [UInt8]) -> String { KeyHash.sha256(bytes.withUnsafeBytes { $0 }).hex }

    func claim(scope: String, request: [UInt8], redis: RedisKeyDirectory?) -> Outcome {
        let id = KeyHash.sha256(scope).hex
        let req = request.withUnsafeBytes { KeyHash.sha256($0).hex }
        let c = Claim(id: id, request: req)
        if let redis {
            let key = "tg:idem:" + id
            do {
                if case .status = try redis.run(["SET", key, "pending|" + req, "NX", "EX", String(Self.pendingLifetime)]) {
                    return .claimed(c)
                }
                guard case .string(let v) = try redis.run(["GET", key]) else { return .inProgress }
                return Self.decide(String(decoding: v, as: UTF8.self), request: req)
            } catch {
                return .unavailable
            }
        }
        return withFile { records in
            let now = wallClock()
            records = records.filter { ($0.value["e"] as? Int64 ?? 0) > now }
            if let r = records[id], let text = r["v"] as? String { return Self.decide(text, request: req) }
            records[id] = ["v": "pending|" + req, "e": now + Self.pendingLifetime]
            return .claimed(c)
        } ?? .unavailable
    }

    /// `pending|<req>` or `done|<req>|<status>|<base64 body>`.
    private static func decide(_ v: String, request: String) -> Outcome {
        let parts = v.split(separator: "|", maxSplits: 3, omittingEmptySubsequences: false)
        guard parts.count >= 2 else { return .inProgress }
        if parts[1] != request { return .mismatch }
        if parts[0] == "done", parts.count == 4, let status = Int(parts[2]), let body = Data(base64Encoded: String(parts[3])) {
            return .replay(status, Array(body))
        }
        return .inProgress
    }

    func complete(_ c: Claim, status: Int, body: [UInt8], redis: RedisKeyDirectory?) {
        let v = "done|" + c.request + "|" + String(status) + "|" + Data(body).base64EncodedString()
        if let redis {
            _ = try? redis.run(["SET", "tg:idem:" + c.id, v, "EX", String(Self.lifetime)])
            return
        }
        _ = withFile { records -> Bool in
            records[c.id] = ["v": v, "e": wallClock() + Self.lifetime]
            return true
        }
    }

    /// The mutation failed: the key may be used again.
    func release(_ c: Claim, redis: RedisKeyDirectory?) {
        if let redis { _ = try? redis.run(["DEL", "tg:idem:" + c.id]); return }
        _ = withFile { records -> Bool in
            records[c.id] = nil
            return true
        }
    }

    private func wallClock() -> Int64 { Int64(time(nil)) }

    /// Read-modify-write of the records file under an exclusive `flock` (atomic replace).
    private func withFile<R>(_ body: (inout [String: [String: Any]]) -> R) -> R? {
        let dir = (path as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let lock = open(path + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0 else { return nil }
        defer { close(lock) }
        guard flock(lock, LOCK_EX) == 0 else { return nil }
        defer { flock(lock, LOCK_UN) }
        var records: [String: [String: Any]] = [:]
        if let data = FileManager.default.contents(atPath: path),
           let o = (try? JSONSerialization.jsonObject(with: data)) as? [String: [String: Any]] {
            records = o.mapValues { v in
                var v = v
                if let n = v["e"] as? NSNumber { v["e"] = n.int64Value }
                return v
            }
        }
        let r = body(&records)
        if records.count > 10_000 {
            let keep = records.sorted { ($0.value["e"] as? Int64 ?? 0) > ($1.value["e"] as? Int64 ?? 0) }.prefix(10_000)
            records = Dictionary(uniqueKeysWithValues: keep.map { ($0.key, $0.value) })
        }
        guard let data = try? JSONSerialization.data(withJSONObject: records) else { return r }
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
        let ok = data.withUnsafeBytes { LocalLedger.writeAll(fd, $0) } && fsync(fd) == 0
        close(fd)
        if ok { rename(tmp, path) }
        return r
    }
}
