//! What the main loop publishes about itself: its heartbeat and the scheduling gauges once a second, its state in the database every few seconds (for `status`), and how long each of its turns took.

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

/// A turn longer than this delays checks and the watchdog: worth a warning.
const SLOW_TURN: Duration = Duration::from_millis(100);
/// At most one slow-turn warning this often; the others go to debug.
const SLOW_TURN_WARN_EVERY: Duration = Duration::from_secs(60);

// One main loop per process: its publishing times live here.
static NEXT_GAUGES_MS: AtomicI64 = AtomicI64::new(0);
static NEXT_STATE_MS: AtomicI64 = AtomicI64::new(0);
static NEXT_SLOW_WARNING_MS: AtomicI64 = AtomicI64::new(0);

/// A turn of the main loop (one event, then the dispatch after it) ended:
/// into the `main_loop_turn` histogram, and a warning when it was slow.
pub(super) fn turn_ended(event: &'static str, took: Duration) {
    crate::metrics::main_loop_turn(took.as_secs_f64());
    if took <= SLOW_TURN {
        return;
    }
    let now_ms = clock::now_ms();
    let level = if now_ms >= NEXT_SLOW_WARNING_MS.load(Ordering::Relaxed) {
        NEXT_SLOW_WARNING_MS.store(
            now_ms + SLOW_TURN_WARN_EVERY.as_millis() as i64,
            Ordering::Relaxed,
        );
        log::Level::Warn
    } else {
        log::Level::Debug
    };
    log::log!(
        level,
        "the main loop was busy {} ms with {event}: checks and the watchdog waited",
        took.as_millis()
    );
}

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
