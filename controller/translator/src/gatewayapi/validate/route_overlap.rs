//! Routes whose matches select exactly the same requests on one listener: Envoy Gateway
//! `route.go` `checkRouteOverlaps` / `buildOverlapKey` sets `RouteRulesOverlap=True` (reason
//! `RouteRulesOverlap`, a warning: both stay Accepted) on each such route's parentRefs through
//! that listener. Precedence then gives the requests to one of them (the oldest).
//!
//! Two IR routes overlap when hostname, path, header matches (names case-insensitive, method
//! included), and query parameter matches are equal; order of header/query matches does not
//! count, a prefix's one trailing slash does not count. A route never overlaps itself.

use std::collections::{BTreeMap, BTreeSet};

use crate::ir::{PathMatchIr, RouteIr, ValueMatchIr};
use crate::resources::NsName;

/// A Gateway listener: the Gateway and the listener's index.
pub type ListenerKey = (NsName, usize);

/// What one route programs on one listener.
pub struct Programmed<'a> {
    pub listener: ListenerKey,
    pub route: NsName,
    pub hostnames: &'a [String],
    pub routes: Vec<&'a RouteIr>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    hostname: String,
    path: (u8, String),
    headers: Vec<(String, bool, String)>,
    query: Vec<(String, bool, String)>,
}

fn value_key(v: &ValueMatchIr, lowercase: bool) -> (String, bool, String) {
    let name = if lowercase {
        v.name.to_ascii_lowercase()
    } else {
        v.name.clone()
    };
    (name, v.regex, v.value.clone())
}

fn key(host: &str, r: &RouteIr) -> Key {
    let path = match &r.path {
        PathMatchIr::Exact(p) => (0, p.clone()),
        PathMatchIr::Regex(p) => (1, p.clone()),
        PathMatchIr::Prefix(p) if p == "/" => (2, p.clone()),
        PathMatchIr::Prefix(p) => (2, p.strip_suffix('/').unwrap_or(p).to_string()),
    };
    let mut headers: Vec<_> = r.headers.iter().map(|h| value_key(h, true)).collect();
    if let Some(m) = &r.method {
        headers.push((":method".into(), false, m.clone()));
    }
    headers.sort();
    let mut query: Vec<_> = r.query_params.iter().map(|q| value_key(q, false)).collect();
    query.sort();
    Key {
        hostname: host.to_string(),
        path,
        headers,
        query,
    }
}

/// For each (route, listener) that overlaps another route: the other routes, sorted.
pub fn overlaps(
    programmed: &[Programmed<'_>],
) -> BTreeMap<(NsName, ListenerKey), BTreeSet<NsName>> {
    let mut buckets: BTreeMap<(&ListenerKey, Key), BTreeSet<&NsName>> = BTreeMap::new();
    for p in programmed {
        for h in p.hostnames {
            for r in &p.routes {
                buckets
                    .entry((&p.listener, key(h, r)))
                    .or_default()
                    .insert(&p.route);
            }
        }
    }
    let mut out: BTreeMap<(NsName, ListenerKey), BTreeSet<NsName>> = BTreeMap::new();
    for ((listener, _), routes) in buckets {
        if routes.len() < 2 {
            continue;
        }
        for r in &routes {
            let others = out.entry(((*r).clone(), listener.clone())).or_default();
            others.extend(routes.iter().filter(|o| *o != r).map(|o| (*o).clone()));
        }
    }
    out
}
