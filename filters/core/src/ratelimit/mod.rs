//! ratelimit policy logic (host-independent).
