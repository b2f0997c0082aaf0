import Backends
import CSystem
import Glibc
import Policy
import Synchronization

/// The provider secrets `serve` injects (`secrets:`, `backends.*.inject`): opened at start
/// with the master key (a wrong key, a missing key or a damaged store stops `serve` with a
/// message naming the problem, never the key), decrypted into memory only, and decrypted
/// again whenever the store changes: a thread polls the store's version every 250 ms (the
/// file's inode, size and mtime; Redis's `tg:secrets:version`), so a `tollgate secrets set`
/// is served within a second. A store that cannot be read or opened later keeps the
/// secrets in memory serving, logged once per episode.
final class SecretsReloader: @unchecked Sendable {
    // SAFETY: `state` is behind its mutex; `reader` is used by the poll thread and by
    // `reconfigure`/`reloadNow` under `pollLock` only.
    private struct State {
        var spec: SecretsSpec?
        var vault: SecretVault?
        var table: SecretTable = .empty
        var version: String?
        var isFailing = false
    }
    private let state = Mutex(State())
    private let pollLock = Mutex(())
    private let server: Mutex<Server?> = Mutex(nil)
    private let isPolling = Atomic(false)
    let location: SecretStoreLocation
    private let reader: SecretStoreReader

    static let pollInterval: Duration = .milliseconds(250)

    /// Opens the store the start-up policy names. Redis not answering is not fatal (logged;
    /// the thread keeps trying); anything else is.
    init(snapshot: PolicySnapshot, stateDirectory: String) throws(SecretStoreError) {
        location = SecretVault.location(for: snapshot, stateDirectory: stateDirectory)
        reader = SecretStoreReader(location: location)
        guard let spec = snapshot.secrets else { return }
        let vault = SecretVault(master: try MasterKey.load(spec), location: location)
        state.withLock { $0.spec = spec; $0.vault = vault }
        do {
            try refresh(vault: vault, force: true)
        } catch .unreachable(let why) {
            Log.error("secrets: \(why); requests that need an injected secret get 503 until the store answers")
            state.withLock { $0.isFailing = true }
        }
    }

    var table: SecretTable { state.withLock { $0.table } }

    func attach(_ s: Server) { server.withLock { $0 = s } }

    /// Reads and decrypts the store when its version moved (or `force`); installs the table.
    private func refresh(vault: SecretVault, force: Bool) throws(SecretStoreError) {
        let version = try reader.version()
        if !force, state.withLock({ $0.version }) == version { return }
        let contents = try reader.load()
        let table = try vault.decryptAll(contents)
        let wasFailing = state.withLock { s -> Bool in
            let f = s.isFailing
            s.table = table
            s.version = version
            s.isFailing = false
            return f
        }
        server.withLock { $0?.install(secrets: table) }
        Log.info("secrets: \(table.count) secret(s) in memory (\(table.consumerCount) consumer(s) with their own)\(wasFailing ? "; the store answers again" : "")")
    }

    /// The poll thread (only when the policy has a `secrets` block).
    func startPolling() {
        guard state.withLock({ $0.spec != nil }), !isPolling.exchange(true, ordering: .relaxed) else { return }
        let box = UncheckedBox(self)
        let nanos = Self.pollInterval.nanoseconds
        _ = spawnThreadDetached(name: "tollgate-secrets") {
            while true {
                var left = timespec(tv_sec: Int(nanos / 1_000_000_000), tv_nsec: Int(nanos % 1_000_000_000))
                var rest = timespec()
                while nanosleep(&left, &rest) != 0 && errno == EINTR { left = rest }
                box.value.reloadNow(force: false)
            }
        }
    }

    /// Reloads now (SIGHUP, the poll thread). Failures keep the secrets in memory.
    func reloadNow(force: Bool = true) {
        pollLock.withLock { _ in
            guard let vault = state.withLock({ $0.vault }) else { return }
            do {
                try refresh(vault: vault, force: force)
            } catch {
                let first = state.withLock { s -> Bool in
                    defer { s.isFailing = true }
                    return !s.isFailing
                }
                if first { Log.error("secrets: \(error); the secrets in memory keep serving") }
            }
        }
    }

    /// A reload brought another `secrets` block: opens the store with it first. The reason
    /// to refuse the reload, or nil (then the new key serves).
    func reconfigure(for next: PolicySnapshot) -> String? {
        let current = state.withLock { $0.spec }
        guard next.secrets != current else { return nil }
        guard let spec = next.secrets else {
            if next.backends.contains(where: { $0.inject != nil }) { return "backends inject secrets but the secrets block is gone" }
            state.withLock { $0 = State() }
            server.withLock { $0?.install(secrets: .empty) }
            return nil
        }
        return pollLock.withLock { _ -> String? in
            do {
                let vault = SecretVault(master: try MasterKey.load(spec), location: location)
                let version = try reader.version()
                let contents = try reader.load()
                let table = try vault.decryptAll(contents)
                state.withLock { $0 = State(spec: spec, vault: vault, table: table, version: version) }
                server.withLock { $0?.install(secrets: table) }
                startPolling()
                return nil
            } catch {
                return "secrets: \(error)"
            }
        }
    }
}
