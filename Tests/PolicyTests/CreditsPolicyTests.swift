import Policy
import Testing

/// `credits:` and route prices: what loads, and what is refused at its file and line.
@Suite struct CreditsPolicyTests {
    func load(_ yaml: String) -> (PolicySnapshot?, [String]) {
        do { return (try PolicyLoader.load(yaml: yaml, file: "p.yaml"), []) } catch {
            return (nil, error.errors.map(\.description))
        }
    }

    static let base = """
    version: 1
    backends:
      up: {url: http://127.0.0.1:7001}

    """

    @Test func pricesAndLedgerCompile() throws {
        let (s, errors) = load(Self.base + """
        credits: {ledger: local, account: key, on_error: open, reservation_ttl: 30s}
        routes:
          - {name: paid, match: {path_prefix: /p/}, backend: up, credits: {per_request: 3, refund_on: [5xx]}}
          - {name: free, match: {path_prefix: /f/}, backend: up}
        """)
        #expect(errors.isEmpty, "\(errors)")
        let snap = try #require(s)
        #expect(snap.credits?.ledger == .local)
        #expect(snap.credits?.account == .key)
        #expect(snap.credits?.onError == .open)
        #expect(snap.credits?.reservationTTL == .seconds(30))
        #expect(snap.routes[0].credits?.perRequest == 3)
        #expect(snap.routes[0].credits?.refundOn == [.serverError])
        #expect(snap.routes[1].credits == nil)
    }

    @Test func perTokenPricesCompile() throws {
        let (s, errors) = load(Self.base + """
        credits: {ledger: local}
        routes:
          - name: chat
            match: {path_prefix: /c/}
            backend: up
            credits: {per_request: 1, per_token: {input: 1, output: 3, per: 1000}, reserve_tokens: 512, stream: openai}
        """)
        #expect(errors.isEmpty, "\(errors)")
        let c = try #require(s?.routes[0].credits)
        #expect(c.perToken == RouteCredits.TokenPrice(input: 1, output: 3, per: 1000))
        #expect(c.reserveTokens == 512)
        #expect(c.stream == .openai)
        #expect(load(Self.base + """
        credits: {ledger: local}
        routes:
          - {name: c, match: {path: /c}, backend: up, credits: {per_request: 1, stream: flowise}}
        """).1 == ["p.yaml:6: routes[0].credits.stream: metering a stream needs per_token (a price per token)"])
        #expect(load(Self.base + """
        credits: {ledger: local}
        routes:
          - {name: c, match: {path: /c}, backend: up, credits: {per_token: {input: 1}}}
        """).1 == ["p.yaml:6: routes[0].credits.per_token.output: missing required field"])
    }

    @Test func refusalsNameFileLineAndKey() {
        #expect(load(Self.base + """
        routes:
          - name: paid
            match: {path_prefix: /p/}
            backend: up
            credits: {per_request: 1}
        """).1 == ["p.yaml:8: routes[0].credits: a route with credits needs the top-level credits block (which ledger to charge)"])
        #expect(load(Self.base + "credits: {ledger: redis}\n").1
                == ["p.yaml:4: credits.ledger: the redis ledger needs store.redis (it keeps balances in the store's Redis)"])
        #expect(load(Self.base + "credits:\n  ledger: accounting\n").1
                == ["p.yaml:5: credits: ledger: accounting needs accounting: {backend, token_env}"])
        #expect(load(Self.base + "credits: {ledger: accounting, accounting: {backend: nope, token_env: T}}\n").1
                == ["p.yaml:4: credits.accounting.backend: unknown backend 'nope'"])
        #expect(load(Self.base + "credits: {ledger: paper}\n").1
                == ["p.yaml:4: credits.ledger: invalid value 'paper' (expected local, redis or accounting)"])
        #expect(load(Self.base + """
        credits: {ledger: local}
        routes:
          - {name: paid, match: {path: /p}, backend: up, credits: {refund_on: [5xx]}}
        """).1 == ["p.yaml:6: routes[0].credits: needs per_request or per_token (a price)"])
        #expect(load(Self.base + """
        credits: {ledger: local}
        routes:
          - {name: paid, match: {path: /p}, backend: up, credits: {per_request: 1, refund_on: [sometimes]}}
        """).1 == ["p.yaml:6: routes[0].credits.refund_on[0]: invalid value 'sometimes' (expected 5xx, 4xx or unavailable)"])
        #expect(load(Self.base + """
        credits: {ledger: local}
        routes:
          - {name: paid, match: {path: /p}, backend: up, auth: none, credits: {per_request: 1}}
        """).1 == ["p.yaml:6: routes[0].credits: a route with auth: none has nobody to charge"])
    }
}
