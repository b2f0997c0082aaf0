// The one symbol KeyHash.swift needs from Policy's Decision.swift (whose own dependencies
// would pull in half the module): the fuzz build compiles the parsing files alone.
enum ErrorBody {
    @inline(__always) static func hexDigit(_ v: UInt8) -> UInt8 {
        v < 10 ? UInt8(ascii: "0") + v : UInt8(ascii: "a") + v - 10
    }
}
