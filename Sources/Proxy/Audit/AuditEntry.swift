import CSystem
import Foundation
import Glibc
import Policy

/// What an audit entry records (`action`). The raw value is the wire name.
enum AuditAction: String, Sendable, CaseIterable {
    /// `tollgate keys new`.
    case keyCreated = "key.created"
    /// Key rotation: not emitted yet (the key API with `rotate` is a later issue).
    case keyRotated = "key.rotated"
    case keyUpdated = "key.updated"
    case keyRevoked = "key.revoked"
    case keyDisabled = "key.disabled"
    case keyEnabled = "key.enabled"
    /// A running instance installed a new policy (every file's SHA-256 in `details.files`).
    case policyReloaded = "policy.reloaded"
    /// Secrets and credits: not emitted yet (their features are later issues).
    case secretSet = "secret.set"
    case secretDeleted = "secret.deleted"
    /// `tollgate secrets rekey`: every secret re-encrypted under a new master key.
    case secretsRekeyed = "secret.rekeyed"
    case creditsGranted = "credits.granted"
    /// Security actions: an address locked out, a key auto-disabled (with the evidence).
    case securityLockout = "security.lockout"
    case securityAutoDisable = "security.auto_disable"
    /// An operator lifted a lock-out (`DELETE /v1/security/bans`).
    case securityUnban = "security.unban"
    case serverStarted = "server.started"
    case serverStopped = "server.stopped"
    /// A torn last line (a crash mid-append) was cut off before this entry was written.
    case auditRepaired = "audit.repaired"
    /// A checkpoint: covers the entries since the previous one (see ``AuditCheckpoint``).
    case checkpoint = "checkpoint"
}

/// Who caused an entry (`actor`).
enum AuditActor: String, Sendable {
    /// A `tollgate` command (`keys …`); `details.os_user` names the user.
    case cli
    /// A running instance's policy reload (file change or SIGHUP).
    case reload
    /// A running instance's own life (start, stop).
    case server
    /// The audit writer itself (checkpoints, repairs).
    case audit
    /// The admin API.
    case admin
    /// The security monitor (lock-out, auto-disable).
    case security
}

/// A JSON value in `details`, written in the order given. Never a plain key or secret:
/// key ids, hashes and display prefixes only.
indirect enum AuditValue: Sendable {
    case string(String)
    case int(Int64)
    case bool(Bool)
    case null
    case list([AuditValue])
    case object([(String, AuditValue)])

    static func strings(_ s: [String]) -> AuditValue { .list(s.map { .string($0) }) }
    static func optional(_ s: String?) -> AuditValue { s.map { .string($0) } ?? .null }
}

/// One thing to record: written by ``AuditLog/record(_:)`` with its `seq`, `time`,
/// `instance`, `prev` and `hash`.
struct AuditEvent: Sendable {
    var action: AuditAction
    var actor: AuditActor
    var subject: String
    var details: [(String, AuditValue)]

    init(_ action: AuditAction, actor: AuditActor, subject: String = "", details: [(String, AuditValue)] = []) {
        self.action = action; self.actor = actor; self.subject = subject; self.details = details
    }
}

/// The line format (one JSON object per line, fields in this order):
///
/// ```
/// {"seq":7,"time":"2026-01-02T03:04:05.678Z","instance":"host-123","action":"key.revoked",
///  "actor":"cli","subject":"key_ab12","details":{…},"prev":"<64 hex>","hash":"<64 hex>"}
/// ```
///
/// - `prev`: SHA-256 of the previous line's exact bytes (without its newline); 64 zeros for
///   the first line of the file.
/// - `hash`: SHA-256 of this line with its final `,"hash":"<64 hex>"` member removed (the
///   line's bytes up to that member, then `}`). An edit that does not recompute it is named
///   at its own line; one that does breaks the next line's `prev`.
enum AuditFormat {
    static let zeros = String(repeating: "0", count: 64)
    /// `,"hash":"` + 64 hex + `"}`.
    static let hashSuffixCount = 75
    private static let hashMember = Array(#","hash":""#.utf8)

    /// The line (no newline) of one entry.
    static func line(seq: Int, time: String, instance: String, action: AuditAction, actor: AuditActor,
                     subject: String, details: [(String, AuditValue)], prev: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(512)
        out += Array(#"{"seq":"#.utf8) + Array(String(seq).utf8)
        out += Array(#","time":"#.utf8); appendString(time, to: &out)
        out += Array(#","instance":"#.utf8); appendString(instance, to: &out)
        out += Array(#","action":"#.utf8); appendString(action.rawValue, to: &out)
        out += Array(#","actor":"#.utf8); appendString(actor.rawValue, to: &out)
        out += Array(#","subject":"#.utf8); appendString(subject, to: &out)
        out += Array(#","details":"#.utf8); append(.object(details), to: &out)
        out += Array(#","prev":"#.utf8); appendString(prev, to: &out)
        let hash = sha256(out + [UInt8(ascii: "}")])
        out += hashMember + Array(hash.utf8) + Array(#""}"#.utf8)
        return out
    }

    /// The `hash` a line claims and the one its content gives, or nil when the line does
    /// not end with a `hash` member.
    static func hashes(of line: ArraySlice<UInt8>) -> (claimed: String, computed: String)? {
        guard line.count > hashSuffixCount + 1 else { return nil }
        let suffix = line.index(line.endIndex, offsetBy: -hashSuffixCount)
        guard line[suffix..<(suffix + hashMember.count)].elementsEqual(hashMember),
              line[line.endIndex - 2] == UInt8(ascii: "\""), line[line.endIndex - 1] == UInt8(ascii: "}")
        else { return nil }
        let hex = line[(suffix + hashMember.count)..<(line.endIndex - 2)]
        guard hex.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else { return nil }
        var body = Array(line[line.startIndex..<suffix])
        body.append(UInt8(ascii: "}"))
        return (String(decoding: hex, as: UTF8.self), sha256(body))
    }

    static func sha256(_ bytes: some Collection<UInt8>) -> String {
        let a = Array(bytes)
        return a.withUnsafeBytes { KeyHash.sha256($0).hex }
    }

    /// RFC 3339 UTC with milliseconds: `2026-01-02T03:04:05.678Z`.
    static func time(millis: Int64) -> String {
        var secs = time_t(millis / 1000)
        var tm = tm()
        gmtime_r(&secs, &tm)
        var buf = [CChar](repeating: 0, count: 32)
        _ = strftime(&buf, 32, "%Y-%m-%dT%H:%M:%S", &tm)
        let ms = Int(millis % 1000)
        let msText = ms < 10 ? "00\(ms)" : ms < 100 ? "0\(ms)" : "\(ms)"
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "." + msText + "Z"
    }

    /// The inverse of ``time(millis:)``; nil for any other text.
    static func millis(ofTime s: String) -> Int64? {
        let u = Array(s.utf8)
        guard u.count == 24, u[4] == 0x2D, u[7] == 0x2D, u[10] == 0x54, u[13] == 0x3A, u[16] == 0x3A,
              u[19] == 0x2E, u[23] == 0x5A else { return nil }
        func num(_ r: Range<Int>) -> Int? {
            var v = 0
            for i in r { guard u[i] >= 0x30, u[i] <= 0x39 else { return nil }; v = v * 10 + Int(u[i] - 0x30) }
            return v
        }
        guard let y = num(0..<4), let mo = num(5..<7), let d = num(8..<10), let h = num(11..<13),
              let mi = num(14..<16), let se = num(17..<19), let ms = num(20..<23) else { return nil }
        var t = tm()
        t.tm_year = Int32(y - 1900); t.tm_mon = Int32(mo - 1); t.tm_mday = Int32(d)
        t.tm_hour = Int32(h); t.tm_min = Int32(mi); t.tm_sec = Int32(se)
        return Int64(timegm(&t)) * 1000 + Int64(ms)
    }

    static func nowMillis() -> Int64 {
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        return Int64(t.tv_sec) * 1000 + Int64(t.tv_nsec / 1_000_000)
    }

    // MARK: JSON

    static func append(_ v: AuditValue, to out: inout [UInt8]) {
        switch v {
        case .string(let s): appendString(s, to: &out)
        case .int(let i): out += Array(String(i).utf8)
        case .bool(let b): out += Array((b ? "true" : "false").utf8)
        case .null: out += Array("null".utf8)
        case .list(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                append(item, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let pairs):
            out.append(UInt8(ascii: "{"))
            for (i, (k, item)) in pairs.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                appendString(k, to: &out)
                out.append(UInt8(ascii: ":"))
                append(item, to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func appendString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0x0A: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0x0D: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0..<0x20, 0x7F:
                let hex = Array("0123456789abcdef".utf8)
                out += Array("\\u00".utf8) + [hex[Int(b >> 4)], hex[Int(b & 0xF)]]
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

/// The fields of an entry that the writer and `audit verify` read back (unknown ones are
/// ignored; a line that does not decode is not an entry).
struct AuditEntryHead: Decodable {
    var seq: Int
    var time: String
    var instance: String
    var action: String
    var actor: String
    var subject: String
    var prev: String
}

/// A checkpoint's `details`:
///
/// ```
/// {"from":1,"to":1000,"entries":1000,"head":"<hex>","prev_checkpoint_seq":0,
///  "prev_checkpoint_hash":"<64 zeros>","prev_signature":"","key":"sha256:<hex>","signature":"<base64>"}
/// ```
///
/// `from`…`to` are the seqs covered (those after the previous checkpoint, up to the entry
/// just before this one); `head` is the SHA-256 of line `to` (= this line's `prev`), so the
/// signature commits to every line before it; `prev_checkpoint_*` name the previous
/// checkpoint (seq, SHA-256 of its line, its signature; 0, zeros and "" for the first).
/// `key` and `signature` are null when no `signing_key` is configured.
struct AuditCheckpoint: Decodable, Equatable {
    var from: Int
    var to: Int
    var entries: Int
    var head: String
    var prevCheckpointSeq: Int
    var prevCheckpointHash: String
    var prevSignature: String
    var key: String?
    var signature: String?

    enum CodingKeys: String, CodingKey {
        case from, to, entries, head, key, signature
        case prevCheckpointSeq = "prev_checkpoint_seq"
        case prevCheckpointHash = "prev_checkpoint_hash"
        case prevSignature = "prev_signature"
    }

    private struct Wrapper: Decodable { var details: AuditCheckpoint }

    /// The checkpoint details of a line, or nil.
    static func decode(_ line: ArraySlice<UInt8>) -> AuditCheckpoint? {
        try? JSONDecoder().decode(Wrapper.self, from: Data(line)).details
    }

    var details: [(String, AuditValue)] {
        [("from", .int(Int64(from))), ("to", .int(Int64(to))), ("entries", .int(Int64(entries))),
         ("head", .string(head)), ("prev_checkpoint_seq", .int(Int64(prevCheckpointSeq))),
         ("prev_checkpoint_hash", .string(prevCheckpointHash)), ("prev_signature", .string(prevSignature)),
         ("key", .optional(key)), ("signature", .optional(signature))]
    }

    /// The bytes an Ed25519 signature covers (ASCII, one `name value` per line, each ending
    /// in LF; `-` for an empty value):
    ///
    /// ```
    /// tollgate-audit-checkpoint/1
    /// seq <seq of the checkpoint>
    /// time <its time>
    /// from <from>
    /// to <to>
    /// head <head>
    /// prev_checkpoint_seq <n>
    /// prev_checkpoint_hash <hex>
    /// prev_signature <base64 or ->
    /// key <fingerprint>
    /// ```
    func signingInput(seq: Int, time: String, key fingerprint: String) -> [UInt8] {
        func v(_ s: String) -> String { s.isEmpty ? "-" : s }
        let text = "tollgate-audit-checkpoint/1\nseq \(seq)\ntime \(v(time))\nfrom \(from)\nto \(to)\nhead \(v(head))\n"
            + "prev_checkpoint_seq \(prevCheckpointSeq)\nprev_checkpoint_hash \(v(prevCheckpointHash))\n"
            + "prev_signature \(v(prevSignature))\nkey \(v(fingerprint))\n"
        return Array(text.utf8)
    }
}
