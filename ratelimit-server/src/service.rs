//! The gRPC service.

use std::sync::Arc;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit as RateLimitMsg,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration;
use tonic::{Request, Response, Status};

use crate::config::{unit_seconds, Limit, Limits};
use crate::store::Store;

pub struct RateLimit {
    limits: Arc<Limits>,
    store: Store,
}

impl RateLimit {
    pub fn new(limits: Arc<Limits>, store: Store) -> Self {
        Self { limits, store }
    }
}

pub type Server = RateLimitServiceServer<RateLimit>;

pub fn server(svc: RateLimit) -> Server {
    RateLimitServiceServer::new(svc)
}

#[tonic::async_trait]
impl RateLimitService for RateLimit {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let req = request.into_inner();
        if req.domain.is_empty() {
            return Err(Status::invalid_argument("domain must not be empty"));
        }
        let mut overall = Code::Ok;
        let mut statuses = Vec::with_capacity(req.descriptors.len());
        for d in &req.descriptors {
            let entries: Vec<(String, String)> = d
                .entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            let hits = d
                .hits_addend
                .map(|h| h.value)
                .filter(|h| *h > 0)
                .unwrap_or(u64::from(req.hits_addend.max(1)));
            let hits = u32::try_from(hits).unwrap_or(u32::MAX);
            let limit = match &d.limit {
                Some(o) if unit_seconds(o.unit) > 0 => Some(Limit {
                    requests_per_unit: o.requests_per_unit,
                    unit_seconds: unit_seconds(o.unit),
                    unit_proto: o.unit,
                    unlimited: false,
                    shadow: false,
                }),
                _ => self.limits.lookup(&req.domain, &entries),
            };
            let Some(limit) = limit.filter(|l| !l.unlimited) else {
                statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                });
                continue;
            };
            let key = self.store.key(&req.domain, &entries, limit.unit_seconds);
            let count = self
                .store
                .hit(&key, hits, limit.requests_per_unit, limit.unit_seconds)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "redis");
                    Status::unavailable(format!("redis: {e}"))
                })?;
            let over = !count.allowed && !limit.shadow;
            if !count.allowed && limit.shadow {
                tracing::info!(domain = %req.domain, ?entries, "shadow mode: would be over limit");
            }
            if over {
                overall = Code::OverLimit;
            }
            statuses.push(DescriptorStatus {
                code: if over { Code::OverLimit } else { Code::Ok } as i32,
                current_limit: Some(RateLimitMsg {
                    name: String::new(),
                    requests_per_unit: limit.requests_per_unit,
                    unit: Unit::try_from(limit.unit_proto).unwrap_or(Unit::Unknown) as i32,
                }),
                limit_remaining: count.remaining,
                duration_until_reset: Some(Duration {
                    seconds: i64::try_from(count.reset_ms / 1000).unwrap_or(i64::MAX),
                    nanos: i32::try_from((count.reset_ms % 1000) * 1_000_000).unwrap_or(0),
                }),
                ..Default::default()
            });
        }
        Ok(Response::new(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        }))
    }
}
