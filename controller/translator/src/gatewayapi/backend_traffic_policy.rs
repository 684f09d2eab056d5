//! BackendTrafficPolicy `rateLimit` -> the built-in ratelimit wasm filter.
//!
//! Envoy Gateway gives every route its own counters unless a rule is `shared`. The filter's
//! buckets are keyed by config `namespace` + rule name + limit, so each targeted route gets its
//! own filter instance whose unshared rule names carry the route name, while shared rules keep
//! one name across routes. Anything the filter cannot express exactly rejects the rate limit
//! (Accepted=False naming the field) rather than limit differently.

use std::collections::BTreeSet;

use portcullis_core::ratelimit::config::{
    ClientIpConfig, Config, FailureMode, GlobalConfig, HeaderMatch, KeyPart, Limit, LocalConfig,
    Match, ResponseHeaders, Rule, Scope, Unit,
};

use super::attach::{Layer, Policy, PolicyKind, PolicySet, Rendered, ResolveCtx, TargetKey};
use super::{builtin, clusters};
use crate::ir::{ClusterIr, FilterIr};
use crate::resources::{BackendTrafficPolicySpec, NsName, Object, RateLimitRule};
use crate::status::Condition;
use crate::wasm::source::WasmSource;
use crate::TranslateOptions;

/// Domain of global descriptors; rule names carry the policy, so policies never share counters.
pub const RATELIMIT_DOMAIN: &str = "portcullis";

#[derive(PartialEq)]
pub struct Plan {
    /// `(shared, rule)`; unshared rule names get `@<route>` appended per route.
    rules: Vec<(bool, Rule)>,
    /// Everything but `rules`.
    base: Config,
    module: builtin::ReadyModule,
}

impl Plan {
    fn all_shared(&self) -> bool {
        self.rules.iter().all(|(s, _)| *s)
    }

    /// The filter instance for one route (`route` = IR route name).
    pub fn filter_for(&self, ns: &str, name: &str, route: &str) -> FilterIr {
        let mut cfg = self.base.clone();
        cfg.rules = self
            .rules
            .iter()
            .map(|(shared, r)| {
                let mut r = r.clone();
                if !shared {
                    r.name = format!("{}@{route}", r.name);
                }
                r
            })
            .collect();
        let suffix = if self.all_shared() {
            String::new()
        } else {
            format!("/{route}")
        };
        // Serializing plain structs of strings and numbers cannot fail.
        self.module.filter(
            &format!("backendtrafficpolicy/{ns}/{name}/ratelimit{suffix}"),
            "ratelimit",
            serde_json::to_string(&cfg).unwrap_or_default(),
        )
    }
}

/// What a BackendTrafficPolicy resolved to.
#[derive(PartialEq)]
pub struct RateLimitState {
    pub plan: Option<Plan>,
    pub clusters: Vec<ClusterIr>,
    /// The rate limit is not applied (routes are unaffected).
    pub problems: Vec<String>,
    /// The module is unavailable: targeted routes answer 500 (fail closed).
    pub unavailable: Option<String>,
    /// Other BackendTrafficPolicy features, not implemented.
    pub ignored: Vec<String>,
}

/// BackendTrafficPolicy as a [`PolicyKind`]: the last layer of the chain.
pub(crate) struct BackendTrafficPolicyKind;

pub(crate) type RateLimitPolicies = PolicySet<BackendTrafficPolicyKind>;

impl PolicyKind for BackendTrafficPolicyKind {
    const KIND: &'static str = "BackendTrafficPolicy";
    const LAYER: Layer = Layer::RateLimit;
    type Spec = BackendTrafficPolicySpec;
    type State = RateLimitState;

    fn resolve(
        ctx: &ResolveCtx<'_>,
        p: &Object<BackendTrafficPolicySpec>,
        _targets: &[TargetKey],
        wasm_needed: &mut BTreeSet<WasmSource>,
    ) -> RateLimitState {
        let ResolveCtx { opts, wasm, .. } = *ctx;
        let mut st = RateLimitState {
            plan: None,
            clusters: vec![],
            problems: vec![],
            unavailable: None,
            ignored: vec![],
        };
        for u in &p.unsupported {
            if u.starts_with("spec.rateLimit") {
                st.problems.push(format!("{u} is not supported"));
            } else {
                st.ignored.push(u.clone());
            }
        }
        let planned = plan_config(opts, p, &mut st.problems);
        if let (Some((rules, base)), true) = (planned, st.problems.is_empty()) {
            let service = base
                .global
                .as_ref()
                .zip(opts.ratelimit_service.as_deref())
                .map(|(g, addr)| clusters::grpc_cluster(&g.cluster, addr));
            match service {
                Some(Err(e)) => st.problems.push(format!("--ratelimit-service: {e}")),
                Some(Ok(c)) => st.clusters.push(c),
                None => {}
            }
            if st.problems.is_empty() {
                match builtin::builtin_module(opts, wasm, "ratelimit", wasm_needed) {
                    Ok(m) => {
                        st.clusters.push(m.fetch_cluster.clone());
                        st.plan = Some(Plan {
                            rules,
                            base,
                            module: m,
                        });
                    }
                    Err(e) => st.unavailable = Some(e),
                }
            }
        }
        st
    }

    fn blocks(st: &RateLimitState) -> bool {
        st.unavailable.is_some()
    }

    fn clusters(st: &RateLimitState) -> Vec<&ClusterIr> {
        st.clusters.iter().collect()
    }

    fn accepted(st: &RateLimitState) -> Condition {
        if !st.problems.is_empty() {
            Condition::new(
                "Accepted",
                false,
                "Invalid",
                format!("{} (the rate limit is not applied)", st.problems.join("; ")),
            )
        } else if let Some(u) = &st.unavailable {
            Condition::new(
                "Accepted",
                false,
                "Invalid",
                format!("{u} (targeted routes answer 500)"),
            )
        } else {
            Condition::new("Accepted", true, "Accepted", "Policy has been accepted.")
        }
    }

    fn warnings(st: &RateLimitState) -> Vec<Condition> {
        super::unsupported_condition(&st.ignored)
            .into_iter()
            .collect()
    }

    fn render<'a>(p: &'a Policy<Self>, _gw: &NsName, route: &str) -> Rendered<'a> {
        // A rate limit that is not applied leaves its routes alone.
        let Some(plan) = &p.state.plan else {
            return Rendered::default();
        };
        let (ns, name) = (p.obj.namespace(), p.obj.name());
        let f = plan.filter_for(ns, name, route);
        Rendered {
            filters: vec![(f.name().to_string(), f)],
            clusters: p.state.clusters.iter().collect(),
            remote_address: true,
            blocked: false,
        }
    }
}

/// Translates one BTP rule. `family_all` is the CIDR that covers every client of the listener.
fn rule(
    field: &str,
    r: &RateLimitRule,
    scope: Scope,
    family_all: &str,
    problems: &mut Vec<String>,
) -> Rule {
    let mut m = Match::default();
    let mut key = Vec::new();
    let unit = match r.limit.unit.as_str() {
        "Second" => Unit::Second,
        "Minute" => Unit::Minute,
        "Hour" => Unit::Hour,
        "Day" => Unit::Day,
        u => {
            problems.push(format!(
                "{field}.limit.unit {u:?} is not supported (Second, Minute, Hour, Day)"
            ));
            Unit::Second
        }
    };
    let mut methods_seen = false;
    for (si, sel) in r.client_selectors.iter().enumerate() {
        let sf = format!("{field}.clientSelectors[{si}]");
        for (hi, h) in sel.headers.iter().enumerate() {
            let hf = format!("{sf}.headers[{hi}]");
            if h.invert == Some(true) {
                problems.push(format!(
                    "{hf}.invert is not supported by the ratelimit filter"
                ));
                continue;
            }
            let name = h.name.to_ascii_lowercase();
            match h.type_.as_deref().unwrap_or("Exact") {
                "Exact" => m.headers.push(HeaderMatch {
                    name,
                    value: Some(h.value.clone().unwrap_or_default()),
                }),
                // The filter skips a rule whose key header is missing, as Envoy Gateway does.
                "Distinct" => key.push(KeyPart::Header(name)),
                t => problems.push(format!(
                    "{hf}.type {t} is not supported by the ratelimit filter (Exact, Distinct)"
                )),
            }
        }
        if !sel.methods.is_empty() {
            if methods_seen {
                problems.push(format!(
                    "{sf}.methods: methods in more than one clientSelector are not supported"
                ));
            }
            methods_seen = true;
            for (mi, mm) in sel.methods.iter().enumerate() {
                if mm.invert == Some(true) {
                    problems.push(format!("{sf}.methods[{mi}].invert is not supported"));
                }
                m.methods.push(mm.value.to_ascii_uppercase());
            }
        }
        if let Some(c) = &sel.source_cidr {
            if c.invert == Some(true) {
                problems.push(format!("{sf}.sourceCIDR.invert is not supported"));
            } else if c.value.trim() != family_all {
                problems.push(format!(
                    "{sf}.sourceCIDR {}: only {family_all} (every client of the listener) is supported by the ratelimit filter",
                    c.value
                ));
            } else if c.type_.as_deref().unwrap_or("Exact") == "Distinct" {
                key.push(KeyPart::ClientIp);
            }
        }
    }
    Rule {
        name: String::new(),
        matcher: m,
        key,
        limit: Limit {
            requests: r.limit.requests,
            unit,
        },
        burst: None,
        scope,
    }
}

fn plan_config(
    opts: &TranslateOptions,
    p: &Object<BackendTrafficPolicySpec>,
    problems: &mut Vec<String>,
) -> Option<(Vec<(bool, Rule)>, Config)> {
    let rl = p.spec.rate_limit.as_ref()?;
    let (ns, name) = (p.namespace(), p.name());
    let family_all = if opts.listener_address.parse::<std::net::Ipv6Addr>().is_ok() {
        "::/0"
    } else {
        "0.0.0.0/0"
    };
    let local = rl.local.as_ref().map(|l| l.rules.as_slice()).unwrap_or(&[]);
    let global = rl
        .global
        .as_ref()
        .map(|g| g.rules.as_slice())
        .unwrap_or(&[]);
    let mut rules = Vec::new();
    for (i, r) in local.iter().enumerate() {
        let f = format!("rateLimit.local.rules[{i}]");
        if r.shadow_mode == Some(true) {
            problems.push(format!("{f}.shadowMode is only supported for global rules"));
        }
        let mut rule = rule(&f, r, Scope::Local, family_all, problems);
        rule.name = format!("{ns}/{name}/local-{i}");
        rules.push((r.shared == Some(true), rule));
    }
    for (i, r) in global.iter().enumerate() {
        let f = format!("rateLimit.global.rules[{i}]");
        let mut rule = rule(&f, r, Scope::Global, family_all, problems);
        rule.name = format!("{ns}/{name}/global-{i}");
        rules.push((r.shared == Some(true), rule));
    }
    if rules.is_empty() {
        problems.push("rateLimit has no local or global rules".into());
        return None;
    }
    let all: Vec<&RateLimitRule> = local.iter().chain(global).collect();
    // Shadow and headers are per config in the filter: rules must agree.
    let shadow = global.iter().any(|r| r.shadow_mode == Some(true));
    if shadow && (!local.is_empty() || !global.iter().all(|r| r.shadow_mode == Some(true))) {
        problems.push("rateLimit: shadowMode must be set on every rule (and no local rules) for the ratelimit filter".into());
    }
    let headers: BTreeSet<&str> = all
        .iter()
        .map(|r| {
            r.x_rate_limit_headers
                .as_deref()
                .unwrap_or("DraftVersion03")
        })
        .collect();
    let response_headers = match headers.iter().copied().collect::<Vec<_>>().as_slice() {
        ["Off"] => ResponseHeaders::None,
        ["DraftVersion03"] => ResponseHeaders::Draft03,
        _ => {
            problems.push(
                "rateLimit: xRateLimitHeaders must be the same on every rule for the ratelimit filter".into(),
            );
            ResponseHeaders::Draft03
        }
    };
    let global_cfg = if global.is_empty() {
        None
    } else {
        match opts.ratelimit_service.as_deref() {
            None => {
                problems.push("global rate limits need a rate-limit service: run the controller with --ratelimit-service HOST:PORT".into());
                None
            }
            Some(addr) => Some(GlobalConfig {
                cluster: format!("ratelimit/{addr}"),
                domain: RATELIMIT_DOMAIN.into(),
                timeout_ms: 20,
                failure_mode: FailureMode::Allow,
            }),
        }
    };
    let base = Config {
        // Envoy Gateway keys clients by the peer address (xff_num_trusted_hops 0).
        client_ip: ClientIpConfig { trusted_hops: 0 },
        rules: vec![],
        response_headers,
        shadow,
        status: 429,
        global: global_cfg,
        local: LocalConfig::default(),
        namespace: Some(format!("btp/{ns}/{name}")),
    };
    // The filter's own validation, on the instance a route would get.
    let mut probe = base.clone();
    probe.rules = rules.iter().map(|(_, r)| r.clone()).collect();
    if problems.is_empty() {
        if let Err(e) = probe.validate() {
            problems.push(format!("ratelimit filter config: {e}"));
        }
    }
    Some((rules, base))
}
