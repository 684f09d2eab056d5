//! Echo upstream: answers every request with JSON describing what it received.
//!
//! Response body: `{"method", "path", "headers": {name: [values...]}, "body"}`; header names
//! are lowercase and every value is kept, in order, so repeated headers are visible.
//!
//! Request headers that steer the response (so tests can exercise response-side filters):
//! - `x-echo-response-header: name: value` (repeatable) adds `name: value` to the response;
//! - `x-echo-status: 418` sets the status code.
//!
//! Use [`EchoServer::start`] in tests (in-process, on a free port, stopped on drop) or the
//! `echo-upstream` binary (`--addr 127.0.0.1:18080`) from scripts.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Request header that adds a response header (`name: value`), repeatable.
pub const RESPONSE_HEADER: &str = "x-echo-response-header";
/// Request header that sets the response status code.
pub const STATUS_HEADER: &str = "x-echo-status";

/// What the echo upstream saw; also what tests deserialize.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Echo {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
}

impl Echo {
    /// All values of a request header (lowercase name), empty if absent.
    pub fn header_all(&self, name: &str) -> &[String] {
        self.headers.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The single value of a header; `None` if absent. Panics (test helper) if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.header_all(name);
        assert!(all.len() <= 1, "header {name} repeated: {all:?}");
        all.first().map(String::as_str)
    }
}

/// The axum router of the echo upstream (every method, every path).
pub fn router() -> axum::Router {
    axum::Router::new().fallback(echo_handler)
}

async fn echo_handler(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &headers {
        seen.entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let echo = Echo {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| uri.path().to_string()),
        headers: seen,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let status = headers
        .get(STATUS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = (status, axum::Json(&echo)).into_response();
    for spec in headers.get_all(RESPONSE_HEADER) {
        let Some((name, value)) = spec.to_str().ok().and_then(|s| s.split_once(':')) else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) else {
            continue;
        };
        response.headers_mut().append(name, value);
    }
    response
}

/// Serves the echo router on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// An in-process echo upstream on 127.0.0.1, on its own thread and runtime; stops on drop.
pub struct EchoServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Binds 127.0.0.1 port 0 (the kernel picks a free port; see [`EchoServer::addr`]) and
    /// starts serving; it accepts connections as soon as this returns.
    pub fn start() -> Result<Self, crate::process::Error> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| io_err("bind echo upstream on 127.0.0.1:0", e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| io_err("set echo listener non-blocking", e))?;
        let addr = std_listener
            .local_addr()
            .map_err(|e| io_err("echo listener address", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| io_err("build echo runtime", e))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("echo-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("echo upstream: {e}");
                            return;
                        }
                    };
                    if let Err(e) = serve(listener, async {
                        let _ = stopped.await;
                    })
                    .await
                    {
                        eprintln!("echo upstream: {e}");
                    }
                })
            })
            .map_err(|e| io_err("spawn echo thread", e))?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

fn io_err(what: impl Into<String>, source: std::io::Error) -> crate::process::Error {
    crate::process::Error::Io {
        what: what.into(),
        source,
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown waits for open keep-alive connections (Envoy's pool), so don't join.
        drop(self.thread.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_request_and_applies_response_controls() {
        let echo = EchoServer::start().unwrap();
        let client = reqwest::blocking::Client::new();
        let resp = client
            .post(format!("http://{}/a/b?q=1", echo.addr()))
            .header("x-multi", "one")
            .header("x-multi", "two")
            .header(RESPONSE_HEADER, "server: upstream/1.0")
            .header(RESPONSE_HEADER, "x-extra: a: b")
            .header(STATUS_HEADER, "418")
            .body("hello")
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 418);
        assert_eq!(resp.headers()["server"], "upstream/1.0");
        assert_eq!(resp.headers()["x-extra"], "a: b");
        let body: Echo = resp.json().unwrap();
        assert_eq!(body.method, "POST");
        assert_eq!(body.path, "/a/b?q=1");
        assert_eq!(body.header_all("x-multi"), ["one", "two"]);
        assert_eq!(body.body, "hello");
    }
}
