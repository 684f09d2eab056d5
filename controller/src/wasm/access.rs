//! Which modules each fleet may fetch: exactly those its own Gateway's configuration
//! references. The module store is shared by every tenant; without this, any fleet certificate
//! could read another tenant's private modules by digest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use portcullis_translator::ir::{FilterIr, Ir, ModuleSourceIr};

/// Node id (`<namespace>/<gateway>`) -> sha256 digests its configuration references.
#[derive(Clone, Default)]
pub struct ModuleAccess(Arc<RwLock<BTreeMap<String, BTreeSet<String>>>>);

impl ModuleAccess {
    /// Replace the grants with what `ir` references. Call before publishing `ir`'s xDS, so a
    /// fleet never learns of a module it may not fetch yet.
    pub fn update(&self, ir: &Ir) {
        let grants = ir
            .gateways
            .iter()
            .map(|(node, g)| {
                let digests = g
                    .filters
                    .iter()
                    .filter_map(|f| match f {
                        FilterIr::Wasm(w) => Some(w.sha256.clone()),
                        FilterIr::Dynamic(d) => match &d.module.source {
                            ModuleSourceIr::Remote { sha256, .. } => Some(sha256.clone()),
                            ModuleSourceIr::Local { .. } => None,
                        },
                        FilterIr::Lua(_) => None,
                    })
                    .collect();
                (node.clone(), digests)
            })
            .collect();
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = grants;
    }

    /// Whether `node` may fetch the module with digest `sha256`.
    pub fn allows(&self, node: &str, sha256: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .is_some_and(|d| d.contains(sha256))
    }
}
