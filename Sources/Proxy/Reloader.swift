import Backends
import CSystem
import Foundation
import Glibc
import Policy
import Runtime
import Synchronization

/// Owns what `serve` was configured from: the policy path and the embedded key log. Reloads
/// either on SIGHUP or when a file changes (inotify), validating first: a policy that fails
/// to load leaves the current one serving, and the reason is logged with file and line.
final class Reloader: Sendable {
    let policiesPath: String
    let keyLog: EmbeddedKeyLog
    private struct Current {
        var snapshot: PolicySnapshot
        var keyState: KeyLogState
    }
    private let current: Mutex<Current>
    private let server: Mutex<Server?> = Mutex(nil)
    /// The audit trail (`audit:`, read at start), when there is one.
    private let audit: Mutex<AuditLog?> = Mutex(nil)
    /// The provider secrets (a reload that changes `secrets` opens the store with it first).
    private let secrets: Mutex<SecretsReloader?> = Mutex(nil)
    /// The policy files as they were just before the first load (see `watchLoop`).
    private let loadedFingerprint: [String]

    init(policiesPath: String) throws(PolicyLoadError) {
        self.policiesPath = policiesPath
        keyLog = EmbeddedKeyLog(directory: EmbeddedKeyLog.defaultDirectory(forPolicies: policiesPath))
        loadedFingerprint = Self.fingerprint(policiesPath)
        let snapshot = try PolicyLoader.load(path: policiesPath)
        let state = try keyLog.loadForStartup { Log.warn($0) }
        current = Mutex(Current(snapshot: snapshot, keyState: state))
    }

    var snapshot: PolicySnapshot { current.withLock { $0.snapshot } }

    func keyDirectory() -> KeyDirectory {
        let (s, k) = current.withLock { ($0.snapshot, $0.keyState) }
        let dir = KeyDirectory(snapshot: s, state: k)
        for w in dir.warnings { Log.warn(w) }
        return dir
    }

    func attach(_ s: Server) { server.withLock { $0 = s } }

    func attach(audit log: AuditLog) { audit.withLock { $0 = log } }

    func attach(secrets s: SecretsReloader) { secrets.withLock { $0 = s } }

    /// `[{file, sha256}]` of the files a snapshot was compiled from.
    static func auditFiles(_ s: PolicySnapshot) -> AuditValue {
        .list(s.sources.map { .object([("file", .string($0.file)), ("sha256", .string($0.sha256))]) })
    }

    /// Loads the policy again; on success installs it (with keys recompiled) everywhere.
    func reloadPolicy(reason: String) {
        do {
            let next = try PolicyLoader.load(path: policiesPath)
            let before = snapshot.credits
            if let c = next.credits, before == nil || before!.ledger != c.ledger || before!.path != c.path {
                // A ledger is opened at start; switching one under running requests could charge
                // twice or not at all.
                MetricsRegistry.shared.reloadsRejected.add(1, ordering: .relaxed)
                Log.error("policy reload (\(reason)) refused: credits.ledger/credits.path differ from the ones this process started with; restart to switch ledgers (the current policy keeps serving)")
                return
            }
            // Certificates are read again on every reload (SIGHUP after renewing them); a file
            // that fails keeps everything as it was, old certificates serving.
            let tls: Server.TLSContexts
            do {
                tls = try Server.buildTLS(next)
            } catch {
                MetricsRegistry.shared.reloadsRejected.add(1, ordering: .relaxed)
                Log.error("policy reload (\(reason)) failed; the current policy and certificates keep serving:")
                Log.error("  \(error)")
                return
            }
            if let why = secrets.withLock({ $0 })?.reconfigure(for: next) {
                MetricsRegistry.shared.reloadsRejected.add(1, ordering: .relaxed)
                Log.error("policy reload (\(reason)) refused: \(why) (the current policy and secrets keep serving)")
                return
            }
            let previous = current.withLock { cur -> PolicySnapshot in
                let p = cur.snapshot
                cur.snapshot = next
                return p
            }
            // Read at start only: say so rather than seem to apply them.
            if previous.accessLog != next.accessLog { Log.warn("access_log changed: the new target takes effect at the next start") }
            if previous.usage != next.usage { Log.warn("usage changed: the new spool and sinks take effect at the next start") }
            if previous.admin != next.admin { Log.warn("admin changed: the admin listener moves at the next start") }
            if previous.audit != next.audit { Log.warn("audit changed: the audit trail's settings take effect at the next start") }
            let layout = { (s: PolicySnapshot) in s.listeners.map { "\($0.host):\($0.port):\($0.tls != nil)" } }
            let sameListeners = layout(previous) == layout(next)
            if !sameListeners {
                Log.warn("listen changed: listeners are bound at start; the change (certificates included) takes effect at the next start")
            }
            let keys = keyDirectory()
            server.withLock { $0?.install(next, keys: keys, tls: tls, listenersUnchanged: sameListeners) }
            WebhookEvents.reconfigure(next, policies: policiesPath)
            MetricsRegistry.shared.reloadsOK.add(1, ordering: .relaxed)
            // Recorded (fsync'd) before the reload is reported; a failure is logged, the new
            // policy stays (a revocation written into a policy file must not wait on the disk).
            if let log = audit.withLock({ $0 }) {
                do {
                    try log.record(AuditEvent(.policyReloaded, actor: .reload, subject: policiesPath, details: [
                        ("reason", .string(reason)), ("files", Self.auditFiles(next)),
                        ("routes", .int(Int64(next.routes.count))), ("declared_keys", .int(Int64(next.keys.count))),
                    ]))
                } catch {
                    Log.error("audit: the policy reload (\(reason)) could not be recorded: \(error)")
                }
            }
            Log.info("policy reloaded (\(reason)): \(next.routes.count) route(s), \(next.keys.count) declared key(s)")
        } catch {
            MetricsRegistry.shared.reloadsRejected.add(1, ordering: .relaxed)
            Log.error("policy reload (\(reason)) failed; the current policy keeps serving:")
            for e in error.errors { Log.error("  \(e)") }
        }
    }

    /// Session ticket keys live in each TLS context (OpenSSL makes them at random when the
    /// context is built): building the contexts again replaces them, and the session cache
    /// with them. Runs on its own thread every `interval`; a reload also rotates them.
    func startTicketKeyRotation(every interval: Duration) {
        guard snapshot.listeners.contains(where: { $0.tls != nil }) else { return }
        let box = UncheckedBox(self)
        let nanos = interval.nanoseconds
        _ = spawnThreadDetached(name: "tollgate-tickets") {
            while true {
                var left = timespec(tv_sec: Int(nanos / 1_000_000_000), tv_nsec: Int(nanos % 1_000_000_000))
                var rest = timespec()
                while nanosleep(&left, &rest) != 0 && errno == EINTR { left = rest }
                box.value.rotateTicketKeys()
            }
        }
    }

    private func rotateTicketKeys() {
        do {
            let tls = try Server.buildTLS(snapshot)
            server.withLock { $0?.installTLS(tls.listeners) }
            Log.info("TLS session ticket keys rotated")
        } catch {
            Log.error("TLS session ticket key rotation failed; the current keys stay: \(error)")
        }
    }

    /// Reads the key log again and installs the recompiled directory. A log that cannot be
    /// read leaves the previous key state serving (its revocations included), logged as an error.
    func reloadKeys() {
        let state: KeyLogState
        do {
            state = try keyLog.load()
        } catch {
            Log.error("key store reload failed; the previous key state keeps serving: \(error)")
            return
        }
        let changed = current.withLock { cur -> Bool in
            if cur.keyState == state { return false }
            cur.keyState = state
            return true
        }
        guard changed else { return }
        for p in state.problems { Log.warn(p) }
        let keys = keyDirectory()
        server.withLock { $0?.install(keys: keys) }
        Log.info("key store reloaded: \(state.records.count) stored key(s)")
    }

    /// Watches the policy files and the key log; runs on its own thread for the process's life.
    func startWatching() {
        try? FileManager.default.createDirectory(atPath: keyLog.directory, withIntermediateDirectories: true,
                                                 attributes: [.posixPermissions: 0o700])
        var isDir: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: policiesPath, isDirectory: &isDir)
        let policyDir = isDir.boolValue ? policiesPath : (policiesPath as NSString).deletingLastPathComponent
        let box = UncheckedBox(self)
        _ = spawnThreadDetached(name: "tollgate-watch") {
            box.value.watchLoop(policyDir: policyDir.isEmpty ? "." : policyDir)
        }
    }

    private func watchLoop(policyDir: String) {
        let fd = inotify_init1(Int32(IN_CLOEXEC))
        guard fd >= 0 else { Log.warn("inotify unavailable; reload with SIGHUP"); return }
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE)
        let policyWatch = inotify_add_watch(fd, policyDir, mask)
        let keyWatch = inotify_add_watch(fd, keyLog.directory, mask | UInt32(IN_MODIFY))
        // The directories of the certificates and keys the listeners use: a renewed file
        // (written in place or renamed over) reloads them, as SIGHUP does.
        var certWatches: [Int32: Set<String>] = [:]
        func watchCertificates() {
            for (wd, _) in certWatches where wd != policyWatch && wd != keyWatch { inotify_rm_watch(fd, wd) }
            certWatches = [:]
            var byDir: [String: Set<String>] = [:]
            for l in snapshot.listeners {
                for c in l.tls?.certificates ?? [] {
                    for path in [c.certificate, c.privateKey] {
                        let dir = (path as NSString).deletingLastPathComponent
                        byDir[dir.isEmpty ? "." : dir, default: []].insert((path as NSString).lastPathComponent)
                    }
                }
            }
            for (dir, names) in byDir {
                // IN_MASK_ADD: a directory watched already (the policy's) keeps its mask.
                let wd = inotify_add_watch(fd, dir, mask | UInt32(IN_MASK_ADD))
                if wd >= 0 { certWatches[wd, default: []].formUnion(names) }
            }
        }
        watchCertificates()
        // Changes made between the first load and these watches raised no event: catch up once.
        if Self.fingerprint(policiesPath) != loadedFingerprint { reloadPolicy(reason: "changed during startup") }
        reloadKeys()
        var buf = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { if errno == EINTR { continue }; return }
            var policyChanged = false
            var keysChanged = false
            var certificatesChanged = false
            var off = 0
            buf.withUnsafeBytes { raw in
                while off + MemoryLayout<inotify_event>.size <= n {
                    let ev = raw.load(fromByteOffset: off, as: inotify_event.self)
                    let nameStart = off + MemoryLayout<inotify_event>.size
                    let name = ev.len > 0 ? String(cString: raw.baseAddress!.advanced(by: nameStart).assumingMemoryBound(to: CChar.self)) : ""
                    if ev.wd == policyWatch && (name.hasSuffix(".yaml") || name.hasSuffix(".yml")) { policyChanged = true }
                    if ev.wd == keyWatch && name == "keys.jsonl" { keysChanged = true }
                    if let names = certWatches[ev.wd], names.contains(name) { certificatesChanged = true }
                    off = nameStart + Int(ev.len)
                }
            }
            // Editors write in several steps: let them finish.
            if policyChanged || keysChanged || certificatesChanged { usleep(30_000) }
            // Both may have changed in one batch: the policy reload alone keeps the old key state.
            if policyChanged || certificatesChanged {
                reloadPolicy(reason: policyChanged ? "file change" : "certificate change")
                watchCertificates()
            }
            if keysChanged { reloadKeys() }
        }
    }

    /// Name, size and modification time of every file `PolicyLoader.load` would read.
    private static func fingerprint(_ path: String) -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return [] }
        let files = isDir.boolValue
            ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [])
                .filter { $0.hasSuffix(".yaml") && !$0.hasPrefix(".") }.sorted().map { path + "/" + $0 }
            : [path]
        return files.map { f in
            var st = stat()
            guard stat(f, &st) == 0 else { return f + " ?" }
            return "\(f) \(st.st_size) \(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
        }
    }
}

/// A thread nobody joins (the watcher).
func spawnThreadDetached(name: String, _ body: @escaping @Sendable () -> Void) -> pthread_t {
    let t = spawnThread(name: name, body)
    pthread_detach(t)
    return t
}
