import Testing
@testable import Runtime

/// The SWAR field-name test agrees with the byte-by-byte definition for every byte value at
/// every position of a word (the field-name table loop still validates what it rejects).
struct NameWordTests {
    @Test func agreesWithTheByteDefinitionEverywhere() {
        func inSet(_ c: UInt8) -> Bool {
            (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) || c == 0x2D
        }
        var mismatches = 0
        for fill: UInt8 in [0x61, 0x5A, 0x30, 0x2D] {          // 'a', 'Z', '0', '-'
            for position in 0..<8 {
                for value in 0...255 {
                    var bytes = [UInt8](repeating: fill, count: 8)
                    bytes[position] = UInt8(value)
                    let w = bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                    if HTTP1Lexer.isNameWord(w) != inSet(UInt8(value)) { mismatches += 1 }
                }
            }
        }
        #expect(mismatches == 0)
    }
}
