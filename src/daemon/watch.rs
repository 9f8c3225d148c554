//! What the main loop publishes about itself: its heartbeat and the scheduling gauges once a second, its state in the database every few seconds (for `status`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use super::event::MainLoop;
use crate::checker::Status;
use crate::clock;
use crate::config::DaemonConfig;
use crate::health::{self, HEALTH, STATE_EVERY};
use crate::store::{self, StoreMsg};

/// How often the gauges and the heartbeat are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

// One main loop per process: its publishing times live here.
static NEXT_GAUGES_MS: AtomicI64 = AtomicI64::new(0);
static NEXT_STATE_MS: AtomicI64 = AtomicI64::new(0);

impl MainLoop {
    /// Called on every turn of the main loop; does something at most once a second.
    pub(super) fn publish(&self, config: &DaemonConfig) {
        let now_ms = clock::now_ms();
        if now_ms < NEXT_GAUGES_MS.load(Ordering::Relaxed) {
            return;
        }
        NEXT_GAUGES_MS.store(now_ms + GAUGES_EVERY.as_millis() as i64, Ordering::Relaxed);
        let offline = self
            .last_status
            .values()
            .filter(|s| **s == Status::Offline)
            .count();
        health::main_loop_turned(self.schedule.len(), offline);
        crate::metrics::scheduling(
            config.workers,
            self.schedule.in_flight(),
            self.schedule.due_count(Instant::now()),
            self.schedule.len(),
        );
        if now_ms >= NEXT_STATE_MS.load(Ordering::Relaxed) {
            NEXT_STATE_MS.store(now_ms + STATE_EVERY.as_millis() as i64, Ordering::Relaxed);
            self.record_state(now_ms);
        }
    }

    /// Hands the daemon's state to the writer, without waiting: when the
    /// writer is behind, the next one goes.
    pub(super) fn record_state(&self, now_ms: i64) {
        match serde_json::to_string(&HEALTH.state(now_ms)) {
            Ok(value) => {
                let _ = self.store.try_send(StoreMsg::SetState {
                    key: store::KEY_DAEMON_STATE,
                    value,
                });
            }
            Err(e) => log::debug!("cannot encode the daemon state: {e}"),
        }
    }
}
