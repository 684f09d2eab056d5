//! Test-support library for end-to-end tests against real processes.
