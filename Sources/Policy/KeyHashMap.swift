/// An open-addressing hash map keyed by ``KeyHash`` (linear probing, at most half full).
///
/// A key hash is a SHA-256 digest, uniform already, so its first word picks the bucket:
/// no hashing per lookup (Swift's `Hasher` cost ≈ 150 instructions per `Dictionary`
/// access on the request path, measured with callgrind). The maps hold only keys the
/// operator issued or the limiter admitted, never attacker-chosen entries, so an
/// attacker choosing which digest to look up can at most walk the longest cluster of
/// uniformly spread entries. The all-zero digest marks an empty slot (SHA-256 does not
/// produce it); it is never stored and never found.
public struct KeyHashMap<Value> {
    private var keys: [KeyHash]
    private var values: [Value?]
    private var mask: Int
    public private(set) var count = 0

    public init(minimumCapacity: Int = 8) {
        var capacity = 16
        while capacity < minimumCapacity * 2 { capacity <<= 1 }
        keys = Array(repeating: KeyHash.empty, count: capacity)
        values = Array(repeating: nil, count: capacity)
        mask = capacity - 1
    }

    public var isEmpty: Bool { count == 0 }

    /// The slot holding `key`, or nil.
    @inline(__always)
    public func index(forKey key: KeyHash) -> Int? {
        if key.isZero { return nil }
        var i = Int(truncatingIfNeeded: key.w0) & mask
        while true {
            let k = keys[i]
            if k == key { return i }
            if k.isZero { return nil }
            i = (i &+ 1) & mask
        }
    }

    @inline(__always)
    public subscript(key: KeyHash) -> Value? {
        get {
            guard let i = index(forKey: key) else { return nil }
            return values[i]
        }
        set {
            if let v = newValue { _ = insert(key, v) } else { removeValue(forKey: key) }
        }
    }

    /// The value in slot `i` (from `index(forKey:)` or `insert`), in place.
    @inline(__always)
    public subscript(slot i: Int) -> Value {
        get { values[i]! }
        _modify { yield &values[i]! }
    }

    /// Stores `value` for `key` (replacing any) and returns its slot.
    @discardableResult
    public mutating func insert(_ key: KeyHash, _ value: Value) -> Int {
        precondition(!key.isZero, "the all-zero digest is not a key")
        if (count &+ 1) &* 2 > mask &+ 1 { grow() }
        var i = Int(truncatingIfNeeded: key.w0) & mask
        while true {
            let k = keys[i]
            if k == key { values[i] = value; return i }
            if k.isZero {
                keys[i] = key
                values[i] = value
                count &+= 1
                return i
            }
            i = (i &+ 1) & mask
        }
    }

    /// Removes `key` (backward-shift deletion: no tombstones, probes stay short).
    public mutating func removeValue(forKey key: KeyHash) {
        guard var hole = index(forKey: key) else { return }
        keys[hole] = KeyHash.empty
        values[hole] = nil
        count -= 1
        var i = (hole + 1) & mask
        while !keys[i].isZero {
            let home = Int(truncatingIfNeeded: keys[i].w0) & mask
            // Move the entry back if its home is not in (hole, i] (cyclically).
            let distHole = (hole - home) & mask
            let distHere = (i - home) & mask
            if distHole < distHere {
                keys[hole] = keys[i]
                values[hole] = values[i]
                keys[i] = KeyHash.empty
                values[i] = nil
                hole = i
            }
            i = (i + 1) & mask
        }
    }

    /// Keeps the entries `isIncluded` accepts.
    public func filter(_ isIncluded: (KeyHash, Value) -> Bool) -> KeyHashMap<Value> {
        var out = KeyHashMap(minimumCapacity: max(8, count))
        forEach { k, v in if isIncluded(k, v) { out.insert(k, v) } }
        return out
    }

    public func forEach(_ body: (KeyHash, Value) -> Void) {
        for i in 0...mask where !keys[i].isZero { body(keys[i], values[i]!) }
    }

    private mutating func grow() {
        var bigger = KeyHashMap(minimumCapacity: (mask + 1))
        forEach { k, v in bigger.insert(k, v) }
        self = bigger
    }
}

extension KeyHashMap: Sendable where Value: Sendable {}

extension KeyHash {
    /// The empty-slot marker of ``KeyHashMap``.
    public static var empty: KeyHash { KeyHash(w0: 0, w1: 0, w2: 0, w3: 0) }
    @inline(__always) public var isZero: Bool { (w0 | w1 | w2 | w3) == 0 }
}
