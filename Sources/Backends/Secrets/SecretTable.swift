import Policy

/// Every decrypted secret, in memory only: the values sit in one ``SecureBytes`` block
/// (out of core dumps, zeroed when the table is released — when a reload replaced it and
/// the last exchange that used it ended). Looked up by secret name and consumer: the
/// consumer's own value, else the system one.
public final class SecretTable: Sendable {
    /// Which value an exchange used (the usage record says so).
    public enum Source: UInt8, Sendable {
        case none = 0, consumer = 1, system = 2
    }

    /// A value's place in the storage.
    public struct Slot: Sendable, Equatable {
        public var offset: Int32
        public var count: Int32
        public init(offset: Int32, count: Int32) { self.offset = offset; self.count = count }
    }

    struct Entry: Sendable {
        var system: Slot?
        var consumers: [String: Slot] = [:]
    }

    private let storage: SecureBytes
    private let names: [String: Entry]
    /// How many values the table holds.
    public let count: Int
    /// How many consumers have a value of their own (any name).
    public let consumerCount: Int

    init(storage: SecureBytes, names: [String: Entry], count: Int) {
        self.storage = storage
        self.names = names
        self.count = count
        consumerCount = Set(names.values.flatMap { $0.consumers.keys }).count
    }

    /// An empty table (no store, or nothing in it).
    public static let empty = SecretTable(storage: SecureBytes(count: 1), names: [:], count: 0)

    /// The value for `secret`: `consumer`'s own when set, else the system one; nil when neither.
    public func resolve(secret: String, consumer: String?) -> (source: Source, slot: Slot)? {
        guard let e = names[secret] else { return nil }
        if let c = consumer, let s = e.consumers[c] { return (.consumer, s) }
        if let s = e.system { return (.system, s) }
        return nil
    }

    /// The bytes of a slot, valid for the table's life.
    @inline(__always)
    public func value(_ slot: Slot) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: storage.base + Int(slot.offset), count: Int(slot.count))
    }

    struct Builder {
        var names: [String: Entry] = [:]
        var count = 0

        mutating func add(name: String, scope: SecretScope, offset: Int, count n: Int) {
            let slot = Slot(offset: Int32(offset), count: Int32(n))
            switch scope {
            case .system: names[name, default: Entry()].system = slot
            case .consumer(let c): names[name, default: Entry()].consumers[c] = slot
            }
            count += 1
        }

        func build(storage: SecureBytes) -> SecretTable { SecretTable(storage: storage, names: names, count: count) }
    }
}
