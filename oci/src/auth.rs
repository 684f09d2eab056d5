//! Registry credentials: anonymous, basic, and Docker `config.json` / `.dockerconfigjson`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::OciError;

/// How to authenticate to a registry.
///
/// With `Basic`, the credentials are sent as HTTP Basic auth when the registry asks for Basic,
/// or to the token server when it answers with a `WWW-Authenticate: Bearer` challenge
/// (the Docker token flow); the token it returns is then used as a Bearer token.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RegistryAuth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry token used as-is (`registrytoken` in a Docker config).
    Bearer(String),
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            RegistryAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: Option<BTreeMap<String, DockerAuthEntry>>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct DockerAuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl RegistryAuth {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        RegistryAuth::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Credentials for `registry_host` (e.g. `ghcr.io`, `127.0.0.1:5000`) from a Docker
    /// `config.json` or a Kubernetes `.dockerconfigjson` Secret value (same format; the
    /// legacy `.dockercfg` layout without `auths` is read too). A registry that is not listed
    /// gives `Anonymous`, as Docker does. Credential helpers are not run here (a Secret has
    /// none); [`RegistryAuth::from_docker_config_file`] runs them.
    pub fn from_docker_config_json(bytes: &[u8], registry_host: &str) -> Result<Self, OciError> {
        let config = parse_config(bytes)?;
        let auth = inline_auth(&config, registry_host)?;
        if auth == RegistryAuth::Anonymous {
            if let Some(helper) = helper_for(&config, registry_host) {
                tracing::warn!(
                    registry = registry_host,
                    helper,
                    "credential helpers are only run for Docker config files; pulling anonymously"
                );
            }
        }
        Ok(auth)
    }

    /// Reads a Docker config file, see [`RegistryAuth::from_docker_config_json`]. When the
    /// file names a credential helper for the registry (`credHelpers`, else `credsStore`, as
    /// Docker Desktop writes), `docker-credential-<helper> get` is asked first, as Docker does.
    pub fn from_docker_config_file(path: &Path, registry_host: &str) -> Result<Self, OciError> {
        let in_file = |msg: String| OciError::DockerConfig(format!("{}: {msg}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| in_file(format!("cannot read it: {e}")))?;
        let config = parse_config(&bytes).map_err(|e| match e {
            OciError::DockerConfig(msg) => in_file(msg),
            other => other,
        })?;
        if let Some(helper) = helper_for(&config, registry_host) {
            let program = format!("docker-credential-{helper}");
            if let Some(auth) = run_credential_helper(Path::new(&program), registry_host)? {
                return Ok(auth);
            }
        }
        inline_auth(&config, registry_host).map_err(|e| match e {
            OciError::DockerConfig(msg) => in_file(msg),
            other => other,
        })
    }
}

fn parse_config(bytes: &[u8]) -> Result<DockerConfig, OciError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| OciError::DockerConfig(format!("not valid JSON: {e}")))?;
    let is_modern = value.get("auths").is_some()
        || value.get("credsStore").is_some()
        || value.get("credHelpers").is_some();
    if is_modern {
        serde_json::from_value(value)
            .map_err(|e| OciError::DockerConfig(format!("unexpected layout: {e}")))
    } else {
        // Legacy `.dockercfg`: the top level is the map of registries.
        let auths: BTreeMap<String, DockerAuthEntry> = serde_json::from_value(value)
            .map_err(|e| OciError::DockerConfig(format!("unexpected layout: {e}")))?;
        Ok(DockerConfig {
            auths: Some(auths),
            ..DockerConfig::default()
        })
    }
}

fn inline_auth(config: &DockerConfig, registry_host: &str) -> Result<RegistryAuth, OciError> {
    let wanted = normalize_host(registry_host);
    let entry = config
        .auths
        .as_ref()
        .and_then(|auths| auths.iter().find(|(key, _)| normalize_host(key) == wanted));
    match entry {
        Some((key, entry)) => entry_to_auth(key, entry),
        None => Ok(RegistryAuth::Anonymous),
    }
}

fn helper_for<'a>(config: &'a DockerConfig, registry_host: &str) -> Option<&'a str> {
    let wanted = normalize_host(registry_host);
    config
        .cred_helpers
        .iter()
        .find(|(key, _)| normalize_host(key) == wanted)
        .map(|(_, helper)| helper.as_str())
        .or(config.creds_store.as_deref())
        .filter(|h| !h.is_empty())
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// The Docker credential helper protocol: `<program> get`, the server on stdin, JSON
/// `{"ServerURL","Username","Secret"}` on stdout. `Ok(None)` when it has no credentials.
fn run_credential_helper(
    program: &Path,
    registry_host: &str,
) -> Result<Option<RegistryAuth>, OciError> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    let server = if normalize_host(registry_host) == "index.docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry_host.to_string()
    };
    let name = program.display();
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| OciError::DockerConfig(format!("cannot run credential helper {name}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper may exit without reading (e.g. nothing stored); its answer still counts.
        if let Err(e) = stdin.write_all(server.as_bytes()) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(OciError::DockerConfig(format!(
                    "credential helper {name}: {e}"
                )));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| OciError::DockerConfig(format!("credential helper {name}: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        return Err(OciError::DockerConfig(format!(
            "credential helper {name} failed for {server} ({}): {}{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout).map_err(|e| {
        OciError::DockerConfig(format!(
            "credential helper {name} answered something that is not its JSON: {e}"
        ))
    })?;
    if reply.username == "<token>" {
        return Err(OciError::DockerConfig(format!(
            "credential helper {name} holds an identity token for {server}, which is not supported; log in with a username and password or token"
        )));
    }
    if reply.username.is_empty() && reply.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(RegistryAuth::basic(reply.username, reply.secret)))
}

fn entry_to_auth(key: &str, entry: &DockerAuthEntry) -> Result<RegistryAuth, OciError> {
    if let Some(token) = entry.registrytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(RegistryAuth::Bearer(token.to_string()));
    }
    if let (Some(user), Some(pass)) = (entry.username.as_deref(), entry.password.as_deref()) {
        if !user.is_empty() {
            return Ok(RegistryAuth::basic(user, pass));
        }
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| OciError::DockerConfig(format!("`auth` for {key} is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| OciError::DockerConfig(format!("`auth` for {key} is not UTF-8")))?;
        let (user, pass) = decoded.split_once(':').ok_or_else(|| {
            OciError::DockerConfig(format!("`auth` for {key} is not `username:password`"))
        })?;
        return Ok(RegistryAuth::basic(user, pass));
    }
    if entry.identitytoken.is_some() {
        return Err(OciError::DockerConfig(format!(
            "{key} uses an `identitytoken` (OAuth refresh token), which is not supported; use a username and password or token"
        )));
    }
    Ok(RegistryAuth::Anonymous)
}

/// Reduces a Docker config key (`https://index.docker.io/v1/`, `http://host:5000`, `host`)
/// or a registry host to a comparable host[:port].
fn normalize_host(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "index.docker.io".to_string(),
        _ => host,
    }
}

/// Where Docker keeps its config: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".docker").join("config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn basic_auth_field_is_decoded() {
        let cfg = format!(
            r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{}"}}}}}}"#,
            b64("alice:s3cr:et")
        );
        let auth = RegistryAuth::from_docker_config_json(cfg.as_bytes(), "127.0.0.1:5000").unwrap();
        assert_eq!(auth, RegistryAuth::basic("alice", "s3cr:et"));
    }

    #[test]
    fn username_password_and_url_keys() {
        let cfg = r#"{"auths":{"https://ghcr.io/v1/":{"username":"bob","password":"pw"}}}"#;
        let auth = RegistryAuth::from_docker_config_json(cfg.as_bytes(), "ghcr.io").unwrap();
        assert_eq!(auth, RegistryAuth::basic("bob", "pw"));
        let other = RegistryAuth::from_docker_config_json(cfg.as_bytes(), "quay.io").unwrap();
        assert_eq!(other, RegistryAuth::Anonymous);
    }

    #[test]
    fn docker_hub_aliases_match() {
        let cfg = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}}}}}}"#,
            b64("u:p")
        );
        for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            let auth = RegistryAuth::from_docker_config_json(cfg.as_bytes(), host).unwrap();
            assert_eq!(auth, RegistryAuth::basic("u", "p"), "{host}");
        }
    }

    #[test]
    fn legacy_dockercfg_and_registry_token() {
        let legacy = format!(r#"{{"reg.example:443":{{"auth":"{}"}}}}"#, b64("x:y"));
        let auth =
            RegistryAuth::from_docker_config_json(legacy.as_bytes(), "reg.example:443").unwrap();
        assert_eq!(auth, RegistryAuth::basic("x", "y"));
        let tok = r#"{"auths":{"reg.example":{"registrytoken":"tkn"}}}"#;
        let auth = RegistryAuth::from_docker_config_json(tok.as_bytes(), "reg.example").unwrap();
        assert_eq!(auth, RegistryAuth::Bearer("tkn".into()));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(RegistryAuth::from_docker_config_json(b"not json", "h").is_err());
        let bad = r#"{"auths":{"h":{"auth":"%%%"}}}"#;
        let err = RegistryAuth::from_docker_config_json(bad.as_bytes(), "h").unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
        let no_colon = format!(r#"{{"auths":{{"h":{{"auth":"{}"}}}}}}"#, b64("nocolon"));
        let err = RegistryAuth::from_docker_config_json(no_colon.as_bytes(), "h").unwrap_err();
        assert!(err.to_string().contains("username:password"), "{err}");
    }

    fn helper_script(dir: &Path, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("docker-credential-fake");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn credential_helper_protocol() {
        let dir = tempfile::tempdir().unwrap();
        // Answers with the server it was asked about, so the test sees what went to stdin.
        let ok = helper_script(
            dir.path(),
            r#"[ "$1" = get ] || exit 3; read -r server; printf '{"ServerURL":"%s","Username":"u-%s","Secret":"s3"}' "$server" "$server""#,
        );
        let auth = run_credential_helper(&ok, "ghcr.io").unwrap();
        assert_eq!(auth, Some(RegistryAuth::basic("u-ghcr.io", "s3")));
        let hub = run_credential_helper(&ok, "docker.io").unwrap();
        assert_eq!(
            hub,
            Some(RegistryAuth::basic("u-https://index.docker.io/v1/", "s3"))
        );

        let missing = helper_script(
            dir.path(),
            "echo 'credentials not found in native keychain'; exit 1",
        );
        assert_eq!(run_credential_helper(&missing, "ghcr.io").unwrap(), None);

        let broken = helper_script(dir.path(), "echo boom >&2; exit 2");
        let err = run_credential_helper(&broken, "ghcr.io")
            .unwrap_err()
            .to_string();
        assert!(err.contains("boom") && err.contains("ghcr.io"), "{err}");

        let token = helper_script(dir.path(), r#"echo '{"Username":"<token>","Secret":"x"}'"#);
        let err = run_credential_helper(&token, "ghcr.io")
            .unwrap_err()
            .to_string();
        assert!(err.contains("identity token"), "{err}");

        let err = run_credential_helper(&dir.path().join("nope"), "ghcr.io").unwrap_err();
        assert!(
            err.to_string().contains("cannot run credential helper"),
            "{err}"
        );
    }

    #[test]
    fn helper_selection_follows_docker() {
        let cfg = parse_config(
            br#"{"auths":{"ghcr.io":{}},"credsStore":"desktop","credHelpers":{"https://quay.io":"quayhelper"}}"#,
        )
        .unwrap();
        assert_eq!(helper_for(&cfg, "quay.io"), Some("quayhelper"));
        assert_eq!(helper_for(&cfg, "ghcr.io"), Some("desktop"));
        // The empty placeholder Docker Desktop writes under `auths` is not a credential.
        assert_eq!(
            inline_auth(&cfg, "ghcr.io").unwrap(),
            RegistryAuth::Anonymous
        );
        let none = parse_config(br#"{"auths":{}}"#).unwrap();
        assert_eq!(helper_for(&none, "ghcr.io"), None);
    }

    #[test]
    fn debug_redacts_secrets() {
        let dbg = format!("{:?}", RegistryAuth::basic("alice", "hunter2"));
        assert!(dbg.contains("alice") && !dbg.contains("hunter2"), "{dbg}");
    }
}
