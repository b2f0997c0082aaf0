import ArgumentParser
import Foundation
import Glibc
import Policy

/// `tollgate dashboard link`: asks the running instance's admin listener for a one-time
/// sign-in link to its dashboard (`POST /v1/dashboard/links`) and prints it. The admin
/// token is read from `TOLLGATE_ADMIN_TOKEN` or standard input, never from an argument.
struct DashboardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dashboard",
        abstract: "The dashboard on the admin listener.",
        subcommands: [Link.self])

    struct Link: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a one-time sign-in link (valid 60 s, once) to the dashboard of a running instance.",
            discussion: "The admin token (or admin JWT) is read from TOLLGATE_ADMIN_TOKEN, else from the first line of standard input.")

        @Option(help: "The policy file or directory the running instance serves (for admin.address).")
        var policies: String
        @Option(help: "Where the link leads, such as \"/?window=1h\".")
        var path: String = "/"
        @Option(help: "The admin listener as HOST:PORT, when not the policy's admin.address (a proxy in front of it, say).")
        var admin: String?

        func run() throws {
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
            let body = (try? JSONSerialization.data(withJSONObject: ["path": path])) ?? Data()
            let client = BlockingHTTPClient(host: host, port: port, timeout: .seconds(5))
            guard let answer = client.request("POST", "/v1/dashboard/links",
                                              headers: [("Authorization", "Bearer " + token), ("Content-Type", "application/json")],
                                              body: Array(body)) else {
                throw KeysError("no answer from the admin listener at \(host):\(port)")
            }
            let o = (try? JSONSerialization.jsonObject(with: Data(answer.body))) as? [String: Any] ?? [:]
            guard answer.status == 201, let url = o["url"] as? String else {
                let message = ((o["error"] as? [String: Any])?["message"] as? String) ?? "status \(answer.status)"
                throw KeysError("the admin listener refused: \(message)")
            }
            let authority = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            print("http://\(authority)\(url)")
            print("valid once, until \(o["expires"] as? String ?? "60 s from now")")
        }
    }
}
