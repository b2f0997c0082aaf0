#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A `host:port` to listen on.
public struct ReferenceAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT`, `[V6]:PORT`, `:PORT` or `PORT` (host defaults to `defaultHost`).
    public init?(parsing text: String, defaultHost: String = "127.0.0.1") {
        var host = defaultHost
        var portText = Substring(text)
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
        } else if let colon = text.lastIndex(of: ":") {
            let hostPart = text[..<colon]
            if !hostPart.isEmpty { host = String(hostPart) }
            portText = text[text.index(after: colon)...]
        }
        guard let port = UInt16(portText) else { return nil }
        self.init(host: host, port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public static let defaultFinance = ReferenceAddress(host: "127.0.0.1", port: 7001)
    public static let defaultAccounting = ReferenceAddress(host: "127.0.0.1", port: 7002)
    public static let defaultFlowise = ReferenceAddress(host: "127.0.0.1", port: 7003)
}

/// The reference backends running in this process: what `tollgate backends`
/// starts, and what integration tests start on ephemeral ports.
///
/// ```swift
/// let backends = try ReferenceBackends.start(finance: .defaultFinance, accounting: .defaultAccounting,
///                                            flowise: .defaultFlowise, dataDirectory: "./data/backends",
///                                            options: .fromEnvironment())
/// backends.runUntilSignalled()   // SIGINT / SIGTERM → stop()
/// ```
public struct ReferenceBackends: Sendable {
    public struct Options: Sendable {
        public var finance = FinanceBackend.Options()
        public var accounting = AccountingBackend.Options()
        public var flowise = FlowiseBackend.Options()

        public init() {}

        /// Options from `ACCOUNTING_JWT_SECRET`, `ACCOUNTING_INITIAL_CREDITS`,
        /// `FLOWISE_API_KEY`, `FLOWISE_API_KEYS_FILE`, `FLOWISE_TOKEN_DELAY_MS` and `FLOWISE_ANSWER_TOKENS` (unset or
        /// unparsable: defaults).
        public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> Options {
            var options = Options()
            if let secret = environment["ACCOUNTING_JWT_SECRET"], !secret.isEmpty { options.accounting.jwtSecret = secret }
            if let credits = environment["ACCOUNTING_INITIAL_CREDITS"].flatMap({ Int($0) }), credits >= 0 {
                options.accounting.initialCredits = credits
            }
            if let key = environment["FLOWISE_API_KEY"], !key.isEmpty { options.flowise.apiKey = key }
            if let file = environment["FLOWISE_API_KEYS_FILE"], !file.isEmpty,
               let keys = try? FlowiseBackend.readKeys(file: file) {
                options.flowise.apiKeys = keys
            }
            if let delay = environment["FLOWISE_TOKEN_DELAY_MS"].flatMap({ Int($0) }), delay >= 0 {
                options.flowise.tokenDelay = .milliseconds(delay)
            }
            if let tokens = environment["FLOWISE_ANSWER_TOKENS"].flatMap({ Int($0) }),
               (1...FlowiseBackend.maximumAnswerTokens).contains(tokens) {
                options.flowise.answerTokens = tokens
            }
            return options
        }
    }

    public static let defaultDataDirectory = "./data/backends"

    public let finance: FinanceBackend?
    public let accounting: AccountingBackend?
    public let flowise: FlowiseBackend?
    public let financeServer: ReferenceServer?
    public let accountingServer: ReferenceServer?
    public let flowiseServer: ReferenceServer?

    /// Bound ports (the real ones when started on port 0); `nil` when not started.
    public var financePort: UInt16? { financeServer?.port }
    public var accountingPort: UInt16? { accountingServer?.port }
    public var flowisePort: UInt16? { flowiseServer?.port }

    /// Starts the backends whose address is given; each keeps its state in
    /// `dataDirectory` (`finance.json`; `accounting.json` and `flowise.json`, snapshots of
    /// their `accounting-*.journal` and `flowise-*.journal`).
    /// If one fails to start, those already started are stopped.
    public static func start(finance: ReferenceAddress?, accounting: ReferenceAddress?, flowise: ReferenceAddress?,
                              dataDirectory: String = defaultDataDirectory,
                              options: Options = Options()) throws(ReferenceServerError) -> ReferenceBackends {
        var started: [ReferenceServer] = []
        var financeBackend: FinanceBackend?
        do {
            var accountingBackend: AccountingBackend?
            var flowiseBackend: FlowiseBackend?
            // One server per configured backend; every started one is stopped if a later one fails.
            func serve(_ address: ReferenceAddress?, _ router: ReferenceRouter?) throws(ReferenceServerError) -> ReferenceServer? {
                guard let address, let router else { return nil }
                let server = try ReferenceServer(host: address.host, port: address.port, router: router)
                started.append(server)
                return server
            }
            if finance != nil { financeBackend = try FinanceBackend(dataDirectory: dataDirectory, options: options.finance) }
            let financeServer = try serve(finance, financeBackend?.router())
            if accounting != nil { accountingBackend = try AccountingBackend(dataDirectory: dataDirectory, options: options.accounting) }
            let accountingServer = try serve(accounting, accountingBackend?.router())
            if flowise != nil { flowiseBackend = try FlowiseBackend(dataDirectory: dataDirectory, options: options.flowise) }
            let flowiseServer = try serve(flowise, flowiseBackend?.router())
            return ReferenceBackends(finance: financeBackend, accounting: accountingBackend, flowise: flowiseBackend,
                                     financeServer: financeServer, accountingServer: accountingServer,
                                     flowiseServer: flowiseServer)
        } catch {
            for server in started { server.stop() }
            financeBackend?.shutdown()
            throw error
        }
    }

    /// Stops the servers (closing their connections) and waits for import jobs and
    /// journal compactions.
    public func stop() {
        financeServer?.stop()
        accountingServer?.stop()
        flowiseServer?.stop()
        finance?.shutdown()
        accounting?.shutdown()
        flowise?.shutdown()
    }

    /// One line per running backend: `finance http://127.0.0.1:7001`.
    public var summary: [String] {
        [("finance", financeServer), ("accounting", accountingServer), ("flowise", flowiseServer)]
            .compactMap { name, server in
                server.map { "\(name) http://\(ReferenceAddress(host: $0.host, port: $0.port))" }
            }
    }

    /// Blocks until SIGINT or SIGTERM, then calls ``stop()``.
    public func runUntilSignalled() {
        SignalWaiter.waitForTermination()
        stop()
    }
}

/// Self-pipe signal wait: the handler writes one byte, the caller reads it.
private enum SignalWaiter {
    // SAFETY: written once before the handlers are installed, then only read
    // (by the signal handler); never changed afterwards.
    nonisolated(unsafe) static var writeFD: Int32 = -1

    static func waitForTermination() {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            // No pipe: fall back to pausing until a signal ends the process.
            while true { pause() }
        }
        writeFD = fds[1]
        let handler: @convention(c) (Int32) -> Void = { _ in
            var byte: UInt8 = 1
            _ = write(SignalWaiter.writeFD, &byte, 1)
        }
        signal(SIGINT, handler)
        signal(SIGTERM, handler)
        // A parent may have started us with these blocked (the mask is inherited): unblock
        // them here, or SIGTERM would never reach the handler.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        var byte: UInt8 = 0
        while read(fds[0], &byte, 1) < 0 && errno == EINTR {}
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
    }
}
