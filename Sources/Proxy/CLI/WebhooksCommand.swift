import ArgumentParser
import Foundation
import Glibc
import Policy

/// `tollgate webhooks verify`: checks a delivery the way a receiver should (for people
/// writing their own receiver): the Standard Webhooks signature against the secret(s), and
/// the timestamp within a tolerance. Prints `ok: <type> <id>`, or the reason and exits 1.
struct WebhooksCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "webhooks", abstract: "Webhook tools.", subcommands: [Verify.self])

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify a webhook delivery: prints 'ok: <type> <id>', or why not (exit 1).")

        @Option(help: "An environment variable holding the secret(s): whsec_<base64> or raw, whitespace-separated when several.")
        var secretEnv: String?
        @Option(help: "A file holding the secret(s) (as --secret-env).")
        var secretFile: String?
        @Option(help: "The webhook-id header.") var id: String?
        @Option(help: "The webhook-timestamp header (unix seconds).") var timestamp: String?
        @Option(help: "The webhook-signature header.") var signature: String?
        @Option(help: "A file holding the raw request header block (webhook-* headers are read from it).")
        var headers: String?
        @Option(help: "The request body, as received (default: standard input).") var body: String?
        @Option(help: "How far the timestamp may be from now (e.g. 5m, 30s).") var tolerance: String = "5m"

        func run() throws {
            let secrets = try readSecrets()
            guard let tol = parsePolicyDuration(tolerance) else { throw ValidationError("--tolerance: not a duration: \(tolerance)") }
            var fields: [String: String] = [:]
            if let headers {
                guard let raw = FileManager.default.contents(atPath: headers) else { throw fail("cannot read \(headers)") }
                fields = Self.headerFields(String(decoding: raw, as: UTF8.self))
            }
            let id = self.id ?? fields["webhook-id"] ?? ""
            let ts = timestamp ?? fields["webhook-timestamp"] ?? ""
            let sig = signature ?? fields["webhook-signature"] ?? ""
            if ts.isEmpty { throw fail("missing webhook-timestamp (--timestamp or --headers)") }
            let bytes: [UInt8]
            if let body {
                guard let d = FileManager.default.contents(atPath: body) else { throw fail("cannot read \(body)") }
                bytes = [UInt8](d)
            } else {
                bytes = [UInt8](FileHandle.standardInput.readDataToEndOfFile())
            }
            if let why = WebhookSignature.verify(id: id, timestamp: ts, signature: sig, body: bytes, secrets: secrets,
                                                 tolerance: tol.components.seconds, now: wallClockSecondsNow()) {
                throw fail(why.description)
            }
            let type = ((try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any])?["type"] as? String ?? "-"
            print("ok: \(type) \(id)")
        }

        private func readSecrets() throws -> WebhookSecrets {
            let raw: [UInt8]
            switch (secretEnv, secretFile) {
            case (let name?, nil):
                guard let v = getenv(name) else { throw fail("environment variable \(name) is not set") }
                raw = Array(String(cString: v).utf8)
            case (nil, let f?):
                guard let d = FileManager.default.contents(atPath: f) else { throw fail("cannot read \(f)") }
                raw = [UInt8](d)
            default:
                throw ValidationError("give --secret-env NAME or --secret-file FILE (one of them)")
            }
            // Never echoes the secret.
            guard let s = WebhookSecrets.parse(raw) else { throw fail("the secret is empty or a whsec_ value is not base64") }
            return s
        }

        private func fail(_ why: String) -> ExitCode {
            FileHandle.standardError.write(Data("webhooks verify: \(why)\n".utf8))
            return ExitCode(1)
        }

        /// `Name: value` lines up to the first blank line (a request line, without a colon
        /// before its first space, is skipped); names lower-cased.
        static func headerFields(_ text: String) -> [String: String] {
            var out: [String: String] = [:]
            // "\r\n" is one Character: split on both line ends.
            for l in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
                if l.isEmpty { if !out.isEmpty { break } else { continue } }
                guard let colon = l.firstIndex(of: ":"), !l[..<colon].contains(" ") else { continue }
                out[l[..<colon].lowercased()] = l[l.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            return out
        }

        private func wallClockSecondsNow() -> Int64 { Int64(time(nil)) }
    }
}
