//! A real headless browser for tests: Debian `chromium` driven through `chromedriver` with a
//! minimal W3C WebDriver client (plain JSON over HTTP, no extra crates).
//!
//! ```no_run
//! use portcullis_integration::browser::Browser;
//! let mut b = Browser::start().unwrap();
//! b.goto("http://127.0.0.1:18080/").unwrap();
//! b.screenshot("oidc", "01-start").unwrap();
//! ```
//!
//! Chromium runs with a fresh `--user-data-dir` and `--headless --no-sandbox --disable-gpu
//! --disable-quic --no-first-run --disable-background-networking --disable-component-update
//! --disable-sync`. `setup.sh browser` installs both (`/usr/bin/chromium`, `/usr/bin/chromedriver`).

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::process::{wait_until, workspace_root, Error, Process, ProcessBuilder};

fn io(what: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Io {
        what: what.into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Paths of the browser binaries (`CHROMIUM_BIN` / `CHROMEDRIVER_BIN` override).
fn bins() -> (PathBuf, PathBuf) {
    let chromium = std::env::var_os("CHROMIUM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    let driver = std::env::var_os("CHROMEDRIVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromedriver".into());
    (chromium, driver)
}

/// Whether chromium and chromedriver are installed.
pub fn available() -> bool {
    let (c, d) = bins();
    c.is_file() && d.is_file()
}

/// The port in chromedriver's "ChromeDriver was started successfully on port N." line.
fn driver_port(line: &str) -> Option<u16> {
    let rest = line.split_once("started successfully on port ")?.1;
    rest.trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
        .filter(|p| *p != 0)
}

/// A WebDriver session on a headless chromium; the driver (and browser) die on drop.
pub struct Browser {
    _driver: Process,
    _profile: tempfile::TempDir,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
}

impl Browser {
    /// Starts chromedriver on an ephemeral port and opens a session.
    ///
    /// chromedriver binds `--port=0` and logs the port it got ("ChromeDriver was started
    /// successfully on port N."); it starts chromium itself with `--remote-debugging-port=0`
    /// and reads the DevTools port from `DevToolsActivePort` in the user-data-dir. No port is
    /// chosen before it is bound.
    pub fn start() -> Result<Self, Error> {
        let (chromium, driver_bin) = bins();
        let mut driver = ProcessBuilder::new("chromedriver", &driver_bin)
            .arg("--port=0")
            .spawn()?;
        let log_path = driver.log_path().to_path_buf();
        let port = driver.wait_until(
            "chromedriver to report its port",
            Duration::from_secs(30),
            || {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                log.lines()
                    .find_map(driver_port)
                    .ok_or("no \"started successfully on port\" line yet")
            },
        )?;
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| io("http client", e))?;
        let base = format!("http://127.0.0.1:{port}");
        let status = format!("{base}/status");
        driver.wait_until("chromedriver /status", Duration::from_secs(30), || {
            let v: Value = http
                .get(&status)
                .send()
                .and_then(|r| r.json())
                .map_err(|e| e.to_string())?;
            if v["value"]["ready"].as_bool() == Some(true) {
                Ok(())
            } else {
                Err(v.to_string())
            }
        })?;
        let profile = tempfile::Builder::new()
            .prefix("portcullis-chromium-")
            .tempdir()
            .map_err(|e| io("tempdir", e))?;
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1100,800".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args}
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .and_then(|r| r.json())
            .map_err(|e| io("new WebDriver session", e))?;
        let session = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| io("new WebDriver session", format!("{v}{}", driver.log_tail())))?
            .to_string();
        Ok(Self {
            _driver: driver,
            _profile: profile,
            base,
            session,
            http,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Error> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .json(&body.unwrap_or_else(|| json!({}))),
        };
        let v: Value = req
            .send()
            .and_then(|r| r.json())
            .map_err(|e| io(format!("{method} {path}"), e))?;
        if let Some(err) = v["value"].get("error") {
            return Err(io(
                format!("{method} {path}"),
                format!("{err}: {}", v["value"]["message"]),
            ));
        }
        Ok(v["value"].clone())
    }

    pub fn goto(&mut self, url: &str) -> Result<(), Error> {
        self.call("POST", "/url", Some(json!({"url": url})))
            .map(|_| ())
    }

    pub fn current_url(&self) -> Result<String, Error> {
        Ok(self
            .call("GET", "/url", None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The page text (`document.body.innerText`).
    pub fn text(&self) -> Result<String, Error> {
        let v = self.call("POST", "/execute/sync", Some(json!({"script": "return document.body ? document.body.innerText : ''", "args": []})))?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Element id of the first match of a CSS selector, waiting up to 20 s for it to appear.
    pub fn find(&self, css: &str) -> Result<String, Error> {
        wait_until(&format!("element {css}"), Duration::from_secs(20), || {
            let v = self.call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )?;
            v.as_object()
                .and_then(|o| o.values().next())
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| io("element id", v))
        })
    }

    pub fn type_into(&self, css: &str, text: &str) -> Result<(), Error> {
        let id = self.find(css)?;
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .map(|_| ())
    }

    pub fn click(&self, css: &str) -> Result<(), Error> {
        let id = self.find(css)?;
        self.call("POST", &format!("/element/{id}/click"), None)
            .map(|_| ())
    }

    /// Waits until the current URL satisfies `pred`.
    pub fn wait_url(&self, what: &str, pred: impl Fn(&str) -> bool) -> Result<String, Error> {
        wait_until(what, Duration::from_secs(30), || {
            let url = self.current_url()?;
            if pred(&url) {
                Ok(url)
            } else {
                Err(io("url", url))
            }
        })
    }

    /// Names of the cookies the browser holds for the current page.
    pub fn cookie_names(&self) -> Result<Vec<String>, Error> {
        let v = self.call("GET", "/cookie", None)?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Saves a PNG under `target/test-artifacts/<dir>/<name>.png`; returns its path.
    pub fn screenshot(&self, dir: &str, name: &str) -> Result<PathBuf, Error> {
        let v = self.call("GET", "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .map_err(|e| io("screenshot base64", e))?;
        let out = workspace_root().join("target/test-artifacts").join(dir);
        std::fs::create_dir_all(&out).map_err(|e| io("mkdir artifacts", e))?;
        let path = out.join(format!("{name}.png"));
        std::fs::write(&path, png).map_err(|e| io("write screenshot", e))?;
        Ok(path)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", None);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn driver_port_reads_the_started_line() {
        let line = "ChromeDriver was started successfully on port 33327.";
        assert_eq!(super::driver_port(line), Some(33327));
        assert_eq!(super::driver_port("Only local connections are allowed."), None);
    }
}
