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
            let client = try AdminClient(policies: policies, admin: admin)
            let (status, o) = try client.call("POST", "/v1/dashboard/links", json: ["path": path])
            guard status == 201, let url = o["url"] as? String else {
                throw KeysError("the admin listener refused: \(AdminClient.message(o, status: status))")
            }
            print("http://\(client.authority)\(url)")
            print("valid once, until \(o["expires"] as? String ?? "60 s from now")")
        }
    }
}
