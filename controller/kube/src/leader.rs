//! Leader election with a coordination.k8s.io/v1 Lease. Every replica translates and serves xDS;
//! only the Lease holder writes status and creates infrastructure (see [`LeaderState`]).
//!
//! The protocol is client-go's: the holder renews `renewTime` every `renew_interval`; another
//! replica takes over once `renewTime + leaseDurationSeconds` has passed. Every write is a PUT
//! carrying the `resourceVersion` just read, so two candidates cannot both win: the loser gets a
//! 409 Conflict and stays a follower.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;

use crate::error::{Error, Result};

/// Whether this replica currently leads; cheap to clone and read (e.g. from `/readyz`).
#[derive(Debug, Clone, Default)]
pub struct LeaderState(Arc<AtomicBool>);

impl LeaderState {
    /// A follower until an elector says otherwise.
    pub fn follower() -> Self {
        Self::default()
    }

    /// Always the leader: for a single replica with leader election disabled.
    pub fn always() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Set by the elector; also for tests and single-replica setups.
    pub fn set(&self, leader: bool) {
        let was = self.0.swap(leader, Ordering::AcqRel);
        if was != leader {
            tracing::info!(leader, "leadership changed");
        }
    }
}

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the controller's own).
    pub namespace: String,
    /// Lease name, e.g. `portcullis-leader`.
    pub name: String,
    /// This replica's identity, e.g. the pod name.
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and how often followers retry.
    pub renew_interval: Duration,
}

/// Runs the election and keeps a [`LeaderState`] up to date.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    state: LeaderState,
    last_renew: std::sync::Mutex<Option<Timestamp>>,
}

fn lease_is_expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renew) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let dur = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    match renew.0.checked_add(SignedDuration::from_secs(dur)) {
        Ok(until) => until < now,
        Err(_) => false,
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            state: LeaderState::follower(),
            last_renew: std::sync::Mutex::new(None),
        }
    }

    /// The state this elector maintains.
    pub fn state(&self) -> LeaderState {
        self.state.clone()
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One round: create, renew or take over the Lease if possible. Returns (and records) whether
    /// this replica holds it afterwards. A lost race (409) is not an error: it means a follower.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool> {
        let result = self.round(now).await;
        match &result {
            Ok(leader) => {
                if *leader {
                    if let Ok(mut g) = self.last_renew.lock() {
                        *g = Some(now);
                    }
                }
                self.state.set(*leader);
            }
            Err(e) => {
                // The API may be briefly unreachable: keep leading only while our last renewal
                // is surely still valid for everyone else (2/3 of the lease duration).
                let last = self.last_renew.lock().ok().and_then(|g| *g);
                let margin = SignedDuration::from_millis(
                    i64::try_from(self.cfg.lease_duration.as_millis() * 2 / 3).unwrap_or(i64::MAX),
                );
                let still = last
                    .and_then(|t| t.checked_add(margin).ok())
                    .is_some_and(|until| now < until);
                tracing::warn!(error = %e, still_leader = still, "lease round failed");
                self.state.set(still);
            }
        }
        result
    }

    async fn round(&self, now: Timestamp) -> Result<bool> {
        let me = self.cfg.identity.as_str();
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_string()),
                    lease_duration_seconds: Some(self.duration_secs()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(Error::Kube(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        let mut next = spec.clone();
        if holder == me {
            next.renew_time = Some(MicroTime(now));
            next.lease_duration_seconds = Some(self.duration_secs());
        } else if holder.is_empty() || lease_is_expired(&spec, now) {
            next.holder_identity = Some(me.to_string());
            next.acquire_time = Some(MicroTime(now));
            next.renew_time = Some(MicroTime(now));
            next.lease_duration_seconds = Some(self.duration_secs());
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        } else {
            return Ok(false);
        }
        lease.spec = Some(next);
        // resourceVersion from the GET makes this PUT a compare-and-swap.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(Error::Kube(e)),
        }
    }

    /// Loop forever: renew as leader, retry as follower. Errors are logged and retried; this never
    /// returns unless `shutdown` resolves, and then releases the Lease if held.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let _ = self.try_acquire_or_renew(Timestamp::now()).await;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.cfg.renew_interval) => {}
            }
        }
        if self.state.is_leader() {
            if let Err(e) = self.release().await {
                tracing::warn!(error = %e, "could not release the Lease");
            }
        }
    }

    /// Give the Lease up so another replica takes over at once (on shutdown).
    pub async fn release(&self) -> Result<()> {
        self.state.set(false);
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(Error::Kube(e)),
        }
    }
}
