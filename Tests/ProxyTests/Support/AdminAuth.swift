import Foundation
import Policy

/// The admin API's bootstrap token the tests use (`admin.tokens_file` holds its hash).
enum AdminAuth {
    static let token = "tollgate-test-admin-token-0123456789"
    static var tokensFileLine: String { KeyHash.sha256(token).description }
    static var header: [String: String] { ["Authorization": "Bearer " + token] }
}

/// GET on the admin listener with the admin token.
func adminGet(_ port: UInt16, _ path: String) throws -> HTTPResponse {
    try get(port, path, headers: AdminAuth.header)
}
