import COpenSSL
import Glibc
import Policy
import Synchronization

/// The dashboard's browser sessions and one-time sign-in links, in memory (a restart signs
/// everyone out). Each is named by 256 random bits given to the browser once (the cookie,
/// or the link's last segment) and kept only as its SHA-256, so a memory dump or a log line
/// of this table signs nobody in.
///
/// - A session lasts `sessionLifetime` from sign-in, or until the credential it was opened
///   with ends first (a JWT's `exp`; a bootstrap token leaving `admin.tokens_file` is checked
///   by the caller at each use). At most `maximumSessions`: a new one replaces the one
///   closest to its end.
/// - A link works once, within `linkLifetime`, and opens a session for the credential that
///   asked for it. At most `maximumLinks` wait at a time (the oldest goes first).
final class DashboardSessions: Sendable {
    struct Session {
        var credential: AdminCredential
        /// Wall-clock seconds.
        var expires: Int64
    }

    struct Link {
        var credential: AdminCredential
        var expires: Int64
        /// Where the session starts (a dashboard path, checked when the link was made).
        var path: String
    }

    static let sessionLifetime: Int64 = 12 * 3600
    static let linkLifetime: Int64 = 60
    static let maximumSessions = 1024
    static let maximumLinks = 256
    static let cookieName = "tg_session"

    private struct State {
        var sessions: [KeyHash: Session] = [:]
        var links: [KeyHash: Link] = [:]
    }
    private let state = Mutex(State())

    /// 256 bits from OpenSSL's CSPRNG as 43 base64url characters.
    static func randomName() -> String {
        var bytes = [UInt8](repeating: 0, count: 32)
        let rc = bytes.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32($0.count)) }
        precondition(rc == 1, "RAND_bytes failed: no entropy")
        return Base64URL.encode(bytes)
    }

    /// A name as the browser could have it (43 base64url characters); anything else is not
    /// looked up at all.
    static func isWellFormed(_ name: String) -> Bool {
        name.utf8.count == 43 && name.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2D || b == 0x5F
        }
    }

    // MARK: sessions

    /// Opens a session; returns the cookie value (shown to this browser only) and its
    /// lifetime in seconds.
    func open(_ credential: AdminCredential, now: Int64) -> (cookie: String, maxAge: Int64) {
        let name = Self.randomName()
        let expires = min(now + Self.sessionLifetime, credential.expiresAt ?? Int64.max)
        state.withLock { s in
            if s.sessions.count >= Self.maximumSessions {
                s.sessions = s.sessions.filter { $0.value.expires > now }
                if s.sessions.count >= Self.maximumSessions,
                   let soonest = s.sessions.min(by: { $0.value.expires < $1.value.expires })?.key {
                    s.sessions[soonest] = nil
                }
            }
            s.sessions[KeyHash.sha256(name)] = Session(credential: credential, expires: expires)
        }
        return (name, max(0, expires - now))
    }

    /// The credential of a live session, or nil (an ended one is forgotten).
    func session(_ cookie: String, now: Int64) -> AdminCredential? {
        guard Self.isWellFormed(cookie) else { return nil }
        let h = KeyHash.sha256(cookie)
        return state.withLock { s in
            guard let x = s.sessions[h] else { return nil }
            guard x.expires > now else {
                s.sessions[h] = nil
                return nil
            }
            return x.credential
        }
    }

    func close(_ cookie: String) {
        guard Self.isWellFormed(cookie) else { return }
        let h = KeyHash.sha256(cookie)
        state.withLock { s in s.sessions[h] = nil }
    }

    var sessionCount: Int { state.withLock { $0.sessions.count } }

    // MARK: one-time links

    /// A link for `credential`: the name for `/login/<name>`, valid `linkLifetime` once.
    func mintLink(_ credential: AdminCredential, path: String, now: Int64) -> (name: String, expires: Int64) {
        let name = Self.randomName()
        let expires = min(now + Self.linkLifetime, credential.expiresAt ?? Int64.max)
        state.withLock { s in
            s.links = s.links.filter { $0.value.expires > now }
            if s.links.count >= Self.maximumLinks, let oldest = s.links.min(by: { $0.value.expires < $1.value.expires })?.key {
                s.links[oldest] = nil
            }
            s.links[KeyHash.sha256(name)] = Link(credential: credential, expires: expires, path: path)
        }
        return (name, expires)
    }

    /// The link's credential and path, once: it is gone after this call whatever it answers.
    func redeem(_ name: String, now: Int64) -> Link? {
        guard Self.isWellFormed(name) else { return nil }
        let h = KeyHash.sha256(name)
        return state.withLock { s in
            guard let link = s.links.removeValue(forKey: h), link.expires > now else { return nil }
            return link
        }
    }
}
