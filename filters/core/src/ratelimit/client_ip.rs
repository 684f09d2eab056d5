//! The client IP, the way Envoy's `xff_num_trusted_hops` finds it.
//!
//! Envoy (HTTP connection manager) picks the trusted client address as follows:
//! - `use_remote_address: true`: Envoy appends the peer address to X-Forwarded-For before
//!   filters run; with N trusted hops the client is the Nth address from the right of the
//!   header as the client sent it, i.e. the (N+1)th from the right of what filters see.
//! - `use_remote_address: false`: a trusted proxy in front appended the peer; with N trusted
//!   hops the client is the (N+1)th address from the right.
//!
//! Both reduce to the same rule on the header a filter sees: the (N+1)th address from the
//! right. With fewer entries, or an entry that is not an IP address, Envoy falls back to the
//! downstream (connection) address, and so do we. Addresses to the left of the chosen one are
//! never read, so whatever a client prepends cannot change its key.

use std::net::{IpAddr, SocketAddr};

/// Longest X-Forwarded-For we split (bytes); beyond it only the rightmost part is looked at.
const MAX_XFF_LEN: usize = 8192;

/// The client IP: the (`trusted_hops`+1)th entry from the right of the X-Forwarded-For values
/// (all header lines, in order), else the downstream address. `None` only when neither is usable.
pub fn client_ip(xff: &[String], trusted_hops: u32, downstream: Option<&str>) -> Option<IpAddr> {
    from_xff(xff, trusted_hops).or_else(|| downstream.and_then(parse_address))
}

/// The address chosen from X-Forwarded-For alone, if there are enough valid entries.
pub fn from_xff(xff: &[String], trusted_hops: u32) -> Option<IpAddr> {
    let skip = usize::try_from(trusted_hops).unwrap_or(usize::MAX);
    // Walk the lines right to left, and each line's entries right to left.
    let mut seen = 0usize;
    for line in xff.iter().rev() {
        let line = tail(line, MAX_XFF_LEN);
        for entry in line.rsplit(',') {
            if seen == skip {
                return parse_ip(entry.trim());
            }
            seen += 1;
        }
    }
    None
}

/// The last `max` bytes of `s`, cut at a char boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A bare IP address (what Envoy accepts in X-Forwarded-For).
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(canonical)
}

/// A downstream address as hosts report it: `1.2.3.4:5678`, `[::1]:5678` or a bare IP.
pub fn parse_address(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<SocketAddr>()
        .map(|a| a.ip())
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok())
        .map(canonical)
}

/// IPv4-mapped IPv6 addresses are the IPv4 client; one client, one key.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn envoy_doc_example_with_two_trusted_hops() {
        // Envoy docs: edge Envoy behind two trusted proxies, use_remote_address true. The client
        // sent "203.0.113.128, 203.0.113.10, 203.0.113.1"; Envoy appended the peer 192.0.2.5.
        let h = xff(&["203.0.113.128, 203.0.113.10, 203.0.113.1,192.0.2.5"]);
        assert_eq!(
            client_ip(&h, 2, Some("192.0.2.5:1234")),
            Some(ip("203.0.113.10"))
        );
    }

    #[test]
    fn zero_hops_takes_the_rightmost_entry() {
        let h = xff(&["1.1.1.1, 2.2.2.2"]);
        assert_eq!(client_ip(&h, 0, Some("9.9.9.9:1")), Some(ip("2.2.2.2")));
        assert_eq!(client_ip(&h, 1, Some("9.9.9.9:1")), Some(ip("1.1.1.1")));
    }

    #[test]
    fn too_few_entries_fall_back_to_downstream() {
        let h = xff(&["1.1.1.1"]);
        assert_eq!(client_ip(&h, 1, Some("9.9.9.9:1")), Some(ip("9.9.9.9")));
        assert_eq!(
            client_ip(&[], 0, Some("[2001:db8::1]:443")),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(client_ip(&[], 0, Some("10.0.0.1")), Some(ip("10.0.0.1")));
        assert_eq!(client_ip(&[], 0, None), None);
        assert_eq!(client_ip(&[], 0, Some("pipe:/x")), None);
    }

    #[test]
    fn invalid_chosen_entry_falls_back_to_downstream() {
        for bad in ["garbage", "1.2.3.4:80", "", "1.2.3.4.5", "unknown", "::g"] {
            let h = xff(&[&format!("{bad}, 5.5.5.5")]);
            assert_eq!(
                client_ip(&h, 1, Some("9.9.9.9:1")),
                Some(ip("9.9.9.9")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn spoofed_prefix_cannot_change_the_client() {
        // One trusted hop: a proxy appended the real client 7.7.7.7, then Envoy its peer.
        for spoof in ["", "1.2.3.4,", "1.2.3.4, 8.8.8.8,", "garbage,,", "::1,"] {
            let h = xff(&[&format!("{spoof}7.7.7.7, 10.0.0.2")]);
            assert_eq!(
                client_ip(&h, 1, Some("10.0.0.2:1")),
                Some(ip("7.7.7.7")),
                "{spoof:?}"
            );
        }
        // Zero trusted hops: only Envoy's own appended peer address counts.
        for spoof in ["1.2.3.4", "1.2.3.4, 8.8.8.8"] {
            let h = xff(&[&format!("{spoof}, 10.0.0.2")]);
            assert_eq!(client_ip(&h, 0, Some("10.0.0.2:1")), Some(ip("10.0.0.2")));
        }
    }

    #[test]
    fn several_header_lines_read_as_one_list() {
        let h = xff(&["1.1.1.1, 2.2.2.2", "3.3.3.3"]);
        assert_eq!(from_xff(&h, 0), Some(ip("3.3.3.3")));
        assert_eq!(from_xff(&h, 1), Some(ip("2.2.2.2")));
        assert_eq!(from_xff(&h, 2), Some(ip("1.1.1.1")));
        assert_eq!(from_xff(&h, 3), None);
    }

    #[test]
    fn mapped_ipv6_is_the_ipv4_client() {
        let h = xff(&["::ffff:1.2.3.4"]);
        assert_eq!(from_xff(&h, 0), Some(ip("1.2.3.4")));
    }

    #[test]
    fn huge_headers_and_hops_do_not_panic() {
        let long = "a,".repeat(100_000) + "é1.2.3.4";
        assert_eq!(from_xff(&[long], 0), None);
        assert_eq!(from_xff(&xff(&["1.1.1.1"]), u32::MAX), None);
    }
}
