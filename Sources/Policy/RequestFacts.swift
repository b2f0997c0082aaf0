/// A protocol-agnostic, owned description of one request, for ``Authorizer/decide``
/// (tests and tools; the proxy passes the same facts as borrowed bytes, piece by piece).
package struct RequestFacts: Sendable {
    package var method: MethodSet
    /// The normalised path.
    package var path: [UInt8]
    package var peer: IPAddress
    package var forwardedFor: [UInt8]?
    package var isHTTPS: Bool
    /// The presented key, if any.
    package var credential: [UInt8]?

    package init(method: MethodSet, path: String, peer: IPAddress, forwardedFor: String? = nil, isHTTPS: Bool = false,
                 credential: String? = nil) {
        self.method = method
        self.path = Array(path.utf8)
        self.peer = peer
        self.forwardedFor = forwardedFor.map { Array($0.utf8) }
        self.isHTTPS = isHTTPS
        self.credential = credential.map { Array($0.utf8) }
    }
}
