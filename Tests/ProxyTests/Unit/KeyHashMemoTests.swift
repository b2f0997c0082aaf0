import Policy
import Foundation
import Testing
@testable import Proxy

/// The memo in front of SHA-256: SipHash-2-4-128 against the reference vectors, and the
/// memo returning exactly what SHA-256 returns, for hits and misses.
struct KeyHashMemoTests {
    /// vectors_sip128 of the SipHash reference implementation: key 00…0f, message 00…(n-1).
    @Test(arguments: [
        (0, "a3817f04ba25a8e66df67214c7550293"),
        (1, "da87c1d86b99af44347659119b22fc45"),
        (15, "5493e99933b0a8117e08ec0f97cfc3d9"),
    ])
    func sipHashMatchesTheReferenceVectors(length: Int, expected: String) {
        let key = (0..<16).map { UInt8($0) }
        let k0 = key.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self) }
        let k1 = key.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self) }
        let message = (0..<length).map { UInt8($0) }
        let (a, b) = message.withUnsafeBytes { SipHash24.hash128($0, k0: k0, k1: k1) }
        var bytes: [UInt8] = []
        for w in [a, b] { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: w >> (8 * UInt64(i)))) } }
        #expect(bytes.map { String(format: "%02x", $0) }.joined() == expected)
    }

    @Test func memoAgreesWithSHA256OnHitsAndMisses() {
        let memo = KeyHashMemo(capacity: 4)   // tiny: forces evictions
        let keys = (0..<50).map { "key-\($0)-" + String(repeating: "x", count: $0) }
        for round in 0..<3 {
            for k in keys {
                var s = k
                let got = s.withUTF8 { memo.sha256(UnsafeRawBufferPointer($0)) }
                #expect(got == KeyHash.sha256(k), "round \(round) key \(k)")
            }
        }
    }
}
