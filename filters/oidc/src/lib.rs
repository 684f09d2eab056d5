//! Portcullis oidc filter: not built yet (see its issue).
