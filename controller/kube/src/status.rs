//! Writes the translator's statuses back with server-side apply.
//!
//! - Field manager [`FIELD_MANAGER`]; `PATCH .../status` with `application/apply-patch+yaml`.
//! - `observedGeneration` = the object's `metadata.generation` on every condition we own;
//!   `lastTransitionTime` is kept from the live condition when its status did not change.
//! - A write happens only when what we own differs from the live object (and not twice for the
//!   same change while our own write is still on its way back through the watch).
//! - Other controllers' entries are never removed. In the v1.6.1 / v1.9.0 CRDs
//!   `status.conditions` and `status.listeners` are `listType=map` (keys `type` / `name`), which
//!   server-side apply merges per key, but HTTPRoute `status.parents` and the policies'
//!   `status.ancestors` are `listType=atomic`: an apply replaces the whole list. So for those
//!   the writer merges: entries whose `controllerName` is not ours are copied from the live object
//!   unchanged, ours replace our old ones, and the apply carries the `resourceVersion` it merged
//!   against, so a concurrent write by another controller makes it fail with 409 instead of
//!   dropping that controller's entry; on 409 it re-reads and merges again.
//! - Only the leader writes ([`LeaderState`]).

use std::collections::HashMap;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::leader::LeaderState;
use crate::snapshot::{group_of, ObjectKey, Snapshot};

/// Field manager of every status write.
pub const FIELD_MANAGER: &str = "portcullis.dev/controller";

/// One resource's desired status: the shape of the translator's `status::ResourceStatus`
/// (`{apiVersion, kind, metadata: {namespace, name}, status}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRecord {
    pub api_version: String,
    pub kind: String,
    pub metadata: RecordMeta,
    pub status: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordMeta {
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
}

impl StatusRecord {
    /// Convert any record with the same serde shape, e.g.
    /// `portcullis_translator::status::ResourceStatus`, without depending on its crate.
    pub fn from_serializable<T: Serialize>(record: &T) -> Result<Self> {
        Ok(serde_json::from_value(serde_json::to_value(record)?)?)
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(
            group_of(&self.api_version),
            &self.kind,
            self.metadata.namespace.as_deref(),
            &self.metadata.name,
        )
    }
}

/// What one [`StatusWriter::write`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WriteReport {
    /// Objects patched.
    pub written: Vec<ObjectKey>,
    /// Records whose status already matched.
    pub unchanged: usize,
    /// Records not written because this replica is not the leader.
    pub not_leader: usize,
    /// Records whose object is not in the snapshot (deleted, or not visible yet).
    pub missing: usize,
    /// Failed writes (retried on the next batch: nothing is cached for them).
    pub failed: Vec<(ObjectKey, String)>,
}

/// `plural` of the kinds we write status to (so no discovery round-trip is needed).
fn plural(kind: &str) -> String {
    match kind {
        "GatewayClass" => "gatewayclasses".into(),
        "EnvoyExtensionPolicy" => "envoyextensionpolicies".into(),
        "SecurityPolicy" => "securitypolicies".into(),
        "BackendTrafficPolicy" => "backendtrafficpolicies".into(),
        "ClientTrafficPolicy" => "clienttrafficpolicies".into(),
        "EnvoyProxy" => "envoyproxies".into(),
        other => format!("{}s", other.to_ascii_lowercase()),
    }
}

fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural(kind))
}

/// Lists of `status` that are `listType=atomic` and hold per-controller entries.
const ATOMIC_ENTRY_LISTS: [(&str, &str); 2] =
    [("parents", "parentRef"), ("ancestors", "ancestorRef")];

fn controller_of(entry: &Value) -> Option<&str> {
    entry.get("controllerName").and_then(Value::as_str)
}

/// Remove `lastTransitionTime` everywhere: what is compared to decide whether to write.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// Stamp `observedGeneration` on `conds`, and `lastTransitionTime` (kept from `live` when the
/// condition's status is unchanged, else `now`).
fn stamp_conditions(conds: &mut Value, live: Option<&Value>, generation: Option<i64>, now: &str) {
    let Some(list) = conds.as_array_mut() else {
        return;
    };
    for c in list {
        let Some(obj) = c.as_object_mut() else {
            continue;
        };
        if let Some(g) = generation {
            obj.insert("observedGeneration".into(), json!(g));
        }
        let ty = obj.get("type").cloned();
        let status = obj.get("status").cloned();
        let kept = live
            .and_then(Value::as_array)
            .and_then(|l| l.iter().find(|lc| lc.get("type") == ty.as_ref()))
            .filter(|lc| lc.get("status") == status.as_ref())
            .and_then(|lc| lc.get("lastTransitionTime").cloned());
        obj.insert(
            "lastTransitionTime".into(),
            kept.unwrap_or_else(|| json!(now)),
        );
    }
}

/// The status to apply for one record, given the live object (pure; see the module docs).
pub fn desired_status(
    record: &Value,
    live: &Value,
    controller_name: &str,
    now: Timestamp,
) -> Value {
    let generation = live.pointer("/metadata/generation").and_then(Value::as_i64);
    let live_status = live.get("status").cloned().unwrap_or(Value::Null);
    let now = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut status = record.clone();
    if !status.is_object() {
        status = json!({});
    }

    if let Some(conds) = status.get_mut("conditions") {
        stamp_conditions(conds, live_status.get("conditions"), generation, &now);
    }
    if let Some(listeners) = status.get_mut("listeners").and_then(Value::as_array_mut) {
        for l in listeners {
            let live_l = live_status
                .get("listeners")
                .and_then(Value::as_array)
                .and_then(|ls| ls.iter().find(|x| x.get("name") == l.get("name")));
            if let Some(conds) = l.get_mut("conditions") {
                stamp_conditions(
                    conds,
                    live_l.and_then(|x| x.get("conditions")),
                    generation,
                    &now,
                );
            }
        }
    }
    for (list, ref_field) in ATOMIC_ENTRY_LISTS {
        let Some(ours) = status.get(list).and_then(Value::as_array).cloned() else {
            continue;
        };
        let live_entries = live_status
            .get(list)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // Other controllers' entries first, untouched, then ours.
        let mut merged: Vec<Value> = live_entries
            .iter()
            .filter(|e| controller_of(e) != Some(controller_name))
            .cloned()
            .collect();
        for mut e in ours {
            let live_e = live_entries.iter().find(|x| {
                controller_of(x) == controller_of(&e) && x.get(ref_field) == e.get(ref_field)
            });
            if let Some(conds) = e.get_mut("conditions") {
                stamp_conditions(
                    conds,
                    live_e.and_then(|x| x.get("conditions")),
                    generation,
                    &now,
                );
            }
            merged.push(e);
        }
        status[list] = Value::Array(merged);
    }
    status
}

/// Whether `desired` differs from the live status in anything we set (timestamps aside).
pub fn status_changed(desired: &Value, live: &Value) -> bool {
    let live_status = live.get("status");
    let Some(d) = desired.as_object() else {
        return false;
    };
    d.iter().any(|(k, v)| {
        let l = live_status.and_then(|s| s.get(k));
        l.map(normalized) != Some(normalized(v))
    })
}

/// Patches statuses with server-side apply; see the module docs.
pub struct StatusWriter {
    client: Client,
    controller_name: String,
    field_manager: String,
    leader: LeaderState,
    /// Last applied (normalized) status per object, with the live resourceVersion it was merged
    /// against: suppresses repeating a write until the watch shows it.
    written: HashMap<ObjectKey, (Option<String>, Value)>,
}

impl StatusWriter {
    pub fn new(client: Client, controller_name: &str, leader: LeaderState) -> Self {
        Self {
            client,
            controller_name: controller_name.to_string(),
            field_manager: FIELD_MANAGER.to_string(),
            leader,
            written: HashMap::new(),
        }
    }

    pub fn with_field_manager(mut self, manager: &str) -> Self {
        self.field_manager = manager.to_string();
        self
    }

    /// Forget what was written (e.g. after leadership changed hands).
    pub fn forget(&mut self) {
        self.written.clear();
    }

    /// Write every record whose status changed, against the objects in `live`.
    pub async fn write(
        &mut self,
        records: &[StatusRecord],
        live: &Snapshot,
        now: Timestamp,
    ) -> WriteReport {
        let mut report = WriteReport::default();
        if !self.leader.is_leader() {
            report.not_leader = records.len();
            self.written.clear();
            return report;
        }
        for rec in records {
            let key = rec.key();
            let Some(live_obj) = live.get(&key) else {
                report.missing += 1;
                continue;
            };
            match self.write_one(rec, &key, live_obj.clone(), now).await {
                Ok(true) => report.written.push(key),
                Ok(false) => report.unchanged += 1,
                Err(e) => {
                    tracing::warn!(object = %key, error = %e, "status write failed");
                    self.written.remove(&key);
                    report.failed.push((key, e.to_string()));
                }
            }
        }
        report
    }

    async fn write_one(
        &mut self,
        rec: &StatusRecord,
        key: &ObjectKey,
        mut live: Value,
        now: Timestamp,
    ) -> Result<bool> {
        let ar = api_resource(&rec.api_version, &rec.kind);
        let api: Api<DynamicObject> = match &rec.metadata.namespace {
            Some(ns) if !ns.is_empty() => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        };
        let atomic = ATOMIC_ENTRY_LISTS
            .iter()
            .any(|(l, _)| rec.status.get(*l).is_some());
        for attempt in 0..3 {
            let desired = desired_status(&rec.status, &live, &self.controller_name, now);
            let live_rv = live
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
            if !status_changed(&desired, &live) {
                self.written
                    .insert(key.clone(), (live_rv, normalized(&desired)));
                return Ok(false);
            }
            if let Some((rv, last)) = self.written.get(key) {
                if *rv == live_rv && *last == normalized(&desired) {
                    return Ok(false);
                }
            }
            let mut metadata = json!({"name": rec.metadata.name});
            if let Some(ns) = rec.metadata.namespace.as_ref().filter(|n| !n.is_empty()) {
                metadata["namespace"] = json!(ns);
            }
            if atomic {
                if let Some(rv) = &live_rv {
                    metadata["resourceVersion"] = json!(rv);
                }
            }
            let body = json!({
                "apiVersion": rec.api_version,
                "kind": rec.kind,
                "metadata": metadata,
                "status": desired,
            });
            let pp = PatchParams::apply(&self.field_manager).force();
            match api
                .patch_status(&rec.metadata.name, &pp, &Patch::Apply(&body))
                .await
            {
                Ok(_) => {
                    tracing::debug!(object = %key, "status written");
                    self.written
                        .insert(key.clone(), (live_rv, normalized(&desired)));
                    return Ok(true);
                }
                Err(kube::Error::Api(s)) if s.code == 409 && atomic && attempt < 2 => {
                    // Someone wrote in between: merge against the fresh object and retry.
                    tracing::debug!(object = %key, "status conflict; re-reading");
                    let fresh = api.get_status(&rec.metadata.name).await?;
                    live = serde_json::to_value(&fresh)?;
                }
                Err(e) => return Err(Error::Kube(e)),
            }
        }
        Err(Error::InvalidStatus {
            kind: rec.kind.clone(),
            name: rec.metadata.name.clone(),
            reason: "kept conflicting with concurrent writers".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "portcullis.dev/gatewayclass-controller";

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn atomic_parents_keep_other_controllers_and_stamp_ours() {
        let live = json!({
            "metadata": {"generation": 7, "resourceVersion": "42"},
            "status": {"parents": [
                {"parentRef": {"name": "eg-gw"}, "controllerName": "gateway.envoyproxy.io/gatewayclass-controller",
                 "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2020-01-01T00:00:00Z", "observedGeneration": 3}]},
                {"parentRef": {"name": "web"}, "controllerName": OURS,
                 "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2021-01-01T00:00:00Z", "observedGeneration": 6},
                                {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "message": "", "lastTransitionTime": "2021-01-01T00:00:00Z", "observedGeneration": 6}]},
                {"parentRef": {"name": "gone"}, "controllerName": OURS, "conditions": []}
            ]}
        });
        let record = json!({"parents": [
            {"parentRef": {"name": "web"}, "controllerName": OURS, "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""},
                {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound", "message": "no svc"}]}
        ]});
        let d = desired_status(&record, &live, OURS, ts("2026-01-01T00:00:00Z"));
        let parents = d["parents"].as_array().expect("parents");
        assert_eq!(
            parents.len(),
            2,
            "other controller kept, our stale 'gone' entry dropped"
        );
        assert_eq!(parents[0], live["status"]["parents"][0], "theirs untouched");
        let c = &parents[1]["conditions"];
        assert_eq!(c[0]["observedGeneration"], 7);
        assert_eq!(
            c[0]["lastTransitionTime"], "2021-01-01T00:00:00Z",
            "unchanged status keeps its time"
        );
        assert_eq!(c[1]["observedGeneration"], 7);
        assert_eq!(
            c[1]["lastTransitionTime"], "2026-01-01T00:00:00Z",
            "flipped status gets now"
        );
        assert!(status_changed(&d, &live));
    }

    #[test]
    fn unchanged_status_is_detected_ignoring_timestamps() {
        let live = json!({
            "metadata": {"generation": 2},
            "status": {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok",
                                        "observedGeneration": 2, "lastTransitionTime": "2020-01-01T00:00:00Z"}],
                       "addresses": [{"value": "10.0.0.1"}]}
        });
        let record = json!({"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok"}]});
        let d = desired_status(&record, &live, OURS, ts("2026-01-01T00:00:00Z"));
        assert!(
            !status_changed(&d, &live),
            "same conditions, same generation: no write"
        );
        let bumped = json!({"metadata": {"generation": 3}, "status": live["status"].clone()});
        let d = desired_status(&record, &bumped, OURS, ts("2026-01-01T00:00:00Z"));
        assert!(
            status_changed(&d, &bumped),
            "new generation must be observed"
        );
    }

    #[test]
    fn listener_conditions_match_by_name() {
        let live = json!({"metadata": {"generation": 1}, "status": {"listeners": [
            {"name": "https", "attachedRoutes": 1, "supportedKinds": [], "conditions": [
                {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}]}});
        let record = json!({"listeners": [
            {"name": "http", "attachedRoutes": 0, "supportedKinds": [], "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": ""}]},
            {"name": "https", "attachedRoutes": 2, "supportedKinds": [], "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": ""}]}]});
        let d = desired_status(&record, &live, OURS, ts("2026-01-01T00:00:00Z"));
        assert_eq!(
            d["listeners"][0]["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(
            d["listeners"][1]["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        assert_eq!(d["listeners"][1]["conditions"][0]["observedGeneration"], 1);
    }

    #[test]
    fn records_convert_from_the_translator_shape() {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Like {
            api_version: String,
            kind: String,
            metadata: RecordMeta,
            status: Value,
        }
        let r = StatusRecord::from_serializable(&Like {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "HTTPRoute".into(),
            metadata: RecordMeta {
                namespace: Some("apps".into()),
                name: "a".into(),
            },
            status: json!({"parents": []}),
        })
        .expect("convert");
        assert_eq!(
            r.key(),
            ObjectKey::new("gateway.networking.k8s.io", "HTTPRoute", Some("apps"), "a")
        );
        assert_eq!(api_resource(&r.api_version, &r.kind).plural, "httproutes");
        assert_eq!(
            api_resource("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy").plural,
            "envoyextensionpolicies"
        );
    }
}
