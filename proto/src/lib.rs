//! harvest's wire API: the code generated from `proto/harvest/v1/*.proto`.
//!
//! The control plane only: agent <-> scheduler and client <-> scheduler. The invocation path
//! (client <-> executor) is a separate framed TCP protocol and never goes through gRPC.

#![allow(missing_debug_implementations)]

/// Version 1 of the API (`package harvest.v1`).
pub mod v1 {
    tonic::include_proto!("harvest.v1");
}
