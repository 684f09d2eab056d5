//! Which upstream addresses tenant-written configuration may make Envoy connect to.
//!
//! On a shared Gateway a tenant writes `Backend` endpoints, OIDC issuers and rate-limit service
//! addresses. Left unchecked, `127.0.0.1:<admin port>` exposes Envoy's admin (`/config_dump`
//! holds every tenant's secrets), and `169.254.169.254` the cloud metadata service. So the
//! `Backend` kind is off unless the operator enables it (as in Envoy Gateway), and loopback,
//! link-local (metadata included), unspecified and `localhost` targets and unix sockets are
//! refused unless the operator allows the range explicitly.
//!
//! The controller itself also connects where a tenant says: it fetches `wasm[].code.type: HTTP`
//! modules. It runs inside the cluster network (with its service account), so for its own
//! fetches ([`Connector::Controller`]) private (RFC 1918, ULA) and shared (CGNAT) ranges are
//! refused as well. One allow-list (`--allow-backend-cidr`) governs both.

use std::net::IpAddr;

use ipnet::IpNet;

/// The operator's egress settings (`--enable-backend`, `--allow-backend-cidr`,
/// `--allow-backend-unix`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EgressPolicy {
    /// Envoy Gateway `Backend` references are honoured; otherwise they are
    /// `ResolvedRefs=False`/`UnsupportedValue` (Envoy Gateway's reason).
    pub enable_backend: bool,
    /// Ranges that are refused by default but allowed here (e.g. `127.0.0.0/8` for a local
    /// upstream on a laptop).
    pub allowed_cidrs: Vec<IpNet>,
    /// `Backend` unix-socket endpoints are allowed.
    pub allow_unix: bool,
    /// CA bundle an https identity provider's certificate must chain to, on Envoy's host
    /// (`--issuer-ca-bundle`); `None`: [`DEFAULT_CA_BUNDLE`].
    pub issuer_ca_bundle: Option<String>,
}

/// The platform trust bundle of Debian, Ubuntu and the Envoy images.
pub const DEFAULT_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a target was refused: one line for a status message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{target}: {what} is refused (tenant configuration may not reach {why}); {fix}")]
pub struct Refused {
    pub target: String,
    what: &'static str,
    why: &'static str,
    fix: String,
}

/// Who makes a connection tenant configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    /// Envoy, to a tenant's upstream (`Backend` endpoints, EndpointSlice addresses, OIDC
    /// issuers, rate-limit services). In-cluster upstreams live in private ranges, so only
    /// loopback, link-local (metadata) and unspecified addresses are refused.
    Envoy,
    /// The controller, fetching a tenant's HTTP wasm module. Private (RFC 1918, ULA) and shared
    /// (CGNAT) ranges are refused too: a module comes from a registry or a web server, and the
    /// controller must not become a tenant's probe into the cluster network.
    Controller,
}

/// The ranges refused by default for `who`, with what they are.
fn refused_range(who: Connector, ip: IpAddr) -> Option<(&'static str, IpNet)> {
    const RANGES: &[(&str, &str)] = &[
        ("a loopback address", "127.0.0.0/8"),
        ("a loopback address", "::1/128"),
        ("an unspecified address", "0.0.0.0/8"),
        ("an unspecified address", "::/128"),
        ("a link-local address (cloud metadata)", "169.254.0.0/16"),
        ("a link-local address", "fe80::/10"),
        ("the cloud metadata address", "fd00:ec2::254/128"),
    ];
    const CONTROLLER_RANGES: &[(&str, &str)] = &[
        ("a private address", "10.0.0.0/8"),
        ("a private address", "172.16.0.0/12"),
        ("a private address", "192.168.0.0/16"),
        ("a shared (CGNAT) address", "100.64.0.0/10"),
        ("a unique local address", "fc00::/7"),
    ];
    let extra: &[(&str, &str)] = match who {
        Connector::Envoy => &[],
        Connector::Controller => CONTROLLER_RANGES,
    };
    RANGES.iter().chain(extra).find_map(|(what, net)| {
        let net: IpNet = net.parse().ok()?;
        net.contains(&ip).then_some((*what, net))
    })
}

const WHY: &str = "Envoy's admin, the node's local services or the metadata service";
const WHY_CONTROLLER: &str =
    "the controller's local services, the cluster's private network or the metadata service";

impl Connector {
    fn why(self) -> &'static str {
        match self {
            Connector::Envoy => WHY,
            Connector::Controller => WHY_CONTROLLER,
        }
    }
}

impl EgressPolicy {
    /// The CA bundle file https issuers are verified against.
    pub fn issuer_ca_bundle(&self) -> &str {
        self.issuer_ca_bundle
            .as_deref()
            .unwrap_or(DEFAULT_CA_BUNDLE)
    }

    /// The operator's trust for https upstreams a tenant names without its own CA (issuers,
    /// `wellKnownCACertificates: System`): [`issuer_ca_bundle`](Self::issuer_ca_bundle).
    pub fn system_trust(&self) -> crate::ir::TrustedCa {
        crate::ir::TrustedCa::File(self.issuer_ca_bundle().to_string())
    }

    /// Everything allowed: for tests and tools that translate trusted input.
    pub fn permissive() -> Self {
        Self {
            enable_backend: true,
            allowed_cidrs: vec![
                "0.0.0.0/0".parse().expect("valid"),
                "::/0".parse().expect("valid"),
            ],
            allow_unix: true,
            issuer_ca_bundle: None,
        }
    }

    /// `Backend` on and `cidrs` allowed, unix sockets refused: `portcullis run
    /// --allow-backend-cidr ...`, for tests and tools.
    pub fn allowing(cidrs: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            enable_backend: true,
            allowed_cidrs: cidrs.into_iter().collect(),
            allow_unix: false,
            issuer_ca_bundle: None,
        }
    }

    /// Checks a host (IP literal or DNS name) a tenant wants Envoy to connect to.
    pub fn check_host(&self, host: &str) -> Result<(), Refused> {
        self.check_host_for(Connector::Envoy, host)
    }

    /// Checks a host (IP literal or DNS name) a tenant wants `who` to connect to. A DNS name
    /// passes unless it is `localhost` or numeric: whoever connects must check what it resolves
    /// to ([`Self::check_resolved`]).
    pub fn check_host_for(&self, who: Connector, host: &str) -> Result<(), Refused> {
        let bare = host.trim_matches(['[', ']']);
        let name = bare.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check_ip(who, host, ip);
        }
        if is_localhost(&name) && !self.loopback_allowed() {
            return Err(Refused {
                target: host.to_string(),
                what: "localhost",
                why: who.why(),
                fix: "an operator can allow it with --allow-backend-cidr 127.0.0.0/8".into(),
            });
        }
        // No top-level domain starts with a digit: such a name is an IP in a legacy form that
        // resolvers still accept (`2130706433`, `0177.1`, `127.1`), so its range is unknown.
        if name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.starts_with(|c: char| c.is_ascii_digit()))
        {
            return Err(Refused {
                target: host.to_string(),
                what: "a numeric host name (an IP address in a non-standard form)",
                why: who.why(),
                fix: "write the address as a standard IP literal".into(),
            });
        }
        Ok(())
    }

    /// Checks an address the DNS name `name` resolved to, before `who` connects to it.
    pub fn check_resolved(&self, who: Connector, name: &str, ip: IpAddr) -> Result<(), Refused> {
        self.check_ip(who, &format!("{name} (resolves to {ip})"), ip)
    }

    fn check_ip(&self, who: Connector, target: &str, ip: IpAddr) -> Result<(), Refused> {
        let ip = ip.to_canonical(); // ::ffff:127.0.0.1 is 127.0.0.1
        match refused_range(who, ip) {
            Some((what, net)) if !self.allowed_cidrs.iter().any(|n| n.contains(&ip)) => {
                Err(Refused {
                    target: target.to_string(),
                    what,
                    why: who.why(),
                    fix: format!("an operator can allow it with --allow-backend-cidr {net}"),
                })
            }
            _ => Ok(()),
        }
    }

    /// `localhost` names are allowed: 127.0.0.1 is in an allowed range.
    pub fn loopback_allowed(&self) -> bool {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        self.allowed_cidrs.iter().any(|n| n.contains(&loopback))
    }

    /// Checks a unix-socket path a tenant wants Envoy to connect to.
    pub fn check_unix(&self, path: &str) -> Result<(), Refused> {
        if self.allow_unix {
            return Ok(());
        }
        Err(Refused {
            target: format!("unix:{path}"),
            what: "a unix socket",
            why: "the node's local services",
            fix: "an operator can allow it with --allow-backend-unix".into(),
        })
    }
}

/// `localhost` or a name under it (RFC 6761: always loopback, never asked of DNS).
pub fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_local_and_metadata_targets_by_default() {
        let p = EgressPolicy::default();
        for host in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "fe80::1",
            "fd00:ec2::254",
            "localhost",
            "LOCALHOST.",
            "api.localhost",
            "2130706433",
            "0177.0.0.1",
            "127.1",
        ] {
            let e = p.check_host(host).expect_err(host);
            assert!(e.to_string().starts_with(host), "{e}");
        }
        assert!(p.check_unix("/var/run/x.sock").is_err());
    }

    #[test]
    fn allows_public_and_private_targets_and_named_ranges() {
        let p = EgressPolicy::default();
        for host in [
            "203.0.113.7",
            "10.1.2.3",
            "2001:db8::1",
            "idp.example.com",
            "svc.ns.svc.cluster.local",
            "a1.example",
        ] {
            p.check_host(host).unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        let p = EgressPolicy::allowing(["127.0.0.0/8".parse().unwrap()]);
        p.check_host("127.0.0.1").unwrap();
        p.check_host("localhost").unwrap();
        let e = p.check_host("169.254.169.254").unwrap_err().to_string();
        assert!(e.contains("--allow-backend-cidr 169.254.0.0/16"), "{e}");
        assert!(p.check_host("::1").is_err());
        assert!(EgressPolicy::permissive().check_unix("/x").is_ok());
    }

    #[test]
    fn controller_fetches_also_refuse_private_ula_and_cgnat() {
        let p = EgressPolicy::default();
        let c = Connector::Controller;
        for host in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "fd12:3456::1",
            "fc00::1",
            "::ffff:10.0.0.1",
            // The defaults refused for Envoy hold for the controller too.
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "169.254.169.254",
            "fe80::1",
            "fd00:ec2::254",
            "localhost",
            "2130706433",
        ] {
            let e = p.check_host_for(c, host).expect_err(host).to_string();
            assert!(e.starts_with(host) && e.contains(WHY_CONTROLLER), "{e}");
        }
        // Envoy's rule is unchanged: in-cluster upstreams are private.
        for host in ["10.1.2.3", "192.168.1.1", "100.64.0.1", "fd12::1"] {
            p.check_host(host).unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        for host in [
            "203.0.113.7",
            "2001:db8::1",
            "wasm.example.com",
            "172.32.0.1",
        ] {
            p.check_host_for(c, host)
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        let e = p
            .check_resolved(c, "wasm.example.com", "10.0.0.5".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("wasm.example.com (resolves to 10.0.0.5): a private address")
                && e.ends_with("--allow-backend-cidr 10.0.0.0/8"),
            "{e}"
        );
        // One allow-list for both connectors.
        let p = EgressPolicy::allowing(["10.0.0.0/8".parse().unwrap()]);
        p.check_host_for(c, "10.9.9.9").unwrap();
        p.check_resolved(c, "w.example", "10.0.0.5".parse().unwrap())
            .unwrap();
        assert!(p.check_host_for(c, "192.168.1.1").is_err());
        assert!(p.check_host_for(c, "localhost").is_err());
        let p = EgressPolicy::allowing(["127.0.0.0/8".parse().unwrap()]);
        p.check_host_for(c, "localhost").unwrap();
        p.check_host_for(c, "127.0.0.1").unwrap();
    }
}
