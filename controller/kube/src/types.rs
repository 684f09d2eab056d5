//! Typed Envoy Gateway kinds (gateway.envoyproxy.io/v1alpha1), shaped like the v1.9.0 CRDs in
//! `../shared/crds/`. Only the fields the Kubernetes edges need are typed (target references);
//! everything else in `spec` is kept verbatim in `rest`, so a watched object round-trips to the
//! translator unchanged and a field added by a newer CRD is carried, never a decode failure.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// API group of Envoy Gateway's kinds.
pub const EG_GROUP: &str = "gateway.envoyproxy.io";
/// API version of Envoy Gateway's kinds.
pub const EG_VERSION: &str = "v1alpha1";

/// `targetRef` / `targetRefs[]` entry of a policy (LocalPolicyTargetReferenceWithSectionName).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// The `spec` of a policy: typed targets, every other field kept as is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// Deprecated singular form, still accepted by the CRDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_selectors: Vec<Value>,
    /// wasm, lua, extProc, oidc, rateLimit, ...: passed through untouched.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl PolicySpec {
    /// Every explicit target reference (singular and plural forms).
    pub fn targets(&self) -> impl Iterator<Item = &PolicyTargetRef> {
        self.target_ref.iter().chain(self.target_refs.iter())
    }
}

/// A `spec` kept entirely as is (Backend, EnvoyProxy).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpaqueSpec {
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

macro_rules! eg_kind {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $plural:literal, $spec:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            #[serde(default)]
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: $spec,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub status: Option<Value>,
        }

        impl kube::Resource for $name {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;
            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(EG_GROUP)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(EG_VERSION)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

eg_kind!(
    /// gateway.envoyproxy.io/v1alpha1 EnvoyExtensionPolicy (wasm, lua, extProc).
    EnvoyExtensionPolicy,
    "EnvoyExtensionPolicy",
    "envoyextensionpolicies",
    PolicySpec
);
eg_kind!(
    /// gateway.envoyproxy.io/v1alpha1 SecurityPolicy (OIDC, JWT, ...).
    SecurityPolicy,
    "SecurityPolicy",
    "securitypolicies",
    PolicySpec
);
eg_kind!(
    /// gateway.envoyproxy.io/v1alpha1 BackendTrafficPolicy (rate limits, ...).
    BackendTrafficPolicy,
    "BackendTrafficPolicy",
    "backendtrafficpolicies",
    PolicySpec
);
eg_kind!(
    /// gateway.envoyproxy.io/v1alpha1 Backend (ip, fqdn and unix endpoints).
    Backend,
    "Backend",
    "backends",
    OpaqueSpec
);
eg_kind!(
    /// gateway.envoyproxy.io/v1alpha1 EnvoyProxy: parameters of the managed Envoy fleet.
    EnvoyProxy,
    "EnvoyProxy",
    "envoyproxies",
    OpaqueSpec
);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_round_trip_and_targets_are_typed() {
        let raw = json!({
            "apiVersion": "gateway.envoyproxy.io/v1alpha1",
            "kind": "EnvoyExtensionPolicy",
            "metadata": {"name": "ua", "namespace": "default", "generation": 3},
            "spec": {
                "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r", "sectionName": "a"}],
                "wasm": [{"name": "ua-block", "code": {"type": "Image", "image": {"url": "ghcr.io/x/ua:1"}}}],
                "someFutureField": {"x": 1}
            }
        });
        let eep: EnvoyExtensionPolicy = serde_json::from_value(raw.clone()).expect("decode");
        let t: Vec<_> = eep.spec.targets().collect();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].kind, "HTTPRoute");
        assert_eq!(t[0].section_name.as_deref(), Some("a"));
        let back = serde_json::to_value(&eep).expect("encode");
        assert_eq!(back["spec"], raw["spec"], "spec is carried verbatim");
    }

    #[test]
    fn odd_shapes_do_not_fail() {
        // No spec at all, and a singular targetRef: both are accepted.
        let p: SecurityPolicy =
            serde_json::from_value(json!({"metadata": {"name": "x"}})).expect("decode");
        assert_eq!(p.spec.targets().count(), 0);
        let p: BackendTrafficPolicy = serde_json::from_value(json!({
            "metadata": {"name": "x"},
            "spec": {"targetRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}}
        }))
        .expect("decode");
        assert_eq!(p.spec.targets().next().map(|t| t.name.as_str()), Some("gw"));
    }
}
