// Writes the raw bytes of every case table in Tests/RuntimeTests to a directory, one file
// per case: the seed corpus of the libFuzzer targets is the repository's own test cases.
// Built and run by `Fuzz/tools/seed-corpus.sh` (compiled with the test files, which is
// why it reaches their `validRequests`, `chunkedRejections`, … tables).

import Glibc

@main
struct DumpSeeds {
    static func main() {
        let out = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "seeds"
        var written = 0
        func dump(_ kind: String, _ name: String, _ raw: [UInt8]) {
            mkdir(out + "/" + kind, 0o755)
            let safe = String(name.map { $0.isLetter || $0.isNumber ? $0 : "-" })
            let path = out + "/" + kind + "/" + safe
            guard let f = fopen(path, "wb") else { return }
            raw.withUnsafeBytes { _ = fwrite($0.baseAddress, 1, $0.count, f) }
            fclose(f)
            written += 1
        }
        mkdir(out, 0o755)
        for c in validRequests + requestLineRejections + fieldRejections + smugglingRejections + limitCases
            + incompleteRequests { dump("request", c.name, c.raw) }
        for c in validResponses + responseRejections + incompleteResponses { dump("response", c.name, c.raw) }
        for c in validChunkedBodies + chunkedRejections { dump("chunked", c.name, c.raw) }
        print("wrote \(written) seeds to \(out)")
    }
}
