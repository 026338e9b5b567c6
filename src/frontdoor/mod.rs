//! Thin entry points: decode the host's envelope, call the service (or, for
//! the CLI, the engine), encode the answer.

pub mod azure;
pub mod cli;
pub mod lambda;
pub mod metrics;
