//! The write side, put together: for every new snapshot (and on retries), translate, reconcile
//! the fleets, and write statuses, leader-only. Failures retry with exponential backoff even when
//! no new snapshot arrives; nothing here ever ends the process.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::infra::{add_gateway_addresses, add_param_conditions, InfraReconciler, InfraReport};
use crate::leader::LeaderState;
use crate::snapshot::Snapshot;
use crate::status::{StatusRecord, StatusWriter, WriteReport};
use portcullis_translator::GatewayInfra;

/// What the write loop needs from one translation: the statuses to write and, per Gateway, the
/// programmed listeners its fleet exposes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Translated {
    pub records: Vec<StatusRecord>,
    pub gateways: Vec<GatewayInfra>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PassReport {
    pub status: WriteReport,
    pub infra: Option<InfraReport>,
}

impl PassReport {
    /// Whether something must be retried.
    pub fn needs_retry(&self) -> bool {
        !self.status.failed.is_empty()
            || self
                .infra
                .as_ref()
                .is_some_and(|i| !i.failed.is_empty() || i.deferred > 0)
    }
}

/// Drives [`StatusWriter`] and [`InfraReconciler`] from snapshots.
pub struct WriteLoop<F> {
    translate: F,
    status: StatusWriter,
    infra: Option<InfraReconciler>,
    leader: LeaderState,
    backoff: Backoff,
    /// How often leadership is re-checked while idle (a new leader writes at once).
    pub poll: Duration,
    /// A pass runs at least this often even without a new snapshot, so the fleets' own resync
    /// (drift repair: a Deployment deleted or edited by hand, which no watch reports) happens in
    /// a quiet cluster too. Statuses are not rewritten by it unless they differ.
    pub resync: Duration,
    last: Option<(Arc<Snapshot>, Translated)>,
}

impl<F> WriteLoop<F>
where
    F: FnMut(&Snapshot) -> Translated + Send,
{
    /// `translate` maps a snapshot to the statuses to write and the Gateways' programmed
    /// listeners (the runtime also pushes xDS there: it runs on every replica, leader or not).
    pub fn new(
        translate: F,
        status: StatusWriter,
        infra: Option<InfraReconciler>,
        leader: LeaderState,
    ) -> Self {
        Self {
            translate,
            status,
            infra,
            leader,
            backoff: Backoff::default(),
            poll: Duration::from_secs(1),
            resync: Duration::from_secs(60),
            last: None,
        }
    }

    /// One pass over `snap`; translation is reused while the snapshot is the same and no change
    /// was notified since.
    pub async fn pass(&mut self, snap: Arc<Snapshot>, now: Timestamp) -> PassReport {
        let translated = match &self.last {
            Some((s, t)) if Arc::ptr_eq(s, &snap) => t.clone(),
            _ => {
                let t = (self.translate)(&snap);
                self.last = Some((snap.clone(), t.clone()));
                t
            }
        };
        let Translated {
            mut records,
            gateways,
        } = translated;
        let infra = match self.infra.as_mut() {
            Some(i) => {
                let rep = i.reconcile(&snap, &gateways, now).await;
                add_param_conditions(&mut records, &rep.unsupported);
                add_gateway_addresses(&mut records, &snap);
                Some(rep)
            }
            None => None,
        };
        let status = self.status.write(&records, &snap, now).await;
        PassReport { status, infra }
    }

    /// Run until `shutdown` resolves.
    pub async fn run(
        mut self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut was_leader = self.leader.is_leader();
        let mut retry_in: Option<Duration> = None;
        let mut dirty = true;
        let mut last_pass = tokio::time::Instant::now();
        loop {
            if dirty {
                dirty = false;
                last_pass = tokio::time::Instant::now();
                let snap = snapshots.borrow_and_update().clone();
                let report = self.pass(snap, Timestamp::now()).await;
                if report.needs_retry() {
                    let d = self.backoff.next_delay();
                    tracing::info!(retry_in = ?d, "writes failed; retrying");
                    retry_in = Some(d);
                } else {
                    self.backoff.reset();
                    retry_in = None;
                }
            }
            let wait = retry_in.unwrap_or(self.poll).min(self.poll);
            tokio::select! {
                _ = &mut shutdown => return,
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A notified change is a new version even when the sender re-sends the same
                    // snapshot (e.g. translated again after a wasm module became ready): only
                    // retries and leadership passes reuse the last translation.
                    self.last = None;
                    dirty = true;
                }
                _ = tokio::time::sleep(wait) => {
                    if let Some(r) = retry_in.as_mut() {
                        *r = r.saturating_sub(wait);
                        if r.is_zero() {
                            dirty = true;
                        }
                    }
                    if last_pass.elapsed() >= self.resync {
                        dirty = true;
                    }
                }
            }
            let leader = self.leader.is_leader();
            if leader != was_leader {
                was_leader = leader;
                // A fresh leader compares against the cluster, not against what it wrote before.
                self.status.forget();
                dirty = true;
            }
        }
    }
}
