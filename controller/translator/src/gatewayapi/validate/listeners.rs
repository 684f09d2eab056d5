//! Listener rules, after Envoy Gateway's `validate.go` (`validateAllowedRoutes`,
//! `validateAllowedNamespaces`, `validateTLSConfiguration`, `validateConflictedLayer7Listeners`)
//! and the Gateway API `Listener` / `ListenerConditionType` documentation (v1.6.1): route kinds,
//! namespace selectors, the `tls` block per protocol, conflicts between listeners on one port,
//! and overlapping TLS configuration.

use std::collections::{BTreeMap, BTreeSet};

use crate::gatewayapi::hostname;
use crate::resources::{AllowedRoutes, LabelSelector, ListenerTls, GATEWAY_GROUP};

/// The route kinds a listener of this controller carries.
pub const SUPPORTED_ROUTE_KINDS: &[&str] = &["HTTPRoute"];

/// An `allowedRoutes.kinds[]` entry this controller cannot serve: `ResolvedRefs=False`,
/// `InvalidRouteKinds`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteKindError {
    #[error("group {group:?} of kind {kind} is not supported, group must be {GATEWAY_GROUP}")]
    Group { group: String, kind: String },
    #[error("{kind} is not supported, kind must be one of [{}]", SUPPORTED_ROUTE_KINDS.join(", "))]
    Kind { kind: String },
}

/// The kinds a listener reports in `supportedKinds`, and the entries it refuses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteKinds {
    pub supported: Vec<(String, String)>,
    pub errors: Vec<RouteKindError>,
}

/// `allowedRoutes.kinds`: unset means every kind the protocol supports (here HTTPRoute).
pub fn route_kinds(allowed: &AllowedRoutes) -> RouteKinds {
    let mut out = RouteKinds::default();
    if allowed.kinds.is_empty() {
        out.supported
            .push((GATEWAY_GROUP.to_string(), "HTTPRoute".to_string()));
        return out;
    }
    for k in &allowed.kinds {
        let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
        if group != GATEWAY_GROUP {
            out.errors.push(RouteKindError::Group {
                group: group.into(),
                kind: k.kind.clone(),
            });
        } else if !SUPPORTED_ROUTE_KINDS.contains(&k.kind.as_str()) {
            out.errors.push(RouteKindError::Kind {
                kind: k.kind.clone(),
            });
        } else if !out.supported.iter().any(|(_, kind)| *kind == k.kind) {
            out.supported.push((group.into(), k.kind.clone()));
        }
    }
    out
}

/// `allowedRoutes.namespaces` that cannot be evaluated: the listener is invalid (Envoy Gateway:
/// `Programmed=False`, `Invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespacesError {
    #[error("allowedRoutes.namespaces.from {0:?} is not one of All, Same, Selector")]
    From(String),
    #[error(
        "allowedRoutes.namespaces.selector must be specified when allowedRoutes.namespaces.from is Selector"
    )]
    SelectorMissing,
    #[error("allowedRoutes.namespaces.selector could not be parsed: {0}")]
    Selector(#[from] SelectorError),
}

/// A label selector Kubernetes would refuse (`metav1.LabelSelectorAsSelector`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("matchExpressions[{index}]: {operator:?} is not a valid label selector operator (In, NotIn, Exists, DoesNotExist)")]
    Operator { index: usize, operator: String },
    #[error("matchExpressions[{index}]: operator {operator} needs at least one value")]
    NoValues { index: usize, operator: String },
    #[error("matchExpressions[{index}]: operator {operator} takes no values")]
    Values { index: usize, operator: String },
    #[error("label key {key:?} is invalid: {why}")]
    Key { key: String, why: &'static str },
    #[error("label value {value:?} (key {key}) is invalid: {why}")]
    Value {
        key: String,
        value: String,
        why: &'static str,
    },
}

/// Checks `allowedRoutes.namespaces`.
pub fn namespaces(allowed: &AllowedRoutes) -> Result<(), NamespacesError> {
    let Some(ns) = &allowed.namespaces else {
        return Ok(());
    };
    match ns.from.as_deref().unwrap_or("Same") {
        "All" | "Same" => Ok(()),
        "Selector" => match &ns.selector {
            None => Err(NamespacesError::SelectorMissing),
            Some(s) => Ok(label_selector(s)?),
        },
        other => Err(NamespacesError::From(other.into())),
    }
}

/// A label name, or the part of a key after its `prefix/`: at most 63 characters,
/// alphanumeric at both ends, `-`, `_`, `.` inside.
fn label_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("name part must not be empty");
    }
    if s.len() > 63 {
        return Err("name part must be no more than 63 characters");
    }
    let ok_inner = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ends = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok_inner && ends {
        Ok(())
    } else {
        Err("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")
    }
}

fn label_key(key: &str) -> Result<(), &'static str> {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            let dns = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            if !dns {
                return Err("prefix part must be a DNS subdomain");
            }
            name
        }
        None => key,
    };
    label_name(name)
}

fn label_value(v: &str) -> Result<(), &'static str> {
    if v.is_empty() {
        Ok(())
    } else {
        label_name(v)
    }
}

/// Validates `s` as Kubernetes does before matching: operators, their values, keys and values.
pub fn label_selector(s: &LabelSelector) -> Result<(), SelectorError> {
    for (k, v) in &s.match_labels {
        label_key(k).map_err(|why| SelectorError::Key {
            key: k.clone(),
            why,
        })?;
        label_value(v).map_err(|why| SelectorError::Value {
            key: k.clone(),
            value: v.clone(),
            why,
        })?;
    }
    for (index, e) in s.match_expressions.iter().enumerate() {
        label_key(&e.key).map_err(|why| SelectorError::Key {
            key: e.key.clone(),
            why,
        })?;
        let operator = e.operator.clone();
        match e.operator.as_str() {
            "In" | "NotIn" if e.values.is_empty() => {
                return Err(SelectorError::NoValues { index, operator })
            }
            "In" | "NotIn" => {}
            "Exists" | "DoesNotExist" if !e.values.is_empty() => {
                return Err(SelectorError::Values { index, operator })
            }
            "Exists" | "DoesNotExist" => {}
            _ => return Err(SelectorError::Operator { index, operator }),
        }
        for v in &e.values {
            label_value(v).map_err(|why| SelectorError::Value {
                key: e.key.clone(),
                value: v.clone(),
                why,
            })?;
        }
    }
    Ok(())
}

/// The `tls` block does not fit the listener's protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("{protocol} listeners must not set tls")]
    NotAllowed { protocol: String },
    #[error("{protocol} listeners must set tls")]
    Missing { protocol: String },
    #[error("{protocol} listeners only support tls.mode Terminate")]
    UnsupportedMode { protocol: String, mode: String },
    #[error("tls.mode {mode:?} is not one of Terminate, Passthrough")]
    InvalidMode { mode: String },
    #[error("{protocol} listeners with tls.mode Terminate must have at least one tls.certificateRefs entry")]
    NoCertificateRefs { protocol: String },
    #[error("tls.certificateRefs must be empty with tls.mode Passthrough")]
    PassthroughWithCertificates,
}

impl TlsError {
    /// The listener `Accepted=False` reason.
    pub fn accepted_reason(&self) -> &'static str {
        match self {
            Self::NotAllowed { .. } | Self::UnsupportedMode { .. } => "UnsupportedValue",
            _ => "Invalid",
        }
    }

    /// The listener `Programmed=False` reason (Envoy Gateway's).
    pub fn programmed_reason(&self) -> &'static str {
        match self {
            Self::UnsupportedMode { .. } => "UnsupportedTLSMode",
            _ => "Invalid",
        }
    }
}

/// What a valid `tls` block asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TlsPlan<'a> {
    /// No TLS (HTTP, TCP, UDP).
    Plain,
    /// Terminate with these certificates.
    Terminate(&'a ListenerTls),
    Passthrough,
}

/// `tls` against `protocol` (`validateTLSConfiguration`): plain protocols must not set it;
/// HTTPS needs it, with mode Terminate and certificates; TLS takes Terminate (with
/// certificates) or Passthrough (without).
pub fn tls<'a>(protocol: &str, tls: Option<&'a ListenerTls>) -> Result<TlsPlan<'a>, TlsError> {
    let p = || protocol.to_string();
    match protocol {
        "HTTPS" | "TLS" => {
            let Some(t) = tls else {
                return Err(TlsError::Missing { protocol: p() });
            };
            match t.mode.as_deref().unwrap_or("Terminate") {
                "Terminate" if t.certificate_refs.is_empty() => {
                    Err(TlsError::NoCertificateRefs { protocol: p() })
                }
                "Terminate" => Ok(TlsPlan::Terminate(t)),
                "Passthrough" if protocol == "HTTPS" => Err(TlsError::UnsupportedMode {
                    protocol: p(),
                    mode: "Passthrough".into(),
                }),
                "Passthrough" if !t.certificate_refs.is_empty() => {
                    Err(TlsError::PassthroughWithCertificates)
                }
                "Passthrough" => Ok(TlsPlan::Passthrough),
                other if protocol == "HTTPS" => Err(TlsError::UnsupportedMode {
                    protocol: p(),
                    mode: other.into(),
                }),
                other => Err(TlsError::InvalidMode { mode: other.into() }),
            }
        }
        _ if tls.is_some() => Err(TlsError::NotAllowed { protocol: p() }),
        _ => Ok(TlsPlan::Plain),
    }
}

/// One listener as the conflict check sees it.
#[derive(Debug, Clone, Copy)]
pub struct PortListener<'a> {
    pub name: &'a str,
    pub port: u16,
    pub protocol: &'a str,
    pub hostname: Option<&'a str>,
}

/// Listeners that are not distinct (Gateway API `Listener` doc: "Handling indistinct
/// Listeners"): every one of them is conflicted, none wins.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("all listeners on port {port} must use a compatible protocol; found {protocols}")]
    Protocol { port: u16, protocols: String },
    #[error("all listeners on port {port} must use a unique hostname; {hostname} is also used by listener {others}")]
    Hostname {
        port: u16,
        hostname: String,
        others: String,
    },
}

impl Conflict {
    /// The `Conflicted=True` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Protocol { .. } => "ProtocolConflict",
            Self::Hostname { .. } => "HostnameConflict",
        }
    }
}

/// Layer-7 protocol classes: HTTPS and TLS may share a port (SNI tells them apart). TCP, UDP
/// and unknown protocols take no part (this controller accepts none of them, so they bind
/// nothing).
fn l7_class(protocol: &str) -> Option<&'static str> {
    match protocol {
        "HTTP" => Some("HTTP"),
        "HTTPS" | "TLS" => Some("HTTPS/TLS"),
        _ => None,
    }
}

/// Conflicts per listener, in order (`validateConflictedLayer7Listeners`): a port whose
/// layer-7 listeners mix protocol classes conflicts all of them; listeners sharing a port and
/// hostname (none counts as one hostname) all conflict. A hostname conflict is reported over
/// a protocol conflict, as Envoy Gateway's last write does.
pub fn conflicts(ls: &[PortListener<'_>]) -> Vec<Option<Conflict>> {
    let mut classes: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
    let mut hosts: BTreeMap<(u16, Option<&str>), Vec<&str>> = BTreeMap::new();
    for l in ls {
        if let Some(c) = l7_class(l.protocol) {
            classes.entry(l.port).or_default().insert(c);
            hosts.entry((l.port, l.hostname)).or_default().push(l.name);
        }
    }
    ls.iter()
        .map(|l| {
            l7_class(l.protocol)?;
            let same_host = hosts.get(&(l.port, l.hostname))?;
            if same_host.len() > 1 {
                let others: Vec<&str> =
                    same_host.iter().copied().filter(|n| *n != l.name).collect();
                return Some(Conflict::Hostname {
                    port: l.port,
                    hostname: l.hostname.unwrap_or("(none)").to_string(),
                    others: others.join(", "),
                });
            }
            let cs = classes.get(&l.port)?;
            (cs.len() > 1).then(|| Conflict::Protocol {
                port: l.port,
                protocols: cs.iter().copied().collect::<Vec<_>>().join(" and "),
            })
        })
        .collect()
}

/// One programmed TLS-terminating listener as the overlap check sees it.
#[derive(Debug, Clone)]
pub struct TlsListener<'a> {
    pub name: &'a str,
    pub port: u16,
    pub hostname: Option<&'a str>,
    /// DNS names of its certificates (SANs, else CN).
    pub cert_names: Vec<&'a str>,
}

/// `OverlappingTLSConfig=True` (Gateway API `ListenerConditionOverlappingTLSConfig`): a
/// negative-polarity condition, set only when true.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Overlap {
    #[error("certificate name {name} overlaps with certificate name {other_name} of listener {other} on the same port; HTTP/2 connection coalescing could send requests to the wrong listener, so ALPN offers http/1.1 only")]
    Certificates {
        name: String,
        other_name: String,
        other: String,
    },
    #[error("hostname {hostname} overlaps with hostname {other_hostname} of listener {other} on the same port; HTTP/2 connection coalescing could send requests to the wrong listener, so ALPN offers http/1.1 only")]
    Hostnames {
        hostname: String,
        other_hostname: String,
        other: String,
    },
}

impl Overlap {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Certificates { .. } => "OverlappingCertificates",
            Self::Hostnames { .. } => "OverlappingHostnames",
        }
    }
}

fn overlaps(a: &str, b: &str) -> bool {
    hostname::within(a, b) || hostname::within(b, a)
}

/// Overlaps per listener, in order. Only listeners on the same port are compared; a listener
/// without hostname is compared by certificate only. Overlapping certificates are reported
/// over overlapping hostnames, as the spec asks when both hold.
pub fn overlapping_tls(ls: &[TlsListener<'_>]) -> Vec<Option<Overlap>> {
    ls.iter()
        .enumerate()
        .map(|(i, l)| {
            let peers = ls
                .iter()
                .enumerate()
                .filter(|(j, o)| *j != i && o.port == l.port)
                .map(|(_, o)| o);
            let mut by_hostname = None;
            for o in peers {
                for n in &l.cert_names {
                    if let Some(m) = o.cert_names.iter().find(|m| overlaps(n, m)) {
                        return Some(Overlap::Certificates {
                            name: n.to_string(),
                            other_name: m.to_string(),
                            other: o.name.to_string(),
                        });
                    }
                }
                if let (None, Some(h), Some(oh)) = (&by_hostname, l.hostname, o.hostname) {
                    if overlaps(h, oh) {
                        by_hostname = Some(Overlap::Hostnames {
                            hostname: h.to_string(),
                            other_hostname: oh.to_string(),
                            other: o.name.to_string(),
                        });
                    }
                }
            }
            by_hostname
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{GroupKind, LabelSelectorRequirement, ObjectRef, RouteNamespaces};

    #[test]
    fn kinds() {
        let a = AllowedRoutes {
            namespaces: None,
            kinds: vec![
                GroupKind {
                    group: Some("foo.io".into()),
                    kind: "HTTPRoute".into(),
                },
                GroupKind {
                    group: None,
                    kind: "TCPRoute".into(),
                },
                GroupKind {
                    group: Some(GATEWAY_GROUP.into()),
                    kind: "HTTPRoute".into(),
                },
            ],
        };
        let k = route_kinds(&a);
        assert_eq!(
            k.supported,
            vec![(GATEWAY_GROUP.to_string(), "HTTPRoute".to_string())]
        );
        assert_eq!(k.errors.len(), 2);
        assert_eq!(route_kinds(&AllowedRoutes::default()).supported.len(), 1);
    }

    fn expr(op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: Default::default(),
            match_expressions: vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: op.into(),
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn selectors() {
        assert!(label_selector(&expr("In", &["a"])).is_ok());
        assert!(label_selector(&expr("Exists", &[])).is_ok());
        assert!(matches!(
            label_selector(&expr("Matches", &["a"])),
            Err(SelectorError::Operator { .. })
        ));
        assert!(matches!(
            label_selector(&expr("in", &["a"])),
            Err(SelectorError::Operator { .. })
        ));
        assert!(matches!(
            label_selector(&expr("NotIn", &[])),
            Err(SelectorError::NoValues { .. })
        ));
        assert!(matches!(
            label_selector(&expr("DoesNotExist", &["a"])),
            Err(SelectorError::Values { .. })
        ));
        assert!(matches!(
            label_selector(&expr("In", &["not valid!"])),
            Err(SelectorError::Value { .. })
        ));
        assert!(label_key("example.com/team").is_ok());
        assert!(label_key("Example.com/team").is_err());
        assert!(label_key("-team").is_err());
        let from_selector = |s: Option<LabelSelector>| AllowedRoutes {
            namespaces: Some(RouteNamespaces {
                from: Some("Selector".into()),
                selector: s,
            }),
            kinds: vec![],
        };
        assert_eq!(
            namespaces(&from_selector(None)),
            Err(NamespacesError::SelectorMissing)
        );
        assert!(namespaces(&from_selector(Some(LabelSelector::default()))).is_ok());
    }

    #[test]
    fn tls_per_protocol() {
        let with = |mode: Option<&str>, refs: usize| ListenerTls {
            mode: mode.map(str::to_string),
            certificate_refs: vec![ObjectRef::default(); refs],
            options: Default::default(),
        };
        assert_eq!(tls("HTTP", None), Ok(TlsPlan::Plain));
        assert!(matches!(
            tls("HTTP", Some(&with(None, 1))),
            Err(TlsError::NotAllowed { .. })
        ));
        assert!(matches!(tls("HTTPS", None), Err(TlsError::Missing { .. })));
        assert!(matches!(
            tls("HTTPS", Some(&with(None, 0))),
            Err(TlsError::NoCertificateRefs { .. })
        ));
        assert!(matches!(
            tls("HTTPS", Some(&with(Some("Passthrough"), 0))),
            Err(TlsError::UnsupportedMode { .. })
        ));
        assert_eq!(
            tls("TLS", Some(&with(Some("Passthrough"), 0))),
            Ok(TlsPlan::Passthrough)
        );
        assert_eq!(
            tls("TLS", Some(&with(Some("Passthrough"), 1))),
            Err(TlsError::PassthroughWithCertificates)
        );
        assert!(matches!(
            tls("TLS", Some(&with(Some("Bogus"), 1))),
            Err(TlsError::InvalidMode { .. })
        ));
    }

    fn pl<'a>(name: &'a str, port: u16, protocol: &'a str, h: Option<&'a str>) -> PortListener<'a> {
        PortListener {
            name,
            port,
            protocol,
            hostname: h,
        }
    }

    #[test]
    fn conflicts_mark_every_party() {
        let got = conflicts(&[
            pl("a", 80, "HTTP", None),
            pl("b", 80, "HTTP", None),
            pl("c", 80, "HTTP", Some("c.example.com")),
            pl("d", 443, "HTTPS", Some("d.example.com")),
            pl("e", 443, "TLS", Some("e.example.com")),
            pl("f", 443, "TCP", None),
            pl("g", 8080, "HTTP", None),
            pl("h", 8080, "HTTPS", Some("h.example.com")),
        ]);
        let reasons: Vec<_> = got
            .iter()
            .map(|c| c.as_ref().map(Conflict::reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                Some("HostnameConflict"),
                Some("HostnameConflict"),
                None,
                None,
                None,
                None,
                Some("ProtocolConflict"),
                Some("ProtocolConflict"),
            ]
        );
    }

    #[test]
    fn overlaps_by_hostname_and_certificate() {
        let tl = |name, port, h, certs: Vec<&'static str>| TlsListener {
            name,
            port,
            hostname: h,
            cert_names: certs,
        };
        // The spec's example: A and C overlap, B does not.
        let got = overlapping_tls(&[
            tl("a", 443, Some("foo.example.com"), vec!["foo.example.com"]),
            tl("b", 443, Some("foo.example.org"), vec!["foo.example.org"]),
            tl("c", 443, Some("*.example.com"), vec!["c.example.net"]),
            tl("d", 8443, Some("foo.example.com"), vec!["*.example.com"]),
            tl("e", 8443, None, vec!["x.example.com"]),
        ]);
        let reasons: Vec<_> = got
            .iter()
            .map(|c| c.as_ref().map(Overlap::reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                Some("OverlappingHostnames"),
                None,
                Some("OverlappingHostnames"),
                Some("OverlappingCertificates"),
                Some("OverlappingCertificates"),
            ]
        );
    }
}
