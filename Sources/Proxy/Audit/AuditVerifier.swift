import Foundation
import Policy

/// `tollgate audit verify`: walks an audit log and checks, line by line, in this order:
///
/// 1. the line is an entry: a JSON object ending in its `hash` member (else: damaged or
///    inserted text);
/// 2. `hash` matches the line's content (else: **edited**);
/// 3. `seq` is one more than the previous line's (1 for the first) and `prev` is the SHA-256
///    of the previous line (64 zeros for the first); a break is diagnosed as an **inserted**
///    entry (the next line chains to the one before it), **reordered** entries (the expected
///    seq comes later in the file), **deleted** entries (it never comes), or a rewritten line
///    (the seq fits, `prev` does not: the line before was changed and its hash recomputed);
/// 4. a checkpoint covers exactly the entries since the previous checkpoint (`from`, `to`,
///    `entries`), its `head` is the hash of the line before it, it names the previous
///    checkpoint (seq, line hash, signature), and with a public key its Ed25519 signature
///    verifies over ``AuditCheckpoint/signingInput(seq:time:key:)`` with that key's
///    fingerprint (an unsigned checkpoint, or one by another key, fails);
///
/// and at the end:
///
/// 5. the file ends with a newline (else: **truncated** mid-entry, or a write was cut);
/// 6. `<path>.head` (the latest checkpoint, written atomically by the writer) names a
///    checkpoint that is in the file, byte for byte (else: **truncated** back past it, or
///    rewritten); a log with checkpoints but no `<path>.head` fails too.
///
/// The first problem is reported with its line number. Entries after the last checkpoint
/// are counted as not yet covered: a cut among them is not detectable until the next
/// checkpoint (at most `checkpoint.every` entries or `interval`).
struct AuditVerifier {
    struct Report {
        /// Entries other than checkpoints.
        var entries = 0
        var checkpoints = 0
        /// Checkpoints whose signature was verified with the given key.
        var verified = 0
        /// Signed checkpoints not checked (no key given), and their keys' fingerprints.
        var unchecked = 0
        var fingerprints: [String] = []
        var unsigned = 0
        /// Entries after the last checkpoint.
        var uncovered = 0
        var hasHead = false
    }

    struct Failure: Error {
        /// 1-based line of the first bad entry; nil for a problem with `<path>.head` itself.
        var line: Int?
        var reason: String
    }

    let path: String
    let headPath: String
    let publicKey: AuditKey?

    private struct Line {
        var bytes: ArraySlice<UInt8>
        var head: AuditEntryHead?
        var hashOK = false
        var lineHash = ""
    }

    func run() throws(Failure) -> Report {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Failure(line: nil, reason: "cannot read the log")
        }
        let bytes = Array(data)
        var pieces = bytes.split(separator: 0x0A, omittingEmptySubsequences: false)
        // `a\nb\n` splits into a, b, "": the last piece is what follows the last newline.
        let torn = pieces.removeLast()
        let lines = pieces.map { p -> Line in
            var l = Line(bytes: p)
            if let h = AuditFormat.hashes(of: p), let head = AuditLog.head(p) {
                l.head = head
                l.hashOK = h.claimed == h.computed
            }
            l.lineHash = AuditFormat.sha256(p)
            return l
        }

        var report = Report()
        var expectedSeq = 1
        var expectedPrev = AuditFormat.zeros
        var lastCheckpoint = (seq: 0, hash: AuditFormat.zeros, signature: "", line: 0)
        for (i, l) in lines.enumerated() {
            let number = i + 1
            if l.bytes.isEmpty { throw Failure(line: number, reason: "empty line (inserted, or the file was damaged)") }
            guard let head = l.head else {
                throw Failure(line: number, reason: "not an audit entry (damaged, or inserted text)")
            }
            guard l.hashOK else {
                throw Failure(line: number, reason: "edited: the entry's hash does not match its content")
            }
            if head.seq != expectedSeq || head.prev != expectedPrev {
                throw diagnose(lines, at: i, expectedSeq: expectedSeq, expectedPrev: expectedPrev)
            }
            if head.action == AuditAction.checkpoint.rawValue {
                guard let cp = AuditCheckpoint.decode(l.bytes) else {
                    throw Failure(line: number, reason: "a checkpoint without readable details")
                }
                try check(cp, head: head, line: number, previous: lastCheckpoint, report: &report)
                lastCheckpoint = (head.seq, l.lineHash, cp.signature ?? "", number)
                report.checkpoints += 1
            } else {
                report.entries += 1
            }
            expectedSeq += 1
            expectedPrev = l.lineHash
        }
        if !torn.isEmpty {
            throw Failure(line: lines.count + 1,
                          reason: "torn last line (no newline): the file was truncated mid-entry, or a write was interrupted")
        }
        report.uncovered = lines.count - lastCheckpoint.line
        try checkHead(lines, report: &report)
        return report
    }

    /// Why the chain breaks at `lines[i]` (whose own hash is intact).
    private func diagnose(_ lines: [Line], at i: Int, expectedSeq: Int, expectedPrev: String) -> Failure {
        let number = i + 1
        let seq = lines[i].head?.seq ?? 0
        func head(_ j: Int) -> AuditEntryHead? { j >= 0 && j < lines.count && lines[j].hashOK ? lines[j].head : nil }
        // Two neighbours swapped: the next line is the expected one, and this one chains from it.
        if let next = head(i + 1), next.seq == expectedSeq, seq == expectedSeq + 1, next.prev == expectedPrev,
           lines[i].head?.prev == lines[i + 1].lineHash {
            return Failure(line: number, reason: "reordered: seq \(seq) comes before seq \(expectedSeq) (line \(number + 1)): "
                           + "the two entries were swapped")
        }
        // This line is extra: the next one continues the chain from the line before it.
        if let next = head(i + 1), next.seq == expectedSeq, next.prev == expectedPrev {
            return Failure(line: number, reason: "inserted: line \(number + 1) continues the chain from "
                           + (i == 0 ? "the start" : "line \(i)"))
        }
        // The line before was extra: this one chains to the line before that.
        if i >= 1, let prior = head(i - 1), seq == prior.seq,
           lines[i].head?.prev == (i >= 2 ? lines[i - 2].lineHash : AuditFormat.zeros) {
            return Failure(line: i, reason: "inserted: line \(number) continues the chain from "
                           + (i == 1 ? "the start" : "line \(i - 1)"))
        }
        if seq == expectedSeq {
            if i == 0 {
                return Failure(line: 1, reason: "the first entry's prev is not 64 zeros (entries deleted from the start, or the chain was rewritten)")
            }
            return Failure(line: i, reason: "changed after it was written: line \(number)'s prev does not match its hash "
                           + "(its content was rewritten with a new hash)")
        }
        if seq > expectedSeq {
            if let j = lines.indices.first(where: { $0 > i && head($0)?.seq == expectedSeq }) {
                return Failure(line: number, reason: "reordered: seq \(seq) where \(expectedSeq) was expected "
                               + "(seq \(expectedSeq) is at line \(j + 1))")
            }
            let missing = seq - 1 == expectedSeq ? "entry \(expectedSeq) is" : "entries \(expectedSeq)…\(seq - 1) are"
            return Failure(line: number, reason: "deleted: seq \(seq) where \(expectedSeq) was expected: \(missing) missing")
        }
        if let j = lines.indices.first(where: { $0 < i && head($0)?.seq == seq }) {
            return Failure(line: number, reason: "seq \(seq) again (first at line \(j + 1)): a duplicated, inserted or reordered entry")
        }
        return Failure(line: number, reason: "reordered: seq \(seq) where \(expectedSeq) was expected")
    }

    private func check(_ cp: AuditCheckpoint, head: AuditEntryHead, line: Int,
                       previous: (seq: Int, hash: String, signature: String, line: Int), report: inout Report) throws(Failure) {
        let from = previous.seq + 1, to = head.seq - 1
        guard cp.from == from, cp.to == to, cp.entries == to - from + 1 else {
            throw Failure(line: line, reason: "checkpoint covers seq \(cp.from)…\(cp.to) (\(cp.entries) entries); "
                          + "the entries since the previous checkpoint are \(from)…\(to)")
        }
        guard cp.head == head.prev else {
            throw Failure(line: line, reason: "checkpoint head is not the hash of the entry before it")
        }
        guard cp.prevCheckpointSeq == previous.seq, cp.prevCheckpointHash == previous.hash,
              cp.prevSignature == previous.signature else {
            let named = previous.seq == 0 ? "no previous checkpoint" : "the previous checkpoint (line \(previous.line))"
            throw Failure(line: line, reason: "checkpoint does not name \(named)")
        }
        guard let signature = cp.signature else {
            if publicKey != nil {
                throw Failure(line: line, reason: "checkpoint is unsigned (the log was written without audit.signing_key)")
            }
            report.unsigned += 1
            return
        }
        let fingerprint = cp.key ?? ""
        guard let publicKey else {
            report.unchecked += 1
            if !report.fingerprints.contains(fingerprint) { report.fingerprints.append(fingerprint) }
            return
        }
        guard fingerprint == publicKey.fingerprint else {
            throw Failure(line: line, reason: "checkpoint signed by another key (\(fingerprint.isEmpty ? "none named" : fingerprint)), "
                          + "not \(publicKey.fingerprint)")
        }
        guard let sig = Data(base64Encoded: signature),
              publicKey.verify(Array(sig), of: cp.signingInput(seq: head.seq, time: head.time, key: fingerprint)) else {
            throw Failure(line: line, reason: "checkpoint signature does not verify with \(publicKey.fingerprint)")
        }
        report.verified += 1
    }

    /// The latest checkpoint the writer recorded must still be in the file.
    private func checkHead(_ lines: [Line], report: inout Report) throws(Failure) {
        guard let data = FileManager.default.contents(atPath: headPath) else {
            if report.checkpoints > 0 {
                throw Failure(line: nil, reason: "missing: a cut tail cannot be ruled out (the writer keeps the latest checkpoint there)")
            }
            return
        }
        report.hasHead = true
        var bytes = Array(data)
        if bytes.last == 0x0A { bytes.removeLast() }
        guard let h = AuditFormat.hashes(of: bytes[...]), h.claimed == h.computed, let head = AuditLog.head(bytes[...]),
              head.action == AuditAction.checkpoint.rawValue, head.seq >= 1 else {
            throw Failure(line: nil, reason: "not a checkpoint entry")
        }
        // Seqs were checked to run 1, 2, 3…: seq n is line n.
        guard head.seq <= lines.count else {
            throw Failure(line: lines.count + 1, reason: "truncated: the log ends at line \(lines.count), but \(headPath) "
                          + "records checkpoint seq \(head.seq)")
        }
        guard lines[head.seq - 1].bytes.elementsEqual(bytes) else {
            throw Failure(line: head.seq, reason: "differs from the checkpoint recorded in \(headPath) (rewritten)")
        }
    }
}
