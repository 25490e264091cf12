//! kubectl-snapshot: snapshot and restore kind clusters. Parse → resolve → run; errors are printed once,
//! here, with their causes. Exit codes: see `cli::exit` and docs/exit-codes.md.

mod bundle;
mod capture;
mod cli;
mod cluster;
mod cmd;
mod oci;
mod progress;
mod remote;
mod restore;
mod util;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(cli::exit::FAILURE);
        }
    };
    let result = runtime.block_on(cmd::run(cli));
    // Do not wait for stray blocking tasks (e.g. a bundle writer fed by an interrupted stream).
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) {
                return ExitCode::SUCCESS; // `kubectl snapshot list | head`
            }
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit::code_for(&e))
        }
    }
}
