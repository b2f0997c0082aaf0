/// Credit arithmetic (POLICY.md "Credits"): integers, rounded up once per request.
public enum CreditMath {
    /// ceil(tokens × price / per), computed exactly in 128 bits; saturates at `Int64.max`,
    /// never negative (a negative `tokens` or `price` charges 0); `per` below 1 is taken as 1.
    public static func tokenCharge(tokens: Int64, price: Int64, per: Int64) -> Int64 {
        guard tokens > 0, price > 0 else { return 0 }
        let divisor = UInt64(max(per, 1))
        let product = UInt64(tokens).multipliedFullWidth(by: UInt64(price))
        // The quotient fits 64 bits only when the high half is below the divisor.
        guard product.high < divisor else { return .max }
        let (q, r) = divisor.dividingFullWidth(product)
        // Saturate before rounding up, so q + 1 cannot wrap.
        guard q < UInt64(Int64.max) else { return .max }
        return Int64(q) + (r == 0 ? 0 : 1)
    }

    /// ceil(bytes / 4): the input-token estimate when the backend sends no usage figure
    /// (0 for a negative count).
    public static func inputEstimate(bodyBytes: Int64) -> Int64 {
        guard bodyBytes > 0 else { return 0 }
        return bodyBytes / 4 + (bodyBytes % 4 == 0 ? 0 : 1)
    }
}
