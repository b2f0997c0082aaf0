import Foundation
import Testing
@testable import Policy

/// The committed corpus of the `webhook` fuzz target (`Fuzz/corpus/webhook`, see
/// Fuzz/Targets/WebhookTarget.swift) replayed on every `swift test` with the target's
/// oracles: no input traps; what is signed with parsed secrets verifies, and a changed body
/// does not.
struct WebhookFuzzCorpusTests {
    @Test func corpusReplays() {
        let dir = CreditsFuzzCorpusTests.root + "/Fuzz/corpus/webhook"
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
        let files = names.compactMap { FileManager.default.contents(atPath: dir + "/" + $0).map { [UInt8]($0) } }
        #expect(files.count >= 100)
        let now: Int64 = 1_796_536_566
        var parsed = 0
        for all in files {
            var fields = all.split(separator: 0, maxSplits: 4, omittingEmptySubsequences: false).map { Array($0) }
            while fields.count < 5 { fields.append([]) }
            let id = String(decoding: fields[1], as: UTF8.self)
            let body = fields[4]
            guard let secrets = WebhookSecrets.parse(fields[0]) else { continue }
            parsed += 1
            _ = WebhookSignature.verify(id: id, timestamp: String(decoding: fields[2], as: UTF8.self),
                                        signature: String(decoding: fields[3], as: UTF8.self), body: body,
                                        secrets: secrets, tolerance: 300, now: now)
            let mid = id.isEmpty ? "msg_x" : id
            let header = WebhookSignature.header(id: mid, timestamp: now, body: body, secrets: secrets)
            #expect(WebhookSignature.verify(id: mid, timestamp: String(now), signature: header, body: body,
                                            secrets: secrets, tolerance: 300, now: now) == nil)
            #expect(WebhookSignature.verify(id: mid, timestamp: String(now), signature: header, body: body + [0x20],
                                            secrets: secrets, tolerance: 300, now: now) != nil)
        }
        #expect(parsed > 0)
    }
}
