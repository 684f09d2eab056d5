//! oidc policy logic (host-independent).
