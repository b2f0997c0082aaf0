import ArgumentParser
import Foundation
import Glibc
import Policy

/// A running instance's admin listener, for commands that act through it (`dashboard link`,
/// `security bans|unban`): its address from the policy (or `--admin HOST:PORT`), the admin
/// token from `TOLLGATE_ADMIN_TOKEN` or the first line of standard input (never an argument).
struct AdminClient {
    let host: String
    let port: UInt16
    let token: String

    init(policies: String, admin: String?) throws {
        let snapshot: PolicySnapshot
        do { snapshot = try PolicyLoader.load(path: policies, environment: .tools) } catch {
            throw ValidationError(error.errors.map(\.description).joined(separator: "\n"))
        }
        var host = snapshot.admin?.host ?? ""
        var port = snapshot.admin?.port ?? 0
        if let admin {
            guard let colon = admin.lastIndex(of: ":"), let p = UInt16(admin[admin.index(after: colon)...]) else {
                throw ValidationError("--admin: HOST:PORT")
            }
            host = String(admin[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
            port = p
        }
        guard port != 0 else { throw ValidationError("\(policies) has no admin listener (admin.address), and no --admin was given") }
        if host == "0.0.0.0" { host = "127.0.0.1" } else if host == "::" { host = "::1" }
        var token = ProcessInfo.processInfo.environment["TOLLGATE_ADMIN_TOKEN"] ?? ""
        if token.isEmpty { token = readLine(strippingNewline: true) ?? "" }
        token = token.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else { throw ValidationError("no admin token: set TOLLGATE_ADMIN_TOKEN or pipe it to standard input") }
        self.host = host
        self.port = port
        self.token = token
    }

    var authority: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// One call: the status and the JSON object answered; throws when no answer came.
    func call(_ method: String, _ path: String, json: [String: Any]? = nil) throws -> (Int, [String: Any]) {
        let body = json.flatMap { try? JSONSerialization.data(withJSONObject: $0) }.map { Array($0) } ?? []
        let client = BlockingHTTPClient(host: host, port: port, timeout: .seconds(5))
        var headers = [("Authorization", "Bearer " + token)]
        if json != nil { headers.append(("Content-Type", "application/json")) }
        guard let answer = client.request(method, path, headers: headers, body: body) else {
            throw KeysError("no answer from the admin listener at \(authority)")
        }
        return (answer.status, (try? JSONSerialization.jsonObject(with: Data(answer.body))) as? [String: Any] ?? [:])
    }

    /// The message of a refusal.
    static func message(_ o: [String: Any], status: Int) -> String {
        ((o["error"] as? [String: Any])?["message"] as? String) ?? "status \(status)"
    }
}

/// `tollgate security bans|unban`: the lock-outs a running instance holds, and lifting one
/// (everywhere, with Redis).
struct SecurityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "security",
        abstract: "Lock-outs of a running instance (through its admin listener).",
        discussion: "The admin token is read from TOLLGATE_ADMIN_TOKEN, else from the first line of standard input.",
        subcommands: [Bans.self, Unban.self])

    struct Target: ParsableArguments {
        @Option(help: "The policy file or directory the running instance serves (for admin.address).")
        var policies: String
        @Option(help: "The admin listener as HOST:PORT, when not the policy's admin.address.")
        var admin: String?
    }

    struct Bans: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the networks locked out now, and until when.")
        @OptionGroup var target: Target

        func run() throws {
            let client = try AdminClient(policies: target.policies, admin: target.admin)
            let (status, o) = try client.call("GET", "/v1/security/bans")
            guard status == 200 else { throw KeysError("the admin listener refused: \(AdminClient.message(o, status: status))") }
            let bans = o["bans"] as? [[String: Any]] ?? []
            if bans.isEmpty { print("no lock-out in force (\(o["tracked"] as? Int ?? 0) network(s) tracked)"); return }
            for b in bans { print("\(b["network"] as? String ?? "?")  until \(b["until"] as? String ?? "?")") }
        }
    }

    struct Unban: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Lift a lock-out: an IPv4 address, or an IPv6 address or /64.")
        @Argument(help: "The network (203.0.113.7, 2001:db8:1:2::/64).") var network: String
        @OptionGroup var target: Target

        func run() throws {
            guard SecurityAPI.network(network) != nil else { throw ValidationError("not an IPv4 address, IPv6 address or /64: \(network)") }
            let client = try AdminClient(policies: target.policies, admin: target.admin)
            let query = network.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: ".:-"))) ?? network
            let (status, o) = try client.call("DELETE", "/v1/security/bans?network=" + query)
            guard status == 200 else { throw KeysError("the admin listener refused: \(AdminClient.message(o, status: status))") }
            print("\(o["network"] as? String ?? network): \((o["lifted"] as? Bool) == true ? "lifted" : "was not locked out")")
        }
    }
}
