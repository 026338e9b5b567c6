//! intune-attest: start TPM device attestation on Intune-managed Windows
//! devices in bulk, at the Microsoft Graph throttling ceiling, and say
//! precisely what happened to each device.
//!
//! The crate is laid out by role:
//! - [`core`]: the domain (requests, validation, outcomes, pacing and the
//!   attestation engine). It knows nothing about Lambda, Azure or AWS.
//! - [`graph`]: the Microsoft Graph adapter (tokens, `$batch`, retries).
//! - [`credentials`]: where the Entra ID app credentials come from.
//! - [`frontdoor`]: thin entry points (the CLI) that decode, call the core
//!   and encode.

pub mod aws;
pub mod config;
pub mod core;
pub mod credentials;
pub mod frontdoor;
pub mod graph;
pub mod service;
