import Foundation
import Synchronization

/// `clients` connections at once (spread over `ports`), `perClient` requests each on its
/// own keep-alive connection; every answer is counted by status and given to `check`, which
/// returns a complaint or nil. Bounded: it ends when every client has had its answers.
func hammer(ports: [UInt16], clients: Int, perClient: Int, request: String,
            check: @escaping @Sendable (HTTPResponse) -> String? = { _ in nil }) -> (counts: [Int: Int], failures: [String]) {
    let results = Mutex<[Int: Int]>([:])
    let failures = Mutex<[String]>([])
    DispatchQueue.concurrentPerform(iterations: clients) { i in
        do {
            let c = try RawClient(port: ports[i % ports.count])
            defer { c.close() }
            for _ in 0..<perClient {
                let r = try c.request(request)
                results.withLock { $0[r.status, default: 0] += 1 }
                if let complaint = check(r) { failures.withLock { $0.append(complaint) } }
            }
        } catch {
            failures.withLock { $0.append("\(error)") }
        }
    }
    return (results.withLock { $0 }, failures.withLock { $0 })
}
