import Foundation

/// `security:`: brute-force lock-out per client network, automatic disabling of keys that
/// look leaked or abused, and signed webhooks for security and account events.
///
/// ```yaml
/// security:
///   lockout: {invalid_keys: 20, per: 1m, for: 10m}     # per client IP (IPv6: per /64)
///   auto_disable:
///     - {refusals: 50, per: 10m}                       # a valid key refused (scope, IP, HTTPS)
///     - {networks: 5, per: 1h}                         # used from more than 5 /24 (IPv6 /48)
///   webhooks:
///     - {url: http://127.0.0.1:9000/hooks, secret_env: WEBHOOK_SECRET,
///        events: [lockout, auto_disable, credits_exhausted, store_degraded]}
/// ```
public struct SecuritySpec: Sendable, Equatable {
    public var lockout: LockoutSpec?
    /// `auto_disable` `{refusals, per}`: nil when not set.
    public var refusalRule: RefusalRule?
    /// `auto_disable` `{networks, per}`: nil when not set.
    public var networkRule: NetworkRule?
    public var webhooks: [WebhookSpec]
    /// `webhook_spool`: the directory events wait in until delivered (resolved against the
    /// policy file); nil: `webhooks` under the state directory.
    public var webhookSpool: String?

    public init(lockout: LockoutSpec? = nil, refusalRule: RefusalRule? = nil, networkRule: NetworkRule? = nil,
                webhooks: [WebhookSpec] = [], webhookSpool: String? = nil) {
        self.lockout = lockout; self.refusalRule = refusalRule; self.networkRule = networkRule
        self.webhooks = webhooks; self.webhookSpool = webhookSpool
    }

    public struct LockoutSpec: Sendable, Equatable {
        /// Credential refusals (`INVALID_KEY`, `INVALID_TOKEN`, `REVOKED`, `EXPIRED`) allowed
        /// in `per` before the address is locked out.
        public var invalidKeys: Int
        public var per: Duration
        /// How long the lock-out lasts.
        public var banFor: Duration
        /// Addresses (networks) tracked at once, per process: the table never grows past it.
        public var maxTracked: Int
        public init(invalidKeys: Int, per: Duration, banFor: Duration, maxTracked: Int = 65_536) {
            self.invalidKeys = invalidKeys; self.per = per; self.banFor = banFor; self.maxTracked = maxTracked
        }
    }

    public struct RefusalRule: Sendable, Equatable {
        public var refusals: Int
        public var per: Duration
        public init(refusals: Int, per: Duration) { self.refusals = refusals; self.per = per }
    }

    public struct NetworkRule: Sendable, Equatable {
        public var networks: Int
        public var per: Duration
        public init(networks: Int, per: Duration) { self.networks = networks; self.per = per }
    }
}

/// The events a webhook can subscribe to (`events:`); the raw value is the wire `type`.
public enum WebhookEventType: String, Sendable, CaseIterable, Hashable {
    case lockout
    case autoDisable = "auto_disable"
    case creditsExhausted = "credits_exhausted"
    case quotaExhausted = "quota_exhausted"
    case storeDegraded = "store_degraded"
    case keyRotated = "key_rotated"
    case keyRevoked = "key_revoked"
}

/// One `security.webhooks` entry.
public struct WebhookSpec: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    public var isIPv6: Bool
    /// The request path (`/` when the URL has none).
    public var path: String
    /// `https://`: TLS, the certificate verified against the system's CAs or `caFile`.
    public var isTLS: Bool
    /// `ca_file`: the CA (PEM) that signs the endpoint's certificate, resolved against the
    /// policy file; nil: the system's CA store.
    public var caFile: String?
    /// The URL as written (logs, the dashboard): it carries no secret.
    public var url: String
    /// The signing secrets: one, or several while a secret rotates (each signs; the
    /// `webhook-signature` header lists them all).
    public var secrets: WebhookSecrets
    public var events: Set<WebhookEventType>
    /// Only events about these consumers (events with no consumer, such as `lockout` or
    /// `store_degraded`, always go); nil: every consumer.
    public var consumers: Set<String>?
    /// Per attempt.
    public var timeout: Duration
    /// Attempts before the dead-letter file (the first included).
    public var tries: Int
    /// Wait before the second attempt; each later wait doubles.
    public var firstRetry: Duration
    /// A stable name for this endpoint (its spool and dead-letter records): from the URL.
    public var id: String

    public init(host: String, port: UInt16, isIPv6: Bool = false, path: String = "/", isTLS: Bool = false,
                caFile: String? = nil, url: String,
                secrets: WebhookSecrets, events: Set<WebhookEventType>, consumers: Set<String>? = nil,
                timeout: Duration = .seconds(5), tries: Int = 8, firstRetry: Duration = .seconds(1), id: String) {
        self.host = host; self.port = port; self.isIPv6 = isIPv6; self.path = path; self.url = url
        self.isTLS = isTLS; self.caFile = caFile
        self.secrets = secrets; self.events = events; self.consumers = consumers
        self.timeout = timeout; self.tries = tries; self.firstRetry = firstRetry; self.id = id
    }

    /// Whether an event of `type` about `consumer` goes to this endpoint.
    public func wants(_ type: WebhookEventType, consumer: String?) -> Bool {
        guard events.contains(type) else { return false }
        guard let consumers, let consumer else { return true }
        return consumers.contains(consumer)
    }
}

/// Webhook signing secrets. Never printed: `description` names only how many there are.
public struct WebhookSecrets: Sendable, Equatable, CustomStringConvertible {
    public let keys: [[UInt8]]
    public init(_ keys: [[UInt8]]) { self.keys = keys }
    public var description: String { "<\(keys.count) webhook secret(s)>" }

    /// Whitespace-separated secrets, each `whsec_<base64>` (Standard Webhooks) or raw bytes;
    /// nil when a `whsec_` one is not base64 or none is given.
    public static func parse(_ raw: [UInt8]) -> WebhookSecrets? {
        var out: [[UInt8]] = []
        for token in raw.split(whereSeparator: { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }) {
            let bytes = Array(token)
            if bytes.starts(with: Array("whsec_".utf8)) {
                guard let d = Data(base64Encoded: Data(bytes.dropFirst(6))), !d.isEmpty else { return nil }
                out.append([UInt8](d))
            } else {
                out.append(bytes)
            }
        }
        return out.isEmpty ? nil : WebhookSecrets(out)
    }
}
