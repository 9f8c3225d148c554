//! stub
pub fn run(_c: crate::config::DaemonConfig) -> anyhow::Result<()> { Ok(()) }
