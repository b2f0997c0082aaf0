import Testing
@testable import Policy

struct DecisionTests {
    static let statuses: [DenialCode: Int] = [
        .missingCredential: 401, .invalidKey: 401, .expired: 401, .revoked: 401, .disabled: 403, .ipDenied: 403,
        .insufficientScope: 403, .httpsRequired: 403, .lockedOut: 429, .rateLimited: 429, .quotaExceeded: 429,
        .insufficientCredits: 402, .noRoute: 404, .badRequest: 400, .storeUnavailable: 503,
        .upstreamUnavailable: 502, .invalidToken: 401,
    ]

    @Test(arguments: DenialCode.allCases)
    func everyCodeHasItsStatusAndBody(_ code: DenialCode) {
        #expect(code.status == Self.statuses[code])
        #expect(code.challengesClient == (code.status == 401))
        #expect(!code.defaultMessage.isEmpty)
    }

    @Test func allSeventeenCodesAreStable() {
        #expect(DenialCode.allCases.map(\.rawValue) == [
            "MISSING_CREDENTIAL", "INVALID_KEY", "EXPIRED", "REVOKED", "DISABLED", "IP_DENIED", "INSUFFICIENT_SCOPE",
            "HTTPS_REQUIRED", "LOCKED_OUT", "RATE_LIMITED", "QUOTA_EXCEEDED", "INSUFFICIENT_CREDITS", "NO_ROUTE",
            "BAD_REQUEST", "STORE_UNAVAILABLE", "UPSTREAM_UNAVAILABLE", "INVALID_TOKEN",
        ])
    }
}
