//! What every binary's `main` shares: argument parsing with the exit codes of
//! SPEC section 5 (0 for `--help`/`--version`, 2 for bad usage) and the
//! signals that ask for a graceful shutdown.

use std::process::ExitCode;

/// Parses the command line; on `--help`/`--version` or a usage error it has
/// already printed and returns the exit code to leave with.
pub fn parse<T: clap::Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        }
    })
}
