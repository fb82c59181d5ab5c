//! harvest's experiments: the trace-driven simulator and the figures it produces.
//!
//! The binary (`main.rs`) has one subcommand per module in [`cmd`]; everything else is library
//! code, tested here:
//! - [`swf`], [`machine`]: SWF traces streamed, and the machine each ran on;
//! - [`azure`], [`functions`]: the Azure Functions trace and Poisson streams, as lease arrivals;
//! - [`cost`]: the interference cost model, calibrated from the co-location study;
//! - [`daint`]: Piz Daint's utilization snapshots, for comparison;
//! - [`sim`]: the discrete-event simulator over `harvest-policies`;
//! - [`output`]: CSV, markdown report, `summary.json` and PNG plots of a run;
//! - [`rng`]: a seeded generator, so every figure is reproducible.

pub mod azure;
pub mod cluster;
pub mod cmd;
pub mod cost;
pub mod daint;
pub mod functions;
pub mod machine;
pub mod output;
pub mod rng;
pub mod sim;
pub mod swf;
