//! `edgewardctl`: the operator CLI.

use clap::Parser;
use edgeward_control::ctl::Cli;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match edgeward_control::ctl::run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("edgewardctl: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
