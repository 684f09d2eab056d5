//! `Gateway.spec.addresses` (Gateway API v1.6.1 `GatewaySpecAddress`, `GatewayConditionReason`):
//! this controller assigns no static address, so it only checks that each request is one it
//! could read. Only `IPAddress` is a supported type (as Envoy Gateway, which copies IPs to the
//! fleet Service); the rest make the Gateway not accepted.

use crate::resources::GatewayAddress;

/// A `spec.addresses[]` entry this controller refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("spec.addresses[{index}]: address type {type_} is not supported; only IPAddress is")]
    UnsupportedType { index: usize, type_: String },
    #[error(
        "spec.addresses[{index}]: {value:?} is not an IP address, which type IPAddress requires"
    )]
    NotAnIp { index: usize, value: String },
    #[error("spec.addresses[{index}]: an IPAddress without value asks for an address to be assigned, which this controller does not do")]
    NotAssigned { index: usize },
}

impl AddressError {
    /// The Gateway condition `(type, reason)` this error sets to False.
    pub fn condition(&self) -> (&'static str, &'static str) {
        match self {
            Self::UnsupportedType { .. } => ("Accepted", "UnsupportedAddress"),
            Self::NotAnIp { .. } => ("Programmed", "AddressNotUsable"),
            Self::NotAssigned { .. } => ("Programmed", "AddressNotAssigned"),
        }
    }
}

/// Every refused entry, in order.
pub fn check(addresses: &[GatewayAddress]) -> Vec<AddressError> {
    addresses
        .iter()
        .enumerate()
        .filter_map(|(index, a)| {
            let t = a.type_.as_deref().unwrap_or("IPAddress");
            if t != "IPAddress" {
                return Some(AddressError::UnsupportedType {
                    index,
                    type_: t.into(),
                });
            }
            match a.value.as_deref().unwrap_or("") {
                "" => Some(AddressError::NotAssigned { index }),
                v if v.parse::<std::net::IpAddr>().is_err() => Some(AddressError::NotAnIp {
                    index,
                    value: v.into(),
                }),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(t: Option<&str>, v: Option<&str>) -> GatewayAddress {
        GatewayAddress {
            type_: t.map(str::to_string),
            value: v.map(str::to_string),
        }
    }

    #[test]
    fn types_and_values() {
        let got = check(&[
            a(None, Some("10.0.0.1")),
            a(Some("IPAddress"), Some("fd00::1")),
            a(Some("Hostname"), Some("gw.example.com")),
            a(Some("example.com/custom"), Some("x")),
            a(None, Some("gw.example.com")),
            a(None, None),
        ]);
        let conds: Vec<_> = got.iter().map(AddressError::condition).collect();
        assert_eq!(
            conds,
            vec![
                ("Accepted", "UnsupportedAddress"),
                ("Accepted", "UnsupportedAddress"),
                ("Programmed", "AddressNotUsable"),
                ("Programmed", "AddressNotAssigned"),
            ]
        );
    }
}
