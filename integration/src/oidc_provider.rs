//! A real OpenID provider for tests: npm `oidc-provider` 9 with devInteractions
//! (`tools/oidc/provider.js`), on an ephemeral 127.0.0.1 port that the provider binds itself
//! (port 0) and reports in its `ready <issuer>` line; killed on drop.
//!
//! ```no_run
//! use portcullis_integration::oidc_provider::{OidcProvider, ProviderOptions, TestClient};
//! let provider = OidcProvider::start(ProviderOptions {
//!     clients: vec![TestClient::for_gateway("app", 18080)],
//!     ..ProviderOptions::default()
//! }).unwrap();
//! println!("{}", provider.issuer());
//! ```
//!
//! Any login and password are accepted; user `bob` is in group `viewers`, everyone else in
//! `admins` and `dev`. Claims `email`, `groups` (and `big`, scope `big`) go into the ID token.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::process::{workspace_root, Error, Process, ProcessBuilder};

/// A client registered at the provider.
#[derive(Debug, Clone, Serialize)]
pub struct TestClient {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
}

impl TestClient {
    /// Secret `<id>-secret`, callback `http://127.0.0.1:<port>/oauth2/callback`, post-logout
    /// `http://127.0.0.1:<port>/`.
    pub fn for_gateway(client_id: &str, port: u16) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: format!("{client_id}-secret"),
            redirect_uris: vec![format!("http://127.0.0.1:{port}/oauth2/callback")],
            post_logout_redirect_uris: vec![format!("http://127.0.0.1:{port}/")],
        }
    }

    /// Like [`for_gateway`](Self::for_gateway), on whatever port the gateway binds: the URIs
    /// are registered without a port, which `tools/oidc/provider.js` matches on any port of
    /// 127.0.0.1 (as RFC 8252 section 7.3 does for native apps).
    pub fn loopback(client_id: &str) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: format!("{client_id}-secret"),
            redirect_uris: vec!["http://127.0.0.1/oauth2/callback".into()],
            post_logout_redirect_uris: vec!["http://127.0.0.1/".into()],
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProviderOptions {
    pub clients: Vec<TestClient>,
    /// Access-token lifetime (seconds).
    pub access_token_ttl: u64,
    /// ID-token lifetime (seconds).
    pub id_token_ttl: u64,
    /// Size of the `big` claim (scope `big`); 0 for none.
    pub big_claim_bytes: usize,
    /// Serve https with this certificate chain and key (PEM files); the issuer is then
    /// `https://127.0.0.1:<port>`.
    pub tls: Option<ProviderTls>,
}

/// PEM files the provider serves https with.
#[derive(Debug, Clone)]
pub struct ProviderTls {
    pub cert_chain: PathBuf,
    pub key: PathBuf,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self {
            clients: Vec::new(),
            access_token_ttl: 300,
            id_token_ttl: 3600,
            big_claim_bytes: 0,
            tls: None,
        }
    }
}

/// A running provider.
#[derive(Debug)]
pub struct OidcProvider {
    process: Process,
    port: u16,
    opts: ProviderOptions,
}

fn tools_dir() -> PathBuf {
    workspace_root().join("tools/oidc")
}

/// Runs `scripts/setup.sh oidc` (npm install) once if `oidc-provider` is missing, under a lock
/// so parallel test binaries do not install concurrently.
pub fn ensure_installed() -> Result<(), Error> {
    let marker = tools_dir().join("node_modules/oidc-provider/package.json");
    if marker.is_file() {
        return Ok(());
    }
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner());
    let lock_path = workspace_root().join("target/.portcullis-oidc-npm.lock");
    if let Some(parent) = lock_path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::Io {
            what: "mkdir target".into(),
            source: e,
        })?;
    }
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::Io {
            what: format!("open {}", lock_path.display()),
            source: e,
        })?;
    lock.lock().map_err(|e| Error::Io {
        what: "lock npm install".into(),
        source: e,
    })?;
    if marker.is_file() {
        return Ok(());
    }
    let status = Command::new("bash")
        .arg(workspace_root().join("scripts/setup.sh"))
        .arg("oidc")
        .status()
        .map_err(|e| Error::Io {
            what: "run scripts/setup.sh oidc".into(),
            source: e,
        })?;
    if !status.success() || !marker.is_file() {
        return Err(Error::Io {
            what: "scripts/setup.sh oidc".into(),
            source: std::io::Error::other(format!("npm install failed ({status})")),
        });
    }
    Ok(())
}

impl OidcProvider {
    /// Installs (if needed) and starts the provider on an ephemeral port (it binds port 0);
    /// waits until it prints `ready <issuer>` and takes the port from that issuer.
    pub fn start(opts: ProviderOptions) -> Result<Self, Error> {
        Self::start_on(0, opts)
    }

    /// Like [`start`](Self::start) on `port` (0: ephemeral). Only [`restart`](Self::restart)
    /// passes a nonzero port: the one the previous provider had bound.
    fn start_on(port: u16, opts: ProviderOptions) -> Result<Self, Error> {
        ensure_installed()?;
        let options = opts.clone();
        let clients = serde_json::to_string(&opts.clients).map_err(|e| Error::Io {
            what: "serialize clients".into(),
            source: e.into(),
        })?;
        let mut builder = ProcessBuilder::new("oidc-provider", "node");
        if let Some(tls) = &opts.tls {
            builder = builder
                .env("TLS_CERT", tls.cert_chain.display().to_string())
                .env("TLS_KEY", tls.key.display().to_string());
        }
        let mut process = builder
            .arg(tools_dir().join("provider.js"))
            .current_dir(tools_dir())
            .env("PORT", port.to_string())
            .env("CLIENTS", clients)
            .env("AT_TTL", opts.access_token_ttl.to_string())
            .env("ID_TTL", opts.id_token_ttl.to_string())
            .env("BIG_CLAIM_BYTES", opts.big_claim_bytes.to_string())
            .env("NODE_ENV", "development")
            .spawn()?;
        let log_path = process.log_path().to_path_buf();
        // Generous: once, in a full `make test` on a loaded 2-core machine, node took over 60 s.
        let issuer = process.wait_until(
            "oidc-provider to print ready",
            Duration::from_secs(120),
            || {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                log.lines()
                    .find_map(|l| l.strip_prefix("ready "))
                    .map(|i| i.trim().to_string())
                    .ok_or("not ready yet")
            },
        )?;
        let port = issuer_port(&issuer).ok_or_else(|| Error::Io {
            what: format!("oidc-provider reported issuer {issuer:?}"),
            source: std::io::Error::other("no port in the issuer"),
        })?;
        Ok(Self {
            process,
            port,
            opts: options,
        })
    }

    /// Kills the provider and starts it again on the same port with the same options: it
    /// forgets every grant, session and refresh token, and signs with new keys under new kids
    /// (what a key rotation looks like to the gateway). The issuer must not change, so this
    /// rebinds the port the provider had bound (the one place a port is bound by number; it
    /// was this provider's own port until the kill).
    pub fn restart(&mut self) -> Result<(), Error> {
        self.process.kill();
        let fresh = Self::start_on(self.port, self.opts.clone())?;
        *self = fresh;
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>` (`https://` when served with [`ProviderOptions::tls`]).
    pub fn issuer(&self) -> String {
        let scheme = if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

/// The port of an `http(s)://127.0.0.1:<port>` issuer.
fn issuer_port(issuer: &str) -> Option<u16> {
    let rest = issuer.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    authority
        .rsplit_once(':')?
        .1
        .parse()
        .ok()
        .filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn issuer_port_parses_the_bound_port() {
        assert_eq!(super::issuer_port("http://127.0.0.1:39449"), Some(39449));
        assert_eq!(super::issuer_port("https://127.0.0.1:443/"), Some(443));
        assert_eq!(super::issuer_port("http://127.0.0.1"), None);
    }
}
