//! AWS adapters for the service's ports: credentials from Secrets Manager,
//! result events on EventBridge, continuations and sweep chunks on SQS.
//! Clients come from `aws_config::load_from_env()`, so `AWS_REGION`,
//! `AWS_ENDPOINT_URL` and the usual credential chain apply.

pub mod eventbridge;
pub mod secrets;
pub mod sqs;
