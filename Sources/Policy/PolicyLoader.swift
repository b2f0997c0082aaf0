import Foundation

/// Reads policy files (the only I/O in Policy) and compiles them.
///
/// `load(path:)` takes a directory (every `*.yaml` in it, not recursive, hidden files
/// skipped, in byte-wise file-name order) or a single file. Every file must say
/// `version: 1`. Errors name the file as `PATH/NAME` for a directory, `PATH` otherwise.
public enum PolicyLoader {
    public static func load(path: String, environment: PolicyEnvironment = .process) throws(PolicyLoadError) -> PolicySnapshot {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw PolicyLoadError(errors: [PolicyError(file: path, line: 1, keyPath: "", reason: "no such file or directory")])
        }
        var files: [(name: String, yaml: String)] = []
        var sources: [PolicySource] = []
        var errors: [PolicyError] = []
        var paths: [String] = []
        if isDir.boolValue {
            let names: [String]
            do {
                names = try FileManager.default.contentsOfDirectory(atPath: path)
            } catch {
                throw PolicyLoadError(errors: [PolicyError(file: path, line: 1, keyPath: "", reason: "cannot list directory")])
            }
            let yamls = names.filter { $0.hasSuffix(".yaml") && !$0.hasPrefix(".") }
                .sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
            guard !yamls.isEmpty else {
                throw PolicyLoadError(errors: [PolicyError(file: path, line: 1, keyPath: "", reason: "no *.yaml files")])
            }
            let base = path.hasSuffix("/") ? String(path.dropLast()) : path
            paths = yamls.map { base + "/" + $0 }
        } else {
            paths = [path]
        }
        for p in paths {
            guard let data = FileManager.default.contents(atPath: p) else {
                errors.append(PolicyError(file: p, line: 1, keyPath: "", reason: "cannot read file"))
                continue
            }
            guard let text = String(data: data, encoding: .utf8) else {
                errors.append(PolicyError(file: p, line: 1, keyPath: "", reason: "not UTF-8"))
                continue
            }
            files.append((p, text))
            sources.append(PolicySource(file: p, sha256: data.withUnsafeBytes { KeyHash.sha256($0).hex }))
        }
        guard errors.isEmpty else { throw PolicyLoadError(errors: errors) }
        return try load(files: files, sources: sources, environment: environment)
    }

    /// One file's text, no I/O (tests, `check` on stdin).
    public static func load(yaml: String, file: String, environment: PolicyEnvironment = .process) throws(PolicyLoadError) -> PolicySnapshot {
        try load(files: [(file, yaml)], environment: environment)
    }

    /// Several files' texts, merged in the given order, no I/O.
    /// ``PolicySnapshot/sources`` hold the SHA-256 of each text's UTF-8 bytes.
    public static func load(files: [(name: String, yaml: String)], environment: PolicyEnvironment = .process) throws(PolicyLoadError) -> PolicySnapshot {
        try load(files: files, sources: files.map { f in
            var y = f.yaml
            return PolicySource(file: f.name, sha256: y.withUTF8 { KeyHash.sha256(UnsafeRawBufferPointer($0)).hex })
        }, environment: environment)
    }

    static func load(files: [(name: String, yaml: String)], sources: [PolicySource],
                     environment: PolicyEnvironment) throws(PolicyLoadError) -> PolicySnapshot {
        var errors: [PolicyError] = []
        var docs: [PolicyDocument] = []
        for f in files {
            docs.append(PolicyDocument.read(yaml: f.yaml, file: f.name, errors: &errors))
        }
        let snapshot = PolicyCompiler.compile(docs, sources: sources, environment: environment, errors: &errors)
        if let snapshot, errors.isEmpty { return snapshot }
        // File order, then line; stable otherwise.
        let order = Dictionary(files.enumerated().map { ($0.element.name, $0.offset) }, uniquingKeysWith: { a, _ in a })
        let sorted = errors.enumerated().sorted { a, b in
            let fa = order[a.element.file] ?? 0, fb = order[b.element.file] ?? 0
            if fa != fb { return fa < fb }
            if a.element.line != b.element.line { return a.element.line < b.element.line }
            return a.offset < b.offset
        }.map(\.element)
        throw PolicyLoadError(errors: sorted)
    }
}
