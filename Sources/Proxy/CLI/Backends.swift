import ArgumentParser
import ReferenceBackends
import Foundation

/// `tollgate backends`: the reference finance, accounting and Flowise-style services.
struct BackendsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backends",
        abstract: "Run the reference backends of the seeds (finance, accounting, Flowise-style chat).")

    @Option(help: "Finance API address (host:port, or 'off').") var finance: String = "127.0.0.1:7001"
    @Option(help: "Accounting/credit service address (or 'off').") var accounting: String = "127.0.0.1:7002"
    @Option(help: "Flowise-style chat address (or 'off').") var flowise: String = "127.0.0.1:7003"
    @Option(help: "Where the backends keep their state.") var data: String = ReferenceBackends.defaultDataDirectory
    @Option(help: "HS256 secret for the accounting service's JWTs (else ACCOUNTING_JWT_SECRET).") var jwtSecret: String?
    @Option(help: "API key the Flowise-style service requires (else FLOWISE_API_KEY).") var flowiseApiKey: String?
    @Option(help: "A file of more API keys the Flowise-style service accepts, one per line (else FLOWISE_API_KEYS_FILE); answers name the key used in X-Flowise-Key.")
    var flowiseApiKeys: String?
    @Option(help: "Delay between streamed tokens, ms (else FLOWISE_TOKEN_DELAY_MS).") var tokenDelayMs: Int?
    @Option(help: "Tokens in every chat answer, for long streams (else FLOWISE_ANSWER_TOKENS).") var answerTokens: Int?

    func run() throws {
        func address(_ s: String) throws -> ReferenceAddress? {
            if s == "off" { return nil }
            guard let a = ReferenceAddress(parsing: s) else { throw ValidationError("not an address: \(s)") }
            return a
        }
        var options = ReferenceBackends.Options.fromEnvironment()
        if let s = jwtSecret { options.accounting.jwtSecret = s }
        if let k = flowiseApiKey { options.flowise.apiKey = k }
        if let f = flowiseApiKeys {
            do { options.flowise.apiKeys = try FlowiseBackend.readKeys(file: f) } catch {
                throw ValidationError("--flowise-api-keys: cannot read \(f): \(error)")
            }
        }
        if let d = tokenDelayMs { options.flowise.tokenDelay = .milliseconds(d) }
        if let n = answerTokens {
            guard (1...FlowiseBackend.maximumAnswerTokens).contains(n) else {
                throw ValidationError("--answer-tokens must be 1...\(FlowiseBackend.maximumAnswerTokens)")
            }
            options.flowise.answerTokens = n
        }
        let b = try ReferenceBackends.start(finance: address(finance), accounting: address(accounting), flowise: address(flowise),
                                            dataDirectory: data, options: options)
        for line in b.summary { print(line) }
        b.runUntilSignalled()
    }
}
