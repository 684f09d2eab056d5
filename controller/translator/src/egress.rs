//! Which upstream addresses tenant-written configuration may make Envoy connect to.
//!
//! On a shared Gateway a tenant writes `Backend` endpoints, OIDC issuers and rate-limit service
//! addresses. Left unchecked, `127.0.0.1:<admin port>` exposes Envoy's admin (`/config_dump`
//! holds every tenant's secrets), and `169.254.169.254` the cloud metadata service. So the
//! `Backend` kind is off unless the operator enables it (as in Envoy Gateway), and loopback,
//! link-local (metadata included), unspecified and `localhost` targets and unix sockets are
//! refused unless the operator allows the range explicitly.

use std::net::IpAddr;

use ipnet::IpNet;

/// The operator's egress settings (`--enable-backend`, `--allow-backend-cidr`,
/// `--allow-backend-unix`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EgressPolicy {
    /// Envoy Gateway `Backend` references are honoured; otherwise they are `InvalidKind`.
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

/// The ranges refused by default, with what they are.
fn refused_range(ip: IpAddr) -> Option<(&'static str, IpNet)> {
    const RANGES: &[(&str, &str)] = &[
        ("a loopback address", "127.0.0.0/8"),
        ("a loopback address", "::1/128"),
        ("an unspecified address", "0.0.0.0/8"),
        ("an unspecified address", "::/128"),
        ("a link-local address (cloud metadata)", "169.254.0.0/16"),
        ("a link-local address", "fe80::/10"),
        ("the cloud metadata address", "fd00:ec2::254/128"),
    ];
    RANGES.iter().find_map(|(what, net)| {
        let net: IpNet = net.parse().ok()?;
        net.contains(&ip).then_some((*what, net))
    })
}

const WHY: &str = "Envoy's admin, the node's local services or the metadata service";

impl EgressPolicy {
    /// The CA bundle file https issuers are verified against.
    pub fn issuer_ca_bundle(&self) -> &str {
        self.issuer_ca_bundle
            .as_deref()
            .unwrap_or(DEFAULT_CA_BUNDLE)
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
        let bare = host.trim_matches(['[', ']']);
        let name = bare.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = bare.parse::<IpAddr>() {
            let ip = ip.to_canonical(); // ::ffff:127.0.0.1 is 127.0.0.1
            if let Some((what, net)) = refused_range(ip) {
                if !self.allowed_cidrs.iter().any(|n| n.contains(&ip)) {
                    return Err(Refused {
                        target: host.to_string(),
                        what,
                        why: WHY,
                        fix: format!("an operator can allow it with --allow-backend-cidr {net}"),
                    });
                }
            }
            return Ok(());
        }
        let loopback = "127.0.0.1".parse::<IpAddr>().expect("valid");
        let loopback_allowed = self.allowed_cidrs.iter().any(|n| n.contains(&loopback));
        if (name == "localhost" || name.ends_with(".localhost")) && !loopback_allowed {
            return Err(Refused {
                target: host.to_string(),
                what: "localhost",
                why: WHY,
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
                why: WHY,
                fix: "write the address as a standard IP literal".into(),
            });
        }
        Ok(())
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
}
