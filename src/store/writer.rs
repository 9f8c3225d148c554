//! The writer thread: the only read-write connection, batched transactions, retries and pruning.

use std::time::Duration;

use crossbeam_channel::{select, tick, Receiver};
use rusqlite::{params, Connection};

use super::outbox::OutboxCap;
use super::schema::{set_or_clear_state, set_state};
use super::{StoreMsg, StoredPeer, WriterOptions, KEY_PEERS_ETAG, KEY_PEERS_SOURCE};
use crate::clock;

/// Most messages applied in one transaction.
const MAX_BATCH: usize = 4_096;
/// Old results deleted per pruning step, so pruning never stalls the writer.
const PRUNE_STEP_ROWS: usize = 1_000;
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// Hourly rollups older than the retention are deleted this often.
const ROLLUP_PRUNE_EVERY_MS: i64 = 3_600_000;
/// Writes the database refused (full disk, I/O error) are kept in memory and
/// retried every second, up to this many messages; beyond it the oldest
/// results are given up, with an error in the log.
const MAX_RETAINED: usize = 50_000;

pub(super) struct Writer {
    conn: Connection,
    options: WriterOptions,
    outbox: OutboxCap,
    /// The last write failed; the next success is worth a log line.
    write_failing: bool,
    /// A result or peer list was given up since the last `Flush` was
    /// answered: the next one must not say that everything is saved.
    lost_since_flush: bool,
    /// `PRAGMA data_version` as last seen: it changes when another
    /// connection commits (`easytier-probe requeue`).
    data_version: i64,
    /// When old hourly rollups were last pruned (hourly; 0: not yet).
    rollups_pruned_ms: i64,
    /// Notices the database file deleted or replaced under the daemon.
    guard: super::guard::FileGuard,
}

impl Writer {
    pub(super) fn new(conn: Connection, options: WriterOptions) -> anyhow::Result<Writer> {
        let unacked: u64 =
            conn.query_row("SELECT count(*) FROM results WHERE acked = 0", [], |r| {
                r.get(0)
            })?;
        let outbox = OutboxCap::new(unacked, options.max_buffered);
        let data_version = data_version(&conn)?;
        let guard = super::guard::FileGuard::new(&conn);
        Ok(Writer {
            conn,
            options,
            outbox,
            write_failing: false,
            lost_since_flush: false,
            data_version,
            rollups_pruned_ms: 0,
            guard,
        })
    }

    pub(super) fn run(&mut self, receiver: Receiver<StoreMsg>) {
        let prune = tick(PRUNE_EVERY);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            select! {
                recv(receiver) -> msg => match msg {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                },
                recv(prune) -> _ => {
                    crate::health::writer_beat();
                    if !batch.is_empty() {
                        // Retained after a failed write: try again.
                        self.apply(&mut batch);
                        if !batch.is_empty() {
                            continue;
                        }
                    }
                    if let Err(e) = self.guard.check(&mut self.conn) {
                        log::error!("cannot put the database back: {e:#}; retrying in a second");
                    }
                    if let Err(e) = self.prune_step() {
                        log::warn!("pruning old results failed: {e:#}");
                    }
                    if let Err(e) = self.resync_if_changed() {
                        log::warn!("counting the outbox again failed: {e:#}");
                    }
                    continue;
                }
            }
            if self.write_failing {
                // While the database refuses writes, an attempt per message
                // would cost a busy timeout each and stop the writer from
                // draining its channel, so the workers would block on it.
                // Everything queues here instead and goes with the next
                // once-a-second retry.
                batch.extend(receiver.try_iter());
                self.trim_retained(&mut batch);
                continue;
            }
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            self.apply(&mut batch);
        }
        if !batch.is_empty() {
            self.apply(&mut batch);
            if !batch.is_empty() {
                log::error!(
                    "the database refused {} messages to the end; they are lost with this exit",
                    batch.len()
                );
            }
        }
        log::debug!("store writer: all senders gone, exiting");
    }

    /// Applies a batch in one transaction, then answers the waiting callers.
    /// When the database refuses the write for a while (full disk, a lock),
    /// the results and peer list stay in `batch`, in order, for the next
    /// try, and the callers hear that nothing committed. When the batch
    /// itself cannot be written, its messages are written one by one so
    /// that only the bad one is lost.
    fn apply(&mut self, batch: &mut Vec<StoreMsg>) {
        let error = match self.write(batch) {
            Ok(()) => {
                if self.write_failing {
                    log::info!("the database accepts writes again; retained results are saved");
                    self.write_failing = false;
                    crate::health::writer_refusing(false);
                }
                self.answer_callers(batch, true);
                batch.clear();
                return;
            }
            Err(e) => e,
        };
        if is_transient(&error) {
            self.keep_for_retry(&error, batch);
            return;
        }
        // Retrying the whole batch would fail every time and hold up every
        // later result behind it: find the culprit instead.
        let mut lost = 0;
        let mut messages = std::mem::take(batch).into_iter();
        while let Some(msg) = messages.next() {
            let one = std::slice::from_ref(&msg);
            match self.write(one) {
                Ok(()) => self.answer_callers(one, true),
                Err(e) if is_transient(&e) => {
                    // The database began refusing everything meanwhile:
                    // this message and the rest wait for the retry, in
                    // their order, without a busy timeout each.
                    batch.push(msg);
                    batch.extend(messages.by_ref());
                    self.keep_for_retry(&e, batch);
                    break;
                }
                Err(e) => {
                    if lost == 0 {
                        log::error!("cannot write to the database: {e:#}; this message is dropped");
                    }
                    lost += 1;
                    if is_data(&msg) {
                        self.lost_since_flush = true;
                    }
                    self.answer_callers(one, false);
                }
            }
        }
        if lost > 1 {
            log::error!("{lost} messages of one batch could not be written and are dropped");
        }
    }

    /// After a refusal that can pass: answers the waiting callers (nothing
    /// committed) and keeps the data for the once-a-second retry.
    fn keep_for_retry(&mut self, error: &anyhow::Error, batch: &mut Vec<StoreMsg>) {
        // Logged once per failure spell, not once per retry.
        if !self.write_failing {
            log::error!(
                "cannot write to the database: {error:#}; results are kept in memory and retried every second"
            );
            self.write_failing = true;
            crate::health::writer_refusing(true);
        }
        self.answer_callers(batch, false);
        batch.retain(is_data);
        self.trim_retained(batch);
    }

    /// Tells the callers waiting in `msgs` whether what they wait for is
    /// committed: an `Ack` its own update; a `Flush` everything sent before
    /// it, so it also answers false when a message was given up since the
    /// last flush.
    fn answer_callers(&mut self, msgs: &[StoreMsg], committed: bool) {
        for msg in msgs {
            match msg {
                StoreMsg::Ack { done, .. } | StoreMsg::SetAside { done, .. } => {
                    let _ = done.send(committed);
                }
                StoreMsg::Flush(done) => {
                    let _ = done.send(committed && !self.lost_since_flush);
                    self.lost_since_flush = false;
                }
                StoreMsg::Result(_) | StoreMsg::ReplacePeers { .. } | StoreMsg::SetState { .. } => {
                }
            }
        }
    }

    /// Keeps at most `MAX_RETAINED` unsaved results and peer lists, giving
    /// up the oldest. Waiting callers (`Ack`, `Flush`) stay: they get their
    /// answer with the next attempt.
    fn trim_retained(&mut self, batch: &mut Vec<StoreMsg>) {
        let held = batch.iter().filter(|m| is_data(m)).count();
        if held <= MAX_RETAINED {
            return;
        }
        let mut excess = held - MAX_RETAINED;
        log::error!(
            "the database still refuses writes: giving up the {excess} oldest unsaved messages"
        );
        self.lost_since_flush = true;
        batch.retain(|m| {
            if excess > 0 && is_data(m) {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Writes messages in one transaction. The outbox counters change only
    /// when it commits.
    fn write(&mut self, msgs: &[StoreMsg]) -> anyhow::Result<()> {
        let auto_ack = self.options.auto_ack;
        let mut outbox = self.outbox.clone();
        let tx = self.conn.transaction()?;
        let mut inserted = 0u64;
        let mut acked = 0u64;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO results (peer_id, checked_at_ms, status, response_time_ms,
                    latency_us, remote_version, remote_hostname, role, error, duration_ms, acked,
                    error_kind, attempts, check_kind, latency_kind, version_observed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?;
            for msg in msgs {
                match msg {
                    StoreMsg::Result(r) => {
                        insert.execute(params![
                            r.peer_id,
                            r.checked_at_ms,
                            r.status.as_str(),
                            r.response_time,
                            r.latency_us,
                            r.remote_version,
                            r.remote_hostname,
                            r.role,
                            r.error,
                            r.duration_ms,
                            auto_ack,
                            r.error_kind.map(|k| k.as_str()),
                            r.attempts,
                            r.check_kind.as_str(),
                            r.latency_kind,
                            r.version_observed,
                        ])?;
                        inserted += 1;
                    }
                    StoreMsg::ReplacePeers {
                        peers,
                        etag,
                        source,
                    } => {
                        replace_peers(&tx, peers)?;
                        set_or_clear_state(&tx, KEY_PEERS_ETAG, etag.as_deref())?;
                        set_or_clear_state(&tx, KEY_PEERS_SOURCE, source.as_deref())?;
                    }
                    StoreMsg::Ack { seqs, .. } => {
                        acked += mark_sent(&tx, seqs, 1, None)?;
                    }
                    StoreMsg::SetAside { seqs, reason, .. } => {
                        acked += mark_sent(&tx, seqs, 2, Some(reason))?;
                    }
                    StoreMsg::SetState { key, value } => set_state(&tx, key, value)?,
                    StoreMsg::Flush(_) => {}
                }
            }
        }
        if !auto_ack {
            outbox.record(inserted, acked);
            outbox.enforce(&tx)?;
        }
        tx.commit()?;
        self.outbox = outbox;
        Ok(())
    }
}

/// Takes the results `seqs` out of the outbox: acknowledged (`acked` 1) or
/// set aside (2, with the backend's reason). A result no longer waiting
/// (delivered meanwhile, dropped by the cap) is left as it is. Returns how
/// many left the outbox.
fn mark_sent(
    tx: &rusqlite::Transaction,
    seqs: &[i64],
    acked: i64,
    reason: Option<&String>,
) -> rusqlite::Result<u64> {
    let mut update = tx.prepare_cached(
        "UPDATE results SET acked = ?2,
            rejected_at_ms = CASE WHEN ?2 = 2 THEN ?3 END, rejected_reason = ?4
         WHERE seq = ?1 AND acked = 0",
    )?;
    let now = clock::now_ms();
    let mut changed = 0;
    for &seq in seqs {
        changed += update.execute(params![seq, acked, now, reason])? as u64;
    }
    Ok(changed)
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "data_version", |r| r.get(0))
}

/// Results and peer lists: what must be written, as opposed to callers waiting.
fn is_data(msg: &StoreMsg) -> bool {
    matches!(msg, StoreMsg::Result(_) | StoreMsg::ReplacePeers { .. })
}

/// Refusals that can pass: a full disk, an I/O error, a lock held too long.
/// Anything else (a constraint, a bad statement) would fail every retry.
fn is_transient(error: &anyhow::Error) -> bool {
    use rusqlite::ErrorCode::*;
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(e, _)) if matches!(
                e.code,
                DiskFull | SystemIoFailure | DatabaseBusy | DatabaseLocked
                    | ReadOnly | CannotOpen | OutOfMemory
            )
        )
    })
}

impl Writer {
    /// After another connection committed (`easytier-probe requeue` queues
    /// set-aside results again), counts the outbox again: the cap must
    /// count the results queued again too.
    fn resync_if_changed(&mut self) -> anyhow::Result<()> {
        let version = data_version(&self.conn)?;
        if version == self.data_version {
            return Ok(());
        }
        let unacked: u64 =
            self.conn
                .query_row("SELECT count(*) FROM results WHERE acked = 0", [], |r| {
                    r.get(0)
                })?;
        self.outbox.resync(unacked);
        self.data_version = version;
        Ok(())
    }

    /// Deletes a small slice of results older than the raw retention that no
    /// longer wait for delivery: delivered, or set aside (they go with the
    /// rest of the history).
    fn prune_step(&mut self) -> anyhow::Result<()> {
        // Space freed by earlier pruning goes back to the disk, a little
        // at a time (`vacuum`).
        super::vacuum::step(&self.conn)?;
        let now = clock::now_ms();
        if now >= self.rollups_pruned_ms + ROLLUP_PRUNE_EVERY_MS {
            super::history::prune_rollups(&self.conn, now, self.options.retention)?;
            self.rollups_pruned_ms = now;
        }
        let cutoff = now - self.options.raw_retention.as_millis() as i64;
        // Peer by peer through results_by_peer (there is no index on the
        // time alone since schema version 5): `ids` walks the distinct
        // peer ids by index seeks, each peer's old rows are a range.
        let deleted = self.conn.execute(
            "DELETE FROM results WHERE seq IN (
               WITH RECURSIVE ids(id) AS (
                 SELECT (SELECT min(peer_id) FROM results)
                 UNION ALL
                 SELECT (SELECT min(peer_id) FROM results WHERE peer_id > ids.id)
                 FROM ids WHERE ids.id IS NOT NULL)
               SELECT r.seq FROM ids JOIN results r
                 ON r.peer_id = ids.id AND r.checked_at_ms < ?1
               WHERE r.acked <> 0 LIMIT ?2)",
            params![cutoff, PRUNE_STEP_ROWS],
        )?;
        if deleted > 0 {
            log::debug!("pruned {deleted} results older than the retention");
        }
        Ok(())
    }
}

fn replace_peers(tx: &rusqlite::Transaction, peers: &[StoredPeer]) -> rusqlite::Result<()> {
    let now = clock::now_ms();
    tx.execute("UPDATE peers SET active = 0 WHERE active = 1", [])?;
    let mut upsert = tx.prepare_cached(
        "INSERT INTO peers (id, name, host, port, protocol, network_name, network_secret,
                            active, skip_reason, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, ?9)
         ON CONFLICT (id) DO UPDATE SET
            name = excluded.name, host = excluded.host, port = excluded.port,
            protocol = excluded.protocol, network_name = excluded.network_name,
            network_secret = excluded.network_secret, active = 1,
            skip_reason = excluded.skip_reason, updated_at_ms = excluded.updated_at_ms",
    )?;
    for StoredPeer { peer, skip_reason } in peers {
        upsert.execute(params![
            peer.id,
            peer.name,
            peer.host,
            peer.port,
            peer.protocol.as_str(),
            peer.network_name,
            peer.network_secret,
            skip_reason,
            now,
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Status;
    use crate::store::test_support::{count, distributed_writer, flush, result, stop, temp_db};
    use crate::store::{open_ro, open_rw, spawn, summary, CHANNEL_CAPACITY};
    use std::path::Path;
    use std::time::Instant;

    #[test]
    fn a_refused_write_is_kept_and_retried_not_lost() {
        let path = temp_db("refused-write");
        // Exactly the three results: a count that also took the failed
        // attempt into account would drop them on the retry.
        let store = distributed_writer(open_rw(&path).unwrap(), 3);
        let sender = store.sender();
        // Another connection holds the write lock past the writer's busy
        // timeout: the writer's transaction fails as with a disk that is
        // full for a while.
        let side = Connection::open(&path).unwrap();
        side.execute_batch("BEGIN IMMEDIATE").unwrap();
        let now = clock::now_ms();
        for n in 0..3 {
            let r = result(1, Status::Online, now + n);
            sender.send(StoreMsg::Result(Box::new(r))).unwrap();
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        sender.send(StoreMsg::Flush(tx)).unwrap();
        assert!(!rx.recv().unwrap(), "the caller hears the write failed");
        side.execute_batch("ROLLBACK").unwrap();
        // The retained results are written by the once-a-second retry.
        let ro = open_ro(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while count(&ro) < 3 {
            assert!(Instant::now() < deadline, "retained results never written");
            std::thread::sleep(Duration::from_millis(20));
        }
        flush(&sender);
        let s = summary(&ro).unwrap();
        assert_eq!((s.buffered, s.dropped), (3, 0), "counted once each");
        drop(sender);
        stop(store);
    }

    #[test]
    fn a_refusing_database_does_not_block_the_senders() {
        let path = temp_db("refusing-drains");
        let store = distributed_writer(open_rw(&path).unwrap(), 1_000_000);
        let sender = store.sender();
        let side = Connection::open(&path).unwrap();
        side.execute_batch("BEGIN IMMEDIATE").unwrap();
        // More results than the channel and one batch hold, while every
        // write fails after the 5 s busy timeout: a writer that tried again
        // per message would take in one message per attempt, and the channel
        // would stay full.
        let total = CHANNEL_CAPACITY + MAX_BATCH + 4_000;
        // A failing writer takes everything in within a few busy timeouts;
        // one that takes a message per timeout needs hours.
        let all_sent_by = Instant::now() + Duration::from_secs(40);
        let now = clock::now_ms();
        for n in 0..total {
            let r = result(1, Status::Online, now + n as i64);
            sender
                .send_deadline(StoreMsg::Result(Box::new(r)), all_sent_by)
                .unwrap_or_else(|_| panic!("send {n} of {total} blocked on a failing writer"));
        }
        side.execute_batch("ROLLBACK").unwrap();
        let ro = open_ro(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&ro) < total as i64 {
            assert!(Instant::now() < deadline, "queued results never written");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(sender);
        stop(store);
    }

    /// A writer driven by hand, without its thread: each `apply` is one attempt.
    fn manual_writer(path: &Path) -> Writer {
        let conn = open_rw(path).unwrap();
        // Results for peer 666 violate a constraint, on every attempt.
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON results WHEN NEW.peer_id = 666
               BEGIN SELECT RAISE(ABORT, 'never valid'); END;",
        )
        .unwrap();
        // A refused lock fails fast instead of after 5 s.
        conn.busy_timeout(Duration::from_millis(20)).unwrap();
        let options = WriterOptions {
            auto_ack: false,
            retention: Duration::from_secs(86_400),
            raw_retention: Duration::from_secs(86_400),
            max_buffered: u64::MAX,
        };
        Writer::new(conn, options).unwrap()
    }

    /// A message that asks for an answer, and where the answer arrives.
    fn ask(flush: bool) -> (StoreMsg, Receiver<bool>) {
        let (done, answer) = crossbeam_channel::bounded(1);
        let msg = if flush {
            StoreMsg::Flush(done)
        } else {
            StoreMsg::Ack {
                seqs: vec![0],
                done,
            }
        };
        (msg, answer)
    }

    fn results(peers: &[i64]) -> Vec<StoreMsg> {
        let now = clock::now_ms();
        peers
            .iter()
            .map(|&p| StoreMsg::Result(Box::new(result(p, Status::Online, now))))
            .collect()
    }

    #[test]
    fn callers_hear_exactly_what_was_saved() {
        let path = temp_db("callers");
        let mut writer = manual_writer(&path);
        // A bad result in a batch: the others and the ack commit; the flush
        // after them says that not everything before it was saved.
        let (ack, ack_answer) = ask(false);
        let (flush, flush_answer) = ask(true);
        let mut batch = results(&[1, 666, 1]);
        batch.extend([ack, flush]);
        writer.apply(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(ack_answer.try_recv(), Ok(true), "the ack itself committed");
        assert_eq!(flush_answer.try_recv(), Ok(false), "a result was lost");
        assert_eq!(count(&writer.conn), 2);

        // A loss in one batch is still news to a flush in the next.
        writer.apply(&mut results(&[666]));
        let (flush, flush_answer) = ask(true);
        writer.apply(&mut vec![flush]);
        assert_eq!(flush_answer.try_recv(), Ok(false));
        let (flush, flush_answer) = ask(true);
        writer.apply(&mut vec![flush]);
        assert_eq!(flush_answer.try_recv(), Ok(true), "reported once");

        // Results given up while the database refused writes, then a flush
        // that commits what was kept: it must not say everything is saved.
        let side = Connection::open(&path).unwrap();
        side.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut batch = results(&vec![1; MAX_RETAINED + 10]);
        writer.apply(&mut batch);
        assert_eq!(batch.len(), MAX_RETAINED, "the oldest given up");
        side.execute_batch("ROLLBACK").unwrap();
        let (flush, flush_answer) = ask(true);
        batch.push(flush);
        writer.apply(&mut batch);
        assert_eq!(flush_answer.try_recv(), Ok(false));
        assert_eq!(count(&writer.conn), 2 + MAX_RETAINED as i64);
    }

    #[test]
    fn a_refusal_during_the_one_by_one_pass_keeps_the_rest_in_order() {
        let path = temp_db("one-by-one-refused");
        let mut writer = manual_writer(&path);
        // The batch fails on its bad result, so it is written one by one;
        // the next result is too big for the space left (a full disk,
        // which can pass). It and everything after it wait for the retry,
        // in order, rather than the rest being tried (and committed) past it.
        let pages: i64 = writer
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        writer
            .conn
            .pragma_update(None, "max_page_count", pages + 16)
            .unwrap();
        let mut batch = results(&[666, 2, 3]);
        if let StoreMsg::Result(big) = &mut batch[1] {
            big.error = Some("x".repeat(1 << 20));
        }
        let (flush, flush_answer) = ask(true);
        batch.push(flush);
        writer.apply(&mut batch);
        assert_eq!(flush_answer.try_recv(), Ok(false));
        let kept: Vec<i64> = batch
            .iter()
            .map(|m| match m {
                StoreMsg::Result(r) => r.peer_id,
                _ => panic!("only data is kept"),
            })
            .collect();
        assert_eq!(
            kept,
            vec![2, 3],
            "the refused result and the rest, in order"
        );
        assert_eq!(
            count(&writer.conn),
            0,
            "nothing written past the refused one"
        );
        // Room again: both are written, the older first.
        writer
            .conn
            .pragma_update(None, "max_page_count", 1_000_000)
            .unwrap();
        writer.apply(&mut batch);
        let order: Vec<i64> = writer
            .conn
            .prepare("SELECT peer_id FROM results ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(order, vec![2, 3]);
    }

    #[test]
    fn a_batch_that_can_never_be_written_does_not_hold_up_later_ones() {
        let path = temp_db("poison-batch");
        let conn = open_rw(&path).unwrap();
        // Results for peer 666 violate a constraint, on every attempt.
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON results WHEN NEW.peer_id = 666
               BEGIN SELECT RAISE(ABORT, 'never valid'); END;",
        )
        .unwrap();
        let store = distributed_writer(conn, 1_000);
        let sender = store.sender();
        let now = clock::now_ms();
        // A bad result among good ones in one batch (held together by a
        // lock, then retried as one): only the bad one is lost.
        let side = Connection::open(&path).unwrap();
        side.execute_batch("BEGIN IMMEDIATE").unwrap();
        for peer in [1, 666, 1] {
            let r = result(peer, Status::Online, now - 10);
            sender.send(StoreMsg::Result(Box::new(r))).unwrap();
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        sender.send(StoreMsg::Flush(tx)).unwrap();
        assert!(!rx.recv().unwrap(), "locked");
        side.execute_batch("ROLLBACK").unwrap();
        let ro = open_ro(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while count(&ro) < 2 {
            assert!(
                Instant::now() < deadline,
                "the good results of the batch were lost"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let poison = result(666, Status::Online, now);
        sender.send(StoreMsg::Result(Box::new(poison))).unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        sender.send(StoreMsg::Flush(tx)).unwrap();
        assert!(!rx.recv().unwrap());
        for n in 1..=2 {
            let r = result(1, Status::Online, now + n);
            sender.send(StoreMsg::Result(Box::new(r))).unwrap();
        }
        flush(&sender);
        assert_eq!(count(&ro), 4, "later results are written");
        drop(sender);
        stop(store);
    }

    #[test]
    fn prunes_old_delivered_results_in_steps() {
        let path = temp_db("prune");
        let store = spawn(
            open_rw(&path).unwrap(),
            WriterOptions {
                auto_ack: false,
                retention: Duration::from_secs(86_400),
                raw_retention: Duration::from_secs(86_400),
                max_buffered: u64::MAX,
            },
            None,
        )
        .unwrap();
        let sender = store.sender();
        let now = clock::now_ms();
        let old = now - 2 * 86_400_000;
        // 2,500 old results (more than one pruning step), 10 recent ones.
        for i in 0..2_500 {
            sender
                .send(StoreMsg::Result(Box::new(result(
                    1,
                    Status::Online,
                    old + i,
                ))))
                .unwrap();
        }
        for i in 0..10 {
            sender
                .send(StoreMsg::Result(Box::new(result(
                    1,
                    Status::Online,
                    now + i,
                ))))
                .unwrap();
        }
        // The old ones are delivered except the first, which must survive pruning.
        let (tx, rx) = crossbeam_channel::bounded(1);
        sender
            .send(StoreMsg::Ack {
                seqs: (2..=2_510).collect(),
                done: tx,
            })
            .unwrap();
        assert!(rx.recv().unwrap(), "committed");
        let ro = open_ro(&path).unwrap();
        let count = |sql: &str| -> i64 { ro.query_row(sql, [], |r| r.get(0)).unwrap() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while count("SELECT count(*) FROM results") > 11 {
            assert!(Instant::now() < deadline, "pruning did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            count("SELECT count(*) FROM results WHERE checked_at_ms >= 0 AND acked = 0"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM results WHERE checked_at_ms >= strftime('%s','now') * 1000 - 3600000"), 10);
        drop(sender);
        stop(store);
    }
}
