import Runtime
import Testing

/// Deterministic PRNG (SplitMix64) so a failing mutation is reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Bytes that matter to HTTP/1 framing, favoured by the mutator.
private let interesting: [UInt8] = [0x0D, 0x0A, 0x20, 0x09, 0x00, 0x3A, 0x3B, 0x2C, 0x22, 0x7F, 0x80, 0xFF, 0x30, 0x61]

private func mutate(_ input: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
    var b = input
    for _ in 0..<Int.random(in: 1...3, using: &rng) {
        let pick = interesting.randomElement(using: &rng)!
        switch Int.random(in: 0..<4, using: &rng) {
        case 0 where !b.isEmpty: b[Int.random(in: 0..<b.count, using: &rng)] = pick
        case 1: b.insert(pick, at: Int.random(in: 0...b.count, using: &rng))
        case 2 where !b.isEmpty: b.remove(at: Int.random(in: 0..<b.count, using: &rng))
        default: if !b.isEmpty { let i = Int.random(in: 0..<b.count, using: &rng); b.insert(b[i], at: i) }
        }
    }
    return b
}

/// Mutated valid messages: no parser may read past its input (guard page), and whole,
/// split and byte-by-byte feeding must agree on every one (checked by the drivers).
struct HTTP1MutationTests {
    @Test func mutatedRequestsAgreeHoweverTheyAreFed() {
        var rng = SplitMix64(state: 0x7011_6A7E)
        let seeds = validRequests.filter { $0.raw.count < 120 }.map(\.raw)
        for _ in 0..<400 {
            let raw = mutate(seeds.randomElement(using: &rng)!, &rng)
            let o = feedAllWays(raw) { RequestHarness(limits: HTTP1Limits()) }
            if case .complete(let n) = o.result { #expect(n <= raw.count) }
        }
    }

    @Test func mutatedResponsesAgreeHoweverTheyAreFed() {
        var rng = SplitMix64(state: 0x5E55_0000)
        let seeds = validResponses.map(\.raw)
        for _ in 0..<300 {
            let raw = mutate(seeds.randomElement(using: &rng)!, &rng)
            _ = feedAllWays(raw) { ResponseHarness(limits: HTTP1Limits(), method: .get) }
        }
    }

    @Test func mutatedChunkedBodiesAgreeHoweverTheyAreFed() {
        var rng = SplitMix64(state: 0xC4_0B1E)
        let seeds = validChunkedBodies.filter { $0.raw.count < 200 }.map(\.raw)
        for _ in 0..<400 {
            let raw = mutate(seeds.randomElement(using: &rng)!, &rng)
            _ = decodeChunkedAllWays(raw)
        }
    }
}
