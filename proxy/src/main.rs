//! `edgeward-proxy`: the node proxy.

use clap::Parser;
use edgeward_proxy::config::ProxyConfig;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = ProxyConfig::parse();
    edgeward_proto::logging::init(config.log_format);
    match edgeward_proxy::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "edgeward-proxy failed");
            eprintln!("edgeward-proxy: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
