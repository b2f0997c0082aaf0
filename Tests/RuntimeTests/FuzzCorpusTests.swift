import Glibc
import Runtime
import Testing

/// The committed libFuzzer corpora (`Fuzz/corpus/{request,response,chunked}`, see
/// Fuzz/README.md) replayed through the codec on every `swift test`: each input whole, split
/// at every offset and byte by byte, against a guard page. A crash input added to a corpus
/// stays a regression test without libFuzzer. The credit-metering corpora (`sse_meter`,
/// `token_hints`) are replayed by PolicyTests/CreditsFuzzCorpusTests.swift (this target
/// cannot import Policy).
struct FuzzCorpusTests {
    /// The repository root, from this file's path (`Tests/RuntimeTests/…`).
    static let root: String = {
        var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/")
    }()

    /// (name, flags, message) of every file of `Fuzz/corpus/<target>`; see FuzzSupport.swift
    /// for the 8-byte control header.
    static func corpus(_ target: String) -> [(name: String, flags: UInt8, message: [UInt8])] {
        let dir = root + "/Fuzz/corpus/" + target
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var out: [(String, UInt8, [UInt8])] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix(".") { continue }
            guard let f = fopen(dir + "/" + name, "rb") else { continue }
            var bytes: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buf.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
                if n <= 0 { break }
                bytes += buf[0..<n]
            }
            fclose(f)
            if bytes.count < 8 { out.append((name, 0, bytes)) } else { out.append((name, bytes[0], Array(bytes[8...]))) }
        }
        return out.sorted { $0.0 < $1.0 }
    }

    /// The fuzz targets' limits profiles (flags bits 0-1).
    static func limits(_ flags: UInt8) -> HTTP1Limits {
        var l = HTTP1Limits()
        switch flags & 3 {
        case 1: l.maxHeadBytes = 64; l.maxTargetBytes = 32; l.maxHeaderCount = 3
        case 2: l.maxHeadBytes = 256; l.maxTargetBytes = 96; l.maxHeaderCount = 8
        case 3: l.maxHeadBytes = 1024; l.maxTargetBytes = 16; l.maxHeaderCount = 1
        default: break
        }
        return l
    }

    /// `feedAllWays` is quadratic in the length: long inputs (the 12 KB Host, heads near the
    /// 16 KiB limit) are fed whole and split at 64 offsets instead.
    static let allWaysLimit = 2048

    static func feed<H: HeadParserHarness>(_ raw: [UInt8], _ make: () -> H) -> H.Outcome {
        if raw.count <= allWaysLimit { return feedAllWays(raw, make) }
        let region = GuardedBytes(capacity: raw.count)
        var whole = make()
        let expected = whole.parse(region.place(raw))
        for k in stride(from: 0, to: raw.count, by: raw.count / 64 + 1) {
            var h = make()
            let first = h.parse(region.place(raw, 0..<k))
            if H.result(first) != .incomplete {
                #expect(first == expected, "prefix of \(k) bytes: \(first), whole: \(expected)")
                continue
            }
            let second = h.parse(region.place(raw))
            #expect(second == expected, "after a prefix of \(k) bytes: \(second), whole: \(expected)")
        }
        return expected
    }

    @Test func corporaArePresent() {
        #expect(Self.corpus("request").count > 100)
        #expect(Self.corpus("response").count > 50)
        #expect(Self.corpus("chunked").count > 30)
    }

    @Test func requestCorpusAgreesHoweverItIsFed() {
        for c in Self.corpus("request") {
            let o = Self.feed(c.message) { RequestHarness(limits: Self.limits(c.flags)) }
            if case .complete(let n) = o.result { #expect(n <= c.message.count, "\(c.name)") }
        }
    }

    @Test func responseCorpusAgreesHoweverItIsFed() {
        let methods: [HTTPMethod] = [.get, .head, .connect, .post]
        for c in Self.corpus("response") {
            _ = Self.feed(c.message) { ResponseHarness(limits: Self.limits(c.flags), method: methods[Int((c.flags >> 3) & 3)]) }
        }
    }

    @Test func chunkedCorpusAgreesHoweverItIsFed() {
        for c in Self.corpus("chunked") {
            if c.message.count <= Self.allWaysLimit {
                _ = decodeChunkedAllWays(c.message)
            } else {
                let n = c.message.count
                let whole = decodeChunked(c.message, pieces: [0..<n])
                for k in stride(from: 0, to: n, by: n / 64 + 1) {
                    #expect(decodeChunked(c.message, pieces: [0..<k, k..<n]) == whole, "\(c.name) split at \(k)")
                }
            }
        }
    }
}
