//! The `intune-attest` binary. Every front door lives in the library; this
//! only picks one: the Lambda runtime loop when `AWS_LAMBDA_RUNTIME_API` is
//! set, the command line otherwise.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        intune_attest::frontdoor::lambda::main()
    } else {
        intune_attest::frontdoor::cli::main()
    }
}
