//! easytier-probe as a library: the modules behind the binary, shared with the tests and benchmarks.

pub mod backend;
pub mod backoff;
pub mod check_cmd;
pub mod checker;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod fetcher;
pub mod health;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod peer;
pub mod peer_list;
pub mod pool;
pub mod probe_status;
pub mod progress;
pub mod redact;
pub mod reporter;
pub mod requeue_cmd;
pub mod schedule;
pub mod sdnotify;
pub mod status;
pub mod store;
pub mod thread;
