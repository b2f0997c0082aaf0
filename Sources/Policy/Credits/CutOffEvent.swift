/// The event a stream ends with when its credits run out (POLICY.md "Cut-off events").
public enum CutOffEvent {
    /// The exact bytes, with `message` JSON-escaped:
    /// - flowise: `message:\ndata:{"event":"error","data":"INSUFFICIENT_CREDITS: <message>"}\n\n`
    /// - openai: `data: {"error":{"code":"INSUFFICIENT_CREDITS","message":"<message>"}}\n\n`
    ///   then `data: [DONE]\n\n`
    public static func bytes(_ dialect: StreamDialect, message: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(message.utf8.count + 96)
        switch dialect {
        case .flowise:
            out += #"message:\#ndata:{"event":"error","data":"INSUFFICIENT_CREDITS: "#.utf8
            appendEscaped(message, to: &out)
            out += "\"}\n\n".utf8
        case .openai:
            out += #"data: {"error":{"code":"INSUFFICIENT_CREDITS","message":""#.utf8
            appendEscaped(message, to: &out)
            out += "\"}}\n\ndata: [DONE]\n\n".utf8
        }
        return out
    }

    /// Appends `text` escaped for the inside of a JSON string: `"`, `\` and the control
    /// characters (so no CR or LF can end an SSE line early); the rest as UTF-8.
    static func appendEscaped(_ text: String, to out: inout [UInt8]) {
        let hex: StaticString = "0123456789abcdef"
        for b in text.utf8 {
            switch b {
            case UInt8(ascii: "\""): out += [0x5C, 0x22]
            case UInt8(ascii: "\\"): out += [0x5C, 0x5C]
            case 0x0A: out += [0x5C, UInt8(ascii: "n")]
            case 0x0D: out += [0x5C, UInt8(ascii: "r")]
            case 0x09: out += [0x5C, UInt8(ascii: "t")]
            case 0x08: out += [0x5C, UInt8(ascii: "b")]
            case 0x0C: out += [0x5C, UInt8(ascii: "f")]
            case 0..<0x20, 0x7F:
                out += [0x5C, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")]
                hex.withUTF8Buffer { h in
                    out.append(h[Int(b >> 4)])
                    out.append(h[Int(b & 15)])
                }
            default: out.append(b)
            }
        }
    }
}
