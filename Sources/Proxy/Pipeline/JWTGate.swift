import Glibc
import Policy
import Runtime

/// The JWT credential on one loop: verifies a token (``JWTVerifier``, with this loop's scratch
/// buffer) and turns it into an identity the rest of the pipeline treats like a key record
/// (consumer, scopes as the snapshot's bits, the `credentials.jwt.plan`), so identity
/// headers, rate limits, quotas, credits and usage follow the JWT's consumer.
///
/// - **Verified tokens** are remembered by a 128-bit SipHash of the token under a random
///   per-loop secret (the token itself is never stored), until their `exp` plus leeway: a
///   token that comes back costs a hash and a probe, not a signature check. Fixed size
///   (8,192 sets of two, 512 KiB per loop), so a flood of distinct tokens only evicts entries.
/// - **Identities** (one record per consumer and scope list) are shared by every token that
///   names them: a fresh token of a known consumer allocates nothing. Fixed size too (8,192
///   sets of two, 384 KiB, plus the records).
/// - **Limiter key**: SHA-256 of `jwt` NUL consumer (no API key can hash to it: a header
///   value never holds a NUL), so a consumer's tokens share one budget, apart from its keys'.
/// - Both caches belong to the verifier of the loop's current snapshot: a reload empties
///   them, and an exchange pinned to an older snapshot verifies without them.
final class JWTGate {
    private struct TokenEntry {
        var tag0: UInt64 = 0
        var tag1: UInt64 = 0
        /// Unix seconds from which the token is refused (`exp` rounded up, plus leeway).
        var validUntil: Int64 = 0
        var record: KeyRecord?
    }

    private struct IdentityEntry {
        var tag0: UInt64 = 0
        var tag1: UInt64 = 0
        var record: KeyRecord?
    }

    let scratch: UnsafeMutableRawBufferPointer
    private let tokens: UnsafeMutablePointer<TokenEntry>
    private let tokenSetMask: Int
    private let identities: UnsafeMutablePointer<IdentityEntry>
    private let identitySetMask: Int
    private let tokenCount: Int
    private let identityCount: Int
    private let k0 = UInt64.random(in: .min ... .max)
    private let k1 = UInt64.random(in: .min ... .max) | 1
    /// The verifier the caches hold results of.
    private var owner: JWTVerifier?

    init(tokenEntries: Int = 16_384, identityEntries: Int = 16_384) {
        scratch = .allocate(byteCount: JWTVerifier.scratchBytes, alignment: 16)
        var n = 2
        while n < tokenEntries { n <<= 1 }
        tokenCount = n
        tokenSetMask = n / 2 - 1
        tokens = .allocate(capacity: n)
        tokens.initialize(repeating: TokenEntry(), count: n)
        var m = 2
        while m < identityEntries { m <<= 1 }
        identityCount = m
        identitySetMask = m / 2 - 1
        identities = .allocate(capacity: m)
        identities.initialize(repeating: IdentityEntry(), count: m)
    }

    deinit {
        tokens.deinitialize(count: tokenCount)
        tokens.deallocate()
        identities.deinitialize(count: identityCount)
        identities.deallocate()
        scratch.deallocate()
    }

    /// The POLICY.md rule for routes taking both credentials: does this Bearer value look like
    /// a JWT (three base64url segments, the first a JOSE header)? A token this loop has
    /// verified and still remembers is one without looking again (its cache tag is kept for
    /// the verification phase).
    func isJWT(_ value: UnsafeRawBufferPointer, for x: Exchange) -> Bool {
        if value.count <= JWTSettings.maxTokenBytes, let verifier = x.facts.snapshot.jwt, x.facts.snapshot === x.context.snapshot {
            if owner !== verifier { clear(owner: verifier) }
            let (t0, t1) = SipHash24.hash128(value, k0: k0, k1: k1)
            x.facts.hasJWTTag = true
            x.facts.jwtTag0 = t0
            x.facts.jwtTag1 = t1
            let first = tokens + (Int(truncatingIfNeeded: t0) & tokenSetMask) << 1
            if first.pointee.tag0 == t0 && first.pointee.tag1 == t1 && first.pointee.record != nil { return true }
            let second = first + 1
            if second.pointee.tag0 == t0 && second.pointee.tag1 == t1 && second.pointee.record != nil { return true }
        }
        return JWTVerifier.isJWT(value, scratch: scratch)
    }

    /// The credential phase's lookup for a JWT: the identity, or `INVALID_TOKEN` / `EXPIRED`.
    func verify(_ x: Exchange) -> PhaseResult {
        let snapshot = x.facts.snapshot
        guard let verifier = snapshot.jwt else { return .reply(Denial(.invalidToken)) }
        let token = UnsafeRawBufferPointer(start: x.request.base + Int(x.facts.credential.offset), count: Int(x.facts.credential.count))
        // The precise wall clock: `time()` reads a coarse copy that can lag a second behind
        // just after a second begins, and a token issued that instant would look early.
        let now = wallClockSeconds()
        let cacheable = snapshot === x.context.snapshot
        if cacheable && owner !== verifier { clear(owner: verifier) }
        // Oversized tokens are refused before they are even hashed.
        guard token.count <= JWTSettings.maxTokenBytes else { return .reply(Denial(.invalidToken)) }
        let (t0, t1) = x.facts.hasJWTTag ? (x.facts.jwtTag0, x.facts.jwtTag1) : SipHash24.hash128(token, k0: k0, k1: k1)
        let first = tokens + (Int(truncatingIfNeeded: t0) & tokenSetMask) << 1
        let second = first + 1
        if cacheable {
            if first.pointee.tag0 == t0 && first.pointee.tag1 == t1, let r = first.pointee.record {
                if now < first.pointee.validUntil { return admitted(x, r) }
                first.pointee = TokenEntry()
                return .reply(Denial(.expired))
            }
            if second.pointee.tag0 == t0 && second.pointee.tag1 == t1, let r = second.pointee.record {
                if now < second.pointee.validUntil {
                    let hit = second.pointee
                    second.pointee = first.pointee
                    first.pointee = hit
                    return admitted(x, r)
                }
                second.pointee = TokenEntry()
                return .reply(Denial(.expired))
            }
        }
        switch verifier.check(token, now: now, scratch: scratch) {
        case .failure(let refusal):
            return .reply(Denial(refusal.code))
        case .success(let facts):
            let record = identity(facts, snapshot: snapshot, cacheable: cacheable)
            if cacheable {
                second.pointee = first.pointee
                first.pointee = TokenEntry(tag0: t0, tag1: t1, validUntil: facts.expiresAt &+ verifier.settings.leewaySeconds,
                                           record: record)
            }
            return admitted(x, record)
        }
    }

    @inline(__always)
    private func admitted(_ x: Exchange, _ r: KeyRecord) -> PhaseResult {
        x.facts.record = r
        x.facts.keyHash = r.hash
        return .next
    }

    /// The record of the token's consumer and scopes: shared, built once per pair.
    private func identity(_ f: JWTFacts, snapshot: PolicySnapshot, cacheable: Bool) -> KeyRecord {
        let consumer = UnsafeRawBufferPointer(rebasing: scratch[f.consumer])
        let scopes = UnsafeRawBufferPointer(rebasing: scratch[f.scopes])
        // Consumer, then scopes under a key derived from the consumer's tag: no concatenation.
        let (c0, c1) = SipHash24.hash128(consumer, k0: k1, k1: k0)
        let (t0, t1) = SipHash24.hash128(scopes, k0: c0 ^ k0, k1: c1 ^ k1)
        let first = identities + (Int(truncatingIfNeeded: t0) & identitySetMask) << 1
        let second = first + 1
        if cacheable {
            if first.pointee.tag0 == t0 && first.pointee.tag1 == t1, let r = first.pointee.record { return r }
            if second.pointee.tag0 == t0 && second.pointee.tag1 == t1, let r = second.pointee.record {
                let hit = second.pointee
                second.pointee = first.pointee
                first.pointee = hit
                return r
            }
        }
        let name = String(decoding: consumer, as: UTF8.self)
        let scopeNames = scopes.isEmpty ? [] : String(decoding: scopes, as: UTF8.self).split(separator: " ").map(String.init)
        let record = KeyRecord(id: "jwt:" + name, hash: Self.limiterKey(consumer: name), consumer: name,
                               planIndex: snapshot.jwtPlanIndex, scopes: snapshot.scopeSet(of: scopeNames),
                               scopeNames: scopeNames, allowIPs: nil, expiresAt: nil, status: .active)
        if cacheable {
            second.pointee = first.pointee
            first.pointee = IdentityEntry(tag0: t0, tag1: t1, record: record)
        }
        return record
    }

    /// The rate limiter's (and refusal memo's) key for a JWT consumer.
    static func limiterKey(consumer: String) -> KeyHash {
        KeyHash.sha256("jwt\u{0}" + consumer)
    }

    /// Forgets every cached token and identity (a new verifier: a reload).
    private func clear(owner new: JWTVerifier) {
        for i in 0..<tokenCount { tokens[i] = TokenEntry() }
        for i in 0..<identityCount { identities[i] = IdentityEntry() }
        owner = new
    }
}
