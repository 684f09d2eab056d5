//! (empty: filled in by its issue)
