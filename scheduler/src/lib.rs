//! `harvest-scheduler`: the cluster view, leases and placement.
//!
//! The scheduler keeps soft state built from the node agents' reports, places leases through
//! `harvest-policies`, and never sits on the invocation path (clients talk to executors directly).
//! Its gRPC services land with the scheduler issue.
