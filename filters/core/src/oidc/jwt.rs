//! JWKS handling and JWT verification (ID tokens and bearer access tokens).
//!
//! Signatures are checked by `jsonwebtoken` (RustCrypto backend); the claim checks are done
//! here against the host clock so they are testable and give precise rejection reasons.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Tokens above this size are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

pub type Claims = Map<String, Value>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("algorithm {0:?} is not accepted")]
    BadAlgorithm(String),
    #[error("no key with kid {0:?} in the JWKS")]
    UnknownKid(String),
    #[error("token has no kid and the JWKS has no single key for its algorithm")]
    NoKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("issuer mismatch")]
    Issuer,
    #[error("audience mismatch")]
    Audience,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("nonce mismatch")]
    Nonce,
    #[error("token type {0:?} is not accepted here")]
    BadType(String),
    #[error("azp missing or not an authorized party")]
    Azp,
    #[error("an ID token is not an access token")]
    NotAccessToken,
}

impl JwtError {
    /// Short reason used in metric names and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed_token",
            JwtError::BadAlgorithm(_) => "bad_alg",
            JwtError::UnknownKid(_) => "unknown_kid",
            JwtError::NoKey => "no_key",
            JwtError::BadSignature => "bad_signature",
            JwtError::Issuer => "bad_issuer",
            JwtError::Audience => "bad_audience",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::Nonce => "bad_nonce",
            JwtError::BadType(_) => "bad_type",
            JwtError::Azp => "bad_azp",
            JwtError::NotAccessToken => "not_access_token",
        }
    }
}

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    /// `alg` pinned by the JWK, if any.
    alg: Option<Algorithm>,
    family: jsonwebtoken::AlgorithmFamily,
    key: DecodingKey,
}

/// Signature keys from a provider's JWKS. Symmetric (`oct`) and encryption keys are dropped:
/// a public JWKS must never be usable as an HMAC secret.
#[derive(Clone, Default)]
pub struct Jwks {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect();
        f.debug_struct("Jwks").field("kids", &kids).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is not JSON with a \"keys\" array")]
    Shape,
    #[error("JWKS has no usable signature key")]
    Empty,
}

impl Jwks {
    /// Parses a JWKS document, skipping keys that are unsupported or not for signatures.
    pub fn parse(body: &[u8]) -> Result<Self, JwksError> {
        let v: Value = serde_json::from_slice(body).map_err(|_| JwksError::Shape)?;
        let arr = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::Shape)?;
        let mut keys = Vec::new();
        for k in arr {
            if k.get("use")
                .and_then(Value::as_str)
                .is_some_and(|u| u != "sig")
            {
                continue;
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let family = key.family();
            if family == jsonwebtoken::AlgorithmFamily::Hmac {
                continue;
            }
            let alg = k
                .get("alg")
                .and_then(Value::as_str)
                .and_then(|a| a.parse::<Algorithm>().ok());
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                family,
                key,
            });
        }
        if keys.is_empty() {
            return Err(JwksError::Empty);
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&Key, JwtError> {
        let fits = |k: &&Key| k.family == alg.family() && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => {
                let key = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid));
                let key = key.ok_or_else(|| JwtError::UnknownKid(kid.to_string()))?;
                if !fits(&key) {
                    return Err(JwtError::BadAlgorithm(format!("{alg:?}")));
                }
                Ok(key)
            }
            None => {
                let mut candidates = self.keys.iter().filter(fits);
                match (candidates.next(), candidates.next()) {
                    (Some(k), None) => Ok(k),
                    _ => Err(JwtError::NoKey),
                }
            }
        }
    }
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct Expectations<'a> {
    pub issuer: &'a str,
    /// At least one of these must be in `aud`.
    pub audiences: &'a [String],
    /// For ID tokens: the `nonce` sent in the authorization request.
    pub nonce: Option<&'a str>,
    /// With several audiences `azp` is required and must be one of these.
    pub authorized_parties: &'a [String],
    /// `Some(client_id)` for ID tokens, `None` for access tokens.
    pub id_token_for: Option<&'a str>,
    /// Access tokens only: accept nothing but `typ: at+jwt` (RFC 9068 strictly).
    pub require_at_jwt: bool,
    pub now: u64,
    pub skew: u64,
}

/// The `alg`, `kid` and `typ` of a token header, read without trusting anything.
struct Header {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
}

fn peek_header(token: &str) -> Result<Header, JwtError> {
    let header = token.split('.').next().ok_or(JwtError::Malformed)?;
    let raw = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| JwtError::Malformed)?;
    let alg = v
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed)?
        .to_string();
    let kid = v.get("kid").and_then(Value::as_str).map(str::to_string);
    let typ = match v.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(JwtError::Malformed),
    };
    Ok(Header { alg, kid, typ })
}

/// RFC 9068 2.1: `at+jwt`, with or without the `application/` prefix (media types are
/// case-insensitive).
fn is_at_jwt(typ: &str) -> bool {
    let t = typ.to_ascii_lowercase();
    t == "at+jwt" || t == "application/at+jwt"
}

/// An access token must not be an ID token. Accepted `typ`: `at+jwt`, `application/at+jwt`,
/// `JWT` or none (only `at+jwt` with `require_at_jwt`). Claims that only ID tokens carry
/// (OIDC Core 2, 3.1.3.6, 3.3.2.11: `nonce`, `at_hash`, `c_hash`) are refused whatever the
/// `typ`, since RFC 9068 access tokens never have them.
pub fn check_access_token(
    typ: Option<&str>,
    claims: &Claims,
    require_at_jwt: bool,
) -> Result<(), JwtError> {
    match typ {
        Some(t) if is_at_jwt(t) => {}
        Some(t) if !require_at_jwt && t.eq_ignore_ascii_case("jwt") => {}
        None if !require_at_jwt => {}
        other => return Err(JwtError::BadType(other.unwrap_or("").to_string())),
    }
    if ["nonce", "at_hash", "c_hash"]
        .iter()
        .any(|c| claims.contains_key(*c))
    {
        return Err(JwtError::NotAccessToken);
    }
    Ok(())
}

/// Reads the payload of a token without verifying it: only for tokens this filter already
/// verified (the ID token kept in a sealed session).
pub fn unverified_claims(token: &str) -> Option<Claims> {
    let payload = token.split('.').nth(1)?;
    let raw = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&raw).ok()
}

fn accepted_algorithm(alg: &str) -> Option<Algorithm> {
    // Only asymmetric algorithms: rejects `none` and every HMAC variant outright, so a
    // public key can never be abused as an HMAC secret.
    let a: Algorithm = alg.parse().ok()?;
    match a.family() {
        jsonwebtoken::AlgorithmFamily::Rsa
        | jsonwebtoken::AlgorithmFamily::Ec
        | jsonwebtoken::AlgorithmFamily::Ed => Some(a),
        jsonwebtoken::AlgorithmFamily::Hmac => None,
    }
}

/// Verifies signature and claims; returns the claims.
pub fn verify(token: &str, jwks: &Jwks, expect: &Expectations<'_>) -> Result<Claims, JwtError> {
    if token.len() > MAX_TOKEN_LEN || token.split('.').count() != 3 {
        return Err(JwtError::Malformed);
    }
    let header = peek_header(token)?;
    let alg = accepted_algorithm(&header.alg).ok_or(JwtError::BadAlgorithm(header.alg))?;
    let key = jwks.select(header.kid.as_deref(), alg)?;

    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_) => JwtError::BadSignature,
            ErrorKind::InvalidAlgorithm => JwtError::BadAlgorithm(format!("{alg:?}")),
            _ => JwtError::Malformed,
        }
    })?;
    check_claims(&data.claims, expect)?;
    match (expect.id_token_for, header.typ.as_deref()) {
        // RFC 9068 2.1: `at+jwt` exists so an access token is never taken for an ID token.
        (Some(_), Some(t)) if is_at_jwt(t) => return Err(JwtError::BadType(t.to_string())),
        (Some(_), _) => {}
        (None, typ) => check_access_token(typ, &data.claims, expect.require_at_jwt)?,
    }
    Ok(data.claims)
}

fn num(claims: &Claims, name: &str) -> Option<u64> {
    let v = claims.get(name)?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// Claim checks shared by ID and access tokens.
pub fn check_claims(claims: &Claims, e: &Expectations<'_>) -> Result<(), JwtError> {
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(JwtError::Issuer)?;
    if iss.trim_end_matches('/') != e.issuer.trim_end_matches('/') {
        return Err(JwtError::Issuer);
    }
    let auds: Vec<&str> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Err(JwtError::Audience),
    };
    if !auds.iter().any(|a| e.audiences.iter().any(|x| x == a)) {
        return Err(JwtError::Audience);
    }
    let azp = match claims.get("azp") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(JwtError::Azp),
    };
    // Several audiences: the token must say which party it was issued to (OIDC Core 2).
    if auds.len() > 1 {
        let azp = azp.ok_or(JwtError::Azp)?;
        if !e.authorized_parties.iter().any(|p| p == azp) {
            return Err(JwtError::Azp);
        }
    }
    if let (Some(client), Some(azp)) = (e.id_token_for, azp) {
        if azp != client {
            return Err(JwtError::Azp);
        }
    }
    let exp = num(claims, "exp").ok_or(JwtError::Expired)?;
    if exp.saturating_add(e.skew) <= e.now {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = num(claims, "nbf") {
        if nbf > e.now.saturating_add(e.skew) {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(iat) = num(claims, "iat") {
        if iat > e.now.saturating_add(e.skew) {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(expected) = e.nonce {
        let got = claims
            .get("nonce")
            .and_then(Value::as_str)
            .ok_or(JwtError::Nonce)?;
        if !super::ct_eq(got.as_bytes(), expected.as_bytes()) {
            return Err(JwtError::Nonce);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    pub const ISS: &str = "https://idp.example.com";
    pub const NOW: u64 = 1_700_000_000;

    pub fn rsa1() -> EncodingKey {
        EncodingKey::from_rsa_der(include_bytes!("testdata/rsa1.der"))
    }
    pub fn rsa2() -> EncodingKey {
        EncodingKey::from_rsa_der(include_bytes!("testdata/rsa2.der"))
    }
    pub fn ec1() -> EncodingKey {
        EncodingKey::from_ec_der(include_bytes!("testdata/ec1.der"))
    }
    fn jwk(name: &str) -> Value {
        let text = match name {
            "rsa1" => include_str!("testdata/rsa1.jwk.json"),
            "rsa2" => include_str!("testdata/rsa2.jwk.json"),
            _ => include_str!("testdata/ec1.jwk.json"),
        };
        serde_json::from_str(text).unwrap()
    }
    pub fn jwks_json(names: &[&str]) -> Vec<u8> {
        json!({ "keys": names.iter().map(|n| jwk(n)).collect::<Vec<_>>() })
            .to_string()
            .into_bytes()
    }
    pub fn jwks(names: &[&str]) -> Jwks {
        Jwks::parse(&jwks_json(names)).unwrap()
    }
    pub fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        sign_typ(alg, kid, Some("JWT"), key, claims)
    }
    pub fn sign_typ(
        alg: Algorithm,
        kid: Option<&str>,
        typ: Option<&str>,
        key: &EncodingKey,
        claims: &Value,
    ) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        h.typ = typ.map(str::to_string);
        jsonwebtoken::encode(&h, claims, key).unwrap()
    }
    pub fn id_claims() -> Value {
        json!({"iss": ISS, "aud": "client", "sub": "alice", "exp": NOW + 300, "iat": NOW, "nonce": "n0nce", "email": "alice@example.com"})
    }
    fn expect<'a>(aud: &'a [String]) -> Expectations<'a> {
        Expectations {
            issuer: ISS,
            audiences: aud,
            nonce: Some("n0nce"),
            authorized_parties: aud,
            id_token_for: Some("client"),
            require_at_jwt: false,
            now: NOW,
            skew: 60,
        }
    }
    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn valid_rs256_and_es256_tokens_verify() {
        let aud = vec!["client".to_string()];
        let set = jwks(&["rsa1", "ec1"]);
        let t = sign(Algorithm::RS256, Some("rsa1"), &rsa1(), &id_claims());
        let c = verify(&t, &set, &expect(&aud)).unwrap();
        assert_eq!(c["email"], "alice@example.com");
        let t = sign(Algorithm::ES256, Some("ec1"), &ec1(), &id_claims());
        assert!(verify(&t, &set, &expect(&aud)).is_ok());
        assert_eq!(unverified_claims(&t).unwrap()["sub"], "alice");
    }

    #[test]
    fn claim_failures_have_precise_reasons() {
        let aud = vec!["client".to_string()];
        let set = jwks(&["rsa1"]);
        let cases: Vec<(&str, Value, JwtError)> = vec![
            ("iss", json!("https://evil.example.com"), JwtError::Issuer),
            ("aud", json!("other"), JwtError::Audience),
            ("aud", json!(["other", "x"]), JwtError::Audience),
            ("exp", json!(NOW - 61), JwtError::Expired),
            ("nbf", json!(NOW + 120), JwtError::NotYetValid),
            ("iat", json!(NOW + 3600), JwtError::NotYetValid),
            ("nonce", json!("other"), JwtError::Nonce),
        ];
        for (claim, value, err) in cases {
            let mut c = id_claims();
            c[claim] = value;
            let t = sign(Algorithm::RS256, Some("rsa1"), &rsa1(), &c);
            assert_eq!(verify(&t, &set, &expect(&aud)), Err(err), "{claim}");
        }
        // Within the clock skew an expired token still passes.
        let mut c = id_claims();
        c["exp"] = json!(NOW - 30);
        let t = sign(Algorithm::RS256, Some("rsa1"), &rsa1(), &c);
        assert!(verify(&t, &set, &expect(&aud)).is_ok());
        // Several audiences: azp must name the client.
        let mut c = id_claims();
        c["aud"] = json!(["client", "other"]);
        c["azp"] = json!("other");
        let t = sign(Algorithm::RS256, Some("rsa1"), &rsa1(), &c);
        assert_eq!(verify(&t, &set, &expect(&aud)), Err(JwtError::Azp));
        // Missing nonce when one is expected.
        let mut c = id_claims();
        c.as_object_mut().unwrap().remove("nonce");
        let t = sign(Algorithm::RS256, Some("rsa1"), &rsa1(), &c);
        assert_eq!(verify(&t, &set, &expect(&aud)), Err(JwtError::Nonce));
    }

    #[test]
    fn several_audiences_require_an_authorized_azp() {
        let aud = vec!["client".to_string()];
        let set = jwks(&["rsa1"]);
        let with = |azp: Option<&str>| {
            let mut c = id_claims();
            c["aud"] = json!(["client", "other"]);
            if let Some(a) = azp {
                c["azp"] = json!(a);
            }
            sign(Algorithm::RS256, Some("rsa1"), &rsa1(), &c)
        };
        assert_eq!(verify(&with(None), &set, &expect(&aud)), Err(JwtError::Azp));
        assert!(verify(&with(Some("client")), &set, &expect(&aud)).is_ok());
        // A single-audience ID token with a foreign azp is refused too.
        let mut c = id_claims();
        c["azp"] = json!("other");
        let t = sign(Algorithm::RS256, Some("rsa1"), &rsa1(), &c);
        assert_eq!(verify(&t, &set, &expect(&aud)), Err(JwtError::Azp));
        // Access tokens: azp must be one of the authorized parties.
        let parties = vec!["client".to_string(), "api".to_string()];
        let access = Expectations {
            nonce: None,
            id_token_for: None,
            authorized_parties: &parties,
            ..expect(&aud)
        };
        let at = |azp: Option<&str>| {
            let mut c = json!({"iss": ISS, "aud": ["client", "x"], "exp": NOW + 60});
            if let Some(a) = azp {
                c["azp"] = json!(a);
            }
            sign(Algorithm::RS256, Some("rsa1"), &rsa1(), &c)
        };
        assert_eq!(verify(&at(None), &set, &access), Err(JwtError::Azp));
        assert_eq!(verify(&at(Some("svc")), &set, &access), Err(JwtError::Azp));
        assert!(verify(&at(Some("api")), &set, &access).is_ok());
    }

    #[test]
    fn access_tokens_check_typ_and_are_never_id_tokens() {
        let aud = vec!["client".to_string()];
        let set = jwks(&["rsa1"]);
        let access = |strict: bool| Expectations {
            nonce: None,
            id_token_for: None,
            require_at_jwt: strict,
            ..expect(&aud)
        };
        let claims = json!({"iss": ISS, "aud": "client", "exp": NOW + 60, "sub": "svc"});
        let t = |typ: Option<&str>, c: &Value| {
            sign_typ(Algorithm::RS256, Some("rsa1"), typ, &rsa1(), c)
        };
        for typ in [
            None,
            Some("JWT"),
            Some("jwt"),
            Some("at+jwt"),
            Some("application/AT+JWT"),
        ] {
            assert!(
                verify(&t(typ, &claims), &set, &access(false)).is_ok(),
                "{typ:?}"
            );
        }
        for typ in ["id_token+jwt", "logout+jwt", "dpop+jwt", ""] {
            assert_eq!(
                verify(&t(Some(typ), &claims), &set, &access(false)),
                Err(JwtError::BadType(typ.into()))
            );
        }
        // Strict RFC 9068: only at+jwt.
        assert!(verify(&t(Some("at+jwt"), &claims), &set, &access(true)).is_ok());
        assert_eq!(
            verify(&t(Some("JWT"), &claims), &set, &access(true)),
            Err(JwtError::BadType("JWT".into()))
        );
        assert_eq!(
            verify(&t(None, &claims), &set, &access(true)),
            Err(JwtError::BadType(String::new()))
        );
        // The login's ID token (nonce) or one with at_hash / c_hash is no access token.
        let id = t(Some("JWT"), &id_claims());
        assert!(verify(&id, &set, &expect(&aud)).is_ok());
        assert_eq!(
            verify(&id, &set, &access(false)),
            Err(JwtError::NotAccessToken)
        );
        for claim in ["at_hash", "c_hash"] {
            let mut c = claims.clone();
            c[claim] = json!("x");
            assert_eq!(
                verify(&t(None, &c), &set, &access(false)),
                Err(JwtError::NotAccessToken),
                "{claim}"
            );
        }
        // And an at+jwt access token is never taken for an ID token.
        assert_eq!(
            verify(&t(Some("at+jwt"), &id_claims()), &set, &expect(&aud)),
            Err(JwtError::BadType("at+jwt".into()))
        );
    }

    #[test]
    fn signature_and_key_selection() {
        let aud = vec!["client".to_string()];
        // Signed by rsa2 but claims kid rsa1.
        let t = sign(Algorithm::RS256, Some("rsa1"), &rsa2(), &id_claims());
        assert_eq!(
            verify(&t, &jwks(&["rsa1", "rsa2"]), &expect(&aud)),
            Err(JwtError::BadSignature)
        );
        // Unknown kid asks for a refetch.
        let t = sign(Algorithm::RS256, Some("rsa2"), &rsa2(), &id_claims());
        assert_eq!(
            verify(&t, &jwks(&["rsa1"]), &expect(&aud)),
            Err(JwtError::UnknownKid("rsa2".into()))
        );
        // No kid: fine with exactly one RSA key, refused with two.
        let t = sign(Algorithm::RS256, None, &rsa1(), &id_claims());
        assert!(verify(&t, &jwks(&["rsa1", "ec1"]), &expect(&aud)).is_ok());
        assert_eq!(
            verify(&t, &jwks(&["rsa1", "rsa2"]), &expect(&aud)),
            Err(JwtError::NoKey)
        );
        // ES256 header pointing at an RSA key.
        let t = sign(Algorithm::ES256, Some("rsa1"), &ec1(), &id_claims());
        assert!(matches!(
            verify(&t, &jwks(&["rsa1"]), &expect(&aud)),
            Err(JwtError::BadAlgorithm(_))
        ));
        // Tampered payload.
        let t = sign(Algorithm::RS256, Some("rsa1"), &rsa1(), &id_claims());
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = id_claims();
        c["email"] = json!("mallory@example.com");
        let forged = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
        assert_eq!(
            verify(&forged, &jwks(&["rsa1"]), &expect(&aud)),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn alg_none_and_hmac_confusion_are_rejected() {
        let aud = vec!["client".to_string()];
        let set = jwks(&["rsa1"]);
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "kid": "rsa1"})),
            b64(&id_claims())
        );
        assert_eq!(
            verify(&none, &set, &expect(&aud)),
            Err(JwtError::BadAlgorithm("none".into()))
        );
        // HS256 "signed" with the RSA public key material as secret.
        let secret = jwk("rsa1")["n"].as_str().unwrap().as_bytes().to_vec();
        let t = sign(
            Algorithm::HS256,
            Some("rsa1"),
            &EncodingKey::from_secret(&secret),
            &id_claims(),
        );
        assert_eq!(
            verify(&t, &set, &expect(&aud)),
            Err(JwtError::BadAlgorithm("HS256".into()))
        );
        // oct keys in a JWKS are ignored entirely.
        let oct = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}).to_string();
        assert_eq!(Jwks::parse(oct.as_bytes()).unwrap_err(), JwksError::Empty);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let aud = vec!["client".to_string()];
        let set = jwks(&["rsa1"]);
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b",
            "ey.ey.ey",
            "....",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(verify(t, &set, &expect(&aud)).is_err(), "{t}");
        }
        assert_eq!(Jwks::parse(b"{}").unwrap_err(), JwksError::Shape);
        assert_eq!(Jwks::parse(b"nope").unwrap_err(), JwksError::Shape);
        assert!(unverified_claims("a.%%%.c").is_none());
        // Unsupported and encryption keys are skipped, the rest kept.
        let mixed = json!({"keys": [{"kty": "weird"}, {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}, jwk("rsa1")]});
        assert_eq!(Jwks::parse(mixed.to_string().as_bytes()).unwrap().len(), 1);
    }
}
