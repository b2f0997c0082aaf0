// libFuzzer target: what a webhook receiver checks with `tollgate webhooks verify` (bytes a
// sender — anyone who can reach the receiver — controls): the secrets' text
// (`WebhookSecrets.parse`), and `WebhookSignature.verify` over an id, a timestamp, a
// signature header and a body.
//
// Input: fields separated by 0x00 — secrets text, id, timestamp, signature header, body
// (missing fields are empty). Oracles: nothing traps; a delivery signed with the parsed
// secrets verifies (round trip); the same delivery with its body changed does not.

import Foundation
import Glibc

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWebhook(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let all = Array(UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size))
    var fields = all.split(separator: 0, maxSplits: 4, omittingEmptySubsequences: false).map { Array($0) }
    while fields.count < 5 { fields.append([]) }
    let secretsText = fields[0]
    let id = String(decoding: fields[1], as: UTF8.self)
    let timestamp = String(decoding: fields[2], as: UTF8.self)
    let signature = String(decoding: fields[3], as: UTF8.self)
    let body = fields[4]
    let now: Int64 = 1_796_536_566

    guard let secrets = WebhookSecrets.parse(secretsText) else {
        // Unparsable secrets: verification is still asked of arbitrary headers with a fixed one.
        _ = WebhookSignature.verify(id: id, timestamp: timestamp, signature: signature, body: body,
                                    secrets: WebhookSecrets([Array("k".utf8)]), tolerance: 300, now: now)
        return 0
    }
    check(!secrets.keys.isEmpty && secrets.keys.allSatisfy { !$0.isEmpty }, "an empty secret was accepted")
    // Arbitrary headers: any answer, no trap.
    _ = WebhookSignature.verify(id: id, timestamp: timestamp, signature: signature, body: body,
                                secrets: secrets, tolerance: 300, now: now)
    // Round trip: what the sender signs verifies, and a changed body does not.
    let mid = id.isEmpty ? "msg_x" : id
    let header = WebhookSignature.header(id: mid, timestamp: now, body: body, secrets: secrets)
    check(WebhookSignature.verify(id: mid, timestamp: String(now), signature: header, body: body, secrets: secrets,
                                  tolerance: 300, now: now) == nil, "a signed delivery did not verify")
    let changed = body + [0x20]
    check(WebhookSignature.verify(id: mid, timestamp: String(now), signature: header, body: changed, secrets: secrets,
                                  tolerance: 300, now: now) != nil, "a changed body verified")
    return 0
}
