//! Routes whose matches select exactly the same requests on one listener: Envoy Gateway
//! `route.go` `checkRouteOverlaps` / `buildOverlapKey` sets `RouteRulesOverlap=True` (reason
//! `RouteRulesOverlap`, a warning: both stay Accepted) on each such route's parentRefs through
//! that listener. Precedence then gives the requests to one of them (the oldest).
//!
//! Two IR routes overlap when hostname, path, header matches (names case-insensitive, method
//! included), and query parameter matches are equal; order of header/query matches does not
//! count, a prefix's one trailing slash does not count. A route never overlaps itself.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::ir::{PathMatchIr, RouteIr};
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

/// What makes two matches select the same requests, borrowed from the IR (the check runs on
/// every translation; only a header name with capitals is copied, lowercased).
#[derive(PartialEq, Eq, Hash)]
struct Key<'a> {
    hostname: &'a str,
    path: (u8, &'a str),
    headers: Vec<(Cow<'a, str>, bool, &'a str)>,
    query: Vec<(&'a str, bool, &'a str)>,
}

fn header_name(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

fn key<'a>(host: &'a str, r: &'a RouteIr) -> Key<'a> {
    let path = match &r.path {
        PathMatchIr::Exact(p) => (0, p.as_str()),
        PathMatchIr::Regex(p) => (1, p.as_str()),
        PathMatchIr::Prefix(p) if p == "/" => (2, p.as_str()),
        PathMatchIr::Prefix(p) => (2, p.strip_suffix('/').unwrap_or(p)),
    };
    let mut headers: Vec<_> = r
        .headers
        .iter()
        .map(|h| (header_name(&h.name), h.regex, h.value.as_str()))
        .collect();
    if let Some(m) = &r.method {
        headers.push((Cow::Borrowed(":method"), false, m.as_str()));
    }
    headers.sort();
    let mut query: Vec<_> = r
        .query_params
        .iter()
        .map(|q| (q.name.as_str(), q.regex, q.value.as_str()))
        .collect();
    query.sort();
    Key {
        hostname: host,
        path,
        headers,
        query,
    }
}

/// For each (route, listener) that overlaps another route: the other routes, sorted.
pub fn overlaps(
    programmed: &[Programmed<'_>],
) -> BTreeMap<(NsName, ListenerKey), BTreeSet<NsName>> {
    // Most buckets hold one route; the output is ordered whatever the bucket order.
    let mut buckets: HashMap<(&ListenerKey, Key<'_>), Vec<&NsName>> = HashMap::new();
    for p in programmed {
        for h in p.hostnames {
            for r in &p.routes {
                let routes = buckets.entry((&p.listener, key(h, r))).or_default();
                if !routes.contains(&&p.route) {
                    routes.push(&p.route);
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{ActionIr, HeaderOpsIr, ValueMatchIr};

    fn ir(path: PathMatchIr, headers: &[(&str, &str)], method: Option<&str>) -> RouteIr {
        RouteIr {
            name: String::new(),
            path,
            headers: headers
                .iter()
                .map(|(n, v)| ValueMatchIr {
                    name: (*n).into(),
                    value: (*v).into(),
                    regex: false,
                })
                .collect(),
            query_params: vec![],
            method: method.map(Into::into),
            action: ActionIr::Direct {
                status: 500,
                body: String::new(),
            },
            request_headers: HeaderOpsIr::default(),
            response_headers: HeaderOpsIr::default(),
            mirrors: vec![],
            timeout_ms: None,
            backend_timeout_ms: None,
            enabled_filters: vec![],
            route_namespace: String::new(),
            route_name: String::new(),
            rule_name: None,
        }
    }

    fn key_of(n: &str) -> NsName {
        ("ns".into(), n.into())
    }

    fn programmed<'a>(
        listener: usize,
        route: &str,
        hostnames: &'a [String],
        routes: Vec<&'a RouteIr>,
    ) -> Programmed<'a> {
        Programmed {
            listener: (key_of("gw"), listener),
            route: key_of(route),
            hostnames,
            routes,
        }
    }

    #[test]
    fn same_matches_overlap_per_listener_only() {
        let hosts = vec!["a.example.com".to_string()];
        let a = ir(
            PathMatchIr::Prefix("/x/".into()),
            &[("X-A", "1"), ("b", "2")],
            None,
        );
        let b = ir(
            PathMatchIr::Prefix("/x".into()),
            &[("B", "2"), ("x-a", "1")],
            None,
        );
        let c = ir(
            PathMatchIr::Prefix("/x".into()),
            &[("B", "2"), ("x-a", "1")],
            Some("GET"),
        );
        let got = overlaps(&[
            // Two identical matches in one route do not overlap with each other.
            programmed(0, "a", &hosts, vec![&a, &a]),
            programmed(0, "b", &hosts, vec![&b]),
            programmed(0, "c", &hosts, vec![&c]),
            programmed(1, "c", &hosts, vec![&b]),
        ]);
        let gw0 = (key_of("gw"), 0);
        assert_eq!(
            got.get(&(key_of("a"), gw0.clone())),
            Some(&[key_of("b")].into())
        );
        assert_eq!(got.get(&(key_of("b"), gw0)), Some(&[key_of("a")].into()));
        // c differs by method on listener 0, and is alone on listener 1.
        assert_eq!(got.len(), 2);
    }
}
