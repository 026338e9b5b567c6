//! Thin entry points: decode the input, call the core, encode the answer.

pub mod azure;
pub mod cli;
pub mod lambda;
pub mod metrics;
pub mod webhook;
