//! What the demo, the tests and the benchmarks start and stop around a real agent:
//! local PostgreSQL clusters (`pg`), TCP listeners (`Listener`), the agent's
//! configuration text (`config`), child processes that are always stopped
//! (`Children`) and the one polling loop (`wait::poll`). Not part of
//! `dbha-agent run`: the agent links it only for `dbha-agent demo` (its default
//! `demo` feature).

#![forbid(unsafe_code)]

pub mod config;
mod listener;
pub mod pg;
mod process;
pub mod wait;

pub use listener::Listener;
pub use process::{Children, Stop};
