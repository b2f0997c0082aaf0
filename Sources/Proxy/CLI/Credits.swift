import ArgumentParser
import Backends
import Foundation
import Policy

/// `tollgate credits grant|balance`: on whichever ledger the policy names. Every grant is
/// audited (when the policy has an audit trail) after it is durable.
struct CreditsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "credits",
        abstract: "Grant credits to an account and read its balance, on the policy's ledger.",
        subcommands: [Grant.self, Balance.self])

    /// The local ledger's directory: `credits.path`, else the policy's state directory.
    static func directory(_ spec: CreditsSpec, policies: String) -> String {
        spec.path ?? EmbeddedKeyLog.defaultDirectory(forPolicies: policies)
    }

    static func load(_ policies: String) throws -> (PolicySnapshot, CreditsSpec) {
        let snapshot: PolicySnapshot
        do { snapshot = try PolicyLoader.load(path: policies, environment: .tools) } catch {
            throw ValidationError(error.errors.map(\.description).joined(separator: "\n"))
        }
        guard let spec = snapshot.credits else {
            throw ValidationError("\(policies) has no credits block: no ledger to act on")
        }
        return (snapshot, spec)
    }

    /// One operation of the ledger script on the policy's Redis (blocking: the command line).
    static func redis(_ snapshot: PolicySnapshot, account: String, id: String, op: String, _ args: [String]) throws -> [Int64] {
        guard let url = snapshot.store?.url else { throw ValidationError("the redis ledger needs store.redis") }
        do {
            let client = try RedisKeyDirectory(url: url)
            let cmd = RedisCreditScript.command(account: account, id: id, op: op, args, withSource: true)
            let reply = try client.run(cmd.map { String(decoding: $0, as: UTF8.self) })
            guard let v = RedisCreditScript.integers(reply) else { throw ValidationError("redis: unexpected answer \(reply)") }
            return v
        } catch let e as ValidationError {
            throw e
        } catch {
            throw ValidationError("redis: \(error)")
        }
    }

    /// One call to the accounting service with the ledger's service credential.
    static func accounting(_ snapshot: PolicySnapshot, _ spec: CreditsSpec, _ method: String, _ path: String, key: String?,
                           _ body: [String: Any]?) throws -> (Int, [String: Any]) {
        guard let name = spec.accountingBackend, let env = spec.accountingTokenEnv,
              let backend = snapshot.backends.first(where: { $0.name == name }) else {
            throw ValidationError("credits.accounting names no backend")
        }
        guard let token = ProcessInfo.processInfo.environment[env], !token.isEmpty else {
            throw ValidationError("the accounting ledger's service credential is not set (environment variable \(env))")
        }
        var headers = [("Authorization", "Bearer " + token), ("Content-Type", "application/json")]
        if let key { headers.append(("Idempotency-Key", key)) }
        let data = try body.map { try JSONSerialization.data(withJSONObject: $0, options: [.sortedKeys]) }.map { Array($0) } ?? []
        var tls: BlockingTLS?
        if let t = backend.tls {
            var why = ""
            tls = BlockingTLS(caFile: t.caFile, error: &why)
            if tls == nil { throw ValidationError("the accounting service's TLS: \(why)") }
        }
        let client = BlockingHTTPClient(host: backend.host, port: backend.port, timeout: .seconds(5), tls: tls)
        guard let a = client.request(method, path, headers: headers, body: data) else {
            throw ValidationError("accounting service at \(backend.host):\(backend.port) did not answer")
        }
        return (a.status, (try? JSONSerialization.jsonObject(with: Data(a.body))) as? [String: Any] ?? [:])
    }

    static func query(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? s
    }

    struct Grant: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add N credits to ACCOUNT (a consumer, or a key id with credits.account: key).")
        @Argument(help: "The account.") var account: String
        @Argument(help: "Credits to add (a positive integer).") var amount: Int64
        @Option(help: "The policy file or directory the running instances serve.") var policies: String
        @Option(help: "Grant id: a retried grant with the same id adds nothing (default: a new one).") var id: String?
        @Option(help: "Not supported yet: credits that expire.") var expires: String?

        func run() throws {
            guard amount > 0, amount <= 1_000_000_000_000 else { throw ValidationError("N must be between 1 and 10^12") }
            guard !account.isEmpty, account.utf8.count <= 256 else { throw ValidationError("ACCOUNT must be 1 to 256 bytes") }
            if expires != nil { throw ValidationError("--expires is not supported yet (credits do not expire)") }
            let (snapshot, spec) = try CreditsCommand.load(policies)
            let audit = try openAudit(snapshot)
            let grantID = id ?? "g-" + String(KeyHash.sha256(KeyFormat.mint()).hex.prefix(16))
            let balance: Int64
            switch spec.ledger {
            case .local:
                do {
                    balance = try LocalLedger.grant(directory: CreditsCommand.directory(spec, policies: policies), account: account,
                                                    amount: amount, id: grantID, by: AuditLog.cliInstance())
                } catch { throw ValidationError("\(error)") }
            case .redis:
                let v = try CreditsCommand.redis(snapshot, account: account, id: grantID, op: "grant", [String(amount), account])
                balance = v.count > 1 ? v[1] : 0
            case .accounting:
                let (status, o) = try CreditsCommand.accounting(snapshot, spec, "POST", "/api/credits/allocate", key: grantID,
                                                                ["userId": account, "credits": amount, "notes": "tollgate credits grant"])
                guard status == 200 || status == 422 else { throw ValidationError("accounting service: allocate answered \(status)") }
                if status == 422 { throw ValidationError("grant id \(grantID) was used before for another grant") }
                let (_, b) = try CreditsCommand.accounting(snapshot, spec, "GET", "/api/credits/balance?userId=" + CreditsCommand.query(account), key: nil, nil)
                balance = (b["totalCredits"] as? NSNumber)?.int64Value ?? 0
                _ = o
            }
            if let audit {
                do {
                    try audit.record(AuditEvent(.creditsGranted, actor: .cli, subject: account, details: [
                        ("amount", .int(amount)), ("grant_id", .string(grantID)), ("ledger", .string(spec.ledger.rawValue)),
                        ("balance", .int(balance)), ("os_user", .string(ProcessInfo.processInfo.environment["USER"] ?? "")),
                    ]))
                } catch {
                    throw ValidationError("granted \(amount) to \(account), but the audit trail could not record it: \(error)")
                }
            }
            print("granted: \(amount)")
            print("balance: \(balance)")
        }

        func openAudit(_ snapshot: PolicySnapshot) throws -> AuditLog? {
            do { return try AuditLog.openForCommand(snapshot) } catch { throw ValidationError("\(error)") }
        }
    }

    struct Balance: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print ACCOUNT's balance (`balance: N`, and `reserved: R` while reservations are held).")
        @Argument(help: "The account.") var account: String
        @Option(help: "The policy file or directory the running instances serve.") var policies: String

        func run() throws {
            let (snapshot, spec) = try CreditsCommand.load(policies)
            switch spec.ledger {
            case .local:
                let a: LocalLedger.Account
                do { a = try LocalLedger.balance(directory: CreditsCommand.directory(spec, policies: policies), account: account) } catch {
                    throw ValidationError("\(error)")
                }
                print("balance: \(a.balance)")
            case .redis:
                let v = try CreditsCommand.redis(snapshot, account: account, id: "-", op: "balance", [])
                print("balance: \(v.first ?? 0)")
                if v.count > 1, v[1] > 0 { print("reserved: \(v[1])") }
            case .accounting:
                let (status, o) = try CreditsCommand.accounting(snapshot, spec, "GET", "/api/credits/balance?userId=" + CreditsCommand.query(account), key: nil, nil)
                guard status == 200 else { throw ValidationError("accounting service: balance answered \(status)") }
                print("balance: \((o["totalCredits"] as? NSNumber)?.int64Value ?? 0)")
            }
        }
    }
}
