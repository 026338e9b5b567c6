//! The domain core: what a request is, how it is validated, what can happen
//! to a device, and the engine that drives every device to one outcome.

pub mod backoff;
pub mod device;
pub mod duration;
pub mod eligibility;
pub mod encode;
pub mod engine;
pub mod estimate;
pub mod filter;
pub mod gateway;
pub mod lease;
pub mod outcome;
pub mod pacer;
pub mod pack;
pub mod progress;
pub mod request;
pub mod status;
pub mod text;
pub mod verify;

/// A boxed future, so the ports (traits the adapters implement) can be used
/// as trait objects.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
