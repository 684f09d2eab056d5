//! The filter's hand-defined messages (portcullis_core::ratelimit::proto) against envoy-types.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration;
use portcullis_core::ratelimit::config::Unit as CoreUnit;
use portcullis_core::ratelimit::{
    proto, Descriptor, DescriptorStatus as CoreStatus, GlobalRequest, GlobalResult,
};
use prost::Message;

#[test]
fn filter_request_decodes_as_envoy_request() {
    let req = GlobalRequest {
        cluster: "ratelimit".into(),
        domain: "portcullis".into(),
        timeout_ms: 20,
        descriptors: vec![
            Descriptor {
                entries: vec![
                    ("rule".into(), "per-ip".into()),
                    ("client_ip".into(), "10.0.0.1".into()),
                ],
                requests_per_unit: 100,
                unit: CoreUnit::Minute,
            },
            Descriptor {
                entries: vec![("rule".into(), "day".into())],
                requests_per_unit: 5,
                unit: CoreUnit::Day,
            },
        ],
    };
    let msg = RateLimitRequest::decode(proto::encode_request(&req).as_slice()).unwrap();
    assert_eq!(msg.domain, "portcullis");
    assert_eq!(msg.hits_addend, 1);
    assert_eq!(msg.descriptors.len(), 2);
    let d0 = &msg.descriptors[0];
    let entries: Vec<(&str, &str)> = d0
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(entries, [("rule", "per-ip"), ("client_ip", "10.0.0.1")]);
    let o = d0.limit.as_ref().unwrap();
    assert_eq!(
        (o.requests_per_unit, o.unit),
        (
            100,
            envoy_types::pb::envoy::r#type::v3::RateLimitUnit::Minute as i32
        )
    );
    let o = msg.descriptors[1].limit.as_ref().unwrap();
    assert_eq!(
        (o.requests_per_unit, o.unit),
        (
            5,
            envoy_types::pb::envoy::r#type::v3::RateLimitUnit::Day as i32
        )
    );
}

#[test]
fn envoy_response_decodes_in_the_filter() {
    let resp = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            DescriptorStatus {
                code: Code::OverLimit as i32,
                current_limit: Some(RateLimit {
                    name: "x".into(),
                    requests_per_unit: 10,
                    unit: Unit::Hour as i32,
                }),
                limit_remaining: 0,
                duration_until_reset: Some(Duration {
                    seconds: 42,
                    nanos: 0,
                }),
                ..Default::default()
            },
            DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    match proto::decode_response(&resp.encode_to_vec()) {
        GlobalResult::Ok {
            over_limit,
            statuses,
        } => {
            assert!(over_limit);
            assert_eq!(
                statuses,
                vec![
                    CoreStatus {
                        over_limit: true,
                        limit: Some((10, 3600)),
                        remaining: 0,
                        reset_s: Some(42)
                    },
                    CoreStatus {
                        over_limit: false,
                        limit: None,
                        remaining: 0,
                        reset_s: None
                    },
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    let unknown = RateLimitResponse {
        overall_code: Code::Unknown as i32,
        ..Default::default()
    };
    assert!(matches!(
        proto::decode_response(&unknown.encode_to_vec()),
        GlobalResult::Error(_)
    ));
}
