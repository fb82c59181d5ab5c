//! harvest's wire API: the code generated from `proto/harvest/v1/*.proto`, and its conversions
//! to `harvest-core`'s domain types.
//!
//! The control plane only: agent <-> scheduler (`AgentGateway.Session`, one bidirectional stream
//! per agent) and client <-> scheduler (`Scheduler`). The invocation path (client <-> executor) is
//! a separate framed TCP protocol (`harvest_core::invoke`) and never goes through gRPC.
//!
//! [`tls`] reads the control plane's certificates and keys (PEM files named in the scheduler's,
//! the agents' and the client's configurations), checked once at start. [`advertise`] picks and
//! checks the addresses a daemon gives others to reach it (apart from those it binds).

#![allow(missing_debug_implementations)]

pub mod advertise;
pub mod binding;
pub mod convert;
pub mod tls;
pub mod views;

/// The largest gRPC message either side accepts by default: a lease request or a CreateExecutor
/// order carries the function library (tonic's own default, 4 MiB, is too small for many).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Version 1 of the API (`package harvest.v1`).
pub mod v1 {
    tonic::include_proto!("harvest.v1");
}
