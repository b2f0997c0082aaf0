import Backends
import CSystem
import Foundation
import Glibc
import Runtime
import Synchronization

/// The embedded ledger: balances in memory, every change a line in one journal file.
///
/// - `grant` lines come from `tollgate credits grant` (under an exclusive `flock`, fsync'd
///   before the command says it is done); the running proxy reads lines others appended
///   every 200 ms, so a grant is live within a second.
/// - `charge` lines are the proxy's settlements: one `write` per settled request, under the
///   ledger's lock (so the file's order is the order of the balance), `fdatasync` every
///   200 ms and at stop. A `kill -9` loses nothing that was written (the page cache
///   outlives the process); a power cut may lose the last 200 ms of charges (never a grant).
/// - Reservations live in memory only: a process that dies holds nothing afterwards (its
///   reservations are simply gone, back to the account).
///
/// One journal serves one host; many proxies charging one account belong on the `redis`
/// ledger (a second process on the same journal sees the first one's charges but cannot
/// see its reservations).
final class LocalLedger: @unchecked Sendable {
    // SAFETY: every mutable field is behind `state`'s lock, except `thread` (start/stop only).
    struct Account {
        var balance: Int64 = 0
        var held: Int64 = 0
        /// The account's name as a JSON string (quoted once, for the journal lines).
        var quoted: [UInt8] = []
    }

    enum Outcome: Equatable {
        /// Held `amount`; `available` is what is left to others afterwards.
        case granted(amount: Int64, available: Int64)
        case insufficient(available: Int64)
    }

    private struct State {
        var accounts: [String: Account] = [:]
        var fd: Int32 = -1
        /// How far the journal has been read (lines by others are applied as they are read).
        var readOffset: Int = 0
        var partial: [UInt8] = []
        var grantIDs: Set<String> = []
        var dirty = false
        var chargeSeq: UInt64 = 0
        var line: [UInt8] = []
    }

    let path: String
    let instance: String
    /// `{"op":"charge","id":"c-<instance>-`: how this process's own lines begin.
    let ownPrefix: [UInt8]
    /// `,"by":"<instance>","request_id":"`.
    let byField: [UInt8]
    private let state: Mutex<State>
    private var thread: pthread_t?
    private let running = Atomic<Bool>(false)

    static let fileName = "credits.journal"

    init(directory: String, instance: String) throws(LedgerError) {
        path = (directory as NSString).appendingPathComponent(Self.fileName)
        self.instance = instance
        ownPrefix = Array(#"{"op":"charge","id":"c-"#.utf8) + Array(instance.utf8) + [0x2D]
        var by = Array(#","by":"#.utf8)
        JSONText.appendQuoted(instance, to: &by)
        byField = by + Array(#","request_id":""#.utf8)
        state = Mutex(State())
        try makeDirectory(directory)
        let fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw LedgerError.errno(path, "open") }
        state.withLock { s in
            s.fd = fd
            Self.readNew(&s, skipOwn: nil)
        }
    }

    deinit {
        state.withLock { s in if s.fd >= 0 { close(s.fd) } }
    }

    private func makeDirectory(_ dir: String) throws(LedgerError) {
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw LedgerError(message: "\(dir): cannot create the ledger directory (\(error.localizedDescription))")
        }
    }

    // MARK: the request path

    /// Holds up to `want` (at least `minimum`) of `account`'s available balance.
    func reserve(_ account: String, want: Int64, minimum: Int64) -> Outcome {
        state.withLock { s in
            // One lookup, changed in place (an unknown account is not created by a refusal).
            guard let i = s.accounts.index(forKey: account) else { return .insufficient(available: 0) }
            let a = s.accounts.values[i]
            let available = a.balance - a.held
            if available < minimum || available <= 0 && minimum > 0 { return .insufficient(available: max(0, available)) }
            let amount = min(want, available)
            s.accounts.values[i].held += amount
            return .granted(amount: amount, available: available - amount)
        }
    }

    /// Releases `reserved` and charges `charge` (never taking the balance below what other
    /// reservations hold, nor below zero). Returns what was charged and the available balance.
    func settle(_ account: String, reserved: Int64, charge: Int64, requestID: UnsafeRawBufferPointer) -> (charged: Int64, available: Int64) {
        state.withLock { s in
            guard let i = s.accounts.index(forKey: account) else { return (0, 0) }
            var a = s.accounts.values[i]
            a.held = max(0, a.held - reserved)
            let charged = max(0, min(charge, a.balance - a.held))
            a.balance -= charged
            if charged > 0 {
                if a.quoted.isEmpty { JSONText.appendQuoted(account, to: &a.quoted) }
                appendCharge(&s, quotedAccount: a.quoted, amount: charged, requestID: requestID)
            }
            s.accounts.values[i] = a
            return (charged, a.balance - a.held)
        }
    }

    /// Balance and held credits of an account (`credits balance`, the admin API).
    func balance(_ account: String) -> Account {
        state.withLock { $0.accounts[account] ?? Account() }
    }

    // MARK: the journal

    private func appendCharge(_ s: inout State, quotedAccount: [UInt8], amount: Int64, requestID: UnsafeRawBufferPointer) {
        s.chargeSeq &+= 1
        var line = s.line
        line.removeAll(keepingCapacity: true)
        line.append(contentsOf: ownPrefix)
        Self.appendDecimal(Int64(truncatingIfNeeded: s.chargeSeq), to: &line)
        line.append(contentsOf: #"","account":"#.utf8)
        line.append(contentsOf: quotedAccount)
        line.append(contentsOf: #","amount":"#.utf8)
        Self.appendDecimal(amount, to: &line)
        line.append(contentsOf: byField)
        line.append(contentsOf: requestID)
        line.append(contentsOf: "\"}\n".utf8)
        let ok = line.withUnsafeBytes { Self.writeAll(s.fd, $0) }
        if !ok { LedgerLog.writeFailed(path: path) }
        // Nobody else wrote since the last read: the reader need not read our own line back.
        let end = lseek(s.fd, 0, SEEK_CUR)
        if ok, s.partial.isEmpty, end >= 0, Int(end) - line.count == s.readOffset { s.readOffset = Int(end) }
        s.dirty = true
        s.line = line
    }

    static func appendDecimal(_ v: Int64, to out: inout [UInt8]) {
        if v < 0 { out.append(0x2D) }
        var x = v.magnitude
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)   // 24 bytes: enough for 20 digits
        var n = 0
        withUnsafeMutableBytes(of: &digits) { d in
            repeat {
                d[23 - n] = UInt8(truncatingIfNeeded: 0x30 &+ x % 10)
                x /= 10
                n += 1
            } while x > 0
            out.append(contentsOf: d[(24 - n)...])
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = write(fd, bytes.baseAddress! + off, bytes.count - off)
            if n < 0 { if errno == EINTR { continue }; return false }
            off += n
        }
        return true
    }

    /// Reads what was appended since the last read and applies every line written by someone
    /// else (`skipOwn`: this instance's id; nil at start, when every line is applied).
    private static func readNew(_ s: inout State, skipOwn: [UInt8]?) {
        var st = stat()
        guard fstat(s.fd, &st) == 0 else { return }
        let size = Int(st.st_size)
        guard size > s.readOffset else { return }
        var chunk = [UInt8](repeating: 0, count: min(size - s.readOffset, 1 << 22))
        let n = chunk.withUnsafeMutableBytes { pread(s.fd, $0.baseAddress!, $0.count, off_t(s.readOffset)) }
        guard n > 0 else { return }
        s.readOffset += n
        var data = s.partial
        data.append(contentsOf: chunk[0..<n])
        var start = 0
        for i in 0..<data.count where data[i] == 0x0A {
            if i > start { apply(&s, line: data[start..<i], skipOwn: skipOwn) }
            start = i + 1
        }
        s.partial = Array(data[start...])
    }

    private static func apply(_ s: inout State, line: ArraySlice<UInt8>, skipOwn: [UInt8]?) {
        // This process's own charges (already applied) are known by their id's prefix, without
        // parsing: most lines a running proxy reads back are its own.
        if let own = skipOwn, line.count > own.count, line.starts(with: own) { return }
        guard let e = LedgerEntry.parse(Data(line)) else { return }  // a torn or foreign line: skipped
        switch e.op {
        case .grant:
            if let id = e.id {
                guard s.grantIDs.insert(id).inserted else { return }
            }
            s.accounts[e.account, default: Account()].balance += e.amount
        case .charge:
            s.accounts[e.account, default: Account()].balance -= e.amount
        }
    }

    // MARK: background: reading others' lines, syncing ours

    func start() {
        guard !running.exchange(true, ordering: .sequentiallyConsistent) else { return }
        let box = UncheckedBox(self)
        thread = spawnThread(name: "tollgate-ledger") { box.value.runBackground() }
    }

    private func runBackground() {
        while running.load(ordering: .relaxed) {
            var ts = timespec(tv_sec: 0, tv_nsec: 200_000_000)
            nanosleep(&ts, nil)
            tick()
        }
        tick()
    }

    /// Applies lines others appended; fsyncs ours.
    func tick() {
        let (fd, dirty) = state.withLock { s -> (Int32, Bool) in
            Self.readNew(&s, skipOwn: ownPrefix)
            let d = s.dirty
            s.dirty = false
            return (s.fd, d)
        }
        if dirty { _ = fdatasync(fd) }
    }

    func stop() {
        guard running.exchange(false, ordering: .sequentiallyConsistent) else { tick(); return }
        if let t = thread { pthread_join(t, nil) }
        thread = nil
    }

    // MARK: the command line

    /// Appends a grant (an exclusive `flock`, one write, fsync) and returns the balance the
    /// journal then shows.
    static func grant(directory: String, account: String, amount: Int64, id: String, by: String) throws(LedgerError) -> Int64 {
        let file = (directory as NSString).appendingPathComponent(fileName)
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw LedgerError(message: "\(directory): cannot create the ledger directory")
        }
        let fd = open(file, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw LedgerError.errno(file, "open") }
        defer { close(fd) }
        guard flock(fd, LOCK_EX) == 0 else { throw LedgerError.errno(file, "flock") }
        defer { flock(fd, LOCK_UN) }
        var line: [UInt8] = []
        line.append(contentsOf: #"{"op":"grant","id":"#.utf8)
        JSONText.appendQuoted(id, to: &line)
        line.append(contentsOf: #","account":"#.utf8)
        JSONText.appendQuoted(account, to: &line)
        line.append(contentsOf: #","amount":"#.utf8)
        line.append(contentsOf: String(amount).utf8)
        line.append(contentsOf: #","by":"#.utf8)
        JSONText.appendQuoted(by, to: &line)
        line.append(contentsOf: "}\n".utf8)
        // A torn last line (a process killed mid-write) would swallow ours: end it first.
        var st = stat()
        if fstat(fd, &st) == 0, st.st_size > 0 {
            var last: UInt8 = 0
            if pread(fd, &last, 1, st.st_size - 1) == 1, last != 0x0A { line.insert(0x0A, at: 0) }
        }
        guard line.withUnsafeBytes({ writeAll(fd, $0) }) else { throw LedgerError.errno(file, "write") }
        guard fsync(fd) == 0 else { throw LedgerError.errno(file, "fsync") }
        return try balance(directory: directory, account: account).balance
    }

    /// The balance the journal shows (reservations held by a running proxy are not in it).
    static func balance(directory: String, account: String) throws(LedgerError) -> Account {
        let file = (directory as NSString).appendingPathComponent(fileName)
        guard FileManager.default.fileExists(atPath: file) else { return Account() }
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw LedgerError.errno(file, "open") }
        var s = State()
        s.fd = fd
        while true {
            let before = s.readOffset
            readNew(&s, skipOwn: nil)
            if s.readOffset == before { break }
        }
        close(fd)
        return s.accounts[account] ?? Account()
    }
}

struct LedgerError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
    static func errno(_ path: String, _ what: String) -> LedgerError {
        LedgerError(message: "\(path): \(what) failed: \(String(cString: strerror(Glibc.errno)))")
    }
}

/// One journal line.
struct LedgerEntry {
    enum Op: String { case grant, charge }
    var op: Op
    var id: String?
    var account: String
    var amount: Int64
    var by: String?

    static func parse(_ data: Data) -> LedgerEntry? {
        guard let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let ops = o["op"] as? String, let op = Op(rawValue: ops),
              let account = o["account"] as? String,
              let amount = (o["amount"] as? NSNumber)?.int64Value, amount >= 0 else { return nil }
        return LedgerEntry(op: op, id: o["id"] as? String, account: account, amount: amount, by: o["by"] as? String)
    }
}

enum LedgerLog {
    private static let failing = Atomic<Bool>(false)
    static func writeFailed(path: String) {
        if !failing.exchange(true, ordering: .relaxed) {
            Log.error("credits: cannot write the ledger journal \(path): \(String(cString: strerror(errno)))")
        }
    }
}

/// JSON string text without Foundation on the hot path.
enum JSONText {
    static func appendQuoted(_ s: String, to out: inout [UInt8]) {
        out.append(0x22)
        for b in s.utf8 {
            switch b {
            case 0x22: out.append(contentsOf: [0x5C, 0x22])
            case 0x5C: out.append(contentsOf: [0x5C, 0x5C])
            case 0..<0x20:
                let hex: [UInt8] = Array("0123456789abcdef".utf8)
                out.append(contentsOf: [0x5C, 0x75, 0x30, 0x30, hex[Int(b >> 4)], hex[Int(b & 15)]])
            default: out.append(b)
            }
        }
        out.append(0x22)
    }
}
