//! Logging setup: env_logger to stderr, `info` by default, EasyTier's dependencies quieter.

/// Default filter when `RUST_LOG` is not set. EasyTier logs through `tracing`
/// (bridged to `log`) at info for every connection; at a thousand checks a
/// minute that would drown the probe's own lines.
const DEFAULT_FILTER: &str = "info,easytier=warn,tokio=warn,quinn=warn,rustls=warn,tungstenite=warn,hickory_resolver=warn,boringtun=warn,ureq=warn";

pub fn init() {
    let env = env_logger::Env::default().default_filter_or(DEFAULT_FILTER);
    let _ = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .try_init();
}
