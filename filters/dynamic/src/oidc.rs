//! oidc on the dynamic-module host.
//!
//! One [`Provider`] per config serves every worker (discovery, JWKS and the bearer cache live
//! behind a mutex). Discovery and JWKS are fetched on the main thread: a small thread commits
//! the config scheduler every second, and each wake-up polls the provider and makes a
//! config-level callout. Code exchange and refresh are per-stream callouts while the request
//! is held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_core::oidc::{
    metrics, Action as FlowAction, CallKind, Callout, Provider, RequestFlow, Settings,
};
use portcullis_core::{Action, Host, LogLevel};
use portcullis_dynamic_module_host::{
    log, CalloutFailure, CalloutResponse, ConfigContext, ConfigScheduler, FilterConfig, Stream,
    StreamFilter,
};

/// How often the provider is polled (its own schedule decides whether to fetch).
const TICK: Duration = Duration::from_secs(1);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under the lock is caught by the host's guard; the provider state stays usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn callout_headers(call: &Callout) -> Vec<(&str, &str)> {
    let mut h: Vec<(&str, &str)> = vec![
        (":method", &call.method),
        (":path", &call.path),
        (":authority", &call.authority),
    ];
    h.extend(call.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    h
}

pub fn config(raw: &[u8], cx: &mut ConfigContext) -> Result<Arc<dyn FilterConfig>, String> {
    let settings = Settings::from_json(raw)
        .map_err(|e| format!("oidc: invalid config: {}: {}", e.field, e.reason))?;
    let mut names: Vec<String> = vec![
        metrics::LOGINS.into(),
        metrics::SESSIONS_VALID.into(),
        metrics::REFRESH.into(),
        metrics::BEARER_VALID.into(),
        metrics::REJECTED.into(),
    ];
    names.extend(metrics::REASONS.iter().map(|r| metrics::rejected(r)));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    cx.define_counters(&refs);
    let cluster = settings.config.provider_cluster.clone();
    let timeout_ms = settings.config.provider_timeout_ms;
    let shared = Arc::new(Shared {
        provider: Mutex::new(Provider::new(Arc::new(settings))),
        cluster,
        timeout_ms,
    });
    let poller = cx.scheduler().map(Poller::start);
    if poller.is_none() {
        log::log(
            LogLevel::Error,
            "oidc: cannot create the config scheduler; discovery and JWKS will not be fetched",
        );
    }
    Ok(Arc::new(Config {
        shared,
        calls: Mutex::new(Calls::default()),
        poller: Mutex::new(poller),
        was_ready: AtomicBool::new(false),
    }))
}

struct Shared {
    provider: Mutex<Provider>,
    cluster: String,
    timeout_ms: u64,
}

#[derive(Default)]
struct Calls {
    by_id: HashMap<u64, CallKind>,
    /// The kind being dispatched right now: a callout that fails at once reports its end
    /// before its id is known.
    dispatching: Option<CallKind>,
}

/// The thread that wakes the config on the main thread every [`TICK`].
struct Poller {
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
    /// Deleted after the thread is joined (drop order: fields after `Drop::drop`).
    _scheduler: Arc<ConfigScheduler>,
}

impl Poller {
    fn start(scheduler: ConfigScheduler) -> Self {
        let scheduler = Arc::new(scheduler);
        let (stop, stopped) = mpsc::channel::<()>();
        let s = scheduler.clone();
        let thread = std::thread::Builder::new()
            .name("portcullis-oidc".into())
            .spawn(move || loop {
                s.commit(0);
                match stopped.recv_timeout(TICK) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    _ => return,
                }
            })
            .map_err(|e| {
                log::log(
                    LogLevel::Error,
                    &format!("oidc: cannot start the poll thread: {e}"),
                )
            })
            .ok();
        Self {
            stop,
            thread,
            _scheduler: scheduler,
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Config {
    shared: Arc<Shared>,
    calls: Mutex<Calls>,
    poller: Mutex<Option<Poller>>,
    was_ready: AtomicBool,
}

impl Config {
    fn poll(&self, cx: &mut ConfigContext) {
        let now = now_secs();
        let Some(call) = lock(&self.shared.provider).poll(now) else {
            return;
        };
        lock(&self.calls).dispatching = Some(call.kind);
        let result = cx.http_callout(
            &self.shared.cluster,
            &callout_headers(&call),
            call.body.as_deref().unwrap_or_default(),
            self.shared.timeout_ms,
        );
        let mut calls = lock(&self.calls);
        let kind = calls.dispatching.take();
        match result {
            // `kind` is None when the callout already ended inside the call.
            Ok(id) => {
                if let Some(kind) = kind {
                    calls.by_id.insert(id, kind);
                }
            }
            Err(e) => {
                drop(calls);
                log::log(
                    LogLevel::Warn,
                    &format!(
                        "oidc: callout to cluster {:?} failed: {e}",
                        self.shared.cluster
                    ),
                );
                let _ = lock(&self.shared.provider).on_fetch(call.kind, 0, b"", now);
            }
        }
    }
}

impl FilterConfig for Config {
    fn new_stream(&self) -> Box<dyn StreamFilter> {
        Box::new(Filter {
            shared: self.shared.clone(),
            flow: RequestFlow::new(),
        })
    }

    fn on_scheduled(&self, cx: &mut ConfigContext, _event_id: u64) {
        self.poll(cx);
    }

    fn on_callout_done(
        &self,
        cx: &mut ConfigContext,
        id: u64,
        result: Result<CalloutResponse, CalloutFailure>,
    ) {
        let kind = {
            let mut calls = lock(&self.calls);
            calls.by_id.remove(&id).or_else(|| calls.dispatching.take())
        };
        let Some(kind) = kind else {
            return;
        };
        let (status, body) = match result {
            Ok(r) => (r.status, r.body),
            Err(e) => {
                log::log(LogLevel::Warn, &format!("oidc: {kind:?} fetch {e}"));
                (0, Vec::new())
            }
        };
        {
            let mut p = lock(&self.shared.provider);
            if let Err(e) = p.on_fetch(kind, status, &body, now_secs()) {
                log::log(
                    LogLevel::Warn,
                    &format!("oidc: {} ({kind:?}): {e}", p.settings.issuer),
                );
            }
            if p.ready() && !self.was_ready.swap(true, Ordering::Relaxed) {
                log::log(
                    LogLevel::Info,
                    &format!("oidc: provider {} ready", p.settings.issuer),
                );
            }
        }
        // Discovery done: fetch the keys now rather than on the next tick.
        self.poll(cx);
    }

    fn shutdown(&self) {
        drop(lock(&self.poller).take());
    }
}

struct Filter {
    shared: Arc<Shared>,
    flow: RequestFlow,
}

impl Filter {
    fn apply(&mut self, s: &mut Stream<'_>, action: FlowAction) -> Action {
        match action {
            FlowAction::Continue => Action::Continue,
            FlowAction::Responded => Action::Stop,
            FlowAction::Call(call) => {
                let result = s.http_callout(
                    &self.shared.cluster,
                    &callout_headers(&call),
                    call.body.as_deref().unwrap_or_default(),
                    self.shared.timeout_ms,
                );
                if let Err(e) = result {
                    log::log(
                        LogLevel::Warn,
                        &format!(
                            "oidc: callout to cluster {:?} failed: {e}",
                            self.shared.cluster
                        ),
                    );
                    s.send_local_response(
                        503,
                        &[
                            ("content-type", "text/plain"),
                            ("cache-control", "no-store"),
                        ],
                        b"identity provider unreachable\n",
                    );
                }
                Action::Stop
            }
        }
    }
}

impl StreamFilter for Filter {
    fn on_request_headers(&mut self, s: &mut Stream<'_>, _eos: bool) -> Action {
        let action = {
            let mut p = lock(&self.shared.provider);
            self.flow.on_request_headers(s, &mut p)
        };
        self.apply(s, action)
    }

    fn on_callout_done(
        &mut self,
        s: &mut Stream<'_>,
        _id: u64,
        result: Result<CalloutResponse, CalloutFailure>,
    ) -> Action {
        let (status, body) = match result {
            Ok(r) => (r.status, r.body),
            Err(_) => (0, Vec::new()),
        };
        let action = {
            let mut p = lock(&self.shared.provider);
            self.flow.on_callout_response(s, &mut p, status, &body)
        };
        self.apply(s, action)
    }

    fn on_response_headers(&mut self, s: &mut Stream<'_>, _eos: bool) -> Action {
        self.flow.on_response_headers(s);
        Action::Continue
    }
}
