//! `edgeward-control`: the embedded control plane.

use clap::Parser;
use edgeward_control::config::ControlConfig;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = ControlConfig::parse();
    edgeward_proto::logging::init(config.log_format);
    match edgeward_control::run::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "edgeward-control failed");
            eprintln!("edgeward-control: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
