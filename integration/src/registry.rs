//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on a free
//! 127.0.0.1 port, filesystem storage in a temp dir, optionally behind htpasswd (bcrypt) auth
//! or behind token auth (the Docker token flow, with a token server the test runs), or serving
//! HTTPS with a certificate the test made.
//!
//! ```no_run
//! use portcullis_integration::registry::Registry;
//! let reg = Registry::start().unwrap();              // anonymous
//! let authed = Registry::start_with_auth("alice", "s3cret").unwrap();
//! println!("{} {}", reg.host(), authed.url());       // 127.0.0.1:PORT, http://127.0.0.1:PORT
//! // Both are killed (and their storage removed) on drop.
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{Error, Process, ProcessBuilder};

/// The registry binary: `$DOCKER_REGISTRY_BIN`, else `docker-registry` on `PATH`
/// (`bash scripts/setup.sh registry` installs it).
pub fn registry_bin() -> PathBuf {
    std::env::var_os("DOCKER_REGISTRY_BIN")
        .filter(|b| !b.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("docker-registry"))
}

/// Token auth settings (distribution's `auth.token`): the registry answers
/// `WWW-Authenticate: Bearer realm=<realm>,service=<service>` and accepts JWTs issued by
/// `issuer` whose signing certificate chains to `root_cert_pem`.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub root_cert_pem: String,
}

enum AuthMode {
    None,
    Htpasswd(String, String),
    Token(TokenAuth),
}

/// A running registry; killed on drop.
#[derive(Debug)]
pub struct Registry {
    process: Process,
    port: u16,
    credentials: Option<(String, String)>,
    tls: bool,
}

impl Registry {
    /// An anonymous registry (anyone may push and pull).
    pub fn start() -> Result<Self, Error> {
        Self::spawn(AuthMode::None, None)
    }

    /// A registry that demands HTTP Basic auth (htpasswd, bcrypt) for every request.
    pub fn start_with_auth(username: &str, password: &str) -> Result<Self, Error> {
        Self::spawn(
            AuthMode::Htpasswd(username.to_string(), password.to_string()),
            None,
        )
    }

    /// A registry that demands Bearer tokens from the given token server.
    pub fn start_with_token_auth(token: TokenAuth) -> Result<Self, Error> {
        Self::spawn(AuthMode::Token(token), None)
    }

    /// An anonymous registry serving HTTPS only, with this PEM certificate (chain) and key.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        Self::spawn(AuthMode::None, Some((cert_pem, key_pem)))
    }

    fn spawn(mode: AuthMode, tls: Option<(&str, &str)>) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-registry-")
            .tempdir()
            .map_err(|e| io_err("create registry temp dir", e))?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).map_err(|e| io_err("create registry storage", e))?;
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:0\n  secret: portcullis-test-only\n",
            storage = storage.display()
        );
        if let Some((cert, key)) = tls {
            let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            std::fs::write(&cert_path, cert).map_err(|e| io_err("write TLS certificate", e))?;
            std::fs::write(&key_path, key).map_err(|e| io_err("write TLS key", e))?;
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert_path.display(),
                key_path.display()
            ));
        }
        let mut credentials = None;
        match &mode {
            AuthMode::None => {}
            AuthMode::Htpasswd(user, pass) => {
                let htpasswd = dir.path().join("htpasswd");
                write_htpasswd(&htpasswd, user, pass)?;
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: portcullis-test\n    path: {}\n",
                    htpasswd.display()
                ));
                credentials = Some((user.clone(), pass.clone()));
            }
            AuthMode::Token(t) => {
                let bundle = dir.path().join("token-root.pem");
                std::fs::write(&bundle, &t.root_cert_pem)
                    .map_err(|e| io_err("write token root cert", e))?;
                // JSON strings are valid YAML scalars, so any realm/service text is quoted safely.
                let q = |v: &str| serde_json::Value::from(v).to_string();
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    q(&t.realm),
                    q(&t.service),
                    q(&t.issuer),
                    q(&bundle.display().to_string())
                ));
            }
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(|e| io_err("write registry config", e))?;

        let mut process = ProcessBuilder::new("registry", registry_bin())
            .arg("serve")
            .arg(&config_path)
            // The registry reads REGISTRY_* variables as config overrides; keep the host's out.
            .env_remove("REGISTRY_HTTP_ADDR")
            .spawn_in(dir)?;
        // Port 0: the registry logs the address it bound (`msg="listening on 127.0.0.1:N"`).
        let log_path = process.log_path().to_path_buf();
        let port = process.wait_until(
            "registry to log its listening address",
            Duration::from_secs(30),
            || {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                listening_port(&log).ok_or("not listening yet")
            },
        )?;
        let url = format!("http://127.0.0.1:{port}/v2/");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| io_err("build HTTP client", std::io::Error::other(e)))?;
        process.wait_until("registry /v2/ to answer", Duration::from_secs(30), || {
            if tls.is_some() {
                // The test's CA is not ours to trust here; a TCP connect shows it is serving.
                return std::net::TcpStream::connect(("127.0.0.1", port))
                    .map(|_| ())
                    .map_err(|e| e.to_string());
            }
            match client.get(&url).send() {
                // 401 is the answer of a registry with auth: it is up.
                Ok(r) if r.status().is_success() || r.status().as_u16() == 401 => Ok(()),
                Ok(r) => Err(format!("HTTP {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        })?;
        Ok(Registry {
            process,
            port,
            credentials,
            tls: tls.is_some(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` (`https://` when started with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The username and password when started with auth.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// A Docker `config.json` / `.dockerconfigjson` body with this registry's credentials.
    pub fn docker_config_json(&self) -> Option<String> {
        use base64::Engine as _;
        let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        self.credentials().map(|(u, p)| {
            serde_json::json!({ "auths": { self.host(): { "auth": encode(format!("{u}:{p}").as_bytes()) } } })
                .to_string()
        })
    }

    pub fn process(&self) -> &Process {
        &self.process
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Where the registry's config, storage and log live.
    pub fn dir(&self) -> &Path {
        self.process.dir()
    }
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    Error::Io {
        what: what.to_string(),
        source: e,
    }
}

/// One bcrypt htpasswd line via `htpasswd -Bbn` (apache2-utils), the format the registry reads.
fn write_htpasswd(path: &Path, user: &str, pass: &str) -> Result<(), Error> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, pass])
        .output()
        .map_err(|e| {
            io_err(
                "run htpasswd (install apache2-utils: `bash scripts/setup.sh registry`)",
                e,
            )
        })?;
    if !out.status.success() {
        return Err(io_err(
            "htpasswd",
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        ));
    }
    std::fs::write(path, &out.stdout).map_err(|e| io_err("write htpasswd", e))
}

/// The port in the registry's `listening on 127.0.0.1:N` log line.
fn listening_port(log: &str) -> Option<u16> {
    log.lines().find_map(|l| {
        let rest = &l[l.find("listening on 127.0.0.1:")? + "listening on 127.0.0.1:".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok().filter(|p| *p != 0)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_port_from_the_listening_line() {
        let log = "time=x level=info msg=\"redirecting\"\n\
                   time=x level=info msg=\"listening on 127.0.0.1:34193\" go.version=go1.19.8\n";
        assert_eq!(super::listening_port(log), Some(34193));
        assert_eq!(
            super::listening_port("msg=\"listening on 127.0.0.1:0\""),
            None
        );
        assert_eq!(super::listening_port("starting"), None);
    }
}
