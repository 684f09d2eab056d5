//! Cluster names and the one rule for sharing them.
//!
//! A cluster a policy causes is named inside that policy (`eep/<ns>/<policy>/<name>`,
//! `sp/<ns>/<policy>/oidc`), so no tenant can write a name that lands on another tenant's
//! cluster. Names the controller derives from its own inputs (backends, fetch clusters, the
//! operator's rate-limit service) may be reached from several routes and policies; they are
//! shared only when the whole definition is identical. [`Claims`] enforces that: the first
//! claimant keeps the name, and a later one with a different definition is refused.

use std::collections::BTreeMap;

use crate::ir::ClusterIr;

/// Name of a cluster that EnvoyExtensionPolicy `ns/policy` asked for as `local` in its config.
/// Namespace and policy names cannot contain `/`, so the prefix is unambiguous.
pub(crate) fn extension_policy_cluster(ns: &str, policy: &str, local: &str) -> String {
    format!("eep/{ns}/{policy}/{local}")
}

/// Name of the cluster that reaches SecurityPolicy `ns/policy`'s OIDC issuer.
pub(crate) fn security_policy_issuer_cluster(ns: &str, policy: &str) -> String {
    format!("sp/{ns}/{policy}/oidc")
}

/// Adds `clusters` to a Gateway's cluster map. A name already present keeps its first
/// definition: [`Claims`] has already refused any policy that would define it differently.
pub(crate) fn add_all(into: &mut BTreeMap<String, ClusterIr>, clusters: &[ClusterIr]) {
    for c in clusters {
        into.entry(c.name.clone()).or_insert_with(|| c.clone());
    }
}

/// Who defined each cluster name first, across every route and policy of a translation.
#[derive(Default)]
pub(crate) struct Claims {
    by_name: BTreeMap<String, (ClusterIr, String)>,
}

impl Claims {
    /// Records the clusters of `owner` (e.g. `HTTPRoute ns/name`) when none of them conflicts
    /// with an earlier claim or with each other. All or nothing: on conflict nothing is
    /// recorded and each conflict is described.
    pub(crate) fn claim<'a>(
        &mut self,
        owner: &str,
        clusters: impl IntoIterator<Item = &'a ClusterIr>,
    ) -> Result<(), Vec<String>> {
        let mut mine: BTreeMap<&str, &ClusterIr> = BTreeMap::new();
        let mut conflicts = Vec::new();
        for c in clusters {
            if let Some(earlier) = mine.get(c.name.as_str()) {
                if *earlier != c {
                    conflicts.push(format!(
                        "cluster {:?} is defined twice in this policy with different endpoints or settings",
                        c.name
                    ));
                }
                continue;
            }
            if let Some((theirs, by)) = self.by_name.get(&c.name) {
                if theirs != c && by != owner {
                    conflicts.push(format!(
                        "cluster {:?} is already defined differently by {by}; a cluster name is shared only when its whole definition is identical",
                        c.name
                    ));
                }
            }
            mine.insert(&c.name, c);
        }
        conflicts.sort();
        conflicts.dedup();
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        for (name, c) in mine {
            self.by_name
                .entry(name.to_string())
                .or_insert_with(|| (c.clone(), owner.to_string()));
        }
        Ok(())
    }
}

/// The `Accepted=False` condition of a policy refused for cluster conflicts.
pub(crate) fn conflict_condition(conflicts: &[String]) -> Option<crate::status::Condition> {
    (!conflicts.is_empty()).then(|| {
        crate::status::Condition::new(
            "Accepted",
            false,
            "Conflicted",
            format!(
                "{} (the policy is not applied; targeted routes answer 500)",
                conflicts.join("; ")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{ClusterKind, EndpointIr};

    fn cluster(name: &str, host: &str) -> ClusterIr {
        ClusterIr {
            name: name.into(),
            kind: ClusterKind::StrictDns(vec![EndpointIr::Socket {
                address: host.into(),
                port: 443,
            }]),
            tls_sni: Some(host.into()),
            tls_client: None,
            tls_verify: None,
            http2: false,
        }
    }

    #[test]
    fn identical_definitions_share_a_name_and_different_ones_are_refused() {
        let mut claims = Claims::default();
        let fetch = cluster("portcullis-wasm/ctl:19102", "ctl");
        assert!(claims
            .claim("SecurityPolicy a/login", [&fetch, &cluster("x", "idp.a")])
            .is_ok());
        // The same fetch cluster again: shared.
        assert!(claims.claim("EnvoyExtensionPolicy b/ext", [&fetch]).is_ok());
        // A different definition of "x": refused, naming the first owner; nothing recorded.
        let evil = cluster("x", "evil.b");
        let own = cluster("eep/b/p/own", "idp.b");
        let err = claims
            .claim("EnvoyExtensionPolicy b/p", [&own, &evil])
            .unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(err[0].contains("\"x\"") && err[0].contains("SecurityPolicy a/login"));
        assert!(!claims.by_name.contains_key("eep/b/p/own"));
        assert_eq!(claims.by_name["x"].0, cluster("x", "idp.a"));
    }

    #[test]
    fn one_owner_cannot_define_a_name_twice() {
        let mut claims = Claims::default();
        let err = claims
            .claim(
                "EnvoyExtensionPolicy b/p",
                [
                    &cluster("eep/b/p/idp", "one"),
                    &cluster("eep/b/p/idp", "two"),
                ],
            )
            .unwrap_err();
        assert!(err[0].contains("defined twice"));
        // Repeating an identical definition is fine.
        let c = cluster("eep/b/p/idp", "one");
        assert!(claims.claim("EnvoyExtensionPolicy b/p", [&c, &c]).is_ok());
    }

    #[test]
    fn scoped_names_cannot_be_forged_across_namespaces() {
        // `local` may contain '/', but ns and policy cannot: the first two segments decide.
        assert_eq!(extension_policy_cluster("a", "p", "x"), "eep/a/p/x");
        assert_ne!(
            extension_policy_cluster("b", "q", "a/p/x"),
            extension_policy_cluster("a", "p", "x")
        );
        assert_eq!(
            security_policy_issuer_cluster("a", "login"),
            "sp/a/login/oidc"
        );
    }
}
