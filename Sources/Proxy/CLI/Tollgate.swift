import CSystem
import ArgumentParser
import Backends
import Glibc
import Policy
import Runtime
import Synchronization

@main
struct Tollgate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tollgate",
        abstract: "API-key enforcement sidecar: a reverse proxy that checks every request against policy files.",
        version: "0.1.0",
        subcommands: [Serve.self, Check.self, Keys.self, CreditsCommand.self, SecretsCommand.self, AuditCommand.self,
                      BackendsCommand.self, WebhooksCommand.self, DashboardCommand.self, SecurityCommand.self]
    )
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the proxy.")

    @Option(help: "A policy file, or a directory whose *.yaml files are merged.")
    var policies: String
    @Option(help: "Event loops (default: one per core).")
    var threads: Int?
    @Option(help: "Seconds a graceful shutdown waits for in-flight requests.")
    var drainTimeout: Double = 10
    @Option(help: "Seconds a client has to send a whole request head.")
    var headerTimeout: Double = 10
    @Option(help: "Seconds an idle keep-alive connection is kept.")
    var idleTimeout: Double = 60
    @Option(help: "Seconds a request body may stall (its first credit; see --body-min-rate).")
    var bodyTimeout: Double = 30
    @Option(help: "Bytes per second a request body must keep up once its --body-timeout credit is spent.")
    var bodyMinRate: Int = 1024
    @Option(help: "Seconds between rotations of the TLS session ticket keys.")
    var ticketKeyRotation: Double = 12 * 3600
    @Option(help: "Connections per event loop before new ones are refused.")
    var maxConnections: Int = 16_384

    func run() throws {
        Signals.blockForAllThreads()
        let reloader: Reloader
        do {
            reloader = try Reloader(policiesPath: policies)
        } catch {
            for e in error.errors { Log.error("\(e)") }
            throw ExitCode(2)
        }
        let snapshot = reloader.snapshot
        if snapshot.listeners.isEmpty {
            Log.error("\(policies): no `listen` address: nothing to serve")
            throw ExitCode(2)
        }
        var settings = ServerSettings()
        settings.threads = threads ?? Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        settings.drainTimeout = .milliseconds(Int(drainTimeout * 1000))
        settings.headerTimeout = .milliseconds(Int(headerTimeout * 1000))
        settings.idleTimeout = .milliseconds(Int(idleTimeout * 1000))
        settings.bodyTimeout = .milliseconds(Int(bodyTimeout * 1000))
        settings.maxConnectionsPerLoop = maxConnections
        settings.bodyMinRate = max(1, bodyMinRate)
        settings.ticketKeyRotation = .milliseconds(Int(max(1, ticketKeyRotation) * 1000))
        let server = Server(settings: settings)
        var accessLog: AccessLogWriter?
        if let target = AccessLogWriter.target(of: snapshot) {
            do {
                accessLog = try AccessLogWriter(target: target)
            } catch {
                Log.error("access_log: cannot open \(target): \(error)")
                throw ExitCode(1)
            }
        }
        let instanceID = Server.instanceID()
        var audit: AuditLog?
        if let spec = snapshot.audit {
            do {
                let log = try AuditLog(spec: spec, instance: instanceID, redis: snapshot.store?.url)
                try log.prepare()
                audit = log
            } catch {
                Log.error("\(error)")
                throw ExitCode(2)
            }
        }
        var usage: UsageSpool?
        if let spec = snapshot.usage {
            do {
                usage = try UsageSpool(spec: spec, instance: instanceID, loops: max(1, settings.threads),
                                       store: snapshot.store?.url)
            } catch {
                Log.error("\(error)")
                throw ExitCode(1)
            }
            usage?.start()
        }
        var ledger: LocalLedger?
        if let spec = snapshot.credits, spec.ledger == .local {
            do {
                ledger = try LocalLedger(directory: CreditsCommand.directory(spec, policies: policies), instance: instanceID)
            } catch {
                Log.error("credits: \(error)")
                throw ExitCode(1)
            }
            ledger?.start()
        }
        var accounting: AccountingLedger?
        if let spec = snapshot.credits, spec.ledger == .accounting, let name = spec.accountingBackend,
           let env = spec.accountingTokenEnv, let backend = snapshot.backends.first(where: { $0.name == name }) {
            guard let raw = getenv(env), case let token = String(cString: raw), !token.isEmpty else {
                Log.error("credits: the accounting ledger's service credential is not set (environment variable \(env) is empty or missing)")
                throw ExitCode(1)
            }
            do {
                accounting = try AccountingLedger(host: backend.host, port: backend.port, token: token,
                                                  directory: CreditsCommand.directory(spec, policies: policies), tls: backend.tls)
            } catch {
                Log.error("credits: \(error)")
                throw ExitCode(1)
            }
            accounting?.start()
        }
        // Calendar quotas without Redis: counted here, saved beside the key log.
        let quotas = snapshot.store == nil ? LocalQuotas(directory: EmbeddedKeyLog.defaultDirectory(forPolicies: policies)) : nil
        quotas?.start()
        // Provider secrets: decrypted here, or `serve` does not start (wrong or missing master
        // key, damaged store); the message names the problem, never the key.
        let secrets: SecretsReloader
        do {
            secrets = try SecretsReloader(snapshot: snapshot, stateDirectory: EmbeddedKeyLog.defaultDirectory(forPolicies: policies))
        } catch {
            Log.error("secrets: \(error)")
            throw ExitCode(2)
        }
        let readiness = AdminServer.Readiness(storeMustAnswer: snapshot.store?.onError == .closed)
        var admin: AdminServer?
        if let spec = snapshot.admin {
            do {
                let keyAPI = KeyAPI(policies: policies, snapshot: { reloader.snapshot }, tokensFile: spec.tokensFile,
                                    usage: usage?.aggregates)
                admin = try AdminServer(spec: spec, readiness: readiness, usage: usage?.aggregates, keys: keyAPI,
                                        security: server.security)
            } catch {
                Log.error("admin: cannot listen on \(spec.host):\(spec.port): \(error)")
                throw ExitCode(1)
            }
            Log.info("admin listening on \(spec.isIPv6 ? "[\(spec.host)]" : spec.host):\(spec.port)")
        }
        // Webhooks: the spool is replayed (what a previous run left is resumed) before any
        // loop can emit.
        do {
            try WebhookEvents.start(snapshot: snapshot, policies: policies)
        } catch {
            Log.error("\(error)")
            throw ExitCode(1)
        }
        do {
            try server.start(snapshot: snapshot, keys: reloader.keyDirectory(), accessLog: accessLog, usage: usage,
                             ledger: ledger, quotas: quotas, accounting: accounting, secrets: secrets.table,
                             instanceID: instanceID)
        } catch {
            Log.error("\(error)")
            throw ExitCode(1)
        }
        if let audit {
            do {
                try audit.record(AuditEvent(.serverStarted, actor: .server, subject: instanceID, details: [
                    ("policies", .string(policies)), ("files", Reloader.auditFiles(snapshot)),
                    ("version", .string(Tollgate.configuration.version)), ("threads", .int(Int64(settings.threads))),
                ]))
            } catch {
                Log.error("audit: \(error); not serving without the audit trail")
                _ = server.drain(timeout: .zero)
                throw ExitCode(1)
            }
            reloader.attach(audit: audit)
            audit.startCheckpointTimer()
        }
        server.security.wire(policies: policies, snapshot: { reloader.snapshot }, audit: audit, instance: instanceID)
        reloader.attach(server)
        secrets.attach(server)
        reloader.attach(secrets: secrets)
        secrets.startPolling()
        reloader.startWatching()
        reloader.startTicketKeyRotation(every: settings.ticketKeyRotation)
        for l in snapshot.listeners {
            Log.info("listening on \(l.isIPv6 ? "[\(l.host)]" : l.host):\(l.port) with \(settings.threads) loop(s)")
        }
        readiness.isServing.store(true, ordering: .relaxed)
        while true {
            let sig = Signals.wait()
            if sig == SIGHUP {
                reloader.reloadPolicy(reason: "SIGHUP")
                reloader.reloadKeys()
                secrets.reloadNow()
                accessLog?.reopen()
                continue
            }
            Log.info("signal \(sig): draining (up to \(drainTimeout)s)")
            readiness.isDraining.store(true, ordering: .relaxed)
            defer { admin?.stop() }
            let drainStart = monotonicNanos()
            let clean = server.drain(timeout: settings.drainTimeout)
            // Pending webhook deliveries get what is left of the drain time (at least half a
            // second); what they do not deliver stays spooled for the next start.
            let spent = Duration.nanoseconds(Int64(clamping: monotonicNanos() &- drainStart))
            WebhookEvents.shutDown(grace: max(.milliseconds(500), settings.drainTimeout - spent))
            Log.info(clean ? "drained, exiting" : "drain timed out, exiting")
            if let audit {
                do {
                    try audit.shutDown(with: AuditEvent(.serverStopped, actor: .server, subject: instanceID, details: [
                        ("signal", .int(Int64(sig))), ("drained", .bool(clean)),
                    ]))
                } catch {
                    Log.error("audit: \(error)")
                    throw ExitCode(1)
                }
            }
            throw ExitCode.success
        }
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Validate policy files; print file:line: key.path: reason for every error.")
    @Argument(help: "A policy file or directory.")
    var path: String

    func run() throws {
        let s: PolicySnapshot
        do {
            s = try PolicyLoader.load(path: path)
        } catch {
            for e in error.errors { print("\(e)") }
            throw ExitCode(1)
        }
        // Certificates and keys are read as `serve` reads them.
        do {
            _ = try Server.buildTLS(s)
        } catch {
            print("\(error)")
            throw ExitCode(1)
        }
        // The secret store's master key is read too (its format, not the store); one from the
        // environment only when the variable is set here (CI may not hold it).
        if let spec = s.secrets, Self.isMasterKeyAvailable(spec) {
            do { _ = try MasterKey.load(spec) } catch {
                print("secrets: \(error)")
                throw ExitCode(1)
            }
        }
        // So is the audit signing key.
        if let audit = s.audit {
            do { try AuditLog.checkSigningKey(audit) } catch {
                print("\(error)")
                throw ExitCode(1)
            }
        }
        print("ok: \(s.routes.count) route(s), \(s.backends.count) backend(s)")
    }

    static func isMasterKeyAvailable(_ spec: SecretsSpec) -> Bool {
        if case .env(let name) = spec.masterKey { return getenv(name) != nil }
        return true
    }
}

/// Plain stderr logging: one line per event, never a key or a secret.
enum Log {
    static func info(_ s: String) { write("info", s) }
    static func warn(_ s: String) { write("warn", s) }
    static func error(_ s: String) { write("error", s) }
    private static func write(_ level: String, _ s: String) {
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        var tm = tm()
        var secs = t.tv_sec
        gmtime_r(&secs, &tm)
        var buf = [CChar](repeating: 0, count: 32)
        _ = strftime(&buf, 32, "%Y-%m-%dT%H:%M:%S", &tm)
        let ms = Int(t.tv_nsec / 1_000_000)
        let msText = ms < 10 ? "00\(ms)" : ms < 100 ? "0\(ms)" : "\(ms)"
        let ts = String(cString: buf) + "." + msText + "Z"
        let line = "\(ts) \(level) \(s)\n"
        var l = line
        l.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}
