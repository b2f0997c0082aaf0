#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// One backend's state as a JSON file, replaced atomically on every save:
/// write `<file>.tmp`, `fsync`, `rename` over the file, `fsync` the directory.
/// A crash leaves either the old or the new snapshot, never a torn one.
struct SnapshotFile: Sendable {
    let path: String
    private var directory: String { (path as NSString).deletingLastPathComponent }

    init(directory: String, name: String) {
        self.path = (directory as NSString).appendingPathComponent(name)
    }

    /// The saved value, or `nil` when there is no snapshot yet.
    func load<Value: Decodable>(_ type: Value.Type) throws(ReferenceServerError) -> Value? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .secondsSince1970
            return try decoder.decode(Value.self, from: data)
        } catch {
            throw .persistenceFailed(path: path, reason: "unreadable snapshot: \(error)")
        }
    }

    func save<Value: Encodable>(_ value: Value) throws(ReferenceServerError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .secondsSince1970
        let data: Data
        do {
            data = try encoder.encode(value)
        } catch {
            throw .persistenceFailed(path: path, reason: "cannot encode: \(error)")
        }
        try Self.makeDirectory(directory)
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .persistenceFailed(path: temporary, reason: "open errno \(errno)") }
        let bytes = [UInt8](data)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return write(fd, base + offset, raw.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                let code = errno
                close(fd)
                throw .persistenceFailed(path: temporary, reason: "write errno \(code)")
            }
            offset += written
        }
        guard fsync(fd) == 0 else {
            let code = errno
            close(fd)
            throw .persistenceFailed(path: temporary, reason: "fsync errno \(code)")
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            throw .persistenceFailed(path: path, reason: "rename errno \(errno)")
        }
        Self.syncDirectory(directory)
    }

    /// `fsync` of a directory, so that a created or renamed entry in it is durable.
    static func syncDirectory(_ directory: String) {
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            fsync(directoryFD)
            close(directoryFD)
        }
    }

    static func makeDirectory(_ directory: String) throws(ReferenceServerError) {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw .persistenceFailed(path: directory, reason: "cannot create directory: \(error)")
        }
    }
}
