//! Operator logs of `serve` and `cluster`: `tracing` events (raft-kv's own and those of raft-core,
//! raft-net and raft-storage) written to stderr by `tracing-subscriber`, filtered by `RUST_LOG`
//! (`info` when unset; for example `RUST_LOG=info,raft_core=debug`), as text or as one JSON
//! object per line (`--log-format json`).

use std::io::IsTerminal;

use anyhow::Context;
use clap::ValueEnum;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// The flag's value, as a child process is given it.
    pub fn as_arg(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the subscriber for the whole process; fails on a malformed `RUST_LOG`.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env()
        // The error's own text already says what its source says: once is enough.
        .map_err(|error| {
            anyhow::anyhow!("RUST_LOG is not a valid filter (say, RUST_LOG=info,raft_core=debug): {error}")
        })?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|error| anyhow::anyhow!("{error}")).context("installing the log subscriber")
}
