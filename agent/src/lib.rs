//! dbha-agent: the sidecar that probes the databases, decides with hysteresis which
//! one the application must use, and publishes that decision into the state file
//! that `libdbha` readers map. Not a proxy: no application traffic passes through it.
//!
//! Data flows one way: `config` -> `probe` -> `state` (hysteresis, with the choice
//! made by `decide`) -> the state file, written by the loop in `run`. The
//! library form exists for the binary and for the cross-crate tests; `demo` (the
//! default `demo` feature) starts local databases through `dbha-harness`.

#![forbid(unsafe_code)]

pub mod config;
pub mod dcs;
pub mod decide;
#[cfg(feature = "demo")]
pub mod demo;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod probe;
pub mod run;
mod signals;
pub mod state;
pub mod status;
pub mod unfence;
