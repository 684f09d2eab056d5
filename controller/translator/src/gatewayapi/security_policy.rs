//! SecurityPolicy `oidc` -> the built-in oidc wasm filter. Fail closed: a policy that cannot be
//! applied (invalid, unsupported auth kind, module unavailable) makes its routes answer 500.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use hmac::{Hmac, Mac};
use portcullis_core::oidc::config::{
    CookieConfig, ForwardConfig, LogoutConfig, OidcConfig, SameSite, Settings,
};
use sha2::Sha256;

use super::attach::{Layer, Policy, PolicyKind, PolicySet, Rendered, ResolveCtx, TargetKey};
use super::{builtin, clusters, duration, reference_granted};
use crate::ir::{ClusterIr, FilterIr};
use crate::resources::{
    NsName, Object, ObjectRef, Resources, SecretKeyError, SecurityPolicySpec, EG_GROUP,
};
use crate::status::Condition;
use crate::wasm::source::WasmSource;
use crate::TranslateOptions;

/// Key used when no session secret is configured (offline translate). Public, so cookies
/// sealed under it are not secret: the status says so.
pub const PLACEHOLDER_SESSION_KEY: [u8; 32] = [0u8; 32];

/// What a SecurityPolicy resolved to.
#[derive(PartialEq)]
pub struct SecurityState {
    /// The oidc filter (when the policy is applied).
    pub filter: Option<FilterIr>,
    pub clusters: Vec<ClusterIr>,
    /// Why the policy is not applied; its routes answer 500.
    pub problems: Vec<String>,
    /// Fields accepted but not expressible by the filter.
    pub ignored: Vec<String>,
    pub placeholder_secret: bool,
}

/// SecurityPolicy as a [`PolicyKind`]: the first layer of the chain.
pub(crate) struct SecurityPolicyKind;

pub(crate) type SecurityPolicies = PolicySet<SecurityPolicyKind>;

impl PolicyKind for SecurityPolicyKind {
    const KIND: &'static str = "SecurityPolicy";
    const LAYER: Layer = Layer::Security;
    type Spec = SecurityPolicySpec;
    type State = SecurityState;

    fn resolve(
        ctx: &ResolveCtx<'_>,
        p: &Object<SecurityPolicySpec>,
        _targets: &[TargetKey],
        wasm_needed: &mut BTreeSet<WasmSource>,
    ) -> SecurityState {
        let ResolveCtx {
            res, opts, wasm, ..
        } = *ctx;
        let (ns, name) = (p.namespace(), p.name());
        let mut st = SecurityState {
            filter: None,
            clusters: vec![],
            problems: vec![],
            ignored: vec![],
            placeholder_secret: opts.session_secret.is_none(),
        };
        if !p.unsupported.is_empty() {
            // Unmodelled auth (jwt, basicAuth, extAuth, authorization...) must not be skipped.
            st.problems
                .push(format!("unsupported fields: {}", p.unsupported.join(", ")));
        }
        let cfg = oidc_config(res, opts, p, &mut st.ignored);
        match cfg {
            Err(e) => st.problems.extend(e),
            Ok(cfg) if st.problems.is_empty() => {
                match (
                    builtin::builtin_module(opts, wasm, "oidc", wasm_needed),
                    issuer_cluster(res, opts, ctx.slices, p, &cfg),
                    serde_json::to_string(&cfg),
                ) {
                    (Ok(m), Ok(provider), Ok(configuration)) => {
                        st.filter = Some(m.filter(
                            &format!("securitypolicy/{ns}/{name}/oidc"),
                            "oidc",
                            configuration,
                        ));
                        st.clusters.push(m.fetch_cluster);
                        st.clusters.push(provider);
                    }
                    (m, c, j) => {
                        st.problems.extend(m.err());
                        st.problems
                            .extend(c.err().map(|e| format!("oidc.provider.{e}")));
                        st.problems.extend(j.err().map(|e| e.to_string()));
                    }
                }
            }
            Ok(_) => {}
        }
        st
    }

    fn blocks(st: &SecurityState) -> bool {
        !st.problems.is_empty() || st.filter.is_none()
    }

    fn clusters(st: &SecurityState) -> Vec<&ClusterIr> {
        st.clusters.iter().collect()
    }

    fn accepted(st: &SecurityState) -> Condition {
        if st.problems.is_empty() {
            Condition::new("Accepted", true, "Accepted", "Policy has been accepted.")
        } else {
            Condition::new(
                "Accepted",
                false,
                "Invalid",
                format!("{} (targeted routes answer 500)", st.problems.join("; ")),
            )
        }
    }

    fn warnings(st: &SecurityState) -> Vec<Condition> {
        let mut extra = Vec::new();
        extra.extend(super::unsupported_condition(&st.ignored));
        if st.placeholder_secret {
            extra.push(Condition::new(
                "SessionSecret",
                false,
                "Placeholder",
                "session secret is a placeholder (offline translate): the cookie secret derives from a public key",
            ));
        }
        extra
    }

    fn render<'a>(p: &'a Policy<Self>, _gw: &NsName, _route: &str) -> Rendered<'a> {
        match &p.state.filter {
            Some(f) => Rendered {
                filters: vec![(String::new(), f.clone())],
                clusters: p.state.clusters.iter().collect(),
                ..Default::default()
            },
            None => Rendered::blocked(),
        }
    }
}

/// The per-policy cookie secret: `HMAC-SHA256(key, "oidc-cookie/<ns>/<name>")`, base64.
pub fn cookie_secret(key: &[u8; 32], ns: &str, name: &str) -> String {
    // HMAC accepts keys of any length; the error branch is unreachable but handled.
    let mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(format!("oidc-cookie/{ns}/{name}").as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => vec![0u8; 32],
    };
    base64::engine::general_purpose::STANDARD.encode(mac)
}

/// Reads `key` of the Secret `r` referenced from SecurityPolicy namespace `ns`.
fn secret_value(res: &Resources, ns: &str, r: &ObjectRef, key: &str) -> Result<String, String> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Secret");
    if !group.is_empty() || kind != "Secret" {
        return Err(format!("{group}/{kind} {} is not a core Secret", r.name));
    }
    let sns = r.namespace.clone().unwrap_or_else(|| ns.to_string());
    if !reference_granted(
        res,
        (EG_GROUP, "SecurityPolicy", ns),
        ("", "Secret", &sns, &r.name),
    ) {
        return Err(format!(
            "secret {sns}/{} is in another namespace and no ReferenceGrant allows it",
            r.name
        ));
    }
    let s = res
        .secrets
        .get(&(sns.clone(), r.name.clone()))
        .ok_or_else(|| format!("secret {sns}/{} not found", r.name))?;
    s.spec.text(key).map_err(|e| match e {
        SecretKeyError::Missing => format!("secret {sns}/{} has no key {key}", r.name),
        SecretKeyError::NotBase64(e) => {
            format!("secret {sns}/{} key {key} is not valid base64: {e}", r.name)
        }
        SecretKeyError::NotText => format!("secret {sns}/{} key {key} is not UTF-8 text", r.name),
    })
}

/// SecurityPolicy `oidc` -> the filter's config. `Err` lists every problem; `ignored` collects
/// fields the filter cannot express (reported, not fatal).
fn oidc_config(
    res: &Resources,
    opts: &TranslateOptions,
    p: &Object<SecurityPolicySpec>,
    ignored: &mut Vec<String>,
) -> Result<OidcConfig, Vec<String>> {
    let (ns, name) = (p.namespace(), p.name());
    let mut problems = Vec::new();
    let Some(o) = &p.spec.oidc else {
        return Err(vec![
            "no oidc: only SecurityPolicy oidc is supported by this controller".into(),
        ]);
    };
    let issuer = o.provider.issuer.clone();
    if let Err(e) = clusters::url_parts(&issuer) {
        problems.push(format!("oidc.provider.issuer: {e}"));
    }
    // Named after the policy, not the issuer: two policies with one issuer get two clusters.
    let provider_cluster = clusters::security_policy_issuer_cluster(ns, name);
    let client_id = match (&o.client_id, &o.client_id_ref) {
        (Some(id), _) => id.clone(),
        (None, Some(r)) => match secret_value(res, ns, r, "client-id") {
            Ok(v) => v.trim().to_string(),
            Err(e) => {
                problems.push(format!("oidc.clientIDRef: {e}"));
                String::new()
            }
        },
        (None, None) => {
            problems.push("oidc: clientID or clientIDRef is required".into());
            String::new()
        }
    };
    let client_secret = match &o.client_secret {
        None => None,
        Some(r) => match secret_value(res, ns, r, "client-secret") {
            Ok(v) => Some(v.trim().to_string()),
            Err(e) => {
                problems.push(format!("oidc.clientSecret: {e}"));
                None
            }
        },
    };
    let redirect_uri = match &o.redirect_url {
        Some(u) if !u.contains("%REQ(") => u.clone(),
        Some(_) => {
            problems.push(
                "oidc.redirectURL: request-derived (%REQ(...)%) URLs are not supported; give an absolute URL".into(),
            );
            String::new()
        }
        None => {
            problems.push(
                "oidc.redirectURL is required by this controller (the filter needs an absolute callback URL)".into(),
            );
            String::new()
        }
    };
    // Envoy Gateway always adds "openid".
    let mut scopes = vec!["openid".to_string()];
    scopes.extend(o.scopes.iter().filter(|s| *s != "openid").cloned());
    let same_site = match o
        .cookie_config
        .as_ref()
        .and_then(|c| c.same_site.as_deref())
    {
        None | Some("Lax") => SameSite::Lax,
        Some("Strict") => SameSite::Strict,
        Some("None") => SameSite::None,
        Some(other) => {
            problems.push(format!(
                "oidc.cookieConfig.sameSite {other:?} is not Lax, Strict or None"
            ));
            SameSite::Lax
        }
    };
    let ttl = |field: &str, v: &Option<String>, problems: &mut Vec<String>| -> Option<u64> {
        let v = v.as_deref()?;
        match duration::parse_ms(v) {
            Some(ms) if ms >= 1000 => Some(ms / 1000),
            _ => {
                problems.push(format!("oidc.{field}: invalid duration {v:?}"));
                None
            }
        }
    };
    let flow_ttl = ttl("csrfTokenTTL", &o.csrf_token_ttl, &mut problems);
    let session_ttl = ttl("defaultTokenTTL", &o.default_token_ttl, &mut problems);

    // Fields that change who gets in: refuse rather than ignore.
    if o.pass_through_auth_header == Some(true) {
        problems
            .push("oidc.passThroughAuthHeader is not supported (it needs a jwt provider)".into());
    }
    if o.provider.backend_settings.is_some() {
        problems.push(
            "oidc.provider.backendSettings is not supported (timeouts, retries and balancing of the provider's connection are Envoy's defaults)".into(),
        );
    }
    // Fields the filter handles its own way: reported as ignored.
    for (field, set) in [
        ("oidc.provider.authorizationEndpoint (discovery is used)", o.provider.authorization_endpoint.is_some()),
        ("oidc.provider.tokenEndpoint (discovery is used)", o.provider.token_endpoint.is_some()),
        ("oidc.provider.endSessionEndpoint (discovery is used)", o.provider.end_session_endpoint.is_some()),
        ("oidc.cookieNames (cookie names derive from issuer, client and redirect URL)", o.cookie_names.is_some()),
        ("oidc.defaultRefreshTokenTTL", o.default_refresh_token_ttl.is_some()),
        ("oidc.denyRedirect (non-browser requests get 401 without a redirect)", o.deny_redirect.is_some()),
        ("oidc.disableTokenEncryption (sessions are always sealed)", o.disable_token_encryption.is_some()),
        ("oidc.resources", !o.resources.is_empty()),
        ("oidc.refreshToken: false (tokens are refreshed whenever the provider issues a refresh token)", o.refresh_token == Some(false)),
    ] {
        if set {
            ignored.push(field.to_string());
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let key = opts.session_secret.unwrap_or(PLACEHOLDER_SESSION_KEY);
    // Browsers drop Secure cookies set over plain http except on loopback hosts, which would
    // loop logins behind an http-only callback.
    let secure = match url::Url::parse(&redirect_uri) {
        Ok(u) if u.scheme() == "http" => {
            same_site == SameSite::None
                || matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
                || u.host_str().is_some_and(|h| h.ends_with(".localhost"))
        }
        _ => true,
    };
    let mut cfg = OidcConfig {
        issuer,
        provider_cluster,
        client_id,
        client_secret,
        redirect_uri,
        scopes,
        // Envoy Gateway's default logout path.
        logout: Some(LogoutConfig {
            path: o.logout_path.clone().unwrap_or_else(|| "/logout".into()),
            post_logout_redirect_uri: None,
        }),
        cookie: CookieConfig {
            name: "portcullis".into(),
            secret: cookie_secret(&key, ns, name).into(),
            domain: o.cookie_domain.clone(),
            same_site,
            max_chunks: 8,
            secure,
            path: "/".into(),
            max_age: Default::default(),
        },
        pass_through: vec![],
        api_paths: vec![],
        forward: ForwardConfig {
            access_token: o.forward_access_token.unwrap_or(false),
            id_token_header: o
                .forward_id_token
                .as_ref()
                .and_then(|f| f.header.as_ref())
                .map(|h| h.to_ascii_lowercase()),
        },
        claims_to_headers: BTreeMap::new(),
        require: BTreeMap::new(),
        bearer: Default::default(),
        clock_skew_seconds: 60,
        discovery_refresh_seconds: 3600,
        jwks_min_refetch_seconds: 30,
        provider_timeout_ms: 5000,
        flow_ttl_seconds: 600,
        default_session_seconds: 300,
        bearer_cache_size: 1024,
        provider_authority: None,
    };
    if let Some(t) = flow_ttl {
        cfg.flow_ttl_seconds = t;
    }
    if let Some(t) = session_ttl {
        cfg.default_session_seconds = t;
    }
    // The filter's own validation: what it would reject is reported here instead.
    Settings::new(cfg.clone()).map_err(|e| vec![e.to_string()])?;
    Ok(cfg)
}

/// The cluster the filter reaches the provider through. Without `backendRefs`: the issuer's
/// host and port. With one: that Service or Backend's endpoints, with the TLS its
/// BackendTLSPolicy (or the Backend's `tls`) asks for. An https issuer is always verified:
/// without either, against the operator's `--issuer-ca-bundle` and the issuer's host.
fn issuer_cluster(
    res: &Resources,
    opts: &TranslateOptions,
    slices: &super::backends::SliceIndex<'_>,
    p: &Object<SecurityPolicySpec>,
    cfg: &OidcConfig,
) -> Result<ClusterIr, String> {
    let provider = p.spec.oidc.as_ref().map(|o| &o.provider);
    let refs: Vec<ObjectRef> = match provider.and_then(|pr| {
        pr.backend_refs.clone().or_else(|| {
            pr.backend_ref
                .clone()
                .map(|one| serde_json::Value::Array(vec![one]))
        })
    }) {
        None => Vec::new(),
        Some(v) => serde_json::from_value(v).map_err(|e| format!("backendRefs: {e}"))?,
    };
    let r = match refs.as_slice() {
        [] => {
            return clusters::tenant_issuer_cluster(
                &opts.egress,
                &cfg.provider_cluster,
                &cfg.issuer,
                None,
            )
            .map_err(|e| format!("issuer: {e}"));
        }
        [one] => one,
        _ => return Err("backendRefs: exactly one backend is supported for the provider".into()),
    };
    let ns = p.namespace();
    let mut c = super::backends::resolve_from(
        res,
        &opts.egress,
        slices,
        (EG_GROUP, "SecurityPolicy", ns),
        r,
    )
    .map_err(|(reason, msg)| format!("backendRefs ({reason}): {msg}"))?;
    c.name = cfg.provider_cluster.clone();
    let (host, _, https) = clusters::url_parts(&cfg.issuer).map_err(|e| format!("issuer: {e}"))?;
    if https && c.tls_sni.is_none() {
        c.tls_sni = Some(host);
        c.tls_verify = Some(opts.egress.system_trust());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_secret_is_per_policy_and_decodes_to_32_bytes() {
        let k = [7u8; 32];
        let a = cookie_secret(&k, "ns", "a");
        assert_eq!(a, cookie_secret(&k, "ns", "a"));
        assert_ne!(a, cookie_secret(&k, "ns", "b"));
        assert_ne!(a, cookie_secret(&[8u8; 32], "ns", "a"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .unwrap_or_default();
        assert_eq!(bytes.len(), 32);
    }
}
