import Backends
import Policy
import Testing

struct RedisURLTests {
    struct Case: Sendable, CustomStringConvertible {
        var text: String
        var expected: RedisURL
        var description: String { text }
    }

    static let valid: [Case] = [
        Case(text: "redis://127.0.0.1:6379/0", expected: RedisURL(endpoint: .tcp(host: "127.0.0.1", port: 6379))),
        Case(text: "redis://localhost", expected: RedisURL(endpoint: .tcp(host: "localhost", port: 6379))),
        Case(text: "redis://10.0.0.5:7000", expected: RedisURL(endpoint: .tcp(host: "10.0.0.5", port: 7000))),
        Case(text: "redis://h:6380/3", expected: RedisURL(endpoint: .tcp(host: "h", port: 6380), database: 3)),
        Case(text: "redis://h/", expected: RedisURL(endpoint: .tcp(host: "h", port: 6379))),
        Case(text: "redis://:secret@h:1/2",
             expected: RedisURL(endpoint: .tcp(host: "h", port: 1), password: "secret", database: 2)),
        Case(text: "redis://alice:p%40ss%3Aword@h",
             expected: RedisURL(endpoint: .tcp(host: "h", port: 6379), username: "alice", password: "p@ss:word")),
        Case(text: "redis://alice@h", expected: RedisURL(endpoint: .tcp(host: "h", port: 6379), username: "alice")),
        Case(text: "redis://[::1]:6390/1", expected: RedisURL(endpoint: .tcp(host: "::1", port: 6390), database: 1)),
        Case(text: "redis://[::1]", expected: RedisURL(endpoint: .tcp(host: "::1", port: 6379))),
        Case(text: "  REDIS://h:1  ", expected: RedisURL(endpoint: .tcp(host: "h", port: 1))),
        Case(text: "unix:///run/redis.sock", expected: RedisURL(endpoint: .unix(path: "/run/redis.sock"))),
        Case(text: "unix:/run/redis.sock", expected: RedisURL(endpoint: .unix(path: "/run/redis.sock"))),
        Case(text: "unix:///tmp/r.sock?db=4", expected: RedisURL(endpoint: .unix(path: "/tmp/r.sock"), database: 4)),
        Case(text: "redis+unix:///tmp/r.sock", expected: RedisURL(endpoint: .unix(path: "/tmp/r.sock"))),
        Case(text: "redis+unix://u:pw@/tmp/r.sock?db=2",
             expected: RedisURL(endpoint: .unix(path: "/tmp/r.sock"), username: "u", password: "pw", database: 2)),
    ]

    @Test(arguments: valid)
    func parsesValidURLs(_ c: Case) throws {
        #expect(try RedisURL(parsing: c.text) == c.expected)
    }

    static let invalid: [(String, RedisURLError)] = [
        ("", .empty),
        ("127.0.0.1:6379", .unsupportedScheme("127.0.0.1")),
        ("localhost", .missingScheme("localhost")),
        ("http://h", .unsupportedScheme("http")),
        ("rediss://h:6379", .tlsUnsupported("rediss://h:6379")),
        ("redis:h:6379", .missingSlashes("redis:h:6379")),
        ("redis://", .missingHost("redis://")),
        ("redis://:6379", .missingHost("redis://:6379")),
        ("redis://h:0", .badPort("0")),
        ("redis://h:70000", .badPort("70000")),
        ("redis://h:abc", .badPort("abc")),
        ("redis://h:1/x", .badDatabase("x")),
        ("redis://h:1/-1", .badDatabase("-1")),
        ("redis://[::1", .badHost("redis://[::1")),
        ("redis://u:%zz@h", .badUserInfo("redis://u:%zz@h")),
        ("unix://", .badSocketPath("unix://")),
        ("unix://relative.sock", .badSocketPath("unix://relative.sock")),
        ("unix:///tmp/r.sock?timeout=1", .unexpectedQuery("unix:///tmp/r.sock?timeout=1")),
        ("unix:///tmp/r.sock?db=x", .badDatabase("x")),
        ("redis://h?x=1", .unexpectedQuery("redis://h?x=1")),
    ]

    @Test(arguments: invalid)
    func refusesInvalidURLs(_ text: String, _ expected: RedisURLError) {
        #expect(throws: expected) { try RedisURL(parsing: text) }
    }

    @Test func descriptionHidesPassword() throws {
        let u = try RedisURL(parsing: "redis://alice:hunter2@h:1/2")
        #expect(u.description == "redis://alice:***@h:1/2")
        #expect(!RedisURLError.badPort("x").description.isEmpty)
        let e = RedisURLError.badUserInfo("redis://u:hunter2%zz@h")
        #expect(!e.description.contains("hunter2"))
    }
}

struct RedisRESPWriterTests {
    @Test func formatsBinarySafeArguments() {
        let w = RESPWriter(capacity: 64)
        w.arrayHeader(3)
        w.bulk("SET")
        w.bulk([0x00, 0x0D, 0x0A, 0xFF])
        w.bulk(decimal: -42)
        let text = Array(w.formatted)
        #expect(text == Array("*3\r\n$3\r\nSET\r\n$4\r\n".utf8) + [0x00, 0x0D, 0x0A, 0xFF] + Array("\r\n$3\r\n-42\r\n".utf8))
    }

    @Test func formatsEveryWidthOfDecimal() {
        var values: [Int] = [0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, -1, -10, -99, -100, Int.max, Int.min, 1_763_800_000_123_456]
        var p = 1
        for _ in 0..<18 { values += [p - 1, p, p + 1]; p *= 10 }
        let w = RESPWriter(capacity: 64)
        for v in values {
            w.reset()
            w.bulk(decimal: v)
            let d = String(v)
            #expect(String(decoding: Array(w.formatted), as: UTF8.self) == "$\(d.utf8.count)\r\n\(d)\r\n", "\(v)")
        }
    }

    @Test func formatsHashTaggedKeysAndGrows() throws {
        let h = KeyHash.sha256("tg_live_example")
        let w = RESPWriter(capacity: 64)
        w.arrayHeader(2)
        w.bulk("GET")
        w.bulkKey(h, suffix: RedisKeys.recordSuffix)
        w.bulkKey(h, suffix: RedisKeys.limiterSuffix, index: 12)
        let key = RedisKeys.record(h)
        let rl = RedisKeys.limiter(h, window: 12)
        #expect(String(decoding: Array(w.formatted), as: UTF8.self)
            == "*2\r\n$3\r\nGET\r\n$\(key.utf8.count)\r\n\(key)\r\n$\(rl.utf8.count)\r\n\(rl)\r\n")
        #expect(key == "tg:{\(h.hex)}:key")
        w.reset()
        let big = [UInt8](repeating: 0x61, count: 10_000)
        w.bulk(big)
        #expect(w.count == 10_000 + 10)   // $10000\r\n … \r\n
    }

    @Test func scriptSHAsAreSHA1() {
        // SHA-1 of "abc" is the classic test vector.
        #expect(String(decoding: RedisScripts.sha1Hex("abc"), as: UTF8.self) == "a9993e364706816aba3e25717850c26c9cd0d89d")
        #expect(RedisScripts.limiterSHA.count == 40)
        #expect(RedisScripts.limiterSHA != RedisScripts.heartbeatSHA)
    }
}
