import COpenSSL
import Foundation
import Policy

/// Signs test tokens: HS* with OpenSSL's HMAC; RS*, PS*, ES256, ES384 and EdDSA with a PEM
/// private key (EVP_DigestSign; ECDSA's DER signature turned into the JWS R || S). Test keys only.
enum JWTMint {
    /// base64url of a JSON text's UTF-8 bytes.
    static func segment(_ json: String) -> String { Base64URL.encode(Array(json.utf8)) }

    static func hmac(_ alg: String, secret: [UInt8], _ input: String) -> [UInt8] {
        let md: OpaquePointer? = alg == "HS384" ? EVP_sha384() : alg == "HS512" ? EVP_sha512() : EVP_sha256()
        var out = [UInt8](repeating: 0, count: 64)
        var n: UInt32 = 0
        let data = Array(input.utf8)
        _ = secret.withUnsafeBufferPointer { k in
            data.withUnsafeBufferPointer { d in HMAC(md, k.baseAddress, Int32(k.count), d.baseAddress, d.count, &out, &n) }
        }
        return Array(out[0..<Int(n)])
    }

    /// A signed token: `header` and `payload` are JSON texts, used as they are.
    static func hs(_ header: String, _ payload: String, secret: [UInt8], alg: String = "HS256") -> String {
        let input = segment(header) + "." + segment(payload)
        return input + "." + Base64URL.encode(hmac(alg, secret: secret, input))
    }

    static func hs(_ payload: String, secret: String, alg: String = "HS256", kid: String? = nil) -> String {
        let header = kid.map { "{\"alg\":\"\(alg)\",\"typ\":\"JWT\",\"kid\":\"\($0)\"}" } ?? "{\"alg\":\"\(alg)\",\"typ\":\"JWT\"}"
        return hs(header, payload, secret: Array(secret.utf8), alg: alg)
    }

    /// RS*, PS*, ES256/384 or EdDSA with a PEM private key, under `alg` (by default the
    /// header's own `alg`).
    static func sign(_ header: String, _ payload: String, privateKeyPEM pem: String, alg: String? = nil, pssSalt: Int32? = nil) -> String {
        let input = segment(header) + "." + segment(payload)
        let name = alg ?? ((try? JSONSerialization.jsonObject(with: Data(header.utf8))) as? [String: Any])?["alg"] as? String ?? "RS256"
        return input + "." + Base64URL.encode(signature(Array(input.utf8), pem: pem, alg: name, pssSalt: pssSalt))
    }

    /// EVP_DigestSign: SHA-256/384/512 by the algorithm's digits (none for EdDSA), PSS padding
    /// for PS* (MGF1 with the same hash, salt of the hash's length unless `pssSalt` says
    /// otherwise); ECDSA's DER turned into R || S of the curve's size.
    static func signature(_ data: [UInt8], pem: String, alg: String = "RS256", pssSalt: Int32? = nil) -> [UInt8] {
        let bytes = Array(pem.utf8)
        let bio = bytes.withUnsafeBytes { BIO_new_mem_buf($0.baseAddress, Int32($0.count)) }
        defer { BIO_free(bio) }
        guard let key = PEM_read_bio_PrivateKey(bio, nil, nil, nil) else { fatalError("test key does not load") }
        defer { EVP_PKEY_free(key) }
        let md = EVP_MD_CTX_new()
        defer { EVP_MD_CTX_free(md) }
        let digest: OpaquePointer? = alg == "EdDSA" ? nil : alg.hasSuffix("384") ? EVP_sha384() : alg.hasSuffix("512") ? EVP_sha512() : EVP_sha256()
        var pctx: OpaquePointer?
        guard EVP_DigestSignInit(md, &pctx, digest, nil, key) == 1 else { fatalError("sign init") }
        if alg.hasPrefix("PS") {
            guard EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0,
                  EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, digest) > 0,
                  EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, pssSalt ?? RSA_PSS_SALTLEN_DIGEST) > 0 else { fatalError("PSS") }
        }
        var len = 0
        _ = data.withUnsafeBufferPointer { EVP_DigestSign(md, nil, &len, $0.baseAddress, $0.count) }
        var sig = [UInt8](repeating: 0, count: len)
        _ = data.withUnsafeBufferPointer { d in sig.withUnsafeMutableBufferPointer { EVP_DigestSign(md, $0.baseAddress, &len, d.baseAddress, d.count) } }
        sig = Array(sig[0..<len])
        guard EVP_PKEY_get_base_id(key) == EVP_PKEY_EC else { return sig }
        // DER ECDSA-Sig-Value → R || S, each as long as the curve's order (32 or 48 bytes).
        let half = Int32((EVP_PKEY_get_bits(key) + 7) / 8)
        return sig.withUnsafeBufferPointer { b -> [UInt8] in
            var p: UnsafePointer<UInt8>? = b.baseAddress
            guard let es = d2i_ECDSA_SIG(nil, &p, b.count) else { fatalError("DER") }
            defer { ECDSA_SIG_free(es) }
            var out = [UInt8](repeating: 0, count: Int(2 * half))
            out.withUnsafeMutableBufferPointer { o in
                _ = BN_bn2binpad(ECDSA_SIG_get0_r(es), o.baseAddress, half)
                _ = BN_bn2binpad(ECDSA_SIG_get0_s(es), o.baseAddress! + Int(half), half)
            }
            return out
        }
    }

    // Test keys, made with `openssl genpkey` for these tests and used nowhere else.
    static let rsaPrivate = """
    -----BEGIN PRIVATE KEY-----
    MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCCGbsneY4zcYi3
    6PINvk6V4eyQraD+ibO7gCu36Dzo736vskDp9RyZM83ROlTtRnFHgQpC4OIjQ799
    9rjX3n8mGzWXQYEZfXRdVSHy89+VsQClIRSFO1NPtIabngNPTwzLinNAgCqqKUAP
    xV2RjuaaTS8p2YWrDuvXM7X1nNeiOrJmIU+tiWLZODWoFoPPm1FBrY3GIakQmzVY
    pSBqtDBMmt2t8eL9KR339ExAmy4joxLkVtyUmSGbXPs5miA4KThVRU+wZEA2sWax
    IrZUdRvjf2Uc8tM7wPYDtHioyZWIZcjCMaxsOVFKEHKUqScHScXwUzBhhK+oWEFp
    EkuYDlGXAgMBAAECggEANwBe1Yz3t7rvZGTodDP48DeftfiZoBKiOAozMWBO4+Fg
    SzIObHpyGTjD8gj5n4hQ2rxslKKTJ/p7yeqU8bpAQeFt8iDAzgByQgT8QcSlSRkY
    HzeRf9P5YDB/WenfF1fhnmlNWT72CpM+4Iv9h0yFJEWuQ0CRWKSJwyS67/fbV9tj
    gV04pFsYxDxexmqUVRvYQDhC/pXStkuj1OZFa86ys+Z5gPFk4752lT6OlU+0JFwR
    c+yri7IWbsU7TOf6cy54DLGx8pTGFj7r6cAioiVWm6tpRuANC6LObuL5euZtDKEp
    OnOeKLg3hjhlvTCaJ8woQkF1Qs7mY+wGMtyKsKNQ7QKBgQC3zTcZ9hLZALIpyMmy
    iK7euhkEout0kMfP+P2PnwI4uLl5Bm99jlGt8z/QmSr84l3xFcQiD8h1d1cPLaD3
    VvzltGGoBSY3/N1EI0OIWVjpXwReQk4VfOD/yc8pecpg4Kmtjh0UKyqGb/U2lEs7
    bh7f3G1KkkLEVPfNbBeu/SF2IwKBgQC1NGv1WPYyoQ1APYOcfSUtBfcoitwf2PQP
    0qRL4W41JULRS6wWW7d6oNYZQvjk8r/CMvh/6G+6bAgCc6ih4HB31dSe4k8WSw0o
    CCBmMCV2YOOX0o0WmPhmdFoDP4lupKM2D+53T7tJSLvw5ngtJn2bg5qnan86PTPH
    KRZMTRu7/QKBgEqwGk7zXm9NyBgQnl1tC1o4Vwg6R+GDH57UN/0PiTCRZ9TVF6L2
    nRxJd0oFo6FFPxVDWgLZVQTerMLfMMSxVWzmIrTK+t/PYf5ZMg0K+YVDdhvzZ5V1
    vFxUnljlQ6agRHLhB9H1RH+CqSs3kWah9evTv5mI25a6TEPuQ6V4+QrvAoGBAIuH
    chnaBrm1iZ6Nv2ogcx/YGBj/08AyLryAVkKXs2T47Bp9SmVs+jtS3YlWKJEi2sWO
    ugrD0EScKw64QIFlcTTVUoOFf6CK6faJS2lkaXRd5uJhHoLoB13c+fLGWez4mTRn
    0BfPLUeg2hcFYERj/xRgohWHy6/ssJIK8UCPn2uBAoGAM0qxJgFu8bRFnGPAtbAk
    wOCEAQOhGAExCzYHfXgbEZQ9U9pBMpKrZova6mLYtG8WoT2ochOpIRgw3xqNvMuM
    qyxvzY9/Xk374HWg9InDlL8ZnoU2pMMeyDmP7+LMMRi1pRTq0GY6DCkV4DXuFQ08
    tc07M49biSw4YFd/+Cpq0kg=
    -----END PRIVATE KEY-----
    """
    static let rsaPublic = """
    -----BEGIN PUBLIC KEY-----
    MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAghm7J3mOM3GIt+jyDb5O
    leHskK2g/omzu4Art+g86O9+r7JA6fUcmTPN0TpU7UZxR4EKQuDiI0O/ffa4195/
    Jhs1l0GBGX10XVUh8vPflbEApSEUhTtTT7SGm54DT08My4pzQIAqqilAD8VdkY7m
    mk0vKdmFqw7r1zO19ZzXojqyZiFPrYli2Tg1qBaDz5tRQa2NxiGpEJs1WKUgarQw
    TJrdrfHi/Skd9/RMQJsuI6MS5FbclJkhm1z7OZogOCk4VUVPsGRANrFmsSK2VHUb
    439lHPLTO8D2A7R4qMmViGXIwjGsbDlRShBylKknB0nF8FMwYYSvqFhBaRJLmA5R
    lwIDAQAB
    -----END PUBLIC KEY-----
    """
    static let ecPrivate = """
    -----BEGIN PRIVATE KEY-----
    MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQglpbESYPT4TTWTAXf
    LK+fxdojhdXdkDv4hByz0wfdYaKhRANCAASoQQgj3MYpPkblccjzkcAR4lCL3WIN
    Cel8JzEXzLbfd11Ot/bQDl5Se00xU+nu73kXFBSIg1QvNfCHfbjCH80U
    -----END PRIVATE KEY-----
    """
    static let ecPublic = """
    -----BEGIN PUBLIC KEY-----
    MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqEEII9zGKT5G5XHI85HAEeJQi91i
    DQnpfCcxF8y233ddTrf20A5eUntNMVPp7u95FxQUiINULzXwh324wh/NFA==
    -----END PUBLIC KEY-----
    """
    static let ecOtherPrivate = """
    -----BEGIN PRIVATE KEY-----
    MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgEZ0jv+zTfFRLyK/h
    y7XXeVKS21BcmxGQioI5OO3X3OOhRANCAARODwIIwQQMzL7lLGliw+urERLlT+ur
    x6UXvW3BTBFYvewk3SFkoPI8ugTy/p8g2ldU8dPyKQZC2CdXbN7ih7XL
    -----END PRIVATE KEY-----
    """
    static let rsa1024Public = """
    -----BEGIN PUBLIC KEY-----
    MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCcd86fSwviGscSotsF1H01YtDS
    5AsZgaqQJB1vwKySF8EO5IPb6bQjKra/gLiI+0YfaU2anNO3K/bqeCARX4Mf6iA6
    HwseojRMXIuT98q+Bdfoeu4CfFWTehuL1DrxbEmkf9kxk7gYR7qZyafUxfvgLwTK
    A46aUxpBHdKuoLpl4wIDAQAB
    -----END PUBLIC KEY-----
    """
    // P-384 and Ed25519 test keys, made with `openssl genpkey` (OpenSSL 3.0) for these tests.
    static let p384Private = """
    -----BEGIN PRIVATE KEY-----
    MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDBVFgOSu/+QuNd3qRu5
    4+Yvn2g81Sq4PsYJx6gFr4FrKZhyHaoyN5sF5k0hk/TsVjmhZANiAAS6VHdK/x2n
    WUhajZIrF/wraHptTYzeloDTrNtgWOWa1NknCo93k+21Wt9pQVOl/Pbbcn7sy3+5
    fULdIAMHaBL4W8DtxPxmpsb8Tc5gMybg54+ugQpN8qTL9oDnTjEUIfk=
    -----END PRIVATE KEY-----
    """
    static let p384Public = """
    -----BEGIN PUBLIC KEY-----
    MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEulR3Sv8dp1lIWo2SKxf8K2h6bU2M3paA
    06zbYFjlmtTZJwqPd5PttVrfaUFTpfz223J+7Mt/uX1C3SADB2gS+FvA7cT8ZqbG
    /E3OYDMm4OeProEKTfKky/aA504xFCH5
    -----END PUBLIC KEY-----
    """
    /// p384Public as a JWK (`x`, `y`: 48 bytes each).
    static let p384JWK = #"{"kty":"EC","crv":"P-384","x":"ulR3Sv8dp1lIWo2SKxf8K2h6bU2M3paA06zbYFjlmtTZJwqPd5PttVrfaUFTpfz2","y":"23J-7Mt_uX1C3SADB2gS-FvA7cT8ZqbG_E3OYDMm4OeProEKTfKky_aA504xFCH5"}"#
    static let p384OtherPrivate = """
    -----BEGIN PRIVATE KEY-----
    MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDABAl64ipcCcjwbhdMF
    LoEySw3m5hGXevr2/AEJoyqv8U53ddVUJRLx2epKE2lz/HqhZANiAAQdP+EnQVjF
    uJjBNpX9Kuwv/aw03PVwvv1MqWv5j+tyvsc5+WElzXDhHUmE+hCUi2P7zWyf30Em
    SYCH20uMpGFlC5O/nr7785bHq4n0IoTE511g0zmP0rDAKBoUNItuXZI=
    -----END PRIVATE KEY-----
    """
    static let ed25519Private = """
    -----BEGIN PRIVATE KEY-----
    MC4CAQAwBQYDK2VwBCIEIDCAJkbbj2HZwTvxrsjSbxDrojLMKQZjnXv04qq49SgK
    -----END PRIVATE KEY-----
    """
    static let ed25519Public = """
    -----BEGIN PUBLIC KEY-----
    MCowBQYDK2VwAyEAjDWmvZvy1q2EcXF2aLq1ese4Di4U6ez262N2n6wwGRw=
    -----END PUBLIC KEY-----
    """
    /// ed25519Public as an RFC 8037 JWK.
    static let ed25519JWK = #"{"kty":"OKP","crv":"Ed25519","x":"jDWmvZvy1q2EcXF2aLq1ese4Di4U6ez262N2n6wwGRw"}"#
    static let ed25519OtherPrivate = """
    -----BEGIN PRIVATE KEY-----
    MC4CAQAwBQYDK2VwBCIEID3NDzo7krdCmYgAo+JJw6y/0gI6WH7JeksMD5wdtysG
    -----END PRIVATE KEY-----
    """
    /// ES512 test keys (P-521; made with the openssl CLI, test-only).
    static let p521SignPrivate = """
    -----BEGIN PRIVATE KEY-----
    MIHuAgEAMBAGByqGSM49AgEGBSuBBAAjBIHWMIHTAgEBBEIA5ox2gks0ugFLek3z
    EUu/L5RaN6rggjkjHlJIUyiPhJxDch8x5RYsUhx+FKn1CjgBp7t1uFZJ20j65mTp
    Fn9XkcmhgYkDgYYABADc41oYjgIcJWsn/8JpL2SSwyBTgCdm2m+Z+Gv46rQMkqri
    U6m5VyzX4DaFnHazHXpyzc67wK5rcXgSFavaC1AX5QDSrmfuXNR8jEpu0Eq9HA2K
    yddoh84vtHorvJ7KmV3fkGczpBBq7WuT+oQ14jdKYMReOjPMQxmLs156chrc/hJA
    bw==
    -----END PRIVATE KEY-----
    """
    static let p521SignPublic = """
    -----BEGIN PUBLIC KEY-----
    MIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQA3ONaGI4CHCVrJ//CaS9kksMgU4An
    Ztpvmfhr+Oq0DJKq4lOpuVcs1+A2hZx2sx16cs3Ou8Cua3F4EhWr2gtQF+UA0q5n
    7lzUfIxKbtBKvRwNisnXaIfOL7R6K7yeypld35BnM6QQau1rk/qENeI3SmDEXjoz
    zEMZi7NeenIa3P4SQG8=
    -----END PUBLIC KEY-----
    """
    static let p521OtherPrivate = """
    -----BEGIN PRIVATE KEY-----
    MIHuAgEAMBAGByqGSM49AgEGBSuBBAAjBIHWMIHTAgEBBEIAgKn7qwgiNHLkRJ/O
    mvZKMdhSK5EbO3BELX7ZW2nZG+PUGSz5rqJUAKSTp7J/vY2SCUH7vduFdzgUXZnB
    sFBLDpqhgYkDgYYABABS+KicrKNlVYGGN23beSPvlwJCyqs5HsvdWgzXr76u3m3q
    AjuSnAPYysSQQW+PmHcXNJKzPQ3z9J32KQ5lyIWVrAGCERd0kMRWGYXCWaomDh56
    0zGCYDGVSWtccyMNuDYUaQflj40huOckeN+eZERc74+xFWwD6nKbQFztP3orRtth
    og==
    -----END PRIVATE KEY-----
    """
    static let p521JWK = #"{"kty":"EC","crv":"P-521","x":"ANzjWhiOAhwlayf_wmkvZJLDIFOAJ2bab5n4a_jqtAySquJTqblXLNfgNoWcdrMdenLNzrvArmtxeBIVq9oLUBfl","y":"ANKuZ-5c1HyMSm7QSr0cDYrJ12iHzi-0eiu8nsqZXd-QZzOkEGrta5P6hDXiN0pgxF46M8xDGYuzXnpyGtz-EkBv"}"#
    static let p521Public = """
    -----BEGIN PUBLIC KEY-----
    MIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQBlgFQOgle+hoPQgI5DQLP9warY0zE
    k3fAJgNEPP5cTLI/uzIyUt398JrcQKFoVd/cdvZbHp5+XwejwpJ4Ne+GVp0A9mu3
    mW61tmwUxeN2jGGLdkK3TEg558HytlOlbdb5cHPMUMzy+0rAYRf3cpt0b+O+d9L0
    mDtMNEnPM2Q2v/sDvgU=
    -----END PUBLIC KEY-----
    """
    static let ed448Public = """
    -----BEGIN PUBLIC KEY-----
    MEMwBQYDK2VxAzoA51TTexTZ4TIJ7kzKGqfgVRMEI5u6TMaFasdwXa5oEARfthgd
    Y7bUlmUmhbqOTqilOETk5UuAG2YA
    -----END PUBLIC KEY-----
    """
}
