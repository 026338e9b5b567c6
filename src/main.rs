//! The `intune-attest` binary. Every front door lives in the library; this
//! only picks one: the Lambda runtime loop when `AWS_LAMBDA_RUNTIME_API` is
//! set, the Azure Functions custom handler when `FUNCTIONS_CUSTOMHANDLER_PORT`
//! is, the command line otherwise.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        intune_attest::frontdoor::lambda::main()
    } else if std::env::var_os("FUNCTIONS_CUSTOMHANDLER_PORT").is_some() {
        intune_attest::frontdoor::azure::main()
    } else {
        intune_attest::frontdoor::cli::main()
    }
}
