//! What the demo, the tests and the benchmarks start and stop around a real agent:
//! local PostgreSQL clusters (`pg`), TCP listeners (`Listener`), and the agent's
//! configuration text (`config`). Not part of
//! `dbha-agent run`: the agent links it only for `dbha-agent demo` (its default
//! `demo` feature).

#![forbid(unsafe_code)]

pub mod config;
mod listener;
pub mod pg;

pub use listener::Listener;
