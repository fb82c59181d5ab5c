//! Placement policies: where a lease goes.
//!
//! The scheduler and the trace-driven simulator run exactly this code. The framework (filter,
//! score, reserve extension points, a registry of named plugins) lands with the policies issue.
