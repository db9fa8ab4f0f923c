//! `podrun agent`: the CRI server.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::Cli;

pub fn agent(cli: &Cli, socket: &Path, stream_addr: &SocketAddr) -> Result<ExitCode> {
    let runtime = super::runtime_config(cli)?;
    let config = podrun_agent::AgentConfig {
        runtime,
        socket: socket.to_owned(),
        stream_addr: *stream_addr,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("podrun-agent")
        .build()
        .context("start the async runtime")?
        .block_on(podrun_agent::run(config))
        .context("podrun agent")?;
    Ok(ExitCode::SUCCESS)
}
