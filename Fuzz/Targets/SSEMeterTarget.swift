// libFuzzer target: a streamed (SSE) answer through StreamMeter, as the proxy meters credit
// routes. The stream is fed whole, split at fuzzer-chosen points and (flag bit 2) one byte at
// a time, each piece in its own exact-size heap block; then, with a budget (flag bit 1),
// stopping at every event that crosses it and raising it. Invariants:
//
// - every way of feeding gives the same reading (tokens, figures, events, error, [DONE]) and,
//   with a budget, the same stop offsets; without a budget every byte is consumed;
// - a stop comes right after a line break (an event's blank line), with the count past the
//   budget, consumed never exceeds the bytes handed over, and the count never decreases;
// - an independent framer (the WHATWG event-stream rules written plainly: whole lines, a data
//   buffer per event) whose events' data are each scanned whole agrees with the meter: so the
//   line state machine, the data-line joining, the Flowise token short cut and the resumable
//   JSON scanner are checked against a simple reading;
// - figures are within [0, Int64.max / 2]; there are no more events than line breaks.
//
// Input: the control header of FuzzSupport.swift, then the stream. Flags: bit 0 dialect
// (0 flowise, 1 openai), bit 1 budget mode, bit 2 byte at a time, bits 3-4 the first budget
// (0-3; each stop raises it by 1 + that), bits 5-7 the split count.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStreamMeter(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = FuzzInput(data, size)
    let dialect: StreamDialect = input.flags & 1 == 0 ? .flowise : .openai
    let msg = input.message
    let n = msg.count

    // Whole.
    let whole = feed(msg, dialect, pieces: [0..<n])

    // Split at the fuzzer's points.
    let cuts = [0] + input.splitPoints(length: n) + [n]
    var pieces: [Range<Int>] = []
    for k in 0..<(cuts.count - 1) where cuts[k] <= cuts[k + 1] { pieces.append(cuts[k]..<cuts[k + 1]) }
    let split = feed(msg, dialect, pieces: pieces)
    check(split == whole, "split \(pieces): \(split) whole: \(whole)")

    if input.byteAtATime {
        let bytewise = feed(msg, dialect, pieces: (0..<n).map { $0..<$0 + 1 })
        check(bytewise == whole, "byte at a time: \(bytewise) whole: \(whole)")
    }

    // The independent framer.
    let plain = plainReading(msg, dialect)
    check(plain == whole, "plain framer: \(plain) meter: \(whole) for \(describe(msg))")

    var lineBreaks = 0
    for b in msg where b == 0x0A || b == 0x0D { lineBreaks += 1 }
    check(whole.events <= lineBreaks, "\(whole.events) events from \(lineBreaks) line breaks")
    check(whole.input.map { $0 >= 0 && $0 <= Int64.max / 2 } ?? true, "input figure \(String(describing: whole.input))")
    check(whole.output.map { $0 >= 0 && $0 <= Int64.max / 2 } ?? true, "output figure \(String(describing: whole.output))")
    if dialect == .flowise { check(whole.tokens <= Int64(whole.events), "more tokens than events") }

    // Budget stops.
    if input.flags & 2 != 0 {
        let first = Int64((input.flags >> 3) & 3)
        let extend = 1 + first
        let a = feedWithBudget(msg, dialect, budget: first, extend: extend, pieces: [0..<n])
        check(a.reading == whole, "with a budget: \(a.reading) without: \(whole)")
        let b = feedWithBudget(msg, dialect, budget: first, extend: extend, pieces: pieces)
        check(b.stops == a.stops && b.reading == a.reading, "budget stops split \(b.stops) whole \(a.stops)")
        if input.byteAtATime {
            let c = feedWithBudget(msg, dialect, budget: first, extend: extend, pieces: (0..<n).map { $0..<$0 + 1 })
            check(c.stops == a.stops && c.reading == a.reading, "budget stops bytewise \(c.stops) whole \(a.stops)")
        }
        for s in a.stops {
            check(s >= 1 && s <= n && (msg[s - 1] == 0x0A || msg[s - 1] == 0x0D), "stop at \(s) not after a line break")
        }
        check(a.stops == a.stops.sorted() && Set(a.stops).count == a.stops.count, "stops not increasing: \(a.stops)")
    }
    return 0
}

struct Reading: Equatable, CustomStringConvertible {
    var tokens: Int64 = 0
    var input: Int64?
    var output: Int64?
    var events = 0
    var error = false
    var done = false

    init() {}
    init(_ m: StreamMeter) {
        tokens = m.outputTokens; input = m.reportedInput; output = m.reportedOutput
        events = m.events; error = m.sawError; done = m.sawDone
    }

    var description: String {
        "tokens \(tokens) input \(String(describing: input)) output \(String(describing: output)) events \(events) error \(error) done \(done)"
    }
}

/// Feeds `msg` in `pieces`, each copied into its own exact-size block, with no budget.
func feed(_ msg: UnsafeRawBufferPointer, _ dialect: StreamDialect, pieces: [Range<Int>]) -> Reading {
    var m = StreamMeter(dialect: dialect)
    var last: Int64 = 0
    for r in pieces {
        let used = withExactCopy(msg, from: r.lowerBound, count: r.count) { m.scan($0, budget: .max) }
        check(used == r.count, "consumed \(used) of \(r.count) with no budget")
        check(!m.stoppedAtBudget, "stopped with no budget")
        check(m.outputTokens >= last, "count went down")
        last = m.outputTokens
    }
    check(m.chargeableOutput == (m.reportedOutput ?? m.outputTokens), "chargeableOutput")
    return Reading(m)
}

/// Feeds `msg` in `pieces` with a budget raised by `extend` at every stop; returns the stop
/// offsets (absolute) and the reading.
func feedWithBudget(_ msg: UnsafeRawBufferPointer, _ dialect: StreamDialect, budget: Int64, extend: Int64,
                    pieces: [Range<Int>]) -> (stops: [Int], reading: Reading) {
    var m = StreamMeter(dialect: dialect)
    var limit = budget
    var stops: [Int] = []
    for r in pieces {
        var at = r.lowerBound
        while true {
            let before = m.outputTokens
            let used = withExactCopy(msg, from: at, count: r.upperBound - at) { m.scan($0, budget: limit) }
            check(used >= 0 && used <= r.upperBound - at, "consumed \(used) of \(r.upperBound - at)")
            check(m.outputTokens >= before, "count went down")
            at += used
            if m.stoppedAtBudget {
                check(m.outputTokens > limit && m.outputTokens > before, "stopped at \(m.outputTokens) with budget \(limit)")
                stops.append(at)
                limit += extend
                continue
            }
            check(at == r.upperBound, "stopped early without crossing the budget")
            break
        }
    }
    return (stops, Reading(m))
}

/// The event-stream rules written plainly: split into lines (CRLF, LF, CR), a BOM dropped,
/// `data` values (one leading space removed) collected and joined with LF, an event
/// dispatched at a blank line if it had data; each event's data scanned whole by the JSON
/// scanner and committed by the rules StreamMeter documents.
func plainReading(_ msg: UnsafeRawBufferPointer, _ dialect: StreamDialect) -> Reading {
    var bytes = Array(msg)
    if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }
    var lines: [ArraySlice<UInt8>] = []
    var start = 0
    var k = 0
    while k < bytes.count {
        let b = bytes[k]
        if b == 0x0A || b == 0x0D {
            lines.append(bytes[start..<k])
            if b == 0x0D && k + 1 < bytes.count && bytes[k + 1] == 0x0A { k += 1 }
            start = k + 1
        }
        k += 1
    }
    // A last line without its break is dropped: it can be neither a blank line nor part of a
    // dispatched event.
    var r = Reading()
    var data: [UInt8] = []
    var hasData = false
    for line in lines {
        if line.isEmpty {
            if hasData { commit(data, dialect, into: &r) }
            data = []
            hasData = false
            continue
        }
        if line.first == UInt8(ascii: ":") { continue }
        var name = line
        var value: ArraySlice<UInt8> = []
        if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
            name = line[line.startIndex..<colon]
            value = line[(colon + 1)...]
            if value.first == UInt8(ascii: " ") { value = value.dropFirst() }
        }
        if Array(name) == Array("data".utf8) {
            if hasData { data.append(0x0A) }
            data += value
            hasData = true
        }
    }
    return r
}

func commit(_ data: [UInt8], _ dialect: StreamDialect, into r: inout Reading) {
    var scanner = CreditJSONScanner()
    var event = MeterEvent(flowise: dialect == .flowise)
    data.withUnsafeBytes { scanner.feed($0, &event) }
    _ = scanner.finish(&event)
    r.events += 1
    var added: Int64 = 0
    var figures = false
    if dialect == .flowise {
        switch event.name {
        case .token: added = 1
        case .error: r.error = true
        case .usageMetadata: figures = true
        default: break
        }
    } else {
        added = event.tokens
        if event.error { r.error = true }
        if data == Array("[DONE]".utf8) { r.done = true }
        figures = true
    }
    if figures {
        if event.input >= 0 { r.input = max(r.input ?? 0, event.input) }
        if event.output >= 0 { r.output = max(r.output ?? 0, event.output) }
    }
    r.tokens += added
}
