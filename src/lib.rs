//! intune-attest: start TPM device attestation on Intune-managed Windows
//! devices in bulk, at the Microsoft Graph throttling ceiling, and say
//! precisely what happened to each device.
//!
//! The crate is laid out by role; a module uses only modules below it in
//! this list (checked by `tests/it/docs.rs`):
//! - [`frontdoor`]: the hosts (CLI, AWS Lambda, Azure Functions custom
//!   handler). Each decodes its envelope, calls the service or the engine,
//!   and encodes the answer.
//! - [`service`]: the application service the hosted front doors share:
//!   deliveries and their dispositions, webhook admission, sweeps,
//!   continuations, repeats, publication.
//! - [`config`]: deployment settings from the environment.
//! - [`graph`]: the Microsoft Graph adapter (tokens, `$batch`, paging),
//!   the engine's gateway; it signs in with the [`credentials`] port's
//!   app credentials.
//! - Ports, each beside its adapters: [`queue`] (SQS, Azure Storage
//!   queues; it shares the [`results`] port's delivery error),
//!   [`credentials`] (azure-identity environment variables, AWS Secrets
//!   Manager, workload identity federation: a token file, GitHub Actions,
//!   an Azure managed identity, AWS STS), [`results`] (EventBridge),
//!   [`state`] (in process, DynamoDB, an Azure Storage blob container).
//! - [`azure_storage`]: the Azure Storage account both Azure adapters use
//!   (service URLs from the host's settings, a SAS used as is or the
//!   managed identity, errors with the SAS left out).
//! - [`report`]: the HTML report of a result document.
//! - [`telemetry`]: logging, the same on every host.
//! - [`core`]: the domain (requests, validation, outcomes, pacing, the
//!   lease algorithm and the attestation engine). It knows nothing about
//!   Lambda, Azure or AWS.

pub mod azure_storage;
pub mod config;
pub mod core;
pub mod credentials;
pub mod frontdoor;
pub mod graph;
pub mod queue;
pub mod report;
pub mod results;
pub mod service;
pub mod state;
pub mod telemetry;
