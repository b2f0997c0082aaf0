import Foundation

/// Endpoints that exist for tests of the proxy: what identity reached the
/// backend, byte-exact body echo, slow answers and streamed events.
extension FinanceBackend {
    /// `GET /api/finance/whoami`: the identity headers as the backend saw them.
    static func whoami(_ request: ReferenceRequest) -> ReferenceResponse {
        let scopes = request.header(TollgateHeader.scopes)
        let scopeList = scopes.map { text in
            text.split(whereSeparator: { $0 == " " || $0 == "," }).map { JSONValue.string(String($0)) }
        } ?? []
        return .json(200, [
            "consumer": .string(request.consumer),
            "keyId": .optional(request.header(TollgateHeader.keyID)),
            "consumerHeader": .optional(request.header(TollgateHeader.consumer)),
            "scopes": .optional(scopes),
            "scopeList": .array(scopeList),
            "forwardedFor": .optional(request.header("X-Forwarded-For")),
            "forwardedProto": .optional(request.header("X-Forwarded-Proto")),
            "forwardedHost": .optional(request.header("X-Forwarded-Host")),
            "requestId": .optional(request.header("X-Request-Id")),
            "traceparent": .optional(request.header("traceparent")),
            "host": .optional(request.header("Host")),
            "sawApiKey": .bool(request.hasHeader("X-API-Key")),
            "sawAuthorization": .bool(request.hasHeader("Authorization")),
        ])
    }

    /// `/api/finance/echo` (any method): what arrived, with the body's length and SHA-256.
    static func echo(_ request: ReferenceRequest) -> ReferenceResponse {
        .json(200, [
            "method": .string(request.method),
            "path": .string(request.path),
            "query": .string(request.rawQuery),
            "headers": .array(request.headers.map { ["name": .string($0.name), "value": .string($0.value)] }),
            "bodyLength": .number(request.body.count),
            "bodySha256": .string(ReferenceCrypto.hex(ReferenceCrypto.sha256(request.body))),
        ])
    }

    /// `GET /api/finance/slow?ms=N`: answers after N milliseconds (at most 60 000).
    static func slow(_ request: ReferenceRequest) -> ReferenceResponse {
        let milliseconds = min(max(Int(request.query("ms") ?? "") ?? 0, 0), 60_000)
        request.stopSignal.sleep(for: .milliseconds(milliseconds))
        return .json(200, ["sleptMs": .number(milliseconds)])
    }

    /// `GET /api/finance/stream?events=N&interval_ms=M`: N server-sent events,
    /// one chunk each, M milliseconds apart.
    static func stream(_ request: ReferenceRequest) throws(ReferenceHTTPError) -> ReferenceResponse {
        guard let events = Int(request.query("events") ?? "5"), (0...10_000).contains(events),
              let interval = Int(request.query("interval_ms") ?? "10"), (0...60_000).contains(interval) else {
            throw .message(400, "events must be 0...10000 and interval_ms 0...60000")
        }
        return .eventStream { writer in
            for sequence in 1...max(events, 1) where events > 0 {
                if sequence > 1 {
                    guard request.stopSignal.sleep(for: .milliseconds(interval)) else { return }
                }
                let data: JSONValue = ["seq": .number(sequence), "of": .number(events)]
                try writer.write("id: \(sequence)\nevent: tick\ndata: \(data.serialized())\n\n")
            }
        }
    }
}
