//! The Microsoft Graph adapter: endpoints per national cloud, the
//! client-credentials token flow, a person's sign-in with the device code
//! flow ([`device_code`]), `$batch`, and the mapping of Graph's
//! answers onto the engine's [`DeviceGateway`](crate::core::gateway::DeviceGateway).
//!
//! Layers stay separate: [`auth`] obtains and caches tokens, [`wire`] is the
//! JSON of `$batch` and of Graph errors, [`retry_after`] reads throttling
//! hints, and [`client`] sends requests. Retrying and pacing belong to the
//! engine, which re-batches retried items with fresh ones.

pub mod auth;
pub mod client;
pub mod device_code;
pub mod endpoints;
pub mod retry_after;
pub mod wire;

pub use client::GraphClient;
pub use endpoints::{Cloud, Endpoints};
