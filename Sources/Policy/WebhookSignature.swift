import COpenSSL
import Foundation

/// Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over
/// `<webhook-id>.<webhook-timestamp>.<body>`, base64, sent as `v1,<signature>`; several
/// space-separated entries while a secret rotates (one per configured secret).
public enum WebhookSignature {
    /// The `webhook-signature` header value for one delivery attempt.
    public static func header(id: String, timestamp: Int64, body: [UInt8], secrets: WebhookSecrets) -> String {
        let input = signedContent(id: id, timestamp: timestamp, body: body)
        return secrets.keys.map { "v1," + Data(hmacSHA256(key: $0, data: input)).base64EncodedString() }
            .joined(separator: " ")
    }

    public static func signedContent(id: String, timestamp: Int64, body: [UInt8]) -> [UInt8] {
        Array(id.utf8) + [0x2E] + Array(String(timestamp).utf8) + [0x2E] + body
    }

    public static func hmacSHA256(key: [UInt8], data: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 32
        key.withUnsafeBufferPointer { k in
            data.withUnsafeBufferPointer { d in
                _ = HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), d.baseAddress, d.count, &digest, &length)
            }
        }
        return digest
    }

    /// Why a delivery does not verify (the `webhooks verify` command prints it).
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case missing(String)
        case badTimestamp(String)
        case tooOld(seconds: Int64)
        case tooNew(seconds: Int64)
        case noMatch(checked: Int)
        public var description: String {
            switch self {
            case .missing(let what): return "missing \(what)"
            case .badTimestamp(let t): return "webhook-timestamp is not unix seconds: \(t)"
            case .tooOld(let s): return "timestamp too old: \(s)s before now (outside the tolerance)"
            case .tooNew(let s): return "timestamp too new: \(s)s after now (outside the tolerance)"
            case .noMatch(let n): return "no signature matches (\(n) v1 signature(s) checked against each secret)"
            }
        }
    }

    /// Checks one delivery: the timestamp within `tolerance` of `now`, and one `v1` entry of
    /// `signature` equal (compared in constant time) to one computed with one of `secrets`.
    public static func verify(id: String, timestamp: String, signature: String, body: [UInt8], secrets: WebhookSecrets,
                       tolerance: Int64, now: Int64) -> Failure? {
        if id.isEmpty { return .missing("webhook-id") }
        if signature.isEmpty { return .missing("webhook-signature") }
        // Unix seconds, at most 12 digits (a sender's header: no overflow in the arithmetic).
        let text = timestamp.trimmingCharacters(in: .whitespaces)
        guard text.utf8.count <= 12, let ts = Int64(text), ts >= 0 else { return .badTimestamp(timestamp) }
        if now - ts > tolerance { return .tooOld(seconds: now - ts) }
        if ts - now > tolerance { return .tooNew(seconds: ts - now) }
        let input = signedContent(id: id, timestamp: ts, body: body)
        let expected = secrets.keys.map { hmacSHA256(key: $0, data: input) }
        var checked = 0
        for entry in signature.split(separator: " ") {
            guard entry.hasPrefix("v1,"), let sig = Data(base64Encoded: String(entry.dropFirst(3))) else { continue }
            checked += 1
            let given = [UInt8](sig)
            for e in expected where e.count == given.count {
                let same = e.withUnsafeBytes { a in given.withUnsafeBytes { b in CRYPTO_memcmp(a.baseAddress, b.baseAddress, 32) } }
                if same == 0 { return nil }
            }
        }
        return .noMatch(checked: checked)
    }
}
