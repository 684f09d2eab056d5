//! Portcullis ratelimit filter: not built yet (see its issue).
