//! Content versions shared between snapshots.
//!
//! Each resource's version is a hash of its bytes, and a published resource is an Arc'd entry
//! that the next publish reuses when the bytes are unchanged: an unchanged resource keeps its
//! version (and its allocation) across publishes, and an unchanged type keeps its whole set.

use super::resource_type::ResourceType;
use envoy_types::pb::google::protobuf::Any;
use portcullis_translator::xds::snapshot::{XdsResources, XdsSnapshot};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

/// One resource and its content version.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The translator's own copy (shared, not copied).
    any: Arc<prost_types::Any>,
    pub version: String,
}

impl Entry {
    fn new(any: &Arc<prost_types::Any>) -> Self {
        let h = Sha256::new()
            .chain_update(any.type_url.as_bytes())
            .chain_update(&any.value)
            .finalize();
        Entry {
            any: any.clone(),
            version: hex::encode(&h[..8]),
        }
    }

    /// The resource as a response carries it.
    pub fn wire(&self) -> Any {
        Any {
            type_url: self.any.type_url.clone(),
            value: self.any.value.clone(),
        }
    }

    /// `Any` is `Eq`: a resource the translator reused is the same `Arc`, a pointer check.
    fn same_content(&self, any: &Arc<prost_types::Any>) -> bool {
        self.any == *any
    }
}

/// One type's resources for one node, with the type's version (a hash of names and resource
/// versions).
#[derive(Debug)]
pub(crate) struct TypeSet {
    pub version: String,
    pub resources: BTreeMap<String, Arc<Entry>>,
}

static EMPTY: LazyLock<Arc<TypeSet>> = LazyLock::new(|| TypeSet::of(BTreeMap::new()));

impl TypeSet {
    /// The set of a type a node has no resources of.
    pub fn empty() -> Arc<TypeSet> {
        EMPTY.clone()
    }

    fn of(resources: BTreeMap<String, Arc<Entry>>) -> Arc<TypeSet> {
        let mut all = Sha256::new();
        for (name, e) in &resources {
            all.update(name.as_bytes());
            all.update([0]);
            all.update(e.version.as_bytes());
        }
        Arc::new(TypeSet {
            version: hex::encode(&all.finalize()[..8]),
            resources,
        })
    }

    /// The set for `by_name`, reusing `prev`'s entries whose bytes are unchanged, and `prev`
    /// itself when nothing changed.
    pub fn build(
        prev: &Arc<TypeSet>,
        by_name: &BTreeMap<String, Arc<prost_types::Any>>,
    ) -> Arc<TypeSet> {
        let resources: BTreeMap<String, Arc<Entry>> = by_name
            .iter()
            .map(|(name, any)| {
                let entry = match prev.resources.get(name) {
                    Some(e) if e.same_content(any) => e.clone(),
                    _ => Arc::new(Entry::new(any)),
                };
                (name.clone(), entry)
            })
            .collect();
        let unchanged = resources.len() == prev.resources.len()
            && resources
                .iter()
                .zip(prev.resources.iter())
                .all(|((an, ae), (bn, be))| an == bn && Arc::ptr_eq(ae, be));
        if unchanged {
            prev.clone()
        } else {
            Self::of(resources)
        }
    }

    #[cfg(test)]
    pub fn version_of(&self, name: &str) -> Option<&str> {
        self.resources.get(name).map(|e| e.version.as_str())
    }
}

/// One node's sets; a type it has no resources of is absent.
pub(crate) type NodeSets = BTreeMap<ResourceType, Arc<TypeSet>>;

/// What the server serves: a generation and each node's sets.
#[derive(Debug, Default)]
pub(crate) struct Published {
    pub generation: u64,
    pub nodes: BTreeMap<String, NodeSets>,
    /// The snapshot's sets `nodes` were built from: a later snapshot that hands a node the same
    /// `Arc` (the translator's per-Gateway reuse) gets that node's sets without a byte compared.
    pub sources: XdsSnapshot,
}

impl Published {
    pub fn type_set(&self, node: &str, rt: ResourceType) -> Arc<TypeSet> {
        self.nodes
            .get(node)
            .and_then(|t| t.get(&rt))
            .cloned()
            .unwrap_or_else(TypeSet::empty)
    }

    /// The sets for `snapshot`, interned against these, and the nodes whose resources differ
    /// (added, changed or gone). Types other than the five served are left out.
    pub fn next(&self, snapshot: &XdsSnapshot) -> (BTreeMap<String, NodeSets>, Vec<String>) {
        let mut nodes = BTreeMap::new();
        for (node, res) in snapshot {
            let sets = match (self.sources.get(node), self.nodes.get(node)) {
                (Some(was), Some(sets)) if Arc::ptr_eq(was, res) => sets.clone(),
                _ => self.node_sets(node, res),
            };
            nodes.insert(node.clone(), sets);
        }
        let changed = self
            .nodes
            .keys()
            .chain(nodes.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|node| {
                let old = self.nodes.get(*node);
                let new = nodes.get(*node);
                ResourceType::ALL.into_iter().any(|rt| {
                    let version = |n: Option<&NodeSets>| {
                        n.and_then(|s| s.get(&rt))
                            .map_or_else(|| TypeSet::empty().version.clone(), |s| s.version.clone())
                    };
                    version(old) != version(new)
                })
            })
            .cloned()
            .collect();
        (nodes, changed)
    }

    fn node_sets(&self, node: &str, res: &XdsResources) -> NodeSets {
        let mut sets = NodeSets::new();
        for (type_url, by_name) in &res.by_type {
            let Some(rt) = ResourceType::from_url(type_url) else {
                tracing::warn!(
                    node,
                    type_url,
                    "not an xDS type this server serves; left out"
                );
                continue;
            };
            if by_name.is_empty() {
                continue;
            }
            sets.insert(rt, TypeSet::build(&self.type_set(node, rt), by_name));
        }
        sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_translator::xds::snapshot::{CLUSTER_TYPE, ROUTE_TYPE};

    fn any(type_url: &str, v: &[u8]) -> prost_types::Any {
        prost_types::Any {
            type_url: type_url.into(),
            value: v.to_vec(),
        }
    }

    /// Per node: its clusters, `(name, bytes)`.
    type Nodes<'a> = &'a [(&'a str, &'a [(&'a str, &'a [u8])])];

    fn snap(nodes: Nodes<'_>) -> XdsSnapshot {
        nodes
            .iter()
            .map(|(node, res)| {
                let mut r = XdsResources::default();
                for (n, v) in *res {
                    r.insert(CLUSTER_TYPE, *n, any(CLUSTER_TYPE, v));
                }
                r.insert(ROUTE_TYPE, "routes", any(ROUTE_TYPE, node.as_bytes()));
                (node.to_string(), Arc::new(r))
            })
            .collect()
    }

    fn publish(p: &Published, s: &XdsSnapshot) -> (Published, Vec<String>) {
        let (nodes, changed) = p.next(s);
        (
            Published {
                generation: p.generation + 1,
                nodes,
                sources: s.clone(),
            },
            changed,
        )
    }

    #[test]
    fn unchanged_resources_keep_their_entry_and_version_across_publishes() {
        let (p1, changed) = publish(
            &Published::default(),
            &snap(&[("a", &[("x", b"1"), ("y", b"1")]), ("b", &[("x", b"1")])]),
        );
        assert_eq!(changed, ["a", "b"]);
        let (p2, changed) = publish(
            &p1,
            &snap(&[("a", &[("x", b"1"), ("y", b"2")]), ("b", &[("x", b"1")])]),
        );
        assert_eq!(changed, ["a"], "only the node whose resources changed");
        let (a1, a2) = (
            p1.type_set("a", ResourceType::Cluster),
            p2.type_set("a", ResourceType::Cluster),
        );
        assert!(Arc::ptr_eq(&a1.resources["x"], &a2.resources["x"]));
        assert_ne!(a1.version_of("y"), a2.version_of("y"));
        assert_ne!(a1.version, a2.version);
        // An unchanged type keeps its set, also on a node that changed.
        assert!(Arc::ptr_eq(
            &p1.type_set("a", ResourceType::Route),
            &p2.type_set("a", ResourceType::Route)
        ));
        assert!(Arc::ptr_eq(
            &p1.type_set("b", ResourceType::Cluster),
            &p2.type_set("b", ResourceType::Cluster)
        ));
        // Equal bytes give equal versions whatever the history.
        let (fresh, _) = publish(
            &Published::default(),
            &snap(&[("a", &[("x", b"1"), ("y", b"2")])]),
        );
        assert_eq!(
            fresh.type_set("a", ResourceType::Cluster).version,
            a2.version
        );
    }

    #[test]
    fn a_gone_node_is_a_change_and_unknown_types_are_left_out() {
        let (p1, _) = publish(&Published::default(), &snap(&[("a", &[]), ("b", &[])]));
        let (_, changed) = publish(&p1, &snap(&[("a", &[])]));
        assert_eq!(changed, ["b"]);
        let mut s = snap(&[("a", &[])]);
        Arc::make_mut(s.get_mut("a").expect("a")).insert(
            "type.googleapis.com/envoy.service.runtime.v3.Runtime",
            "rt",
            any("x", b"1"),
        );
        let (p, _) = publish(&Published::default(), &s);
        assert_eq!(p.nodes["a"].len(), 1, "{:?}", p.nodes["a"].keys());
        assert_eq!(
            p.type_set("a", ResourceType::Listener).version,
            TypeSet::empty().version
        );
    }
}
