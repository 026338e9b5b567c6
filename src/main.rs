//! The `intune-attest` binary. Every front door lives in the library; this
//! only picks one.

use std::process::ExitCode;

fn main() -> ExitCode {
    intune_attest::frontdoor::cli::main()
}
