/// The outcome of the gate for one request, and the stable wire codes of every refusal.
///
/// A denial is data, not an error (STYLE.md 2.5): the proxy turns a ``Denial`` into a
/// local reply (status, `WWW-Authenticate` when ``DenialCode/challengesClient``,
/// `Retry-After` + RateLimit headers when ``Denial/limit`` is set, and the JSON body).
public enum DenialCode: String, CaseIterable, Sendable {
    case missingCredential = "MISSING_CREDENTIAL"
    case invalidKey = "INVALID_KEY"
    case expired = "EXPIRED"
    case revoked = "REVOKED"
    case disabled = "DISABLED"
    case ipDenied = "IP_DENIED"
    case insufficientScope = "INSUFFICIENT_SCOPE"
    case httpsRequired = "HTTPS_REQUIRED"
    case lockedOut = "LOCKED_OUT"
    case rateLimited = "RATE_LIMITED"
    case quotaExceeded = "QUOTA_EXCEEDED"
    case insufficientCredits = "INSUFFICIENT_CREDITS"
    case noRoute = "NO_ROUTE"
    case badRequest = "BAD_REQUEST"
    case storeUnavailable = "STORE_UNAVAILABLE"
    /// 502 by default; the proxy may answer 503/504 for the same code (DESIGN.md).
    case upstreamUnavailable = "UPSTREAM_UNAVAILABLE"
    /// A JWT that does not verify (signature, key, algorithm, issuer, audience, claims). An
    /// expired one is `EXPIRED`.
    case invalidToken = "INVALID_TOKEN"

    /// The HTTP status of the local reply.
    public var status: Int {
        switch self {
        case .missingCredential, .invalidKey, .invalidToken, .expired, .revoked: return 401
        case .disabled, .ipDenied, .insufficientScope, .httpsRequired: return 403
        case .lockedOut, .rateLimited, .quotaExceeded: return 429
        case .insufficientCredits: return 402
        case .noRoute: return 404
        case .badRequest: return 400
        case .storeUnavailable: return 503
        case .upstreamUnavailable: return 502
        }
    }

    /// Short human text for the JSON body.
    public var defaultMessage: String {
        switch self {
        case .missingCredential: return "An API key is required."
        case .invalidKey: return "The API key is not valid."
        case .expired: return "The API key has expired."
        case .revoked: return "The API key has been revoked."
        case .disabled: return "The API key is disabled."
        case .ipDenied: return "Requests from this address are not allowed."
        case .insufficientScope: return "The API key lacks a scope this route requires."
        case .httpsRequired: return "This route requires HTTPS."
        case .lockedOut: return "Too many failed attempts; try again later."
        case .rateLimited: return "Rate limit exceeded."
        case .quotaExceeded: return "Quota exceeded."
        case .insufficientCredits: return "Not enough credits."
        case .noRoute: return "No route matches this request."
        case .badRequest: return "The request is malformed."
        case .storeUnavailable: return "The key store is unavailable."
        case .upstreamUnavailable: return "The upstream service is unavailable."
        case .invalidToken: return "The token is not valid."
        }
    }

    /// True for the 401s: the reply carries `WWW-Authenticate`.
    public var challengesClient: Bool { status == 401 }
}

/// Why a request is refused, with what the reply needs beyond the code.
public struct Denial: Sendable, Equatable {
    public var code: DenialCode
    /// `Retry-After` in whole seconds (429s).
    public var retryAfterSeconds: Int?
    /// The limiter window that refused (for the `RateLimit` header).
    public var limit: LimitReport?

    public init(_ code: DenialCode, retryAfterSeconds: Int? = nil, limit: LimitReport? = nil) {
        self.code = code
        self.retryAfterSeconds = retryAfterSeconds
        self.limit = limit
    }
}

public enum Decision: Sendable, Equatable {
    case allow
    case deny(Denial)

    public static func deny(_ code: DenialCode) -> Decision { .deny(Denial(code)) }

    /// The denial code, or nil when allowed (convenient in tests and logs).
    public var denialCode: DenialCode? {
        switch self {
        case .allow: return nil
        case .deny(let d): return d.code
        }
    }
}
