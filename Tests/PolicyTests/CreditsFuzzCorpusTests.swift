import Glibc
import Testing
@testable import Policy

/// The committed corpora of the credit-metering fuzz targets (`Fuzz/corpus/sse_meter`,
/// `Fuzz/corpus/token_hints`, see Fuzz/README.md) replayed on every `swift test`: a crash
/// input added there stays a regression test without libFuzzer. (The HTTP corpora are
/// replayed by RuntimeTests/FuzzCorpusTests.swift; that target cannot see Policy.)
struct CreditsFuzzCorpusTests {
    static let root: String = {
        var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/")
    }()

    /// (name, flags, message) of every file of `Fuzz/corpus/<target>` (8-byte control header
    /// first, as in Fuzz/Targets/Support/FuzzSupport.swift).
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

    @Test func corporaArePresent() {
        #expect(Self.corpus("sse_meter").count >= 30)
        #expect(Self.corpus("token_hints").count >= 20)
    }

    /// Whole, one byte at a time, split in two at every offset (every 1/64th past 2 KiB), and
    /// with budget stops: the same reading; stops right after a line break.
    @Test func sseCorpusAgreesHoweverItIsFed() {
        for c in Self.corpus("sse_meter") {
            let dialect: StreamDialect = c.flags & 1 == 0 ? .flowise : .openai
            let bytes = c.message
            let n = bytes.count
            let whole = meterReading(bytes, dialect, pieces: [0..<n])
            #expect(meterReading(bytes, dialect, pieces: (0..<n).map { $0..<$0 + 1 }) == whole, "\(c.name)")
            for k in stride(from: 0, through: n, by: n <= 2048 ? 1 : n / 64) {
                let split = meterReading(bytes, dialect, pieces: [0..<k, k..<n])
                if split != whole { Issue.record("\(c.name) split at \(k): \(split) whole: \(whole)"); break }
            }
            // Budget 1, raised by 1 at each stop.
            var m = StreamMeter(dialect: dialect)
            var limit: Int64 = 1
            var at = 0
            while at < n {
                let used = bytes[at...].withUnsafeBytes { m.scan($0, budget: limit) }
                #expect(used <= n - at)
                at += used
                if m.stoppedAtBudget {
                    #expect(bytes[at - 1] == 0x0A || bytes[at - 1] == 0x0D, "\(c.name) stop at \(at)")
                    limit += 1
                } else {
                    #expect(at == n)
                }
            }
            #expect(MeterReading(m) == whole, "\(c.name)")
        }
    }

    /// Whole and resumed (every split in two, byte at a time): the same hints.
    @Test func hintsCorpusAgreesHoweverItIsFed() {
        func resumed(_ bytes: [UInt8], _ pieces: [Range<Int>]) -> RequestTokenHints {
            var scanner = CreditJSONScanner()
            var sink = HintsSink()
            for r in pieces { Array(bytes[r]).withUnsafeBytes { scanner.feed($0, &sink) } }
            let outcome = scanner.finish(&sink)
            return RequestTokenHints(maxOutputTokens: sink.maximum >= 0 ? sink.maximum : nil, streaming: sink.streaming,
                                     invalid: sink.invalid || outcome == .failed || outcome == .incomplete)
        }
        for c in Self.corpus("token_hints") {
            let whole = RequestTokenHints.scan(c.message)
            let n = c.message.count
            #expect(resumed(c.message, (0..<n).map { $0..<$0 + 1 }) == whole, "\(c.name)")
            for k in stride(from: 0, through: n, by: n <= 2048 ? 1 : n / 64) {
                let split = resumed(c.message, [0..<k, k..<n])
                if split != whole { Issue.record("\(c.name) split at \(k): \(split) whole: \(whole)"); break }
            }
        }
    }
}
