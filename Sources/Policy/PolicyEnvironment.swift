import Foundation

/// What compiling a policy may read besides its own files: environment variables
/// (`credentials.jwt.secret_env`) and the files a policy names for key material
/// (`credentials.jwt.keys_file`). Read once per load (start, `check`, every reload); tests
/// give their own instead of touching the process environment.
public struct PolicyEnvironment: Sendable {
    /// A variable's bytes as they are (a secret need not be UTF-8); nil when it is not set.
    public var variable: @Sendable (String) -> [UInt8]?
    public var file: @Sendable (String) -> [UInt8]?
    /// Webhook signing secrets may be missing (commands other than `serve` and `check`: they
    /// never sign, so `tollgate keys list` works without WEBHOOK_SECRET set). `serve` and
    /// `check` always require them.
    public var webhookSecretsOptional = false

    public init(variable: @escaping @Sendable (String) -> [UInt8]?, file: @escaping @Sendable (String) -> [UInt8]?) {
        self.variable = variable
        self.file = file
    }

    /// The process environment for commands that never deliver a webhook themselves.
    public static var tools: PolicyEnvironment {
        var e = PolicyEnvironment.process
        e.webhookSecretsOptional = true
        return e
    }

    /// The process environment and the file system.
    public static let process = PolicyEnvironment(
        variable: { name in
            guard let p = getenv(name) else { return nil }
            return [UInt8](UnsafeRawBufferPointer(start: p, count: strlen(p)))
        },
        file: { path in FileManager.default.contents(atPath: path).map { [UInt8]($0) } })

    /// These variables and files only (tests).
    public static func fixed(variables: [String: String] = [:], files: [String: [UInt8]] = [:]) -> PolicyEnvironment {
        PolicyEnvironment(variable: { variables[$0].map { Array($0.utf8) } }, file: { files[$0] })
    }
}
