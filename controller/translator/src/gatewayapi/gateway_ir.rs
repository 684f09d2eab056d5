//! The IR of one Gateway: listeners grouped into ports and filter chains, routes ordered by
//! precedence into virtual hosts, and the HTTP filter chain assembled from the policy layers
//! ([`PolicyLayers`]) in their declared order ([`Layer`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::attach::{Layer, PolicyLayer, ResolveCtx, RuleOn};
use super::backend_traffic_policy::RateLimitPolicies;
use super::extension_policy::Policies;
use super::listeners::GatewayState;
use super::routes::RouteOutput;
use super::security_policy::SecurityPolicies;
use super::AgeKey;
use crate::ir::{
    ActionIr, ChainIr, FilterIr, GatewayIr, PathMatchIr, PortIr, Protocol, RouteIr, VirtualHostIr,
};
use crate::resources::NsName;

/// Borrows the route's age: the key is built for every route on every translation.
type PrecedenceKey<'a> = (
    u8,
    Reverse<usize>,
    bool,
    Reverse<usize>,
    Reverse<usize>,
    &'a AgeKey,
    usize,
    usize,
);

fn precedence<'a>(r: &RouteIr, age: &'a AgeKey, rule: usize, m: usize) -> PrecedenceKey<'a> {
    // Spec order: exact path, longest prefix, method, most headers, most query params, then
    // oldest route, then namespace/name, then rule order. Regex sits between exact and prefix,
    // as Envoy Gateway orders it.
    let (rank, len) = match &r.path {
        PathMatchIr::Exact(p) => (0, p.len()),
        PathMatchIr::Regex(p) => (1, p.len()),
        PathMatchIr::Prefix(p) => (2, p.trim_end_matches('/').len()),
    };
    (
        rank,
        Reverse(len),
        r.method.is_none(),
        Reverse(r.headers.len()),
        Reverse(r.query_params.len()),
        age,
        rule,
        m,
    )
}

/// Every policy kind's [`PolicySet`](super::attach::PolicySet), one layer of the filter chain
/// each.
#[derive(PartialEq)]
pub(crate) struct PolicyLayers {
    pub security: SecurityPolicies,
    pub extension: Policies,
    pub traffic: RateLimitPolicies,
}

impl PolicyLayers {
    pub fn resolve(ctx: &ResolveCtx<'_>) -> Self {
        PolicyLayers {
            security: SecurityPolicies::resolve(ctx),
            extension: Policies::resolve(ctx),
            traffic: RateLimitPolicies::resolve(ctx),
        }
    }

    /// The layers in chain order: [`Layer`]'s declaration order.
    pub fn chain(&self) -> [&dyn PolicyLayer; 3] {
        let mut layers: [&dyn PolicyLayer; 3] = [&self.security, &self.extension, &self.traffic];
        layers.sort_by_key(|l| l.layer());
        layers
    }

    /// [`PolicyLayers::chain`], mutable.
    pub fn chain_mut(&mut self) -> [&mut dyn PolicyLayer; 3] {
        let mut layers: [&mut dyn PolicyLayer; 3] =
            [&mut self.security, &mut self.extension, &mut self.traffic];
        layers.sort_by_key(|l| l.layer());
        layers
    }
}

/// The IR of Gateway `key`: its ports and filter chains, each route with the filters of the
/// policies in effect on it, layer by layer in chain order.
pub fn build_gateway_ir(
    key: &NsName,
    gw: &GatewayState,
    routes: &RouteOutput,
    policies: &PolicyLayers,
) -> GatewayIr {
    let layers = policies.chain();
    let (ns, name) = key;
    let mut ir = GatewayIr {
        namespace: ns.clone(),
        name: name.clone(),
        ..Default::default()
    };
    // Chain order: by layer ([`Layer`]), then policy, then the policy's own order.
    let mut used_filters: BTreeMap<(Layer, NsName, String), FilterIr> = BTreeMap::new();

    let mut ports: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, l) in gw.listeners.iter().enumerate() {
        if l.ready {
            ports.entry(l.port).or_default().push(i);
        }
    }
    for (port, idxs) in ports {
        let protocol = gw.listeners[idxs[0]].protocol.unwrap_or(Protocol::Http);
        let groups: Vec<(String, Vec<usize>)> = match protocol {
            Protocol::Http => vec![(format!("{ns}/{name}/{port}"), idxs.clone())],
            Protocol::Https => idxs
                .iter()
                .map(|&i| (format!("{ns}/{name}/{}", gw.listeners[i].name), vec![i]))
                .collect(),
        };
        let mut chains = Vec::new();
        for (chain_name, members) in groups {
            let mut vhosts: BTreeMap<&str, Vec<(PrecedenceKey<'_>, Arc<RouteIr>)>> =
                BTreeMap::new();
            let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
            for a in routes
                .attachments
                .iter()
                .filter(|a| &a.gateway == key && members.contains(&a.listener))
            {
                let Some(tr) = routes.routes.get(&a.route) else {
                    continue;
                };
                let listener = &gw.listeners[a.listener];
                super::clusters::add_all(&mut ir.clusters, tr.clusters.iter());
                for (ri, (rule_name, irs)) in tr.rules.iter().enumerate() {
                    for (mi, shared) in irs.iter().enumerate() {
                        // Shared with the route table; copied only when a policy changes it.
                        let mut r = shared.clone();
                        let mut blocked = false;
                        for layer in &layers {
                            let on = RuleOn {
                                route: &a.route,
                                rule_name: rule_name.as_deref(),
                                gateway: key,
                                listener: &listener.name,
                            };
                            let Some((pkey, out)) = layer.render(&on, &r.name) else {
                                continue;
                            };
                            for (order, f) in out.filters {
                                Arc::make_mut(&mut r)
                                    .enabled_filters
                                    .push(f.name().to_string());
                                used_filters.insert((layer.layer(), pkey.clone(), order), f);
                            }
                            super::clusters::add_all(&mut ir.clusters, out.clusters);
                            ir.use_remote_address |= out.remote_address;
                            blocked |= out.blocked;
                        }
                        if blocked {
                            let r = Arc::make_mut(&mut r);
                            r.action = ActionIr::Direct {
                                status: 500,
                                body: String::new(),
                            };
                            r.mirrors.clear();
                            r.enabled_filters.clear();
                        }
                        let k = precedence(&r, &tr.age, ri, mi);
                        for h in &a.hostnames {
                            // A route reachable through two listeners of this chain is added once
                            // (policies never rename a route: the table's name is the one).
                            if seen.insert((h.as_str(), shared.name.as_str())) {
                                vhosts.entry(h.as_str()).or_default().push((k, r.clone()));
                            }
                        }
                    }
                }
            }
            let virtual_hosts = vhosts
                .into_iter()
                .map(|(h, mut rs)| {
                    rs.sort_by(|a, b| a.0.cmp(&b.0));
                    VirtualHostIr {
                        name: format!("{chain_name}/{h}"),
                        domains: vec![h.to_string()],
                        routes: rs.into_iter().map(|(_, r)| r).collect(),
                    }
                })
                .collect();
            let (server_names, certificates, http1_only) = match protocol {
                Protocol::Http => (vec![], vec![], false),
                Protocol::Https => {
                    let l = &gw.listeners[members[0]];
                    (
                        l.hostname.iter().cloned().collect(),
                        l.certificates.clone(),
                        l.http1_only,
                    )
                }
            };
            chains.push(ChainIr {
                name: chain_name,
                server_names,
                certificates,
                http1_only,
                virtual_hosts,
            });
        }
        // SNI-specific chains first, the catch-all last: keeps the listener readable.
        chains.sort_by(|a, b| {
            (a.server_names.is_empty(), &a.name).cmp(&(b.server_names.is_empty(), &b.name))
        });
        ir.ports.push(PortIr {
            port,
            protocol,
            chains,
        });
    }
    ir.filters = used_filters.into_values().collect();
    ir
}
