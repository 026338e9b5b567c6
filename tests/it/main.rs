//! The integration suite, one test binary with a module per area (linking
//! the AWS SDK, axum and reqwest once instead of once per file).

mod azure_handler;
mod azure_storage;
mod bench_smoke;
mod cargo_lambda;
mod cli;
mod common;
mod device_code;
mod docs;
mod documents;
mod engine_against_simulator;
mod fault_matrix;
mod federation;
mod infrastructure;
mod lambda_handler;
mod lambda_runtime;
mod platform_limits;
mod properties;
mod redirects;
mod report;
mod secret_hygiene;
mod service_messages;
mod shared_budget;
mod shared_state;
mod tenants;
mod verify;
