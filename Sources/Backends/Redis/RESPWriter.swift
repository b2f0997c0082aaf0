import Policy
import Runtime

/// Formats RESP commands (`*N\r\n$len\r\narg\r\n…`) into one reusable, growable buffer.
/// Arguments are binary-safe; nothing is allocated per command once the buffer has grown
/// to the largest command seen. Loop-confined, like the connection that owns it.
///
///     w.reset()
///     w.arrayHeader(2)
///     w.bulk("GET")
///     w.bulkKey(.record, hash)          // tg:{<hex>}:key
///     hiredis gets (w.bytes, w.count)
public final class RESPWriter {
    public private(set) var bytes: UnsafeMutableRawPointer
    public private(set) var capacity: Int
    public private(set) var count = 0

    public init(capacity: Int = 512) {
        self.capacity = max(64, capacity)
        bytes = .allocate(byteCount: self.capacity, alignment: 8)
    }
    deinit { bytes.deallocate() }

    @inline(__always) public func reset() { count = 0 }

    /// A NUL after the command (not counted). hiredis scans a formatted command with
    /// `strchr` to spot (P|UN)SUBSCRIBE and their channels: without it, the scan runs on into
    /// what an earlier, longer command left in the buffer (stale `$` arguments taken for
    /// channels, or an assertion when no `\r` follows one).
    public func terminate() {
        reserve(1)
        bytes.storeBytes(of: 0, toByteOffset: count, as: UInt8.self)
    }

    /// The formatted command so far.
    public var formatted: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: bytes, count: count) }

    @inline(__always) private func reserve(_ n: Int) {
        if count + n > capacity { grow(count + n) }
    }
    private func grow(_ need: Int) {
        var c = capacity * 2
        while c < need { c *= 2 }
        let nb = UnsafeMutableRawPointer.allocate(byteCount: c, alignment: 8)
        nb.copyMemory(from: bytes, byteCount: count)
        bytes.deallocate()
        bytes = nb
        capacity = c
    }

    @inline(__always) private func put(_ b: UInt8) {
        bytes.storeBytes(of: b, toByteOffset: count, as: UInt8.self)
        count += 1
    }
    @inline(__always) private func crlf() { put(13); put(10) }
    private func putRaw(_ p: UnsafeRawPointer, _ n: Int) {
        reserve(n)
        (bytes + count).copyMemory(from: p, byteCount: n)
        count += n
    }
    /// Decimal digits of a non-negative or negative integer, two at a time, straight into the
    /// buffer (the limiter writes two 16-digit times per decision).
    private func putDecimal(_ v: Int) {
        reserve(21)
        if v < 0 { put(UInt8(ascii: "-")) }
        var m = UInt64(v.magnitude)
        let w = RESPWriter.digitCount(m)
        var p = bytes + count + w
        let pairs = UnsafeRawPointer(RESPWriter.digitPairs.utf8Start)
        while m >= 100 {
            let r = Int(m % 100)
            m /= 100
            p -= 2
            p.copyMemory(from: pairs + 2 * r, byteCount: 2)
        }
        if m >= 10 {
            p -= 2
            p.copyMemory(from: pairs + 2 * Int(m), byteCount: 2)
        } else {
            p -= 1
            p.storeBytes(of: UInt8(truncatingIfNeeded: m) &+ 48, as: UInt8.self)
        }
        count += w
    }
    private static let digitPairs: StaticString = "00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899"

    @inline(__always)
    private static func digitCount(_ m: UInt64) -> Int {
        var w = 1
        var x = m
        while x >= 100 { x /= 100; w &+= 2 }
        return x >= 10 ? w &+ 1 : w
    }
    private static func decimalWidth(_ v: Int) -> Int {
        (v < 0 ? 1 : 0) + digitCount(UInt64(v.magnitude))
    }

    /// `*n\r\n`: the start of a command of `n` arguments.
    public func arrayHeader(_ n: Int) {
        reserve(1); put(UInt8(ascii: "*")); putDecimal(n); reserve(2); crlf()
    }
    /// `$len\r\n`.
    @inline(__always) private func bulkHeader(_ len: Int) {
        reserve(1); put(UInt8(ascii: "$")); putDecimal(len); reserve(2); crlf()
    }

    /// One binary-safe argument.
    public func bulk(_ arg: UnsafeRawBufferPointer) {
        bulkHeader(arg.count)
        if let b = arg.baseAddress { putRaw(b, arg.count) }
        reserve(2); crlf()
    }
    public func bulk(_ arg: [UInt8]) { arg.withUnsafeBytes { bulk($0) } }
    public func bulk(_ arg: StaticString) {
        bulk(UnsafeRawBufferPointer(start: arg.utf8Start, count: arg.utf8CodeUnitCount))
    }
    public func bulk(_ arg: String) {
        var s = arg
        s.withUTF8 { bulk(UnsafeRawBufferPointer($0)) }
    }
    /// An integer argument, as decimal text.
    /// Bytes formatted earlier (a cached run of arguments).
    /// Drops what was written after `n` bytes.
    public func discard(to n: Int) { count = min(count, n) }
    public func raw(_ b: ArraySlice<UInt8>) { raw(Array(b)) }
    public func raw(_ b: [UInt8]) {
        reserve(b.count)
        b.withUnsafeBytes { (bytes + count).copyMemory(from: $0.baseAddress!, byteCount: b.count) }
        count += b.count
    }

    /// One argument made of several parts (a key built from a prefix, a tag and a suffix).
    public func bulk(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ c: UnsafeRawBufferPointer,
                     _ d: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                     _ e: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)) {
        bulkHeader(a.count + b.count + c.count + d.count + e.count)
        if a.count > 0 { putRaw(a.baseAddress!, a.count) }
        if b.count > 0 { putRaw(b.baseAddress!, b.count) }
        if c.count > 0 { putRaw(c.baseAddress!, c.count) }
        if d.count > 0 { putRaw(d.baseAddress!, d.count) }
        if e.count > 0 { putRaw(e.baseAddress!, e.count) }
        reserve(2); crlf()
    }

    /// A decimal argument: `prefix` then the digits of `v` (an id made of a fixed prefix and
    /// a sequence number).
    public func bulk(_ prefix: UnsafeRawBufferPointer, decimal v: Int) {
        bulkHeader(prefix.count + RESPWriter.decimalWidth(v))
        if prefix.count > 0 { putRaw(prefix.baseAddress!, prefix.count) }
        putDecimal(v)
        reserve(2); crlf()
    }

    public func bulk(decimal v: Int) {
        bulkHeader(RESPWriter.decimalWidth(v))
        putDecimal(v)
        reserve(2); crlf()
    }

    /// A hash-tagged key `tg:{<64 hex>}<suffix>`: every key of one API key lands in the
    /// same Redis Cluster slot, so one script may touch all of them.
    public func bulkKey(_ hash: KeyHash, suffix: StaticString) {
        bulkHeader(RedisKeys.taggedPrefixLength + suffix.utf8CodeUnitCount)
        putTaggedHash(hash)
        putRaw(suffix.utf8Start, suffix.utf8CodeUnitCount)
        reserve(2); crlf()
    }
    /// `tg:{<hex>}<suffix><index>` (the limiter's per-window keys).
    public func bulkKey(_ hash: KeyHash, suffix: StaticString, index: Int) {
        bulkHeader(RedisKeys.taggedPrefixLength + suffix.utf8CodeUnitCount + RESPWriter.decimalWidth(index))
        putTaggedHash(hash)
        putRaw(suffix.utf8Start, suffix.utf8CodeUnitCount)
        putDecimal(index)
        reserve(2); crlf()
    }
    /// Bytes formatted earlier, from memory the caller owns.
    @inline(__always)
    public func raw(_ p: UnsafeRawPointer, count n: Int) { putRaw(p, n) }

    /// The 64 hex digits of `hash`, bare (inside a key a template supplies around them).
    @inline(__always)
    public func hex(_ hash: KeyHash) { putHex(hash) }


    private func putTaggedHash(_ hash: KeyHash) {
        reserve(RedisKeys.taggedPrefixLength)
        put(UInt8(ascii: "t")); put(UInt8(ascii: "g")); put(UInt8(ascii: ":")); put(UInt8(ascii: "{"))
        putHex(hash)
        put(UInt8(ascii: "}"))
    }
    private func putHex(_ hash: KeyHash) {
        reserve(64)
        let out = bytes + count
        Hex.write16(hash.w0, to: out)
        Hex.write16(hash.w1, to: out + 16)
        Hex.write16(hash.w2, to: out + 32)
        Hex.write16(hash.w3, to: out + 48)
        count += 64
    }
}

/// Key names in Redis. Every per-key name carries the key hash as a Cluster hash tag.
public enum RedisKeys {
    /// `tg:{` + 64 hex + `}`.
    public static let taggedPrefixLength = 4 + 64 + 1
    /// `tg:{<hex>}:key` → the key record (JSON of ``KeyLogEntry``).
    public static let recordSuffix: StaticString = ":key"
    /// `tg:{<hex>}:rl:<i>` → the GCRA TAT (µs, server clock) of window `i`.
    public static let limiterSuffix: StaticString = ":rl:"
    /// `tg:keyid:<id>` → hex of the key with that id.
    public static let idPrefix = "tg:keyid:"
    /// Set of every key id stored.
    public static let idSet = "tg:keyids"
    /// Pub/sub channel; each message is the 64-hex hash of a key whose record changed.
    public static let invalidationChannel = "tg:invalidate"
    /// Sorted set instanceID → last heartbeat (server ms).
    public static let instances = "tg:instances"
    /// Stream of audit entries (`entry` = the JSON line), from every instance and the CLI.
    public static let auditStream = "tg:audit"

    public static func record(_ hash: KeyHash) -> String { "tg:{\(hash.hex)}:key" }
    public static func limiter(_ hash: KeyHash, window: Int) -> String { "tg:{\(hash.hex)}:rl:\(window)" }
    public static func id(_ id: String) -> String { idPrefix + id }
}
