import COpenSSL
import Foundation
import Policy

/// Test tokens for the proxy: key pairs made by the `openssl` CLI in a test's directory, a
/// JWKS of their public halves (RSA `n`/`e`, EC `x`/`y`, read back with OpenSSL), and
/// signatures made with OpenSSL (HS* as HMAC; RS256 and ES256 with EVP_DigestSign, ECDSA's
/// DER turned into the JWS `R || S`).
struct TokenMint {
    let dir: String
    let secret: String
    var rsaPrivate: String { dir + "/rsa.pem" }
    var ecPrivate: String { dir + "/ec.pem" }
    var otherECPrivate: String { dir + "/ec-other.pem" }
    var rsaPublic: String { dir + "/rsa.pub.pem" }
    var jwksPath: String { dir + "/jwks.json" }

    /// Makes the keys (RSA 2048, two P-256) and writes `jwks.json` (kids `rsa-1`, `ec-1`).
    init(dir: String, secret: String) throws {
        self.dir = dir
        self.secret = secret
        for (args, what) in [
            (["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", dir + "/rsa.pem"], "rsa"),
            (["pkey", "-in", dir + "/rsa.pem", "-pubout", "-out", dir + "/rsa.pub.pem"], "rsa pub"),
            (["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", dir + "/ec.pem"], "ec"),
            (["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", dir + "/ec-other.pem"], "ec other"),
        ] {
            let (rc, out) = try run("/usr/bin/openssl", args)
            if rc != 0 { throw HarnessError("openssl \(what): \(out)") }
        }
        let rsa = try Self.load(rsaPrivate)
        defer { EVP_PKEY_free(rsa) }
        let ec = try Self.load(ecPrivate)
        defer { EVP_PKEY_free(ec) }
        let jwks = """
        {"keys":[
          {"kty":"RSA","kid":"rsa-1","use":"sig","alg":"RS256","n":"\(Self.bn(rsa, "n", pad: 0))","e":"\(Self.bn(rsa, "e", pad: 0))"},
          {"kty":"EC","kid":"ec-1","crv":"P-256","x":"\(Self.bn(ec, "qx", pad: 32))","y":"\(Self.bn(ec, "qy", pad: 32))"}
        ]}
        """
        writeFile(jwksPath, jwks)
    }

    static func load(_ path: String) throws -> OpaquePointer {
        guard let data = FileManager.default.contents(atPath: path) else { throw HarnessError("cannot read \(path)") }
        let bytes = [UInt8](data)
        let bio = bytes.withUnsafeBytes { BIO_new_mem_buf($0.baseAddress, Int32($0.count)) }
        defer { BIO_free(bio) }
        guard let key = PEM_read_bio_PrivateKey(bio, nil, nil, nil) else { throw HarnessError("\(path) does not load") }
        return key
    }

    /// A key's big-number parameter as base64url (left-padded to `pad` bytes).
    static func bn(_ key: OpaquePointer, _ name: String, pad: Int) -> String {
        var bn: OpaquePointer?
        _ = EVP_PKEY_get_bn_param(key, name, &bn)
        defer { BN_free(bn) }
        let n = max(pad, Int((BN_num_bits(bn) + 7) / 8))
        var out = [UInt8](repeating: 0, count: n)
        _ = out.withUnsafeMutableBufferPointer { BN_bn2binpad(bn, $0.baseAddress, Int32(n)) }
        return Base64URL.encode(out)
    }

    static func segment(_ json: String) -> String { Base64URL.encode(Array(json.utf8)) }

    /// Claims of a valid access token for `consumer` (issuer, audience, type as the fixture
    /// wants), with `extra` members and `exp` in `ttl` seconds.
    static func claims(_ consumer: String, scope: String = "chat finance:read", ttl: Int = 600, extra: String = "",
                       type: String = "access", issuer: String = "https://login.test", audience: String = "tollgate") -> String {
        let now = Int(Date().timeIntervalSince1970)
        return "{\"sub\":\"\(consumer)\",\"scope\":\"\(scope)\",\"type\":\"\(type)\",\"iss\":\"\(issuer)\",\"aud\":\"\(audience)\","
            + "\"iat\":\(now),\"exp\":\(now + ttl)\(extra.isEmpty ? "" : "," + extra)}"
    }

    func hs(_ claims: String, header: String = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}", secret: [UInt8]? = nil) -> String {
        let input = Self.segment(header) + "." + Self.segment(claims)
        let key = secret ?? Array(self.secret.utf8)
        var out = [UInt8](repeating: 0, count: 64)
        var n: UInt32 = 0
        let data = Array(input.utf8)
        let md: OpaquePointer? = header.contains("HS512") ? EVP_sha512() : header.contains("HS384") ? EVP_sha384() : EVP_sha256()
        _ = key.withUnsafeBufferPointer { k in
            data.withUnsafeBufferPointer { d in HMAC(md, k.baseAddress, Int32(k.count), d.baseAddress, d.count, &out, &n) }
        }
        return input + "." + Base64URL.encode(out[0..<Int(n)])
    }

    func rs(_ claims: String, header: String = "{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}") throws -> String {
        try sign(claims, header: header, keyFile: rsaPrivate)
    }

    func es(_ claims: String, header: String = "{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", keyFile: String? = nil) throws -> String {
        try sign(claims, header: header, keyFile: keyFile ?? ecPrivate)
    }

    func sign(_ claims: String, header: String, keyFile: String) throws -> String {
        let input = Self.segment(header) + "." + Self.segment(claims)
        let key = try Self.load(keyFile)
        defer { EVP_PKEY_free(key) }
        let md = EVP_MD_CTX_new()
        defer { EVP_MD_CTX_free(md) }
        guard EVP_DigestSignInit(md, nil, EVP_sha256(), nil, key) == 1 else { throw HarnessError("sign init") }
        let data = Array(input.utf8)
        var len = 0
        _ = data.withUnsafeBufferPointer { EVP_DigestSign(md, nil, &len, $0.baseAddress, $0.count) }
        var sig = [UInt8](repeating: 0, count: len)
        _ = data.withUnsafeBufferPointer { d in sig.withUnsafeMutableBufferPointer { EVP_DigestSign(md, $0.baseAddress, &len, d.baseAddress, d.count) } }
        sig = Array(sig[0..<len])
        if EVP_PKEY_get_base_id(key) == EVP_PKEY_EC {
            sig = try sig.withUnsafeBufferPointer { b -> [UInt8] in
                var p: UnsafePointer<UInt8>? = b.baseAddress
                guard let es = d2i_ECDSA_SIG(nil, &p, b.count) else { throw HarnessError("DER") }
                defer { ECDSA_SIG_free(es) }
                var out = [UInt8](repeating: 0, count: 64)
                out.withUnsafeMutableBufferPointer { o in
                    _ = BN_bn2binpad(ECDSA_SIG_get0_r(es), o.baseAddress, 32)
                    _ = BN_bn2binpad(ECDSA_SIG_get0_s(es), o.baseAddress! + 32, 32)
                }
                return out
            }
        }
        return input + "." + Base64URL.encode(sig)
    }
}
