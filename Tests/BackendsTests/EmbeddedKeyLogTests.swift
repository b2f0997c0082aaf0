import Backends
import Foundation
import Glibc
import Policy
import Testing

/// The embedded key log on real files in a temporary directory.
struct EmbeddedKeyLogTests {
    private static func tempDir() -> String {
        var template = Array("/tmp/tgkeylog-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buf in buf.baseAddress.flatMap { mkdtemp($0) } }
        return made.map { String(cString: $0) } ?? "/tmp/tgkeylog-fallback-\(getpid())"
    }

    private static func put(_ id: String, status: String = "active") -> KeyLogEntry {
        KeyLogEntry(op: .put, id: id, hash: "sha256:" + KeyHash.sha256("plain-" + id).hex, prefix: "tg_x",
                    consumer: "c-" + id, scopes: ["read"], status: status, at: 1)
    }

    private static func bytes(_ path: String) -> [UInt8] {
        FileManager.default.contents(atPath: path).map(Array.init) ?? []
    }

    private static func write(_ path: String, _ text: String) {
        _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
    }

    // MARK: torn last line

    @Test func aTornFragmentIsCutOffBeforeTheNextAppend() throws {
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = EmbeddedKeyLog(directory: dir)
        try log.append(Self.put("key_a"))
        // A crash mid-append: the start of a line, no newline.
        let whole = Self.bytes(log.path)
        let fragment = #"{"at":2,"id":"key_b","op":"put","sta"#
        Self.write(log.path, String(decoding: whole, as: UTF8.self) + fragment)

        let repair = try log.append(KeyLogEntry(op: .status, id: "key_a", status: "revoked", at: 3))
        #expect(repair == .truncated(bytes: fragment.utf8.count))
        let state = try log.load()
        #expect(state.problems.isEmpty, "\(state.problems)")
        #expect(state.order == ["key_a"])
        #expect(state.records["key_a"]?.status == "revoked", "the append glued onto the fragment")
        // The file is whole lines only: the old line, then the new one.
        let text = String(decoding: Self.bytes(log.path), as: UTF8.self)
        #expect(text.hasPrefix(String(decoding: whole, as: UTF8.self)) && text.hasSuffix("\n"))
        #expect(text.split(separator: "\n").count == 2 && !text.contains("\"sta\n"))
    }

    @Test func aWholeEntryMissingOnlyItsNewlineIsKept() throws {
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = EmbeddedKeyLog(directory: dir)
        try log.append(Self.put("key_a"))
        var text = String(decoding: Self.bytes(log.path), as: UTF8.self)
        text.removeLast()   // the newline
        Self.write(log.path, text)
        #expect(try log.load().records["key_a"] != nil)   // readable as it is

        #expect(try log.append(Self.put("key_b")) == .terminated)
        let state = try log.load()
        #expect(state.order == ["key_a", "key_b"] && state.problems.isEmpty, "\(state)")
        #expect(try log.append(Self.put("key_c")) == .none)
    }

    // MARK: undecodable lines

    @Test func undecodableLinesAreReportedByLineNumberWithoutTheirContent() throws {
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = EmbeddedKeyLog(directory: dir)
        try log.append(Self.put("key_a"))
        let first = String(decoding: Self.bytes(log.path), as: UTF8.self)
        // Line 2: not JSON (with something that must never reach a log); line 3: blank;
        // line 4: JSON but not an entry; line 5: valid; line 6: invalid UTF-8; line 7: torn.
        var raw = Array((first + "sentinel-secret-ZZZ not json\n\n{\"op\":\"put\"}\n").utf8)
        let entry = KeyLogEntry(op: .status, id: "key_a", status: "disabled", at: 5)
        raw += Array(try JSONEncoder().encode(entry)) + [0x0A]
        raw += [0xFF, 0xFE, 0x7B, 0x0A]
        raw += Array(#"{"at":9,"id":"#.utf8)
        _ = FileManager.default.createFile(atPath: log.path, contents: Data(raw))

        let state = try log.load()
        #expect(state.records["key_a"]?.status == "disabled")
        #expect(state.problems == [
            "\(log.path):2: undecodable entry, ignored",
            "\(log.path):4: undecodable entry, ignored",
            "\(log.path):6: undecodable entry, ignored",
            "\(log.path):7: incomplete last line (an interrupted write), ignored",
        ])
        #expect(!state.problems.joined().contains("sentinel"))
        // Loading at startup hands each one to the log.
        var warned: [String] = []
        _ = try log.loadForStartup { warned.append($0) }
        #expect(warned == state.problems)
    }

    // MARK: unreadable = error, missing = empty

    @Test func aMissingLogIsEmpty() throws {
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try EmbeddedKeyLog(directory: dir).load() == KeyLogState())
        #expect(try EmbeddedKeyLog(directory: dir + "/not/made/yet").load() == KeyLogState())
    }

    /// Root reads any mode bits, so "unreadable" is made with things that fail for root too:
    /// a directory where the file should be, a link to one, a symlink loop, a dangling link.
    @Test(arguments: ["directory", "link to a directory", "symlink loop", "dangling link"])
    func anUnreadableLogIsAnErrorNamingTheFile(kind: String) throws {
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = EmbeddedKeyLog(directory: dir)
        switch kind {
        case "directory": #expect(mkdir(log.path, 0o700) == 0)
        case "link to a directory": #expect(symlink(".", log.path) == 0)
        case "symlink loop": #expect(symlink("keys.jsonl", log.path) == 0)
        default: #expect(symlink("gone.jsonl", log.path) == 0)
        }
        do {
            _ = try log.load()
            Issue.record("\(kind): loaded as if readable")
        } catch {
            #expect(error.path == log.path && error.description.hasPrefix(log.path + ": "), "\(error)")
        }
        // serve's start refuses it, naming the file.
        do {
            _ = try log.loadForStartup { _ in }
            Issue.record("\(kind): startup accepted it")
        } catch {
            #expect(error.errors.count == 1 && error.errors.first?.file == log.path, "\(error)")
            #expect(error.description.contains("key store unreadable"), "\(error)")
        }
        #expect(throws: KeyLogError.self) { try log.append(Self.put("key_a")) }
    }

    // MARK: flock

    @Test func aFailedLockFailsTheAppendAndTheLoad() throws {
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try EmbeddedKeyLog(directory: dir).append(Self.put("key_a"))
        let before = Self.bytes(dir + "/keys.jsonl")
        // Fault injection at our own seam: flock answers ENOLCK.
        let broken = EmbeddedKeyLog(directory: dir) { _, _ in
            errno = ENOLCK
            return -1
        }
        do {
            try broken.append(Self.put("key_b"))
            Issue.record("appended without the lock")
        } catch {
            #expect(error.description.contains("flock"), "\(error)")
        }
        #expect(Self.bytes(dir + "/keys.jsonl") == before, "the failed append wrote anyway")
        #expect(throws: KeyLogError.self) { _ = try broken.load() }
        // An interrupted flock is retried, not a failure.
        let interruptedOnce = InterruptOnce()
        let flaky = EmbeddedKeyLog(directory: dir) { fd, op in interruptedOnce.lock(fd, op) }
        try flaky.append(Self.put("key_c"))
        #expect(try flaky.load().order == ["key_a", "key_c"])
    }

    // MARK: creation

    @Test func theFirstAppendCreatesTheDirectoryAndAPrivateFile() throws {
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = EmbeddedKeyLog(directory: dir + "/.state")
        try log.append(Self.put("key_a"))
        var st = stat()
        #expect(stat(log.path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(stat(log.directory, &st) == 0 && st.st_mode & 0o777 == 0o700)
        #expect(try log.load().order == ["key_a"])
    }

    // MARK: folding

    @Test func revokedIsFinalWhateverTheOrderOfTheLog() {
        var s = KeyLogState()
        s.apply(Self.put("key_m"))
        s.apply(KeyLogEntry(op: .status, id: "key_m", status: "revoked", at: 2))
        s.apply(KeyLogEntry(op: .status, id: "key_m", status: "active", at: 3))   // a racing `enable`
        s.apply(Self.put("key_m"))                                                // a re-put
        #expect(s.records["key_m"]?.status == "revoked")
        // Declared keys (overrides): disabled → active is fine; revoked → anything is not.
        s.apply(KeyLogEntry(op: .status, id: "key_d", status: "disabled", at: 1))
        s.apply(KeyLogEntry(op: .status, id: "key_d", status: "active", at: 2))
        #expect(s.overrides["key_d"] == "active")
        s.apply(KeyLogEntry(op: .status, id: "key_d", status: "revoked", at: 3))
        s.apply(KeyLogEntry(op: .status, id: "key_d", status: "active", at: 4))
        s.apply(KeyLogEntry(op: .status, id: "key_d", status: "disabled", at: 5))
        #expect(s.overrides["key_d"] == "revoked")
    }
}

/// A flock that fails once with EINTR, then does the real thing.
private final class InterruptOnce: @unchecked Sendable {
    // SAFETY: used by one test thread only.
    private var done = false
    func lock(_ fd: Int32, _ op: Int32) -> Int32 {
        if !done && op != LOCK_UN {
            done = true
            errno = EINTR
            return -1
        }
        return flock(fd, op)
    }
}
