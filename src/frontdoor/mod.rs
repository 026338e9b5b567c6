//! Thin entry points: decode the input, call the core, encode the answer.

pub mod cli;
