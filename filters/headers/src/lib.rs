//! placeholder, see filters/core
