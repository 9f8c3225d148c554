//! The SQLite store: migrations, the single writer thread, and read-only helpers.
//!
//! One thread owns the only read-write connection and applies everything in
//! batched transactions. Readers (`status`, the reporter) open their own
//! read-only connections; WAL mode lets them read while the writer writes.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use crossbeam_channel::{select, tick, Receiver, Sender};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::checker::CheckResult;
use crate::clock;
use crate::peer::{Peer, Protocol};

/// Schema migrations, applied in order up to `PRAGMA user_version`.
const MIGRATIONS: &[&str] = &[include_str!("../sql/001_init.sql")];

/// Results queued between the workers and the writer. Bounded because it
/// carries bulk data; the writer never waits on anybody, so senders only ever
/// wait for it to catch up.
const CHANNEL_CAPACITY: usize = 16_384;
/// Most messages applied in one transaction.
const MAX_BATCH: usize = 4_096;
/// Old results deleted per pruning step, so pruning never stalls the writer.
const PRUNE_STEP_ROWS: usize = 1_000;
const PRUNE_EVERY: Duration = Duration::from_secs(1);
const DROP_WARNING_EVERY: Duration = Duration::from_secs(60);
/// Writes the database refused (full disk, I/O error) are kept in memory and
/// retried every second, up to this many messages; beyond it the oldest
/// results are given up, with an error in the log.
const MAX_RETAINED: usize = 50_000;

pub const KEY_PROBE_ID: &str = "probe_id";
pub const KEY_DROPPED: &str = "dropped_results";
pub const KEY_PEERS_ETAG: &str = "peers_etag";
/// Where the stored peer list came from (backend URL and region; absent for
/// a standalone list), so that neither it nor its ETag is reused elsewhere.
pub const KEY_PEERS_SOURCE: &str = "peers_source";

/// A peer as the store keeps it: validated, with the reason it is not checked.
#[derive(Debug, Clone)]
pub struct StoredPeer {
    pub peer: Peer,
    pub skip_reason: Option<String>,
}

/// What the writer thread is asked to do.
pub enum StoreMsg {
    Result(Box<CheckResult>),
    /// A complete new peer set. Peers missing from it become inactive; their history stays.
    ReplacePeers {
        peers: Vec<StoredPeer>,
        etag: Option<String>,
        /// See `KEY_PEERS_SOURCE`.
        source: Option<String>,
    },
    /// The backend acknowledged results `first..=last` (a contiguous outbox
    /// batch). `done` answers whether the acknowledgement is committed.
    Ack {
        first: i64,
        last: i64,
        done: Sender<bool>,
    },
    /// Answers once everything sent before it is applied: true when it is
    /// committed, false when the database refused the write (kept for a retry).
    Flush(Sender<bool>),
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Mark results delivered at once (standalone mode: there is no backend).
    pub auto_ack: bool,
    pub retention: Duration,
    /// Most unacknowledged results kept; the oldest beyond it are dropped.
    pub max_buffered: u64,
}

pub struct StoreHandle {
    // Field order matters: the sender must drop before the thread is joined.
    sender: Option<Sender<StoreMsg>>,
    /// Disconnects when the writer thread ends (it holds the only sender).
    exited: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl StoreHandle {
    pub fn sender(&self) -> Sender<StoreMsg> {
        self.sender.clone().expect("store is running")
    }

    /// Leaves the writer thread to end with the process (shutdown when some
    /// sender is held by a thread that did not stop in time).
    pub fn abandon(mut self) {
        self.sender.take();
        self.thread.take();
    }

    /// Drops this handle's sender and waits for the writer to commit and exit.
    /// The writer exits once every sender (workers, reporter) is gone.
    pub fn shutdown(mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }

    /// As `shutdown`, but waits until `deadline` at most: a database that
    /// refuses writes can keep the writer in a busy timeout. False when the
    /// writer was left to end with the process.
    pub fn shutdown_by(mut self, deadline: Instant) -> bool {
        self.sender.take();
        if let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            self.exited.recv_deadline(deadline)
        {
            self.thread.take();
            return false;
        }
        self.shutdown();
        true
    }
}

/// Opens (creating if needed) the database read-write and brings the schema up to date.
pub fn open_rw(path: &Path) -> anyhow::Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the database directory {}", dir.display()))?;
    }
    if !path.exists() {
        create_initialised(path)?;
    }
    let mut conn = Connection::open(path)
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    configure_rw(&mut conn, path)?;
    Ok(conn)
}

fn configure_rw(conn: &mut Connection, path: &Path) -> anyhow::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .context("cannot switch the database to WAL mode")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    migrate(conn).with_context(|| format!("database {}", path.display()))?;
    ensure_probe_id(conn)
}

/// Builds a new database beside `path` and links it into place only once its
/// schema and probe id are written, so `status` (or a second daemon) started
/// at the same moment sees either no database or a complete one, never a file
/// with schema version 0.
fn create_initialised(path: &Path) -> anyhow::Result<()> {
    let mut staging = path.as_os_str().to_owned();
    staging.push(format!(".new-{}", std::process::id()));
    let staging = std::path::PathBuf::from(staging);
    let _ = std::fs::remove_file(&staging);
    let built = (|| -> anyhow::Result<()> {
        let mut conn = Connection::open(&staging)
            .with_context(|| format!("cannot create the database {}", staging.display()))?;
        // It holds network secrets: owner only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", staging.display()))?;
        configure_rw(&mut conn, path)?;
        // Closing checkpoints the WAL into the main file and removes it, so
        // the single file is the whole database.
        conn.close().map_err(|(_, e)| e)?;
        // A hard link does not replace: if another process created the
        // database meanwhile, theirs wins and ours is discarded.
        match std::fs::hard_link(&staging, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            // Filesystems without hard links: a rename is just as atomic.
            Err(_) => std::fs::rename(&staging, path)
                .with_context(|| format!("cannot create the database {}", path.display())),
        }
    })();
    let _ = std::fs::remove_file(&staging);
    built
}

/// Opens an existing database read-only (for `status` and the reporter).
pub fn open_ro(path: &Path) -> anyhow::Result<Connection> {
    if !path.exists() {
        bail!(
            "no database at {} (has the daemon run with this --db?)",
            path.display()
        );
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open the database {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        bail!(
            "the database {} has schema version {version}, newer than this binary knows ({}); use a newer easytier-probe",
            path.display(),
            MIGRATIONS.len()
        );
    }
    if version < MIGRATIONS.len() {
        bail!(
            "the database {} has schema version {version}; start the daemon once to upgrade it",
            path.display()
        );
    }
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        bail!(
            "schema version {version} is newer than this binary knows ({}); refusing to touch it, use a newer easytier-probe",
            MIGRATIONS.len()
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)
            .with_context(|| format!("migration {} failed", index + 1))?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()?;
    Ok(())
}

fn ensure_probe_id(conn: &Connection) -> anyhow::Result<()> {
    if get_state(conn, KEY_PROBE_ID)?.is_none() {
        let mut bytes = [0u8; 8];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("cannot read /dev/urandom for the probe id")?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        conn.execute(
            "INSERT INTO probe_state (key, value) VALUES (?1, ?2)",
            params![KEY_PROBE_ID, id],
        )?;
    }
    Ok(())
}

pub fn get_state(conn: &Connection, key: &str) -> anyhow::Result<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM probe_state WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

fn set_state(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO probe_state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map(|_| ())
}

fn set_or_clear_state(conn: &Connection, key: &str, value: Option<&str>) -> rusqlite::Result<()> {
    match value {
        Some(value) => set_state(conn, key, value),
        None => conn
            .execute("DELETE FROM probe_state WHERE key = ?1", [key])
            .map(|_| ()),
    }
}

pub fn probe_id(conn: &Connection) -> anyhow::Result<String> {
    get_state(conn, KEY_PROBE_ID)?.context("the database has no probe id")
}

/// The active peers as last stored: the cached list used while the backend is unreachable.
pub fn load_active_peers(conn: &Connection) -> anyhow::Result<Vec<Peer>> {
    let mut stmt = conn.prepare(
        "SELECT id, name, host, port, protocol, network_name, network_secret
         FROM peers WHERE active = 1 ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, u16>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, Option<String>>(6)?,
        ))
    })?;
    let mut peers = Vec::new();
    for row in rows {
        let (id, name, host, port, protocol, network_name, network_secret) = row?;
        let Some(protocol) = Protocol::parse(&protocol) else {
            continue;
        };
        peers.push(Peer {
            id,
            name,
            host,
            port,
            protocol,
            network_name,
            network_secret,
        });
    }
    Ok(peers)
}

/// Starts the writer thread, which owns `conn` from now on.
pub fn spawn(conn: Connection, options: WriterOptions) -> anyhow::Result<StoreHandle> {
    let (sender, receiver) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
    let mut writer = Writer::new(conn, options)?;
    let (exit_guard, exited) = crossbeam_channel::bounded::<()>(0);
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            let _exit_guard = exit_guard;
            writer.run(receiver)
        })
        .context("cannot start the store writer thread")?;
    Ok(StoreHandle {
        sender: Some(sender),
        exited,
        thread: Some(thread),
    })
}

struct Writer {
    conn: Connection,
    options: WriterOptions,
    outbox: OutboxCap,
    /// The last write failed; the next success is worth a log line.
    write_failing: bool,
    /// A result or peer list was given up since the last `Flush` was
    /// answered: the next one must not say that everything is saved.
    lost_since_flush: bool,
}

/// Keeps the count of unsent results under `--max-buffered-results`.
#[derive(Clone)]
struct OutboxCap {
    unacked: u64,
    max: u64,
    dropped_since_warning: u64,
    last_drop_warning: Option<Instant>,
}

impl Writer {
    fn new(conn: Connection, options: WriterOptions) -> anyhow::Result<Writer> {
        let unacked: u64 =
            conn.query_row("SELECT count(*) FROM results WHERE acked = 0", [], |r| {
                r.get(0)
            })?;
        let outbox = OutboxCap {
            unacked,
            max: options.max_buffered,
            dropped_since_warning: 0,
            last_drop_warning: None,
        };
        Ok(Writer {
            conn,
            options,
            outbox,
            write_failing: false,
            lost_since_flush: false,
        })
    }

    fn run(&mut self, receiver: Receiver<StoreMsg>) {
        let prune = tick(PRUNE_EVERY);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            select! {
                recv(receiver) -> msg => match msg {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                },
                recv(prune) -> _ => {
                    if !batch.is_empty() {
                        // Retained after a failed write: try again.
                        self.apply(&mut batch);
                        if !batch.is_empty() {
                            continue;
                        }
                    }
                    if let Err(e) = self.prune_step() {
                        log::warn!("pruning old results failed: {e:#}");
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
                StoreMsg::Ack { done, .. } => {
                    let _ = done.send(committed);
                }
                StoreMsg::Flush(done) => {
                    let _ = done.send(committed && !self.lost_since_flush);
                    self.lost_since_flush = false;
                }
                StoreMsg::Result(_) | StoreMsg::ReplacePeers { .. } => {}
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
                    latency_us, remote_version, remote_hostname, role, error, duration_ms, acked)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                    StoreMsg::Ack { first, last, .. } => {
                        acked += tx.execute(
                            "UPDATE results SET acked = 1 WHERE seq BETWEEN ?1 AND ?2 AND acked = 0",
                            params![first, last],
                        )? as u64;
                    }
                    StoreMsg::Flush(_) => {}
                }
            }
        }
        if !auto_ack {
            outbox.unacked = (outbox.unacked + inserted).saturating_sub(acked);
            outbox.enforce(&tx)?;
        }
        tx.commit()?;
        self.outbox = outbox;
        Ok(())
    }
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

impl OutboxCap {
    fn enforce(&mut self, tx: &rusqlite::Transaction) -> anyhow::Result<()> {
        if self.unacked <= self.max {
            return Ok(());
        }
        let excess = self.unacked - self.max;
        let dropped = tx.execute(
            "DELETE FROM results WHERE seq IN
               (SELECT seq FROM results WHERE acked = 0 ORDER BY seq LIMIT ?1)",
            [excess],
        )? as u64;
        self.unacked -= dropped;
        let total: u64 = get_state(tx, KEY_DROPPED)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        set_state(tx, KEY_DROPPED, &(total + dropped).to_string())?;
        self.dropped_since_warning += dropped;
        let due = self
            .last_drop_warning
            .is_none_or(|t| t.elapsed() >= DROP_WARNING_EVERY);
        if due {
            log::warn!(
                "outbox full ({} unsent results kept, --max-buffered-results): dropped the {} oldest unsent results",
                self.max,
                self.dropped_since_warning
            );
            self.dropped_since_warning = 0;
            self.last_drop_warning = Some(Instant::now());
        }
        Ok(())
    }
}

impl Writer {
    /// Deletes a small slice of delivered results older than the retention.
    fn prune_step(&mut self) -> anyhow::Result<()> {
        let cutoff = clock::now_ms() - self.options.retention.as_millis() as i64;
        let deleted = self.conn.execute(
            "DELETE FROM results WHERE seq IN
               (SELECT seq FROM results WHERE checked_at_ms < ?1 AND acked = 1 LIMIT ?2)",
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

/// One row of `easytier-probe status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    pub id: i64,
    pub name: String,
    pub uri: String,
    /// Online, Offline, pending (not checked yet) or unsupported.
    pub status: String,
    pub latency_us: Option<i64>,
    pub remote_version: Option<String>,
    pub last_checked_at: Option<String>,
    pub checks_24h: i64,
    /// Percent of the last 24 hours' checks that found the peer Online.
    pub uptime_24h: Option<f64>,
}

pub fn peer_statuses(conn: &Connection, now_ms: i64) -> anyhow::Result<Vec<PeerStatus>> {
    let since = now_ms - 24 * 3600 * 1000;
    let mut stmt = conn.prepare(
        "SELECT p.id, p.name, p.protocol, p.host, p.port, p.skip_reason,
                r.status, r.latency_us, r.remote_version, r.checked_at_ms,
                (SELECT count(*) FROM results WHERE peer_id = p.id AND checked_at_ms >= ?1),
                (SELECT count(*) FROM results WHERE peer_id = p.id AND checked_at_ms >= ?1
                                                AND status = 'Online')
         FROM peers p
         LEFT JOIN results r ON r.seq = (SELECT seq FROM results WHERE peer_id = p.id
                                         ORDER BY checked_at_ms DESC, seq DESC LIMIT 1)
         WHERE p.active = 1
         ORDER BY p.id",
    )?;
    let rows = stmt.query_map([since], |r| {
        let protocol: String = r.get(2)?;
        let host: String = r.get(3)?;
        let port: u16 = r.get(4)?;
        let skip_reason: Option<String> = r.get(5)?;
        let last_status: Option<String> = r.get(6)?;
        let checks: i64 = r.get(10)?;
        let online: i64 = r.get(11)?;
        let uri = match Protocol::parse(&protocol) {
            Some(p) => crate::peer::format_uri(p, &host, port),
            None => format!("{protocol}://{host}:{port}"),
        };
        let status = match (&skip_reason, last_status) {
            (Some(_), _) => "unsupported".to_string(),
            (None, Some(s)) => s,
            (None, None) => "pending".to_string(),
        };
        Ok(PeerStatus {
            id: r.get(0)?,
            name: r.get(1)?,
            uri,
            status,
            latency_us: r.get(7)?,
            remote_version: r.get(8)?,
            last_checked_at: r.get::<_, Option<i64>>(9)?.map(clock::rfc3339),
            checks_24h: checks,
            uptime_24h: (checks > 0)
                .then(|| (online as f64 * 1000.0 / checks as f64).round() / 10.0),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A result waiting in the outbox, in the backend's shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxResult {
    pub seq: i64,
    pub peer_id: i64,
    pub checked_at: String,
    pub status: String,
    pub response_time: Option<i64>,
    pub latency_us: Option<i64>,
    pub remote_version: Option<String>,
    pub remote_hostname: Option<String>,
    pub role: String,
    pub error: Option<String>,
}

/// The oldest unacknowledged results, at most `limit`.
pub fn outbox_batch(conn: &Connection, limit: usize) -> anyhow::Result<Vec<OutboxResult>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, peer_id, checked_at_ms, status, response_time_ms, latency_us,
                remote_version, remote_hostname, role, error
         FROM results WHERE acked = 0 ORDER BY seq LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(OutboxResult {
            seq: r.get(0)?,
            peer_id: r.get(1)?,
            checked_at: clock::rfc3339(r.get(2)?),
            status: r.get(3)?,
            response_time: r.get(4)?,
            latency_us: r.get(5)?,
            remote_version: r.get(6)?,
            remote_hostname: r.get(7)?,
            role: r.get(8)?,
            error: r.get(9)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The probe's own view for its status report.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub total_monitored: i64,
    pub healthy: i64,
    /// Mean response time (ms) of the peers whose latest check was Online.
    pub mean_response_ms: Option<i64>,
    pub buffered: i64,
    pub dropped: i64,
}

pub fn summary(conn: &Connection) -> anyhow::Result<Summary> {
    let (total, healthy, mean): (i64, i64, Option<f64>) = conn.query_row(
        "SELECT count(*),
                coalesce(sum(r.status = 'Online'), 0),
                avg(CASE WHEN r.status = 'Online' THEN r.response_time_ms END)
         FROM peers p
         LEFT JOIN results r ON r.seq = (SELECT seq FROM results WHERE peer_id = p.id
                                         ORDER BY checked_at_ms DESC, seq DESC LIMIT 1)
         WHERE p.active = 1 AND p.skip_reason IS NULL",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let buffered = conn.query_row("SELECT count(*) FROM results WHERE acked = 0", [], |r| {
        r.get(0)
    })?;
    let dropped = get_state(conn, KEY_DROPPED)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Summary {
        total_monitored: total,
        healthy,
        mean_response_ms: mean.map(|m| m.round() as i64),
        buffered,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Status;

    fn result(peer_id: i64, status: Status, at: i64) -> CheckResult {
        CheckResult {
            peer_id,
            uri: "tcp://h:1".into(),
            status,
            latency_us: (status == Status::Online).then_some(1500),
            response_time: (status == Status::Online).then_some(2),
            remote_version: None,
            remote_hostname: None,
            role: "member",
            error: (status == Status::Offline).then(|| "connection refused".into()),
            checked_at: clock::rfc3339(at),
            checked_at_ms: at,
            duration_ms: 5,
        }
    }

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("etp-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("probe.db")
    }

    fn flush(sender: &Sender<StoreMsg>) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        sender.send(StoreMsg::Flush(tx)).unwrap();
        assert!(rx.recv().unwrap(), "committed");
    }

    fn distributed_writer(conn: Connection, max_buffered: u64) -> StoreHandle {
        let options = WriterOptions {
            auto_ack: false,
            retention: Duration::from_secs(86_400),
            max_buffered,
        };
        spawn(conn, options).unwrap()
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM results", [], |r| r.get(0))
            .unwrap()
    }

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
        store.shutdown();
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
        store.shutdown();
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
                first: 0,
                last: 0,
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
        store.shutdown();
    }

    #[test]
    fn a_new_database_appears_complete_or_not_at_all() {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        // A reader polls while the daemon creates the file, as `status` does
        // when started next to a fresh daemon: once the file exists it must
        // open with the current schema.
        for round in 0..20 {
            let path = temp_db(&format!("atomic-{round}"));
            let stop = Arc::new(AtomicBool::new(false));
            let reader = {
                let (path, stop) = (path.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut opened = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if path.exists() {
                            open_ro(&path).expect("an existing database is complete");
                            opened += 1;
                        }
                    }
                    opened
                })
            };
            let conn = open_rw(&path).unwrap();
            stop.store(true, Ordering::Relaxed);
            reader.join().unwrap();
            assert!(probe_id(&conn).unwrap().len() == 16);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "secrets inside: owner only");
            let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".new-"))
                .collect();
            assert!(leftovers.is_empty(), "staging files left: {leftovers:?}");
        }
    }

    #[test]
    fn prunes_old_delivered_results_in_steps() {
        let path = temp_db("prune");
        let store = spawn(
            open_rw(&path).unwrap(),
            WriterOptions {
                auto_ack: false,
                retention: Duration::from_secs(86_400),
                max_buffered: u64::MAX,
            },
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
                first: 2,
                last: 2_510,
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
        store.shutdown();
    }

    #[test]
    fn refuses_a_newer_schema() {
        let path = temp_db("newer");
        drop(open_rw(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let e = open_rw(&path).unwrap_err();
        assert!(format!("{e:#}").contains("newer"), "{e:#}");
        assert!(format!("{:#}", open_ro(&path).unwrap_err()).contains("newer"));
    }

    #[test]
    fn outbox_caps_acks_and_summary() {
        let path = temp_db("outbox");
        let conn = open_rw(&path).unwrap();
        let id = probe_id(&conn).unwrap();
        let store = spawn(
            conn,
            WriterOptions {
                auto_ack: false,
                retention: Duration::from_secs(3600),
                max_buffered: 5,
            },
        )
        .unwrap();
        let sender = store.sender();
        let peer = crate::peer::peer_from_uri("tcp://h:1?id=7").unwrap();
        sender
            .send(StoreMsg::ReplacePeers {
                peers: vec![StoredPeer {
                    peer,
                    skip_reason: None,
                }],
                etag: Some("\"v1\"".into()),
                source: Some("http://b region=eu".into()),
            })
            .unwrap();
        let now = clock::now_ms();
        for i in 0..8 {
            let status = if i % 2 == 0 {
                Status::Online
            } else {
                Status::Offline
            };
            sender
                .send(StoreMsg::Result(Box::new(result(7, status, now + i))))
                .unwrap();
        }
        flush(&sender);
        let ro = open_ro(&path).unwrap();
        let batch = outbox_batch(&ro, 100).unwrap();
        // Eight written, five kept: the three oldest were dropped.
        assert_eq!(
            batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![4, 5, 6, 7, 8]
        );
        let s = summary(&ro).unwrap();
        assert_eq!(
            (s.total_monitored, s.healthy, s.buffered, s.dropped),
            (1, 0, 5, 3)
        );
        let (tx, rx) = crossbeam_channel::bounded(1);
        sender
            .send(StoreMsg::Ack {
                first: 4,
                last: 6,
                done: tx,
            })
            .unwrap();
        assert!(rx.recv().unwrap(), "committed");
        assert_eq!(outbox_batch(&ro, 100).unwrap().len(), 2);
        assert_eq!(
            get_state(&ro, KEY_PEERS_ETAG).unwrap().as_deref(),
            Some("\"v1\"")
        );
        assert_eq!(
            get_state(&ro, KEY_PEERS_SOURCE).unwrap().as_deref(),
            Some("http://b region=eu")
        );
        let rows = peer_statuses(&ro, now + 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, "Offline");
        assert_eq!(rows[0].checks_24h, 5);
        assert_eq!(rows[0].uptime_24h, Some(40.0));
        drop(sender);
        store.shutdown();
        // The id survives a reopen.
        assert_eq!(probe_id(&open_rw(&path).unwrap()).unwrap(), id);
    }
}
