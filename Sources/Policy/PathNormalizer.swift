/// Canonicalises a request path once, before route matching (bytes in, bytes out).
///
/// Rules, in the order they apply to each segment:
/// - the path must start with `/` (origin-form; the query is cut off by the caller);
/// - `%XX` of an unreserved character (ALPHA / DIGIT / `-` `.` `_` `~`) is decoded;
///   any other escape stays encoded with uppercase hex (`%2f` → `%2F`);
/// - refused: encoded `/` (`%2F`) and `\` (`%5C`), `%00`, bad or short escapes, raw NUL,
///   raw `\`, and bytes outside RFC 3986 `pchar` (controls, space, non-ASCII, `"`, `<`…);
/// - refused: any segment containing a raw `;`. Matrix/path parameters are interpreted
///   differently by different servers (`/admin;x` is `/admin` to some), so rather than
///   guess we reject them; an encoded `%3B` stays encoded and is just a byte of the name;
/// - empty segments collapse (`//a` → `/a`);
/// - `.` and `..` segments (also when spelled `%2e`) are resolved; a `..` that would climb
///   above the root is refused rather than clamped;
/// - a trailing slash is kept (`/a/./b/` → `/a/b/`; `/a/b/..` → `/a/`).
///
/// The route table matches on the output; the proxy forwards the normalised path too,
/// so the backend sees exactly what was authorised.
public enum PathNormalizer {
    public enum Rejection: Sendable, Equatable {
        case notAbsolute, badEscape, encodedSlash, encodedBackslash, nul, backslash, pathParameter,
             aboveRoot, invalidByte
    }

    /// - Parameters:
    ///   - input: the raw path, without the query.
    ///   - out: capacity must be at least `input.count` (the output never grows).
    public static func normalize(_ input: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> NormalizeResult {
        let n = input.count
        guard n > 0, input[0] == UInt8(ascii: "/") else { return .rejected(.notAbsolute) }
        precondition(out.count >= n, "PathNormalizer: output buffer too small")
        out[0] = UInt8(ascii: "/")
        var o = 1
        var i = 1
        while i <= n {
            // One segment: input[i..<end], written decoded at out[segStart...].
            let segStart = o
            while i < n, input[i] != UInt8(ascii: "/") {
                let c = input[i]
                if c == UInt8(ascii: "%") {
                    guard i + 2 < n else { return .rejected(.badEscape) }
                    guard let h = hexValue(input[i + 1]), let l = hexValue(input[i + 2]) else { return .rejected(.badEscape) }
                    let v = h << 4 | l
                    switch v {
                    case UInt8(ascii: "/"): return .rejected(.encodedSlash)
                    case UInt8(ascii: "\\"): return .rejected(.encodedBackslash)
                    case 0: return .rejected(.nul)
                    default: break
                    }
                    if isUnreserved(v) {
                        out[o] = v; o += 1
                    } else {
                        out[o] = UInt8(ascii: "%"); out[o + 1] = upperHex(h); out[o + 2] = upperHex(l); o += 3
                    }
                    i += 3
                    continue
                }
                switch c {
                case 0: return .rejected(.nul)
                case UInt8(ascii: "\\"): return .rejected(.backslash)
                case UInt8(ascii: ";"): return .rejected(.pathParameter)
                default: break
                }
                guard isPathByte(c) else { return .rejected(.invalidByte) }
                out[o] = c; o += 1
                i += 1
            }
            let hasSlashAfter = i < n
            let len = o - segStart
            if len == 1, out[segStart] == UInt8(ascii: ".") {
                o = segStart
            } else if len == 2, out[segStart] == UInt8(ascii: "."), out[segStart + 1] == UInt8(ascii: ".") {
                if segStart == 1 { return .rejected(.aboveRoot) }
                // Drop the previous segment: back to just after the slash before it.
                var p = segStart - 1  // the '/' ending the previous segment
                while p > 0, out[p - 1] != UInt8(ascii: "/") { p -= 1 }
                o = p
            } else if len > 0, hasSlashAfter {
                out[o] = UInt8(ascii: "/"); o += 1
            }
            i += 1  // past the '/' (or past the end)
        }
        return .normalized(count: o)
    }

    /// Convenience for tests, the CLI and the compiler.
    public static func normalize(_ path: String) -> NormalizeResult {
        let bytes = Array(path.utf8)
        var out = [UInt8](repeating: 0, count: max(bytes.count, 1))
        return bytes.withUnsafeBytes { inp in out.withUnsafeMutableBytes { normalize(inp, into: $0) } }
    }

    /// The normalised text, or nil when rejected.
    public static func normalizedString(_ path: String) -> String? {
        let bytes = Array(path.utf8)
        var out = [UInt8](repeating: 0, count: max(bytes.count, 1))
        let r = bytes.withUnsafeBytes { inp in out.withUnsafeMutableBytes { normalize(inp, into: $0) } }
        guard case .normalized(let c) = r else { return nil }
        return String(decoding: out[0..<c], as: UTF8.self)
    }

    @inline(__always) static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    @inline(__always) static func upperHex(_ v: UInt8) -> UInt8 {
        v < 10 ? UInt8(ascii: "0") + v : UInt8(ascii: "A") + v - 10
    }

    @inline(__always) static func isUnreserved(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "_"), UInt8(ascii: "~"):
            return true
        default: return false
        }
    }

    /// RFC 3986 pchar minus `%` (handled above) and `;` (refused above).
    @inline(__always) static func isPathByte(_ c: UInt8) -> Bool {
        if isUnreserved(c) { return true }
        switch c {
        case UInt8(ascii: "!"), UInt8(ascii: "$"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "("),
             UInt8(ascii: ")"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: ","), UInt8(ascii: "="),
             UInt8(ascii: ":"), UInt8(ascii: "@"):
            return true
        default: return false
        }
    }
}

/// What ``PathNormalizer/normalize(_:into:)`` did.
public enum NormalizeResult: Sendable, Equatable {
    /// The first `count` bytes of the output buffer hold the normalised path.
    case normalized(count: Int)
    /// Reply 400 `BAD_REQUEST`.
    case rejected(PathNormalizer.Rejection)
}
