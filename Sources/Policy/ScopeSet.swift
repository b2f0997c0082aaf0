/// A set of scopes as a 128-bit bitset; bit positions are interned at compile time by
/// ``ScopeTable``.
///
/// Only scopes that some route requires get a bit. A key's scope that no route asks for
/// cannot change any decision, so it is dropped from the bitset (it stays in
/// ``KeyRecord/scopeNames`` for listing). This keeps the 128-scope limit about routes,
/// never about how many distinct scope names thousands of keys carry.
public struct ScopeSet: Sendable, Equatable, Hashable {
    public var lo: UInt64
    public var hi: UInt64

    public init(lo: UInt64 = 0, hi: UInt64 = 0) { self.lo = lo; self.hi = hi }

    public static let empty = ScopeSet()
    public static let capacity = 128

    public mutating func insert(bit: Int) {
        precondition(bit >= 0 && bit < ScopeSet.capacity)
        if bit < 64 { lo |= 1 << UInt64(bit) } else { hi |= 1 << UInt64(bit - 64) }
    }

    public func contains(bit: Int) -> Bool {
        bit < 64 ? lo & (1 << UInt64(bit)) != 0 : hi & (1 << UInt64(bit - 64)) != 0
    }

    @inline(__always)
    public func isSuperset(of other: ScopeSet) -> Bool {
        other.lo & ~lo == 0 && other.hi & ~hi == 0
    }

    public var isEmpty: Bool { lo == 0 && hi == 0 }
}

/// Scope name → bit position, fixed when a snapshot is compiled.
public struct ScopeTable: Sendable {
    public private(set) var names: [String] = []
    private var bits: [String: Int] = [:]

    public init() {}

    /// Returns the bit for `name`, interning it; nil when all 128 bits are used.
    mutating func intern(_ name: String) -> Int? {
        if let b = bits[name] { return b }
        guard names.count < ScopeSet.capacity else { return nil }
        bits[name] = names.count
        names.append(name)
        return names.count - 1
    }

    public func bit(of name: String) -> Int? { bits[name] }

    /// The bitset of `names`; names no route requires are ignored (see ``ScopeSet``).
    public func set(of scopeNames: some Sequence<String>) -> ScopeSet {
        var s = ScopeSet()
        for n in scopeNames { if let b = bits[n] { s.insert(bit: b) } }
        return s
    }

    public func names(of set: ScopeSet) -> [String] {
        names.indices.filter { set.contains(bit: $0) }.map { names[$0] }
    }
}
