import ArgumentParser
import Foundation
import Glibc

/// `tollgate audit …`: check an audit log offline, make a signing key.
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Verify the signed audit trail; make its Ed25519 signing key.",
        subcommands: [Verify.self, Keygen.self])

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check an audit log's hash chain and checkpoints; exit 0 with \"ok: N entries, M checkpoints\", "
                + "else name the first bad line and exit 1.")
        @Argument(help: "The audit log (audit.path).") var path: String
        @Option(help: "The Ed25519 public key (PEM) that signs the checkpoints; without it signatures are not checked.")
        var publicKey: String?
        @Option(help: "The latest checkpoint file (default: PATH.head).") var head: String?

        func run() throws {
            var key: AuditKey?
            if let pk = publicKey {
                do { key = try AuditKey.loadPublic(path: pk) } catch {
                    printError("--public-key: \(error)")
                    throw ExitCode(2)
                }
            }
            let headPath = head ?? path + ".head"
            let report: AuditVerifier.Report
            do {
                report = try AuditVerifier(path: path, headPath: headPath, publicKey: key).run()
            } catch {
                if let line = error.line { printError("\(path):\(line): \(error.reason)") } else {
                    printError("\(error.reason.hasPrefix("cannot read") ? path : headPath): \(error.reason)")
                }
                throw ExitCode(1)
            }
            print("ok: \(report.entries) entries, \(report.checkpoints) checkpoints")
            if let key {
                print("signatures: \(report.verified) verified with \(key.fingerprint)")
            } else if report.unchecked > 0 {
                print("signatures: \(report.unchecked) not checked (no --public-key); signed by \(report.fingerprints.joined(separator: ", "))")
            }
            if report.unsigned > 0 { print("unsigned: \(report.unsigned) checkpoint(s) written without audit.signing_key") }
            if report.uncovered > 0 {
                print("uncovered: \(report.uncovered) entr\(report.uncovered == 1 ? "y" : "ies") after the last checkpoint "
                      + "(a cut among them shows only once a checkpoint covers them)")
            }
        }
    }

    struct Keygen: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an Ed25519 key: the private PEM (mode 0600) for audit.signing_key, the public PEM for verify.")
        @Argument(help: "Where to write the private key (refused if it exists).") var out: String
        @Option(help: "Where to write the public key (default: OUT with .pem replaced by .pub.pem).")
        var publicOut: String?

        func run() throws {
            let pubPath = publicOut ?? (out.hasSuffix(".pem") ? String(out.dropLast(4)) : out) + ".pub.pem"
            let key: AuditKey
            do { key = try AuditKey.generate() } catch {
                printError("\(error)")
                throw ExitCode(1)
            }
            guard let priv = key.privatePEM(), let pub = key.publicPEM() else {
                printError("cannot encode the key as PEM (\(AuditKey.opensslError()))")
                throw ExitCode(1)
            }
            let fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                printError("\(out): cannot create: \(String(cString: strerror(errno)))")
                throw ExitCode(1)
            }
            do {
                try AuditLog.writeAll(fd, Array(priv.utf8), path: out)
                if fsync(fd) != 0 { throw AuditError.errno(out, "cannot fsync") }
            } catch {
                close(fd)
                printError("\(error)")
                throw ExitCode(1)
            }
            close(fd)
            guard FileManager.default.createFile(atPath: pubPath, contents: Data(pub.utf8)) else {
                printError("\(pubPath): cannot write the public key")
                throw ExitCode(1)
            }
            print("private key: \(out)")
            print("public key: \(pubPath)")
            print("fingerprint: \(key.fingerprint)")
        }
    }
}

func printError(_ s: String) {
    FileHandle.standardError.write(Data((s + "\n").utf8))
}
