//! Data-plane benchmark: one Envoy per variant (`--concurrency 1`, pinned to one core), a wrk
//! load generator pinned to the other core, variants interleaved round by round. Every filter
//! runs as proxy-wasm (V8) and as the Envoy dynamic module `libportcullis.so`, with the same
//! config values. The `c4` group runs Envoy with 4 workers (see `--multi-*`), and a last phase
//! counts how many requests a 4-worker Envoy lets through a small local limit (exactness).

use crate::envoy::{self, bench_route, bootstrap, cluster, http_listener, lua_filter, Envoy};
use crate::load::{Wrk, WrkResult};
use crate::util::{self, local, median};
use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use portcullis_core::oidc::seal::Sealer;
use portcullis_core::oidc::{cookies, Session, Settings};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct FiltersArgs {
    /// Measured rounds; every variant runs once per round (interleaved).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Seconds of load per variant and round.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of unmeasured load per variant before the first round.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Concurrent connections held by wrk.
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Core(s) for the Envoy under test (taskset list).
    #[arg(long, default_value = "0")]
    pub envoy_cpus: String,
    /// Core(s) for wrk and the real upstream (taskset list).
    #[arg(long, default_value = "1")]
    pub load_cpus: String,
    /// Only these variant ids (comma-separated; default: all). `none` is always included.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// List the variants and exit.
    #[arg(long)]
    pub list: bool,
    /// Envoy binary (default: `.bin/envoy` under the repository, else `envoy` on PATH).
    #[arg(long, env = "PORTCULLIS_ENVOY_BIN")]
    pub envoy: Option<PathBuf>,
    /// Directory with ua_block.wasm, headers.wasm, ratelimit.wasm, oidc.wasm.
    #[arg(long, default_value = "dist/wasm")]
    pub wasm_dir: PathBuf,
    /// The dynamic module with all four filters (`make build-dynamic`).
    #[arg(long, default_value = "dist/dynamic/libportcullis.so")]
    pub dynamic_module: PathBuf,
    /// Envoy workers (`--concurrency`) of the multi-worker rows (group `c4`).
    #[arg(long, default_value_t = 4)]
    pub multi_concurrency: u32,
    /// Core(s) shared by the multi-worker Envoy and its wrk (taskset list; default: all cores).
    #[arg(long)]
    pub multi_cpus: Option<String>,
    /// wrk threads for the multi-worker rows.
    #[arg(long, default_value_t = 2)]
    pub multi_threads: u32,
    /// wrk connections for the multi-worker rows (and the exactness phase).
    #[arg(long, default_value_t = 64)]
    pub multi_connections: u32,
    /// The local limit of the exactness phase (requests per day, burst = the same number).
    #[arg(long, default_value_t = 1000)]
    pub exact_limit: u64,
    /// Seconds of load in the exactness phase (0: skip the phase).
    #[arg(long, default_value_t = 3.0)]
    pub exact_duration: f64,
    /// Results (JSON).
    #[arg(long, default_value = "target/bench/filters.json")]
    pub out: PathBuf,
    /// Markdown tables written next to the JSON.
    #[arg(long, default_value = "target/bench/filters.md")]
    pub markdown: PathBuf,
    /// Directory for the SVG charts.
    #[arg(long, default_value = "docs/bench")]
    pub charts: PathBuf,
    /// Replace the table between `<!-- filters:begin/end -->` in BENCHMARKS.md.
    #[arg(long)]
    pub update_benchmarks_md: bool,
    /// The command line to record in the results (set by scripts/bench-filters.sh).
    #[arg(long, default_value = "portcullis-bench filters")]
    pub command: String,
}

/// Every request carries these headers (plus the variant's own).
const BROWSER_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const HOST: &str = "localhost";
/// The user-agent of the deny-path variants (in the ai-crawlers preset).
const DENIED_UA: &str = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)";
const PATH: &str = "/bench";

/// 100 deny patterns besides the ai-crawlers preset: SEO crawlers, scrapers, scanners and
/// HTTP libraries seen in access logs, then generic filler up to 100.
const DENY_REAL: &[&str] = &[
    "AhrefsBot",
    "SemrushBot",
    "MJ12bot",
    "DotBot",
    "BLEXBot",
    "PetalBot",
    "YandexBot",
    "MegaIndex",
    "SeznamBot",
    "serpstatbot",
    "DataForSeoBot",
    "Barkrowler",
    "linkdexbot",
    "spbot",
    "SEOkicks",
    "Screaming Frog",
    "rogerbot",
    "exabot",
    "Gigabot",
    "coccocbot",
    "Sogou web spider",
    "ZoominfoBot",
    "Mail.RU_Bot",
    "BUbiNG",
    "Nutch",
    "Heritrix",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "Go-http-client",
    "okhttp",
    "Java/",
    "libwww-perl",
    "Wget/",
    "curl/",
    "HTTrack",
    "zgrab",
    "masscan",
    "Nuclei",
    "sqlmap",
    "Nikto",
    "WPScan",
    "nmap",
    "Scrapy",
    "HeadlessChrome",
    "PhantomJS",
    "Apache-HttpClient",
    "node-fetch",
    "axios/",
    "colly",
];

pub fn deny_patterns() -> Vec<String> {
    let mut v: Vec<String> = DENY_REAL.iter().map(|s| s.to_string()).collect();
    let mut i = 0;
    while v.len() < 100 {
        v.push(format!("bench-scraper-{i:02}"));
        i += 1;
    }
    v
}

const ALLOW: &[&str] = &["Googlebot", "Portcullis-Monitor"];

fn preset_patterns(root: &Path) -> Result<Vec<String>> {
    let p = root.join("filters/core/data/ai-crawlers.json");
    let v: Value = serde_json::from_slice(
        &std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
    )?;
    v["patterns"]
        .as_array()
        .ok_or_else(|| anyhow!("{}: no patterns array", p.display()))?
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{}: non-string pattern", p.display()))
        })
        .collect()
}

fn re2_escape(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

fn lua_list(items: &[String]) -> String {
    let mut s = String::from("{\n");
    for i in items {
        s.push_str(&format!("  {:?},\n", i));
    }
    s.push('}');
    s
}

/// The Lua ua-block example with its DENY/ALLOW lists replaced by the benchmark's lists.
fn lua_ua_block(root: &Path, deny: &[String]) -> Result<String> {
    let p = root.join("examples/lua/ua-block.lua");
    let src = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let replace = |src: &str, var: &str, items: &[String]| -> Result<String> {
        let start_pat = format!("local {var} = {{");
        let start = src
            .find(&start_pat)
            .ok_or_else(|| anyhow!("{}: no `{start_pat}`", p.display()))?;
        let end = src[start..]
            .find("\n}")
            .map(|e| start + e + 2)
            .ok_or_else(|| anyhow!("{}: `{start_pat}` not closed", p.display()))?;
        Ok(format!(
            "{}local {var} = {}{}",
            &src[..start],
            lua_list(items),
            &src[end..]
        ))
    };
    let allow: Vec<String> = ALLOW.iter().map(|s| s.to_string()).collect();
    let s = replace(&src, "DENY", deny)?;
    replace(&s, "ALLOW", &allow)
}

/// What a sanity request must show before a variant is measured.
#[derive(Debug, Clone, Serialize)]
pub struct Expect {
    pub status: u16,
    /// A response header that must be present (e.g. a security header).
    pub header: Option<(String, String)>,
}

/// One benchmark variant: an Envoy config and the request sent to it.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub id: String,
    pub group: String,
    pub label: String,
    pub description: String,
    /// `direct_response` or the real upstream.
    pub upstream: bool,
    pub request_headers: Vec<(String, String)>,
    pub expect: Expect,
    /// Envoy workers (`--concurrency`); >1 only for the `c4` group, which shares all cores with
    /// a multi-threaded wrk.
    pub concurrency: u32,
    /// The variant the ratios are taken against: `none`, or `none-c4` for the `c4` group.
    pub baseline: String,
    #[serde(skip)]
    pub filters: Vec<Value>,
    #[serde(skip)]
    pub route_extra: Value,
    /// Port of this variant's own provider listener (discovery + JWKS) in the same Envoy.
    #[serde(skip)]
    pub idp: Option<u16>,
    #[serde(skip)]
    pub secrets: Vec<Value>,
}

struct Ctx {
    root: PathBuf,
    wasm_dir: PathBuf,
    dynamic_module: PathBuf,
    multi_concurrency: u32,
}

fn module(ctx: &Ctx, name: &str) -> Result<PathBuf> {
    let p = ctx.wasm_dir.join(format!("{name}.wasm"));
    if !p.exists() {
        bail!("{} missing (make build-wasm)", p.display());
    }
    std::fs::canonicalize(&p).with_context(|| format!("resolving {}", p.display()))
}

fn dynamic_module(ctx: &Ctx) -> Result<PathBuf> {
    let p = &ctx.dynamic_module;
    if !p.exists() {
        bail!("{} missing (make build-dynamic)", p.display());
    }
    std::fs::canonicalize(p).with_context(|| format!("resolving {}", p.display()))
}

fn base_headers() -> Vec<(String, String)> {
    vec![
        ("host".into(), HOST.into()),
        ("user-agent".into(), BROWSER_UA.into()),
        ("accept".into(), "text/html,application/xhtml+xml".into()),
        ("x-debug".into(), "1".into()),
        ("x-internal".into(), "1".into()),
    ]
}

fn ok() -> Expect {
    Expect {
        status: 200,
        header: None,
    }
}

fn ok_with(h: &str, v: &str) -> Expect {
    Expect {
        status: 200,
        header: Some((h.into(), v.into())),
    }
}

fn variant(id: &str, group: &str, label: &str, description: &str, filters: Vec<Value>) -> Variant {
    Variant {
        id: id.into(),
        group: group.into(),
        label: label.into(),
        description: description.into(),
        upstream: false,
        request_headers: base_headers(),
        expect: ok(),
        concurrency: 1,
        baseline: "none".into(),
        filters,
        route_extra: json!({}),
        idp: None,
        secrets: vec![],
    }
}

// ---- filter configs ----

// Each config is used by the wasm and the dynamic-module variant alike (the dynamic module takes
// exactly the wasm JSON config).

fn ua_config() -> Value {
    json!({
        "deny": {"contains": deny_patterns(), "presets": ["ai-crawlers"]},
        "allow": {"contains": ALLOW},
        "missing_user_agent": "deny",
        "status": 403,
        "body": "Forbidden\n"
    })
}

fn rbac_ua(all_deny: &[String]) -> Value {
    let alt = |v: &[String]| {
        v.iter()
            .map(|s| re2_escape(s))
            .collect::<Vec<_>>()
            .join("|")
    };
    let allow: Vec<String> = ALLOW.iter().map(|s| s.to_string()).collect();
    json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "DENY", "policies": {"ua-block": {
                "permissions": [{"and_rules": {"rules": [
                    {"header": {"name": "user-agent", "string_match": {"safe_regex": {"regex": format!("(?i).*({}).*", alt(all_deny))}}}},
                    {"not_rule": {"header": {"name": "user-agent", "string_match": {"safe_regex": {"regex": format!("(?i).*({}).*", alt(&allow))}}}}}
                ]}}],
                "principals": [{"any": true}]
            }}}
        }
    })
}

const SETS: [(&str, &str); 3] = [
    ("x-env", "prod"),
    ("x-region", "eu-west-1"),
    ("x-gateway", "portcullis"),
];
const REMOVES: [&str; 2] = ["x-debug", "x-internal"];
/// The `strict` preset on a plaintext response (no HSTS over HTTP).
const STRICT: [(&str, &str); 5] = [
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", "frame-ancestors 'none'"),
    ("permissions-policy", "accelerometer=(), browsing-topics=(), camera=(), display-capture=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), midi=(), payment=(), usb=()"),
];

fn headers_config() -> Value {
    let set: BTreeMap<&str, &str> = SETS.iter().copied().collect();
    json!({"request": {"set": set, "remove": REMOVES}, "security_headers": "strict"})
}

fn header_value(k: &str, v: &str, action: &str) -> Value {
    json!({"header": {"key": k, "value": v}, "append_action": action})
}

fn header_mutation() -> Value {
    let mut req: Vec<Value> = SETS
        .iter()
        .map(|(k, v)| json!({"append": header_value(k, v, "OVERWRITE_IF_EXISTS_OR_ADD")}))
        .collect();
    req.extend(REMOVES.iter().map(|r| json!({"remove": r})));
    let resp: Vec<Value> = STRICT
        .iter()
        .map(|(k, v)| json!({"append": header_value(k, v, "ADD_IF_ABSENT")}))
        .collect();
    json!({
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": req, "response_mutations": resp}
        }
    })
}

fn route_headers() -> Value {
    json!({
        "request_headers_to_add": SETS.iter().map(|(k, v)| header_value(k, v, "OVERWRITE_IF_EXISTS_OR_ADD")).collect::<Vec<_>>(),
        "request_headers_to_remove": REMOVES,
        "response_headers_to_add": STRICT.iter().map(|(k, v)| header_value(k, v, "ADD_IF_ABSENT")).collect::<Vec<_>>(),
    })
}

/// The one local bucket of the ratelimit variants (ours and `local_ratelimit` alike).
#[derive(Debug, Clone, Copy)]
enum Rl {
    /// 10^9 per second: never hit.
    Pass,
    /// 1 per day, burst 1: every request after the first is limited.
    Limited,
    /// N per day, burst N: exactly N pass (the exactness phase).
    PerDay(u64),
}

fn rl_config(rl: Rl) -> Value {
    match rl {
        Rl::Pass => {
            json!({"rules": [{"name": "all", "limit": {"requests": 1_000_000_000u64, "unit": "second"}}]})
        }
        Rl::Limited => {
            json!({"rules": [{"name": "all", "limit": {"requests": 1, "unit": "day"}, "burst": 1}]})
        }
        Rl::PerDay(n) => {
            json!({"rules": [{"name": "all", "limit": {"requests": n, "unit": "day"}, "burst": n}]})
        }
    }
}

fn local_ratelimit(rl: Rl) -> Value {
    let bucket = match rl {
        Rl::Pass => {
            json!({"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"})
        }
        Rl::Limited => json!({"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "86400s"}),
        Rl::PerDay(n) => json!({"max_tokens": n, "tokens_per_fill": n, "fill_interval": "86400s"}),
    };
    let pct = json!({"numerator": 100, "denominator": "HUNDRED"});
    json!({
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench_rl",
            "token_bucket": bucket,
            "filter_enabled": {"runtime_key": "rl_enabled", "default_value": pct},
            "filter_enforced": {"runtime_key": "rl_enforced", "default_value": pct},
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03"
        }
    })
}

// ---- OIDC: a static provider (discovery + JWKS) and valid cookies ----

const OIDC_CLIENT: &str = "bench";
const OIDC_COOKIE_KEY: [u8; 32] = [0x5a; 32];
const OAUTH2_HMAC_SECRET: &str = "portcullis-bench-hmac-secret-0123456789";

fn issuer(idp_port: u16) -> String {
    format!("http://127.0.0.1:{idp_port}")
}

fn jwt_like(claims: &Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"rsa1"}"#);
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let sig = URL_SAFE_NO_PAD.encode([0x42u8; 256]);
    format!("{h}.{p}.{sig}")
}

struct Tokens {
    id_token: String,
    access_token: String,
    expires_at: u64,
}

fn tokens(idp_port: u16) -> Tokens {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let exp = now + 7 * 86_400;
    let id_token = jwt_like(&json!({
        "iss": issuer(idp_port), "sub": "bench-user", "aud": OIDC_CLIENT, "exp": exp, "iat": now,
        "email": "bench@example.com", "name": "Bench User"
    }));
    let access_token = jwt_like(&json!({
        "iss": issuer(idp_port), "sub": "bench-user", "aud": "api", "exp": exp, "iat": now,
        "scope": "openid email"
    }));
    Tokens {
        id_token,
        access_token,
        expires_at: exp,
    }
}

fn oidc_config(idp_port: u16) -> Value {
    json!({
        "issuer": issuer(idp_port),
        "provider_cluster": "idp",
        "client_id": OIDC_CLIENT,
        "client_secret": "bench-client-secret",
        "redirect_uri": format!("http://{HOST}/oauth2/callback"),
        "scopes": ["openid", "email"],
        "cookie": {"name": "portcullis-session", "secret": STANDARD.encode(OIDC_COOKIE_KEY), "secure": false},
        "forward": {"access_token": true}
    })
}

/// `Cookie` header value with a session sealed exactly as the filter seals it.
fn oidc_cookie(idp_port: u16) -> Result<String> {
    let cfg = oidc_config(idp_port);
    let settings =
        Settings::from_json(cfg.to_string().as_bytes()).map_err(|e| anyhow!("oidc config: {e}"))?;
    let t = tokens(idp_port);
    let session = Session {
        id_token: t.id_token,
        access_token: Some(t.access_token),
        refresh_token: None,
        expires_at: t.expires_at,
        // Logged in now: the bench runs well inside the default cookie.max_age.
        login_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let aad = format!("session\0{}", settings.session_cookie);
    let sealed = Sealer::with_keys(&settings.keys)
        .seal(aad.as_bytes(), &serde_json::to_vec(&session)?)
        .map_err(|e| anyhow!("sealing: {e}"))?;
    let chunks = cookies::split_chunks(&sealed, settings.config.cookie.max_chunks)
        .ok_or_else(|| anyhow!("session too large for the cookie"))?;
    Ok(chunks
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}-{i}={c}", settings.session_cookie))
        .collect::<Vec<_>>()
        .join("; "))
}

/// Envoy oauth2's cookies: HMAC-SHA256(secret, host \n expires \n access \n id \n refresh), base64.
fn oauth2_cookie(idp_port: u16) -> Result<String> {
    let t = tokens(idp_port);
    let exp = t.expires_at.to_string();
    let payload = [HOST, &exp, &t.access_token, &t.id_token, ""].join("\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(OAUTH2_HMAC_SECRET.as_bytes())
        .map_err(|e| anyhow!("hmac key: {e}"))?;
    mac.update(payload.as_bytes());
    let hmac = STANDARD.encode(mac.finalize().into_bytes());
    Ok(format!(
        "OauthHMAC={hmac}; OauthExpires={exp}; BearerToken={}; IdToken={}",
        t.access_token, t.id_token
    ))
}

fn oauth2_filter(idp_port: u16) -> Value {
    json!({
        "name": "envoy.filters.http.oauth2",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.oauth2.v3.OAuth2",
            "config": {
                "token_endpoint": {"cluster": "idp", "uri": format!("{}/token", issuer(idp_port)), "timeout": "3s"},
                "authorization_endpoint": format!("{}/authorize", issuer(idp_port)),
                "redirect_uri": "http://%REQ(:authority)%/oauth2/callback",
                "redirect_path_matcher": {"path": {"exact": "/oauth2/callback"}},
                "signout_path": {"path": {"exact": "/signout"}},
                "credentials": {
                    "client_id": OIDC_CLIENT,
                    "token_secret": {"name": "oauth2-token"},
                    "hmac_secret": {"name": "oauth2-hmac"}
                },
                "forward_bearer_token": true,
                "disable_token_encryption": true,
                "auth_scopes": ["openid", "email"]
            }
        }
    })
}

fn oauth2_secrets() -> Vec<Value> {
    vec![
        json!({"name": "oauth2-token", "generic_secret": {"secret": {"inline_string": "bench-client-secret"}}}),
        json!({"name": "oauth2-hmac", "generic_secret": {"secret": {"inline_string": OAUTH2_HMAC_SECRET}}}),
    ]
}

/// The provider listener: discovery and JWKS as `direct_response`s.
fn idp_listener(root: &Path, idp_port: u16) -> Result<Value> {
    let jwk_path = root.join("filters/core/src/oidc/testdata/rsa1.jwk.json");
    let jwk: Value = serde_json::from_slice(
        &std::fs::read(&jwk_path).with_context(|| format!("reading {}", jwk_path.display()))?,
    )?;
    let iss = issuer(idp_port);
    let discovery = json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"]
    });
    let jwks = json!({"keys": [jwk]});
    let direct = |path: &str, body: &Value| {
        json!({"match": {"path": path}, "direct_response": {"status": 200, "body": {"inline_string": body.to_string()}},
               "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}]})
    };
    Ok(http_listener(
        "idp",
        idp_port,
        vec![],
        vec![
            direct("/.well-known/openid-configuration", &discovery),
            direct("/jwks", &jwks),
            json!({"match": {"prefix": "/"}, "direct_response": {"status": 404}}),
        ],
    ))
}

fn with_cookie(mut h: Vec<(String, String)>, cookie: String) -> Vec<(String, String)> {
    h.push(("cookie".into(), cookie));
    h
}

fn deny_ua(mut d: Variant) -> Variant {
    d.request_headers = d
        .request_headers
        .into_iter()
        .map(|(k, x)| {
            if k == "user-agent" {
                (k, DENIED_UA.to_string())
            } else {
                (k, x)
            }
        })
        .collect();
    d.expect = Expect {
        status: 403,
        header: None,
    };
    d
}

fn limited(mut l: Variant) -> Variant {
    l.expect = Expect {
        status: 429,
        header: None,
    };
    l
}

fn with_security_headers(mut h: Variant) -> Variant {
    h.expect = ok_with("x-frame-options", "DENY");
    h
}

/// A `c4` variant: `--concurrency N` on all cores, ratios against `none-c4`.
fn multi(ctx: &Ctx, mut v: Variant) -> Variant {
    v.concurrency = ctx.multi_concurrency;
    v.baseline = "none-c4".into();
    v
}

fn variants(ctx: &Ctx) -> Result<Vec<Variant>> {
    let ua = module(ctx, "ua_block")?;
    let hd = module(ctx, "headers")?;
    let rl = module(ctx, "ratelimit")?;
    let oidc = module(ctx, "oidc")?;
    let lib = dynamic_module(ctx)?;
    let mut all_deny = deny_patterns();
    all_deny.extend(preset_patterns(&ctx.root)?);
    let lua = lua_ua_block(&ctx.root, &all_deny)?;
    let ua_desc = format!(
        "{} deny substrings ({} + the {} ai-crawlers preset tokens), 2 allow; request UA passes (Chrome)",
        all_deny.len(),
        deny_patterns().len(),
        all_deny.len() - deny_patterns().len()
    );
    let wasm = |name: &str, path: &Path, cfg: Value| envoy::wasm_filter(name, path, &cfg);
    let dynm = |name: &str, cfg: Value| envoy::dynamic_filter(&lib, name, &cfg);
    // Each provider variant gets its own provider port (the issuer URL names it).
    let (p_oidc, p_oidc_dyn, p_oauth2) =
        (util::free_port()?, util::free_port()?, util::free_port()?);
    let (p_chain, p_chain_up, p_chain_dyn, p_chain_dyn_up) = (
        util::free_port()?,
        util::free_port()?,
        util::free_port()?,
        util::free_port()?,
    );

    let mut v = vec![];
    v.push(variant(
        "none",
        "baseline",
        "no filter",
        "router only, direct_response 200",
        vec![],
    ));
    let mut up = variant(
        "none-upstream",
        "baseline",
        "no filter, real upstream",
        "router only, proxied to a second Envoy (direct_response) pinned with wrk",
        vec![],
    );
    up.upstream = true;
    v.push(up);
    v.push(variant(
        "wasm-floor",
        "baseline",
        "wasm floor (ua-block, empty config)",
        "ua_block.wasm with `{}`: reads the user-agent, matches nothing; the fixed cost of one proxy-wasm filter",
        vec![wasm("ua_block", &ua, json!({}))],
    ));
    v.push(variant(
        "dyn-floor",
        "baseline",
        "dynamic-module floor (ua-block, empty config)",
        "libportcullis.so, filter_name ua_block, config `{}`: reads the user-agent, matches nothing; the fixed cost of one dynamic-module filter",
        vec![dynm("ua_block", json!({}))],
    ));

    v.push(variant(
        "ua-wasm",
        "ua-block",
        "ua-block wasm",
        &ua_desc,
        vec![wasm("ua_block", &ua, ua_config())],
    ));
    v.push(variant(
        "ua-dyn",
        "ua-block",
        "ua-block dynamic module",
        &format!("the wasm config in libportcullis.so; {ua_desc}"),
        vec![dynm("ua_block", ua_config())],
    ));
    v.push(variant(
        "ua-lua",
        "ua-block",
        "ua-block Lua",
        &format!("examples/lua/ua-block.lua with the same lists; {ua_desc}"),
        vec![lua_filter(&lua)],
    ));
    v.push(variant("ua-rbac", "ua-block", "ua-block native RBAC", "RBAC DENY: one RE2 alternation over the same deny list AND NOT the allow list on user-agent", vec![rbac_ua(&all_deny)]));

    // The deny path: the same four with a deny-listed user-agent (GPTBot, from the preset).
    for (id, label, f) in [
        (
            "ua-wasm-deny",
            "ua-block wasm, denied",
            wasm("ua_block", &ua, ua_config()),
        ),
        (
            "ua-dyn-deny",
            "ua-block dynamic module, denied",
            dynm("ua_block", ua_config()),
        ),
        ("ua-lua-deny", "ua-block Lua, denied", lua_filter(&lua)),
        (
            "ua-rbac-deny",
            "ua-block native RBAC, denied",
            rbac_ua(&all_deny),
        ),
    ] {
        v.push(deny_ua(variant(id, "ua-block", label, "as above, but the request's user-agent is GPTBot: every request answered 403 by the filter", vec![f])));
    }

    let hd_desc = "strict preset + 3 request set + 2 request remove";
    v.push(with_security_headers(variant(
        "headers-wasm",
        "headers",
        "headers wasm",
        hd_desc,
        vec![wasm("headers", &hd, headers_config())],
    )));
    v.push(with_security_headers(variant(
        "headers-dyn",
        "headers",
        "headers dynamic module",
        hd_desc,
        vec![dynm("headers", headers_config())],
    )));
    v.push(with_security_headers(variant(
        "headers-native",
        "headers",
        "header_mutation native",
        "header_mutation filter: same 3 set, 2 remove, 5 response headers ADD_IF_ABSENT",
        vec![header_mutation()],
    )));
    let mut h = with_security_headers(variant(
        "headers-route",
        "headers",
        "route header options",
        "route-level request_headers_to_add/remove, response_headers_to_add (no filter)",
        vec![],
    ));
    h.route_extra = route_headers();
    v.push(h);

    let rl_pass = "local rule, one bucket, 10^9/s: every request passes (draft03 headers)";
    v.push(variant(
        "rl-wasm-pass",
        "ratelimit",
        "ratelimit wasm, not hit",
        rl_pass,
        vec![wasm("ratelimit", &rl, rl_config(Rl::Pass))],
    ));
    v.push(variant(
        "rl-dyn-pass",
        "ratelimit",
        "ratelimit dynamic module, not hit",
        rl_pass,
        vec![dynm("ratelimit", rl_config(Rl::Pass))],
    ));
    v.push(variant(
        "rl-native-pass",
        "ratelimit",
        "local_ratelimit native, not hit",
        "token bucket 10^9 per 1s, enforced 100%, draft03 headers",
        vec![local_ratelimit(Rl::Pass)],
    ));
    let rl_lim = "1 request per day: every measured request answered 429 by the filter";
    v.push(limited(variant(
        "rl-wasm-limited",
        "ratelimit",
        "ratelimit wasm, all limited",
        rl_lim,
        vec![wasm("ratelimit", &rl, rl_config(Rl::Limited))],
    )));
    v.push(limited(variant(
        "rl-dyn-limited",
        "ratelimit",
        "ratelimit dynamic module, all limited",
        rl_lim,
        vec![dynm("ratelimit", rl_config(Rl::Limited))],
    )));
    v.push(limited(variant(
        "rl-native-limited",
        "ratelimit",
        "local_ratelimit native, all limited",
        "bucket of 1 token per day: every measured request answered 429",
        vec![local_ratelimit(Rl::Limited)],
    )));

    // The same sealed cookie format and key for both runtimes: `oidc_cookie` seals with
    // `portcullis_core::oidc`, which both the wasm and the dynamic-module filter open.
    let oidc_desc =
        "sealed session cookie (AES-256-GCM) opened per request, access token forwarded";
    for (id, label, idp, f) in [
        (
            "oidc-wasm",
            "oidc wasm, valid session",
            p_oidc,
            wasm("oidc", &oidc, oidc_config(p_oidc)),
        ),
        (
            "oidc-dyn",
            "oidc dynamic module, valid session",
            p_oidc_dyn,
            dynm("oidc", oidc_config(p_oidc_dyn)),
        ),
    ] {
        let mut o = variant(id, "oidc", label, oidc_desc, vec![f]);
        o.request_headers = with_cookie(base_headers(), oidc_cookie(idp)?);
        o.idp = Some(idp);
        v.push(o);
    }
    let mut o = variant(
        "oauth2-native",
        "oidc",
        "oauth2 native, valid HMAC cookie",
        "HMAC-SHA256 cookie checked per request, bearer token forwarded (disable_token_encryption)",
        vec![oauth2_filter(p_oauth2)],
    );
    o.request_headers = with_cookie(base_headers(), oauth2_cookie(p_oauth2)?);
    o.idp = Some(p_oauth2);
    o.secrets = oauth2_secrets();
    v.push(o);

    for (dynamic, upstream, idp) in [
        (false, false, p_chain),
        (false, true, p_chain_up),
        (true, false, p_chain_dyn),
        (true, true, p_chain_dyn_up),
    ] {
        let chain = if dynamic {
            vec![
                dynm("ua_block", ua_config()),
                dynm("ratelimit", rl_config(Rl::Pass)),
                dynm("oidc", oidc_config(idp)),
                dynm("headers", headers_config()),
            ]
        } else {
            vec![
                wasm("ua_block", &ua, ua_config()),
                wasm("ratelimit", &rl, rl_config(Rl::Pass)),
                wasm("oidc", &oidc, oidc_config(idp)),
                wasm("headers", &hd, headers_config()),
            ]
        };
        let (id, label) = match (dynamic, upstream) {
            (false, false) => ("chain-wasm", "all four wasm"),
            (false, true) => ("chain-wasm-upstream", "all four wasm, real upstream"),
            (true, false) => ("chain-dyn", "all four dynamic module"),
            (true, true) => (
                "chain-dyn-upstream",
                "all four dynamic module, real upstream",
            ),
        };
        let mut c = with_security_headers(variant(
            id,
            "chain",
            label,
            "ua-block -> ratelimit (not hit) -> oidc (valid session) -> headers",
            chain,
        ));
        c.request_headers = with_cookie(base_headers(), oidc_cookie(idp)?);
        c.idp = Some(idp);
        c.upstream = upstream;
        v.push(c);
    }

    // Several workers: our process-wide bucket against local_ratelimit's, both not hit.
    let n = ctx.multi_concurrency;
    v.push(multi(
        ctx,
        variant(
            "none-c4",
            "c4",
            &format!("no filter, {n} workers"),
            &format!("router only, Envoy --concurrency {n}; the baseline of this group"),
            vec![],
        ),
    ));
    v.push(multi(
        ctx,
        variant(
            "rl-dyn-c4",
            "c4",
            &format!("ratelimit dynamic module, not hit, {n} workers"),
            &format!("{rl_pass}; one process-wide bucket shared by the {n} workers"),
            vec![dynm("ratelimit", rl_config(Rl::Pass))],
        ),
    ));
    v.push(multi(
        ctx,
        variant(
            "rl-native-c4",
            "c4",
            &format!("local_ratelimit native, not hit, {n} workers"),
            "token bucket 10^9 per 1s, enforced 100%, draft03 headers",
            vec![local_ratelimit(Rl::Pass)],
        ),
    ));
    Ok(v)
}

// ---- running ----

#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub round: u32,
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub cpu_us_per_request: f64,
    pub requests: u64,
    pub non_2xx_3xx: u64,
    pub socket_errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_request: f64,
    pub rss_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VariantResult {
    #[serde(flatten)]
    pub variant: Variant,
    pub measured: bool,
    pub skipped_reason: Option<String>,
    pub rounds: Vec<Round>,
    pub median: Option<Summary>,
    /// median / the baseline variant's median (`none`, or `none-c4` for the `c4` group; for
    /// RSS: end RSS / the baseline's end RSS).
    pub ratio_to_none: Option<Summary>,
    /// End RSS minus the baseline's end RSS (MiB).
    pub rss_delta_mib: Option<f64>,
    pub rss_idle_mib: Option<f64>,
}

/// The exactness phase: a fresh Envoy with `multi_concurrency` workers and one local bucket of
/// `limit` requests per day, loaded for a few seconds by many connections; how many got a 2xx.
#[derive(Debug, Clone, Serialize)]
pub struct Exactness {
    pub id: String,
    pub label: String,
    pub concurrency: u32,
    pub limit: u64,
    pub connections: u32,
    pub seconds: f64,
    /// Responses counted by wrk.
    pub requests: u64,
    /// From Envoy's admin `/stats`: `http.bench.downstream_rq_2xx` and `_4xx`.
    pub passed: Option<u64>,
    pub limited: Option<u64>,
    pub error: Option<String>,
}

/// 1-minute load averages (`/proc/loadavg`) through the run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSamples {
    /// Before any Envoy started.
    pub start: String,
    /// At the start of each round.
    pub rounds: Vec<String>,
    /// After the last round.
    pub end: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FiltersReport {
    pub benchmark: &'static str,
    pub date_utc: String,
    pub command: String,
    pub git: String,
    pub machine: util::Machine,
    pub envoy_version: String,
    pub envoy_cmd: String,
    pub load_generator: String,
    pub pinning: String,
    pub rounds: u32,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connections: u32,
    pub request: String,
    /// The `c4` group's setup (workers, cores, wrk).
    pub multi: String,
    pub dynamic_module: String,
    pub load_average: LoadSamples,
    pub variants: Vec<VariantResult>,
    pub exactness: Vec<Exactness>,
}

struct Live {
    envoy: Envoy,
    port: u16,
}

pub fn find_root() -> Result<PathBuf> {
    if let Ok(r) = std::env::var("PORTCULLIS_ROOT") {
        return Ok(PathBuf::from(r));
    }
    let mut d = std::env::current_dir()?;
    loop {
        if d.join("filters/core/data/ai-crawlers.json").exists() {
            return Ok(d);
        }
        if !d.pop() {
            bail!("run from the Portcullis repository (or set PORTCULLIS_ROOT)");
        }
    }
}

pub fn envoy_bin(root: &Path, arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| {
        let local = root.join(".bin/envoy");
        if local.exists() {
            local
        } else {
            PathBuf::from("envoy")
        }
    })
}

fn sanity(addr: std::net::SocketAddr, v: &Variant) -> Result<()> {
    // A limited variant's single token goes to the first request.
    let tries = if v.expect.status == 429 { 2 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        last = Some(util::http(addr, "GET", PATH, &v.request_headers)?);
    }
    let r = last.ok_or_else(|| anyhow!("no response"))?;
    if r.status != v.expect.status {
        bail!(
            "{}: expected {} but got {} (body {:?}, location {:?})",
            v.id,
            v.expect.status,
            r.status,
            String::from_utf8_lossy(&r.body)
                .chars()
                .take(200)
                .collect::<String>(),
            r.header("location")
        );
    }
    // ua-block variants must refuse a deny-listed agent (one from each list).
    if v.group == "ua-block" {
        for ua in [
            "Mozilla/5.0 (compatible; GPTBot/1.2; +https://openai.com/gptbot)",
            "bench-scraper-42/1.0",
        ] {
            let h: Vec<(String, String)> = v
                .request_headers
                .iter()
                .map(|(k, x)| {
                    (
                        k.clone(),
                        if k == "user-agent" {
                            ua.to_string()
                        } else {
                            x.clone()
                        },
                    )
                })
                .collect();
            let r = util::http(addr, "GET", PATH, &h)?;
            if r.status != 403 {
                bail!(
                    "{}: user-agent {ua:?} got {} instead of 403",
                    v.id,
                    r.status
                );
            }
        }
    }
    // With a session cookie, the same request without it must not reach the route: proves the
    // filter authenticated the cookie rather than letting everything through.
    if v.request_headers.iter().any(|(k, _)| k == "cookie") {
        let bare: Vec<(String, String)> = v
            .request_headers
            .iter()
            .filter(|(k, _)| k != "cookie")
            .cloned()
            .collect();
        let r = util::http(addr, "GET", PATH, &bare)?;
        if r.status == 200 {
            bail!("{}: a request without the session cookie got 200 too", v.id);
        }
    }
    if let Some((h, want)) = &v.expect.header {
        if r.header(h) != Some(want.as_str()) {
            bail!(
                "{}: expected response header {h}: {want}, got {:?}",
                v.id,
                r.header(h)
            );
        }
    }
    Ok(())
}

/// Runs the benchmark and writes its JSON (None: `--list`); `report::publish_filters` writes
/// the views.
pub fn run(args: FiltersArgs) -> Result<Option<FiltersReport>> {
    let root = find_root()?;
    let envoy_bin = envoy_bin(&root, args.envoy.clone());
    let wasm_dir = if args.wasm_dir.is_absolute() {
        args.wasm_dir.clone()
    } else {
        root.join(&args.wasm_dir)
    };
    let load_start = loadavg();
    let work = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let multi_cpus = args.multi_cpus.clone().unwrap_or_else(|| {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        if n > 1 {
            format!("0-{}", n - 1)
        } else {
            "0".into()
        }
    });
    let ctx = Ctx {
        root: root.clone(),
        wasm_dir,
        dynamic_module: abs(&root, &args.dynamic_module),
        multi_concurrency: args.multi_concurrency,
    };
    let mut all = variants(&ctx)?;
    if args.list {
        for v in &all {
            println!(
                "{:<22} {:<10} {} — {}",
                v.id, v.group, v.label, v.description
            );
        }
        return Ok(None);
    }
    if !args.only.is_empty() {
        // The baselines of the selected variants stay: `none`, and `none-c4` for `c4` rows.
        let wanted: Vec<String> = all
            .iter()
            .filter(|v| args.only.iter().any(|o| o == &v.id))
            .map(|v| v.baseline.clone())
            .chain(std::iter::once("none".to_string()))
            .chain(args.only.iter().cloned())
            .collect();
        all.retain(|v| wanted.contains(&v.id));
    }

    // The real upstream: a second Envoy answering with direct_response, on the load core.
    let up_port = util::free_port()?;
    let up_admin = util::free_port()?;
    let up_boot = bootstrap(
        up_admin,
        vec![http_listener(
            "upstream",
            up_port,
            vec![],
            vec![bench_route(false, &json!({}))],
        )],
        vec![],
        vec![],
    );
    let needs_upstream = all.iter().any(|v| v.upstream);
    let _upstream = if needs_upstream {
        Some(Envoy::start(
            &envoy_bin,
            &work,
            "upstream",
            &args.load_cpus,
            1,
            up_admin,
            &up_boot,
        )?)
    } else {
        None
    };

    // Start one Envoy per variant (all pinned to the Envoy core; idle ones cost nothing).
    let mut results: Vec<VariantResult> = vec![];
    let mut live: Vec<Option<Live>> = vec![];
    for v in all {
        let port = util::free_port()?;
        let admin = util::free_port()?;
        let mut listeners = vec![http_listener(
            "bench",
            port,
            v.filters.clone(),
            vec![bench_route(v.upstream, &v.route_extra)],
        )];
        let mut clusters = vec![];
        if v.upstream {
            clusters.push(cluster("upstream", up_port));
        }
        if let Some(idp_port) = v.idp {
            listeners.push(idp_listener(&root, idp_port)?);
            clusters.push(cluster("idp", idp_port));
        }
        let boot = bootstrap(admin, listeners, clusters, v.secrets.clone());
        eprintln!("[bench] starting envoy for {}", v.id);
        let cpus = if v.concurrency > 1 {
            &multi_cpus
        } else {
            &args.envoy_cpus
        };
        let started = Envoy::start(&envoy_bin, &work, &v.id, cpus, v.concurrency, admin, &boot);
        let envoy = match started {
            Ok(x) => x,
            Err(e) => {
                eprintln!("[bench] {} not measured: {e:#}", v.id);
                results.push(skipped(v, format!("Envoy did not start: {e:#}")));
                live.push(None);
                continue;
            }
        };
        let addr = local(port);
        let check = util::wait_for(
            &format!("{} answers as expected", v.id),
            Duration::from_secs(40),
            || match sanity(addr, &v) {
                Ok(()) => Ok(Some(())),
                Err(e) => Err(e),
            },
        );
        if let Err(e) = check {
            eprintln!("[bench] {} not measured: {e:#}", v.id);
            results.push(skipped(v, format!("sanity check failed: {e:#}")));
            live.push(None);
            continue;
        }
        let rss_idle = util::status_kib(envoy.pid(), "VmRSS:")
            .ok()
            .map(|k| k as f64 / 1024.0);
        results.push(VariantResult {
            variant: v,
            measured: true,
            skipped_reason: None,
            rounds: vec![],
            median: None,
            ratio_to_none: None,
            rss_delta_mib: None,
            rss_idle_mib: rss_idle,
        });
        live.push(Some(Live { envoy, port }));
    }

    let wrk = Wrk::new(&work, &args.load_cpus, args.connections, 1)?;
    let wrk_multi = Wrk::new(
        &work,
        &multi_cpus,
        args.multi_connections,
        args.multi_threads,
    )?;
    let wrk_for = |v: &Variant| if v.concurrency > 1 { &wrk_multi } else { &wrk };
    // Warm-up (also JIT-compiles the wasm modules' hot paths and fills connection pools).
    for (r, l) in results.iter().zip(&live) {
        if let Some(l) = l {
            eprintln!("[bench] warm-up {}", r.variant.id);
            wrk_for(&r.variant).run(&url(l.port), &r.variant.request_headers, args.warmup)?;
        }
    }
    let t0 = Instant::now();
    let n = results.len();
    let mut load_rounds = vec![];
    for round in 1..=args.rounds {
        load_rounds.push(loadavg());
        // Rotate the starting variant each round, so no variant always runs first (after a pause)
        // or last (on a machine warmed by the others).
        for k in 0..n {
            let i = (k + round as usize - 1) % n;
            let (r, l) = (&mut results[i], &mut live[i]);
            let Some(l) = l else { continue };
            l.envoy.guard.check_alive()?;
            let pid = l.envoy.pid();
            let c0 = util::cpu_seconds(pid)?;
            let w: WrkResult =
                wrk_for(&r.variant).run(&url(l.port), &r.variant.request_headers, args.duration)?;
            let c1 = util::cpu_seconds(pid)?;
            let cpu_us = if w.requests > 0 {
                (c1 - c0) * 1e6 / w.requests as f64
            } else {
                f64::NAN
            };
            let socket_errors =
                w.errors_connect + w.errors_read + w.errors_write + w.errors_timeout;
            eprintln!(
                "[bench] round {round}/{} {:<22} {:>9.0} req/s  p50 {:>6} us  p99 {:>6} us  cpu {:>6.1} us/req  non-2xx {}  socket errors {}  ({:.0}s)",
                args.rounds, r.variant.id, w.rps(), w.p50_us, w.p99_us, cpu_us, w.errors_status, socket_errors,
                t0.elapsed().as_secs_f64()
            );
            r.rounds.push(Round {
                round,
                rps: w.rps(),
                p50_us: w.p50_us,
                p99_us: w.p99_us,
                cpu_us_per_request: cpu_us,
                requests: w.requests,
                non_2xx_3xx: w.errors_status,
                socket_errors,
            });
        }
    }
    for (r, l) in results.iter_mut().zip(&live) {
        let Some(l) = l else { continue };
        let rss = util::status_kib(l.envoy.pid(), "VmRSS:")
            .map(|k| k as f64 / 1024.0)
            .unwrap_or(f64::NAN);
        let col = |f: &dyn Fn(&Round) -> f64| median(&r.rounds.iter().map(f).collect::<Vec<_>>());
        r.median = Some(Summary {
            rps: col(&|x| x.rps),
            p50_us: col(&|x| x.p50_us as f64),
            p99_us: col(&|x| x.p99_us as f64),
            cpu_us_per_request: col(&|x| x.cpu_us_per_request),
            rss_mib: rss,
        });
    }
    let load_end = loadavg();
    let bases: BTreeMap<String, Summary> = results
        .iter()
        .filter_map(|r| r.median.clone().map(|m| (r.variant.id.clone(), m)))
        .collect();
    for r in &mut results {
        let (Some(m), Some(b)) = (&r.median, bases.get(&r.variant.baseline)) else {
            continue;
        };
        r.ratio_to_none = Some(Summary {
            rps: m.rps / b.rps,
            p50_us: m.p50_us / b.p50_us,
            p99_us: m.p99_us / b.p99_us,
            cpu_us_per_request: m.cpu_us_per_request / b.cpu_us_per_request,
            rss_mib: m.rss_mib / b.rss_mib,
        });
        r.rss_delta_mib = Some(m.rss_mib - b.rss_mib);
    }
    drop(live);
    let exactness = if args.exact_duration > 0.0 {
        exactness_phase(&ctx, &args, &envoy_bin, &work, &multi_cpus, &wrk_multi)?
    } else {
        vec![]
    };
    let machine = util::machine();
    let report = FiltersReport {
        benchmark: "filters",
        date_utc: util::now_utc(),
        command: args.command.clone(),
        git: util::git_rev(&root),
        machine,
        envoy_version: util::envoy_version(&envoy_bin),
        envoy_cmd: format!(
            "taskset -c {} envoy -c <variant>.json --concurrency 1 --disable-hot-restart --log-level warn",
            args.envoy_cpus
        ),
        load_generator: wrk.describe(args.duration),
        pinning: format!(
            "Envoy under test on core {}; wrk (1 thread) and the real-upstream Envoy on core {}",
            args.envoy_cpus, args.load_cpus
        ),
        rounds: args.rounds,
        duration_s: args.duration,
        warmup_s: args.warmup,
        connections: args.connections,
        request: format!("GET {PATH} HTTP/1.1, Host {HOST}, a Chrome user-agent, x-debug and x-internal headers (+ the session cookie for oidc/oauth2/chain)"),
        multi: format!(
            "Envoy --concurrency {} and wrk ({} threads, {} connections) share cores {multi_cpus} (taskset): the machine has {} cores, so the workers and the load generator compete; compare the c4 rows with each other and with none-c4, not with the 1-worker rows",
            args.multi_concurrency,
            args.multi_threads,
            args.multi_connections,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        ),
        dynamic_module: format!(
            "{} ({} bytes)",
            args.dynamic_module.display(),
            std::fs::metadata(&ctx.dynamic_module)
                .map(|m| m.len())
                .unwrap_or(0)
        ),
        load_average: LoadSamples {
            start: load_start,
            rounds: load_rounds,
            end: load_end,
        },
        variants: results,
        exactness,
    };
    let out = abs(&root, &args.out);
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    eprintln!("[bench] wrote {}", out.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(Some(report))
}

fn abs(root: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}{PATH}")
}

fn skipped(v: Variant, reason: String) -> VariantResult {
    VariantResult {
        variant: v,
        measured: false,
        skipped_reason: Some(reason),
        rounds: vec![],
        median: None,
        ratio_to_none: None,
        rss_delta_mib: None,
        rss_idle_mib: None,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A counter from Envoy's admin `/stats` (plain text, `name: value` lines).
fn admin_counter(admin: u16, name: &str) -> Result<u64> {
    let r = util::get(local(admin), "/stats")?;
    let body = String::from_utf8_lossy(&r.body);
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| anyhow!("no counter {name} on /stats"))
}

/// Exactness with several workers: a fresh Envoy per filter with one local bucket of
/// `--exact-limit` per day (burst the same), loaded by the multi-worker wrk for
/// `--exact-duration` seconds; an exact process-wide bucket lets exactly the limit through.
fn exactness_phase(
    ctx: &Ctx,
    args: &FiltersArgs,
    envoy_bin: &Path,
    work: &Path,
    cpus: &str,
    wrk: &Wrk,
) -> Result<Vec<Exactness>> {
    let lib = dynamic_module(ctx)?;
    let rl = module(ctx, "ratelimit")?;
    let n = args.exact_limit;
    let cases = [
        (
            "rl-dyn-exact",
            "ratelimit dynamic module",
            envoy::dynamic_filter(&lib, "ratelimit", &rl_config(Rl::PerDay(n))),
        ),
        (
            "rl-wasm-exact",
            "ratelimit wasm",
            envoy::wasm_filter("ratelimit", &rl, &rl_config(Rl::PerDay(n))),
        ),
        (
            "rl-native-exact",
            "local_ratelimit native",
            local_ratelimit(Rl::PerDay(n)),
        ),
    ];
    let mut out = vec![];
    for (id, label, filter) in cases {
        let port = util::free_port()?;
        let admin = util::free_port()?;
        let boot = bootstrap(
            admin,
            vec![http_listener(
                "bench",
                port,
                vec![filter],
                vec![bench_route(false, &json!({}))],
            )],
            vec![],
            vec![],
        );
        eprintln!("[bench] exactness: starting envoy for {id}");
        let mut e = Exactness {
            id: id.into(),
            label: label.into(),
            concurrency: args.multi_concurrency,
            limit: n,
            connections: wrk.connections,
            seconds: args.exact_duration,
            requests: 0,
            passed: None,
            limited: None,
            error: None,
        };
        let res = (|| -> Result<()> {
            let envoy = Envoy::start(
                envoy_bin,
                work,
                id,
                cpus,
                args.multi_concurrency,
                admin,
                &boot,
            )?;
            let w = wrk.run(&url(port), &base_headers(), args.exact_duration)?;
            e.requests = w.requests;
            e.passed = Some(admin_counter(admin, "http.bench.downstream_rq_2xx")?);
            e.limited = Some(admin_counter(admin, "http.bench.downstream_rq_4xx").unwrap_or(0));
            drop(envoy);
            Ok(())
        })();
        if let Err(err) = res {
            eprintln!("[bench] exactness {id}: {err:#}");
            e.error = Some(format!("{err:#}"));
        } else {
            eprintln!(
                "[bench] exactness {id}: limit {n}, {} requests, {:?} passed, {:?} limited",
                e.requests, e.passed, e.limited
            );
        }
        out.push(e);
    }
    Ok(out)
}
