import CSystem
import Foundation
import Glibc

/// The dashboard's "recent security events": the newest `security.*` and `key.*` entries of
/// the audit trail, read from the end of its file (the last `tailBytes` of it, so a page
/// costs the same however long the trail is). Entries are shown generically from their
/// `details`; names and values that could carry key material are left out (``isShown``).
struct DashboardEvents {
    struct Event {
        var seq: Int
        var time: String
        var action: String
        var actor: String
        var subject: String
        /// `details` in the entry's order, as display text; hidden members left out.
        var details: [(name: String, value: String)]
        /// Key ids the entry is about (its subject for `key.*`, `details.key_id`), for filters.
        var keyIDs: [String]
        /// `details.consumer`, when it has one.
        var consumer: String?
    }

    static let tailBytes = 1 << 20
    static let shownPrefixes = ["security.", "key."]

    /// At most `limit` entries, newest first, that `include` accepts.
    static func recent(path: String, limit: Int, include: (Event) -> Bool) -> [Event] {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return [] }
        let size = Int(st.st_size)
        let start = max(0, size - tailBytes)
        var bytes = [UInt8](repeating: 0, count: size - start)
        var got = 0
        while got < bytes.count {
            let n = bytes.withUnsafeMutableBytes { b -> Int in
                guard let base = b.baseAddress else { return 0 }
                return pread(fd, base + got, b.count - got, off_t(start + got))
            }
            if n <= 0 { break }
            got += n
        }
        bytes.removeSubrange(got...)
        var lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: true)
        if start > 0, !lines.isEmpty { lines.removeFirst() }   // begins mid-line
        var out: [Event] = []
        for line in lines.reversed() {
            guard out.count < limit else { break }
            guard let e = event(line), include(e) else { continue }
            out.append(e)
        }
        return out
    }

    static func event(_ line: ArraySlice<UInt8>) -> Event? {
        guard let o = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any],
              let action = o["action"] as? String, shownPrefixes.contains(where: { action.hasPrefix($0) }) else { return nil }
        let subject = o["subject"] as? String ?? ""
        var details: [(String, String)] = []
        var keyIDs: [String] = action.hasPrefix("key.") && !subject.isEmpty ? [subject] : []
        var consumer: String?
        // JSONSerialization loses the members' order: put them back in the line's order.
        let d = o["details"] as? [String: Any] ?? [:]
        for name in memberOrder(line, of: d) where isShown(name) {
            guard let v = d[name] else { continue }
            // Nothing said (null, false, an empty list) is left out; a hash never shows.
            if v is NSNull || (v as? [Any])?.isEmpty == true { continue }
            let text = display(v)
            if text.hasPrefix("sha256:") || text == "false" { continue }
            details.append((name, text))
            if name == "key_id", let s = v as? String { keyIDs.append(s) }
            if name == "replaced_by", let s = v as? String { keyIDs.append(s) }
            if name == "consumer", let s = v as? String { consumer = s }
        }
        return Event(seq: o["seq"] as? Int ?? 0, time: o["time"] as? String ?? "", action: action,
                     actor: o["actor"] as? String ?? "", subject: subject, details: details, keyIDs: keyIDs, consumer: consumer)
    }

    /// Members that could hold a key, its hash, a token or a secret are never shown, whatever
    /// an entry's writer put there.
    static func isShown(_ name: String) -> Bool {
        let n = name.lowercased()
        if n == "key" || n == "hash" || n == "id_hash" || n == "authorization" { return false }
        return !["secret", "token", "password", "signature", "hash", "plain"].contains(where: { n.contains($0) })
    }

    static func display(_ v: Any) -> String {
        switch v {
        case is NSNull: return "–"
        case let s as String: return s
        case let n as NSNumber:
            if String(cString: n.objCType) == "c" { return n.boolValue ? "true" : "false" }
            return n.stringValue
        case let a as [Any]: return a.isEmpty ? "[]" : a.map(display).joined(separator: ", ")
        case let o as [String: Any]:
            return o.keys.sorted().filter(isShown).map { "\($0)=\(display(o[$0] ?? NSNull()))" }.joined(separator: " ")
        default: return "\(v)"
        }
    }

    /// The names of `details`' members in the order the line has them (a name is found by
    /// its quoted form followed by a colon after `"details":`); any not found go last.
    static func memberOrder(_ line: ArraySlice<UInt8>, of d: [String: Any]) -> [String] {
        let text = String(decoding: line, as: UTF8.self)
        guard let at = text.range(of: "\"details\":") else { return d.keys.sorted() }
        let rest = text[at.upperBound...]
        var placed: [(String, String.Index)] = []
        var missing: [String] = []
        for name in d.keys {
            if let r = rest.range(of: "\"\(name)\":") { placed.append((name, r.lowerBound)) } else { missing.append(name) }
        }
        return placed.sorted { $0.1 < $1.1 }.map(\.0) + missing.sorted()
    }
}
