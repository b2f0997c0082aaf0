#if canImport(Glibc)
import Glibc
#endif
import CSystem
import Foundation

/// A backend state whose changes are journaled as entries (``JournaledStore``).
protocol JournaledState: Codable, Sendable {
    associatedtype Entry: Codable & Sendable
    /// The sequence number of the last entry applied (kept in the snapshot).
    var lastSequence: UInt64 { get set }
    /// Applies one entry. Must depend only on the state and the entry (it runs again on
    /// replay), and should prune what is no longer needed.
    mutating func apply(_ entry: Entry)
}

/// How hard a commit pushes an entry to disk before it returns.
enum JournalDurability: Sendable {
    /// `fdatasync` after every commit: an answered change survives a power cut.
    case synced
    /// `write` only: an answered change survives `kill -9` of the process (the kernel
    /// has it), not a crash of the machine.
    case written
}

/// One line of a journal segment.
struct JournalLine<Entry: Codable>: Codable {
    var seq: UInt64
    var entry: Entry
}

/// A backend's state in memory, its changes appended to a journal, compacted into a
/// snapshot now and then.
///
/// ```
///  <name>.json                     snapshot: the state up to its lastSequence (atomic replace)
///  <name>-000000000001.journal     segments: one JSON line per entry {"seq":N,"entry":{…}}
///  <name>-000000004711.journal     (the name is the first sequence number it may hold)
/// ```
///
/// A commit appends its entries (one `write`), applies them, and, when
/// ``JournalDurability`` says so, waits for an `fdatasync` that covers them before it
/// returns: the cost of a change is one short append, whatever the history. The sync is a
/// group commit: commits that arrive while one `fdatasync` runs share the next one, so
/// concurrent changes do not queue behind one disk flush each. (A reader may see a change
/// a moment before its commit returns; no answer goes out before its change is on
/// disk.) When the segments since the snapshot pass
/// ``Options/compactionBytes``, a new segment is started and a background thread writes
/// the snapshot and deletes the segments it covers. Start-up loads the snapshot and
/// replays the segments (entries the snapshot covers are skipped); a torn last line, a
/// change that was never answered, is cut off.
///
/// Readers (``read(_:)``) take the read side of a reader/writer lock, held only while
/// they copy out what they need; commits are serialized among themselves and hold the
/// write side only for the in-memory apply (not for the disk write), so reads never wait
/// for a disk.
final class JournaledStore<State: JournaledState>: @unchecked Sendable {
    // SAFETY: `state` is read under `lock`'s read side (or by the committer, the only
    // writer, which holds `commitLock`) and written under its write side with
    // `commitLock` held; the `segment*` fields, `journalBytes` and `isCompacting` are
    // only touched with `commitLock` held (`segmentFD` is also read, and only changed,
    // with `syncMonitor` locked); the `sync*` fields with `syncMonitor` locked;
    // `compactions` with `compactionDone` locked.
    struct Options: Sendable {
        var durability = JournalDurability.synced
        /// Journal bytes since the snapshot that trigger a compaction.
        var compactionBytes = 32 * 1024 * 1024
    }

    let directory: String
    let name: String
    let options: Options
    private let lock = ReadWriteLock()
    private let commitLock = Monitor()
    private let compactionDone = Monitor()
    private var state: State
    private var segmentFD: Int32 = -1
    private var segmentFirstSequence: UInt64 = 0
    private var segmentBytes = 0
    /// Bytes in all segments (what a compaction would drop).
    private var journalBytes = 0
    private var isCompacting = false
    private var compactions = 0
    private let snapshot: SnapshotFile
    private let syncMonitor = Monitor()
    /// Counts segment switches (a switch syncs the old segment).
    private var syncGeneration: UInt64 = 0
    /// Bytes of the current segment written, and known to be on disk.
    private var syncWritten = 0
    private var syncDurable = 0
    private var isSyncing = false
    /// A failed `fdatasync`: the journal's state on disk is unknown; no more commits.
    private var syncFailure: ReferenceServerError?

    /// Loads the snapshot (or `initial`), replays the journal, and opens it for appends.
    init(directory: String, name: String, initial: State, options: Options = Options(),
         prepare: (inout State) -> Void = { _ in }) throws(ReferenceServerError) {
        self.directory = directory
        self.name = name
        self.options = options
        try SnapshotFile.makeDirectory(directory)
        snapshot = SnapshotFile(directory: directory, name: "\(name).json")
        var loaded = try snapshot.load(State.self) ?? initial
        prepare(&loaded)
        let segments = try Self.segments(in: directory, name: name)
        for (index, segment) in segments.enumerated() {
            journalBytes += try Self.replay(segment.path, into: &loaded, isLast: index == segments.count - 1)
        }
        state = loaded
        if let last = segments.last {
            try openSegment(path: last.path, firstSequence: last.firstSequence, isNew: false)
        } else {
            try openSegment(firstSequence: loaded.lastSequence + 1)
        }
        _ = fdatasync(segmentFD)
        syncWritten = segmentBytes
        syncDurable = segmentBytes
    }

    deinit {
        if segmentFD >= 0 { close(segmentFD) }
    }

    /// Reads the current state; hold on to nothing but what `body` returns.
    func read<Result>(_ body: (State) throws -> Result) rethrows -> Result {
        try lock.reading { try body(state) }
    }

    /// Decides a change from the current state: the entries `decide` returns are
    /// journaled and then applied, and its result returned. Nothing is written or applied
    /// when `decide` throws or returns no entries; a failed write throws and applies
    /// nothing. Commits run one at a time.
    func commit<Result>(_ decide: (State) throws -> (entries: [State.Entry], result: Result)) throws -> Result {
        let (ticket, result) = try commitLock.locked { () throws -> (SyncTicket?, Result) in
            if let failure = syncMonitor.locked({ syncFailure }) { throw failure }
            let (entries, result) = try decide(state)
            guard !entries.isEmpty else { return (nil, result) }
            var sequence = state.lastSequence
            var bytes: [UInt8] = []
            let encoder = Self.encoder()
            for entry in entries {
                sequence += 1
                do {
                    bytes += try encoder.encode(JournalLine(seq: sequence, entry: entry))
                } catch {
                    throw ReferenceServerError.persistenceFailed(path: segmentPath(segmentFirstSequence),
                                                                 reason: "cannot encode: \(error)")
                }
                bytes.append(UInt8(ascii: "\n"))
            }
            try append(bytes)
            lock.writing {
                for entry in entries { state.apply(entry) }
                state.lastSequence = sequence
            }
            let ticket = syncMonitor.locked { () -> SyncTicket in
                syncWritten = segmentBytes
                return SyncTicket(generation: syncGeneration, offset: segmentBytes)
            }
            if journalBytes >= options.compactionBytes && !isCompacting { startCompaction() }
            return (ticket, result)
        }
        if options.durability == .synced, let ticket { try waitUntilDurable(ticket) }
        return result
    }

    /// Where a commit's bytes end in the journal.
    private struct SyncTicket {
        var generation: UInt64
        var offset: Int
    }

    /// Returns once an `fdatasync` has covered `ticket`: runs one itself when none is
    /// running (covering everything written so far), else waits for the running one and
    /// checks again.
    private func waitUntilDurable(_ ticket: SyncTicket) throws(ReferenceServerError) {
        syncMonitor.lock()
        defer { syncMonitor.unlock() }
        while true {
            if let syncFailure { throw syncFailure }
            // A later generation: the switch synced the old segment.
            if ticket.generation < syncGeneration || syncDurable >= ticket.offset { return }
            if isSyncing {
                syncMonitor.wait()
                continue
            }
            isSyncing = true
            let fd = segmentFD
            let target = syncWritten
            syncMonitor.unlock()
            let failed = fdatasync(fd) != 0
            let code = errno
            syncMonitor.lock()
            isSyncing = false
            if failed {
                syncFailure = .persistenceFailed(path: segmentPath(segmentFirstSequence), reason: "fdatasync errno \(code)")
            } else {
                syncDurable = max(syncDurable, target)
            }
            syncMonitor.broadcast()
        }
    }

    /// Compactions finished so far.
    var compactionCount: Int { compactionDone.locked { compactions } }

    /// Journal segment files and their total size, right now.
    var journalFiles: (count: Int, bytes: Int) {
        let segments = (try? Self.segments(in: directory, name: name)) ?? []
        let bytes = segments.reduce(0) { total, segment in
            total + ((try? FileManager.default.attributesOfItem(atPath: segment.path)[.size] as? Int) ?? 0)
        }
        return (segments.count, bytes)
    }

    /// Waits until no compaction is running (at most `timeout`).
    func waitForCompaction(timeout: Duration = .seconds(10)) {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        compactionDone.locked {
            while commitLock.locked({ isCompacting }) {
                if !compactionDone.wait(until: deadline) { return }
            }
        }
    }

    // MARK: - Appending

    private func segmentPath(_ firstSequence: UInt64) -> String {
        let digits = String(firstSequence)
        let padded = String(repeating: "0", count: max(0, 12 - digits.count)) + digits
        return (directory as NSString).appendingPathComponent("\(name)-\(padded).journal")
    }

    private func openSegment(path: String? = nil, firstSequence: UInt64, isNew: Bool = true) throws(ReferenceServerError) {
        let path = path ?? segmentPath(firstSequence)
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .persistenceFailed(path: path, reason: "open errno \(errno)") }
        if isNew { SnapshotFile.syncDirectory(directory) }
        syncMonitor.locked {
            if segmentFD >= 0 {
                // Sync the old segment before leaving it: its waiters count on the switch.
                while isSyncing { syncMonitor.wait() }
                if options.durability == .synced && fdatasync(segmentFD) != 0 {
                    syncFailure = .persistenceFailed(path: segmentPath(segmentFirstSequence),
                                                     reason: "fdatasync errno \(errno)")
                }
                close(segmentFD)
            }
            segmentFD = fd
            syncGeneration += 1
            segmentBytes = Int(lseek(fd, 0, SEEK_END))
            syncWritten = segmentBytes
            syncDurable = segmentBytes
            segmentFirstSequence = firstSequence
            syncMonitor.broadcast()
        }
    }

    private func append(_ bytes: [UInt8]) throws(ReferenceServerError) {
        let path = segmentPath(segmentFirstSequence)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw in write(segmentFD, raw.baseAddress! + offset, raw.count - offset) }
            if written < 0 {
                let code = errno
                if code == EINTR { continue }
                // Take back a partial line: the change was not made.
                _ = ftruncate(segmentFD, off_t(segmentBytes))
                throw .persistenceFailed(path: path, reason: "write errno \(code)")
            }
            offset += written
        }
        segmentBytes += bytes.count
        journalBytes += bytes.count
    }

    // MARK: - Compaction

    /// With `commitLock` held: start a new segment, and write the snapshot of the state so
    /// far on a thread of its own; then delete the segments it covers.
    private func startCompaction() {
        let covered = state.lastSequence
        let oldBytes = journalBytes
        do {
            try openSegment(firstSequence: covered + 1)
        } catch {
            return  // keep appending to the current segment; try again after the next commit
        }
        isCompacting = true
        journalBytes = 0
        let copy = lock.reading { state }
        let started = (try? ReferenceThread.detach { [self] in
            let saved = (try? snapshot.save(copy)) != nil
            if saved {
                for segment in (try? Self.segments(in: directory, name: name)) ?? []
                where segment.firstSequence <= covered {
                    unlink(segment.path)
                }
            }
            commitLock.locked {
                isCompacting = false
                if !saved { journalBytes += oldBytes }
            }
            compactionDone.locked {
                if saved { compactions += 1 }
                compactionDone.broadcast()
            }
        }) != nil
        if !started {
            isCompacting = false
            journalBytes += oldBytes
        }
    }

    // MARK: - Loading

    struct Segment {
        var path: String
        var firstSequence: UInt64
    }

    static func segments(in directory: String, name: String) throws(ReferenceServerError) -> [Segment] {
        let files: [String]
        do {
            files = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw .persistenceFailed(path: directory, reason: "cannot list: \(error)")
        }
        let prefix = "\(name)-"
        return files.compactMap { file -> Segment? in
            guard file.hasPrefix(prefix), file.hasSuffix(".journal"),
                  let first = UInt64(file.dropFirst(prefix.count).dropLast(".journal".count)) else { return nil }
            return Segment(path: (directory as NSString).appendingPathComponent(file), firstSequence: first)
        }.sorted { $0.firstSequence < $1.firstSequence }
    }

    /// Applies the segment's entries the state does not have yet; returns the segment's
    /// size. A torn or undecodable tail of the last segment (a change never answered) is
    /// cut off; anything else undecodable, or a gap in the sequence, stops the start.
    private static func replay(_ path: String, into state: inout State, isLast: Bool) throws(ReferenceServerError) -> Int {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw .persistenceFailed(path: path, reason: "unreadable journal: \(error)")
        }
        let bytes = [UInt8](data)
        let decoder = Self.decoder()
        var lineStart = 0
        var lineNumber = 0
        while lineStart < bytes.count {
            lineNumber += 1
            let newline = bytes[lineStart...].firstIndex(of: UInt8(ascii: "\n"))
            let line = newline.flatMap { end in
                try? decoder.decode(JournalLine<State.Entry>.self, from: Data(bytes[lineStart..<end]))
            }
            guard let line, let newline else {
                // Only the tail of the last segment may be bad: a line cut short (no newline)
                // or the zero fill of a crashed append, never a bad line before good ones.
                let rest = bytes[lineStart...]
                let isTornTail = newline == nil || rest.allSatisfy { $0 == 0 || $0 == 10 }
                    || !rest[(newline! + 1)...].contains(UInt8(ascii: "\n"))
                guard isLast, isTornTail else {
                    throw .persistenceFailed(path: path, reason: "undecodable journal line \(lineNumber)")
                }
                let fd = open(path, O_WRONLY | O_CLOEXEC)
                if fd >= 0 {
                    _ = ftruncate(fd, off_t(lineStart))
                    _ = fsync(fd)
                    close(fd)
                }
                return lineStart
            }
            if line.seq > state.lastSequence {
                guard line.seq == state.lastSequence + 1 else {
                    throw .persistenceFailed(path: path, reason: "journal gap: entry \(line.seq) after \(state.lastSequence)")
                }
                state.apply(line.entry)
                state.lastSequence = line.seq
            }
            lineStart = newline + 1
        }
        return bytes.count
    }

    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .secondsSince1970
        return encoder
    }

    static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        return decoder
    }
}

/// A pthread reader/writer lock.
final class ReadWriteLock: @unchecked Sendable {
    // SAFETY: used only through pthread calls, which are thread-safe by contract.
    private let rwlock: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        rwlock = .allocate(capacity: 1)
        rwlock.initialize(to: pthread_rwlock_t())
        pthread_rwlock_init(rwlock, nil)
    }

    deinit {
        pthread_rwlock_destroy(rwlock)
        rwlock.deallocate()
    }

    func reading<Result>(_ body: () throws -> Result) rethrows -> Result {
        pthread_rwlock_rdlock(rwlock)
        defer { pthread_rwlock_unlock(rwlock) }
        return try body()
    }

    func writing<Result>(_ body: () throws -> Result) rethrows -> Result {
        pthread_rwlock_wrlock(rwlock)
        defer { pthread_rwlock_unlock(rwlock) }
        return try body()
    }
}
