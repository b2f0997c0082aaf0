import COpenSSL
import Foundation

/// SHA-256, HMAC-SHA-256, base64url and HS256 JWT checks for the reference
/// backends (OpenSSL's libcrypto).
public enum ReferenceCrypto {
    public static func sha256(_ bytes: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 32)
        bytes.withUnsafeBufferPointer { input in
            _ = SHA256(input.baseAddress, input.count, &digest)
        }
        return digest
    }

    public static func hmacSHA256(key: [UInt8], data: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 32
        key.withUnsafeBufferPointer { keyBytes in
            data.withUnsafeBufferPointer { dataBytes in
                _ = HMAC(EVP_sha256(), keyBytes.baseAddress, Int32(keyBytes.count),
                         dataBytes.baseAddress, dataBytes.count, &digest, &length)
            }
        }
        return digest
    }

    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes base64url without padding (RFC 7515 §2); `nil` on any bad character.
    public static func base64URLDecode(_ text: some StringProtocol) -> [UInt8]? {
        var out: [UInt8] = []
        var accumulator: UInt32 = 0
        var bits = 0
        for byte in text.utf8 {
            let value: UInt32
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = UInt32(byte - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = UInt32(byte - UInt8(ascii: "a")) + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = UInt32(byte - UInt8(ascii: "0")) + 52
            case UInt8(ascii: "-"): value = 62
            case UInt8(ascii: "_"): value = 63
            default: return nil
            }
            accumulator = accumulator << 6 | value
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8((accumulator >> UInt32(bits)) & 0xFF))
            }
        }
        // A single leftover character (6 bits) cannot encode a byte.
        if bits >= 6 { return nil }
        return out
    }

    public static func base64URLEncode(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// Constant-time comparison of two byte arrays.
    public static func equalInConstantTime(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
        return difference == 0
    }
}

/// Why an HS256 token was refused.
public enum HS256Failure: Error, Equatable, Sendable {
    case malformed
    case unsupportedAlgorithm
    case badSignature
    case expired
    case notYetValid
    case missingSubject
}

/// Verifies compact HS256 JWTs (header.payload.signature) with a shared secret.
public struct HS256Verifier: Sendable {
    private let secret: [UInt8]
    /// Clock skew allowed on `exp` and `nbf`.
    public var leeway: Duration = .seconds(30)

    public init(secret: String) { self.secret = Array(secret.utf8) }

    /// Returns the claims of a valid token; `now` is seconds since 1970.
    public func verify(_ token: String, now: Double) throws(HS256Failure) -> JSONValue {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3,
              let headerBytes = ReferenceCrypto.base64URLDecode(parts[0]),
              let payloadBytes = ReferenceCrypto.base64URLDecode(parts[1]),
              let signature = ReferenceCrypto.base64URLDecode(parts[2]),
              let header = try? JSONValue.parse(headerBytes), header.isObject,
              let claims = try? JSONValue.parse(payloadBytes), claims.isObject else {
            throw .malformed
        }
        guard header["alg"]?.stringValue == "HS256" else { throw .unsupportedAlgorithm }
        let signingInput = Array("\(parts[0]).\(parts[1])".utf8)
        let expected = ReferenceCrypto.hmacSHA256(key: secret, data: signingInput)
        guard ReferenceCrypto.equalInConstantTime(expected, signature) else { throw .badSignature }
        let skew = Double(leeway.components.seconds)
        if let exp = claims["exp"]?.doubleValue, now > exp + skew { throw .expired }
        if let nbf = claims["nbf"]?.doubleValue, now + skew < nbf { throw .notYetValid }
        guard let subject = claims["sub"]?.stringValue, !subject.isEmpty else { throw .missingSubject }
        return claims
    }

    /// Signs `claims` (for tests and demos).
    public func sign(_ claims: JSONValue) -> String {
        let header = ReferenceCrypto.base64URLEncode(Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
        let payload = ReferenceCrypto.base64URLEncode(Array(claims.serialized().utf8))
        let signature = ReferenceCrypto.hmacSHA256(key: secret, data: Array("\(header).\(payload)".utf8))
        return "\(header).\(payload).\(ReferenceCrypto.base64URLEncode(signature))"
    }
}
