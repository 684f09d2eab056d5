//! The few messages of Envoy's rate-limit service API (`envoy.service.ratelimit.v3`) the filter
//! sends and reads, defined by hand with prost. envoy-types has them too, but it pulls tonic's
//! transport (tokio, hyper), which does not build for wasm32-wasip1. Field numbers follow
//! `envoy/service/ratelimit/v3/rls.proto` and `envoy/extensions/common/ratelimit/v3/ratelimit.proto`;
//! the ratelimit-server's tests check them against envoy-types.

use super::config::Unit;
use super::engine::{Descriptor, DescriptorStatus, GlobalRequest, GlobalResult};

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    #[prost(message, optional, tag = "2")]
    pub limit: Option<RateLimitOverride>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitOverride {
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// `envoy.type.v3.RateLimitUnit`: SECOND=1, MINUTE=2, HOUR=3, DAY=4.
    #[prost(int32, tag = "2")]
    pub unit: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitResponse {
    /// UNKNOWN=0, OK=1, OVER_LIMIT=2.
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatusMsg>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorStatusMsg {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimit {
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// SECOND=1, MINUTE=2, HOUR=3, DAY=4, MONTH=5, YEAR=6, WEEK=7.
    #[prost(int32, tag = "2")]
    pub unit: i32,
    #[prost(string, tag = "3")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The gRPC path of `ShouldRateLimit`.
pub const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// One gRPC message as it travels in an HTTP/2 body: uncompressed flag, big-endian length,
/// bytes (for hosts without a gRPC client, which frame it over a plain HTTP stream).
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(message);
    out
}

/// The single message of a unary gRPC response body.
pub fn grpc_unframe(body: &[u8]) -> Result<&[u8], String> {
    let (head, rest) = body
        .split_at_checked(5)
        .ok_or_else(|| format!("gRPC body of {} bytes has no message header", body.len()))?;
    if head[0] != 0 {
        return Err("compressed gRPC messages are not supported".into());
    }
    let len = usize::try_from(u32::from_be_bytes([head[1], head[2], head[3], head[4]]))
        .unwrap_or(usize::MAX);
    rest.get(..len)
        .ok_or_else(|| format!("gRPC message says {len} bytes, body has {}", rest.len()))
}

pub const CODE_OK: i32 = 1;
pub const CODE_OVER_LIMIT: i32 = 2;

pub fn unit_to_proto(u: Unit) -> i32 {
    match u {
        Unit::Second => 1,
        Unit::Minute => 2,
        Unit::Hour => 3,
        Unit::Day => 4,
    }
}

/// Seconds in a service-side unit (0 for UNKNOWN or anything new).
pub fn unit_seconds(unit: i32) -> u64 {
    match unit {
        1 => 1,
        2 => 60,
        3 => 3600,
        4 => 86_400,
        5 => 30 * 86_400,
        6 => 365 * 86_400,
        7 => 7 * 86_400,
        _ => 0,
    }
}

/// The serialized `RateLimitRequest` for a filter's global call.
pub fn encode_request(req: &GlobalRequest) -> Vec<u8> {
    let msg = RateLimitRequest {
        domain: req.domain.clone(),
        descriptors: req.descriptors.iter().map(descriptor).collect(),
        hits_addend: 1,
    };
    prost::Message::encode_to_vec(&msg)
}

fn descriptor(d: &Descriptor) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: d
            .entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        limit: Some(RateLimitOverride {
            requests_per_unit: u32::try_from(d.requests_per_unit).unwrap_or(u32::MAX),
            unit: unit_to_proto(d.unit),
        }),
    }
}

/// Reads a `RateLimitResponse`; a malformed body or overall code UNKNOWN is an error (the
/// failure mode decides).
pub fn decode_response(body: &[u8]) -> GlobalResult {
    let msg: RateLimitResponse = match prost::Message::decode(body) {
        Ok(m) => m,
        Err(e) => return GlobalResult::Error(format!("malformed RateLimitResponse: {e}")),
    };
    let over_limit = match msg.overall_code {
        CODE_OK => false,
        CODE_OVER_LIMIT => true,
        other => return GlobalResult::Error(format!("overall_code {other} (UNKNOWN)")),
    };
    let statuses = msg
        .statuses
        .iter()
        .map(|s| DescriptorStatus {
            over_limit: s.code == CODE_OVER_LIMIT,
            limit: s
                .current_limit
                .as_ref()
                .map(|l| (u64::from(l.requests_per_unit), unit_seconds(l.unit)))
                .filter(|(r, w)| *r > 0 && *w > 0),
            remaining: u64::from(s.limit_remaining),
            reset_s: s
                .duration_until_reset
                .as_ref()
                .map(|d| u64::try_from(d.seconds).unwrap_or(0) + u64::from(d.nanos > 0)),
        })
        .collect();
    GlobalResult::Ok {
        over_limit,
        statuses,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_frames_round_trip_and_reject_garbage() {
        let f = super::grpc_frame(b"abc");
        assert_eq!(f, [0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(super::grpc_unframe(&f), Ok(&b"abc"[..]));
        assert!(super::grpc_unframe(&f[..4]).is_err());
        assert!(super::grpc_unframe(&f[..6]).is_err());
        assert!(super::grpc_unframe(&[1, 0, 0, 0, 0]).is_err());
        assert_eq!(super::grpc_unframe(&[0, 0, 0, 0, 0]), Ok(&b""[..]));
    }

    use super::*;

    #[test]
    fn request_round_trip() {
        let req = GlobalRequest {
            cluster: "c".into(),
            domain: "d".into(),
            timeout_ms: 5,
            descriptors: vec![Descriptor {
                entries: vec![
                    ("rule".into(), "r".into()),
                    ("client_ip".into(), "1.2.3.4".into()),
                ],
                requests_per_unit: 7,
                unit: Unit::Hour,
            }],
        };
        let bytes = encode_request(&req);
        let back: RateLimitRequest = prost::Message::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.domain, "d");
        assert_eq!(back.hits_addend, 1);
        assert_eq!(back.descriptors[0].entries[1].value, "1.2.3.4");
        assert_eq!(
            back.descriptors[0].limit,
            Some(RateLimitOverride {
                requests_per_unit: 7,
                unit: 3
            })
        );
    }

    #[test]
    fn response_codes() {
        let resp = |code: i32| {
            prost::Message::encode_to_vec(&RateLimitResponse {
                overall_code: code,
                statuses: vec![DescriptorStatusMsg {
                    code,
                    current_limit: Some(RateLimit {
                        requests_per_unit: 10,
                        unit: 2,
                        name: String::new(),
                    }),
                    limit_remaining: 3,
                    duration_until_reset: Some(Duration {
                        seconds: 4,
                        nanos: 1,
                    }),
                }],
            })
        };
        match decode_response(&resp(CODE_OVER_LIMIT)) {
            GlobalResult::Ok {
                over_limit,
                statuses,
            } => {
                assert!(over_limit);
                assert_eq!(
                    statuses,
                    vec![DescriptorStatus {
                        over_limit: true,
                        limit: Some((10, 60)),
                        remaining: 3,
                        reset_s: Some(5)
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_response(&resp(CODE_OK)),
            GlobalResult::Ok {
                over_limit: false,
                ..
            }
        ));
        assert!(matches!(decode_response(&resp(0)), GlobalResult::Error(_)));
        assert!(matches!(
            decode_response(&[0xff, 0xff]),
            GlobalResult::Error(_)
        ));
        // An empty body is a response with every field default: overall_code UNKNOWN.
        assert!(matches!(decode_response(&[]), GlobalResult::Error(_)));
    }
}
