//! Status records: exactly the `status` block that would be written back to Kubernetes.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectRef {
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
    pub status: serde_json::Value,
}
