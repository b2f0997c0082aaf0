/// A protocol-agnostic, owned description of one request, for ``Authorizer/decide``
/// (tests and tools; the proxy passes the same facts as borrowed bytes, piece by piece).
public struct RequestFacts: Sendable {
    public var method: MethodSet
    /// The normalised path.
    public var path: [UInt8]
    public var peer: IPAddress
    public var forwardedFor: [UInt8]?
    public var isHTTPS: Bool
    /// The presented key, if any.
    public var credential: [UInt8]?

    public init(method: MethodSet, path: String, peer: IPAddress, forwardedFor: String? = nil, isHTTPS: Bool = false,
                 credential: String? = nil) {
        self.method = method
        self.path = Array(path.utf8)
        self.peer = peer
        self.forwardedFor = forwardedFor.map { Array($0.utf8) }
        self.isHTTPS = isHTTPS
        self.credential = credential.map { Array($0.utf8) }
    }
}
