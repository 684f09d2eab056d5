//! Status records: exactly the `status` block that would be written back to Kubernetes.

use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

/// One resource and its computed status, as `portcullis translate` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectRef,
    /// Shared: an incremental translation hands an unchanged route its previous status.
    #[serde(serialize_with = "shared_json")]
    pub status: std::sync::Arc<serde_json::Value>,
}

fn shared_json<S: serde::Serializer>(
    v: &std::sync::Arc<serde_json::Value>,
    s: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&**v, s)
}

/// `lastTransitionTime` in translate output. The pure stage has no clock, so output stays
/// byte-identical; the runtime stamps real times when it writes statuses.
pub const EPOCH: &str = "1970-01-01T00:00:00Z";

/// A metav1.Condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn new(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn to_json(&self, generation: Option<i64>) -> Value {
        let mut v = json!({
            "type": self.type_,
            "status": if self.status { "True" } else { "False" },
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": EPOCH,
        });
        if let (Some(g), Some(o)) = (generation, v.as_object_mut()) {
            o.insert("observedGeneration".into(), json!(g));
        }
        v
    }
}

pub fn conditions_json(conds: &[Condition], generation: Option<i64>) -> Value {
    Value::Array(conds.iter().map(|c| c.to_json(generation)).collect())
}
