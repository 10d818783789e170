//! The read anchor: one read transaction the process keeps open while its point reads are hot and
//! the database is quiet, so that those reads make no `fcntl` call of their own.
//!
//! Every SQLite read in WAL mode holds a shared lock on one of the WAL index's read slots for the
//! length of its transaction. SQLite's unix VFS counts a process's shared locks on each slot and
//! asks the kernel (`fcntl(F_SETLK)` on the `-shm` file) only for the first and the last of them
//! (`unixShmLock` in sqlite3.c: "it is possible that other clients within this process are
//! holding the same SHARED lock"). A lookup's point read alone therefore makes two `fcntl` calls,
//! each under a process-wide mutex that the other workers' reads then wait on: together about a
//! tenth of a lookup's server CPU over HTTP (docs/performance.md, "The read anchor"). While the
//! anchor holds the slot the readers take, they count themselves in under that mutex and make no
//! system call.
//!
//! What a read sees is unchanged: each reader still begins its own transaction and sees every
//! transaction committed before its statement starts; the anchor's snapshot answers nothing.
//!
//! What the anchor must not do is keep the WAL from being checkpointed and restarted (a WAL
//! restarts only once wholly copied back into the database, and a read transaction keeps the
//! frames after its snapshot from being copied). So it is held only:
//! - while the database is quiet: it is let go at the first tick that sees a commit (by this
//!   process or another), and taken again only after [`QUIET`] without one;
//! - and only after its own passive checkpoint has copied the whole WAL back, so that it sits on
//!   slot 0, the slot of readers that need no WAL frame. Held there, it keeps no WAL restart from
//!   happening, and a checkpoint of frames committed after it only until it is let go.
//!
//! A commit made while it is held waits for the next tick (every [`TICK`]; later when the CPU is
//! saturated) for its frames to be checkpointable. SQLite's automatic checkpoint that such a
//! commit ran and the anchor kept from copying is not run again until the next commit, or until
//! the anchor's own checkpoint before it is taken again. A thread ticks while reads arrive and
//! stops after [`IDLE`] without one (the anchor let go), so an idle `latchkey serve` wakes
//! nobody.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rusqlite::OpenFlags;

/// How often the anchor is checked against the database: let go when anything was committed
/// since, and taken again when quiet.
const TICK: Duration = Duration::from_millis(10);

/// How long the database must go without a commit before the anchor is taken (again).
const QUIET: Duration = Duration::from_millis(100);

/// How long without a point read before the ticking thread stops (and the anchor is let go).
const IDLE: Duration = Duration::from_secs(1);

/// One database file's anchor: its connection and state, and whether a thread ticks it.
pub(super) struct Anchor {
    state: Mutex<State>,
    /// Whether a point read ran since the last tick.
    read: AtomicBool,
    /// Whether a thread ticks the anchor (also left set when no thread could be started: the
    /// store then reads without an anchor).
    ticking: AtomicBool,
}

/// The anchor's connection and what it last saw.
struct State {
    /// The connection whose open read transaction is the anchor, and which runs the checkpoint
    /// before it is taken. Opened for writing so that it may checkpoint (which copies pages into
    /// the database file); it never opens a write transaction.
    db: rusqlite::Connection,
    /// Whether the transaction is open.
    held: bool,
    /// `PRAGMA data_version` when last read: it changes with every commit by another connection.
    version: Option<i64>,
    /// When the last change of `version` was seen (or the anchor was created).
    changed_at: Instant,
    /// Whether a checkpoint copied the whole WAL back since that change.
    checkpointed: bool,
    /// When a point read was last seen.
    read_at: Instant,
    /// Run just before the transaction is opened (a test's commit in that window).
    #[cfg(test)]
    before_begin: Option<Box<dyn FnMut() + Send>>,
}

impl State {
    /// Ends the anchor's transaction, if open: whether none is open now (a failed `ROLLBACK`
    /// leaves it open, to be ended at the next tick).
    fn release(&mut self) -> bool {
        if self.held {
            let _ = self.db.execute_batch("ROLLBACK");
            self.held = !self.db.is_autocommit();
        }
        !self.held
    }

    /// Notes `version` as read at `now`: whether it changed since last read.
    fn note_version(&mut self, version: i64, now: Instant) -> bool {
        if self.version == Some(version) {
            return false;
        }
        self.version = Some(version);
        self.changed_at = now;
        self.checkpointed = false;
        true
    }
}

fn data_version(db: &rusqlite::Connection) -> rusqlite::Result<i64> {
    // Prepared once per connection: a tick reads it up to twice, 100 ticks a second.
    db.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))
}

/// Copies the whole WAL back into the database if nothing keeps any frame from it: whether it
/// did. A passive checkpoint: it never waits, and takes no write lock; readers of older frames,
/// or another checkpoint running, cut it short.
fn checkpoint(db: &rusqlite::Connection) -> bool {
    // (busy, frames in the WAL, frames checkpointed); -1 for the counts outside WAL mode.
    db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })
    .is_ok_and(|(busy, log, done)| busy == 0 && log == done)
}

/// Stops the ticking when dropped, unless told to go on: after a tick that found the reads gone,
/// and after a tick that panicked, so that no anchor outlives its thread. (Release builds abort
/// on a panic, which ends the process and every lock with it; the guard acts where panics
/// unwind: tests and debug builds.)
struct Ticking<'a> {
    anchor: &'a Anchor,
    go_on: bool,
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        if !self.go_on {
            self.anchor.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).release();
            self.anchor.ticking.store(false, Ordering::Release);
        }
    }
}

impl Anchor {
    /// An anchor for the database at `path` (which the store's writer has already opened in WAL
    /// mode), let go, not ticking. Errors: SQLite's, opening the connection or setting its busy
    /// timeout, `synchronous` (`NORMAL`, as the writer's) and no checkpoint on close.
    pub(super) fn open(path: &std::path::Path) -> rusqlite::Result<Self> {
        let db = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Never waits: a busy database means no anchor this tick.
        db.busy_timeout(Duration::ZERO)?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        // The store's connections close writer first, this one last: as the readers before it,
        // it leaves the WAL as it is (no checkpoint and deletion of the WAL at close).
        db.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        let now = Instant::now();
        let state = State {
            db,
            held: false,
            version: None,
            changed_at: now,
            checkpointed: false,
            read_at: now,
            #[cfg(test)]
            before_begin: None,
        };
        Ok(Self { state: Mutex::new(state), read: AtomicBool::new(false), ticking: AtomicBool::new(false) })
    }

    /// Notes a point read; starts the ticking thread when none runs. On the hot path: two loads
    /// of flags that change about once a tick, and a store when the first has been cleared.
    pub(super) fn note_read(self: &Arc<Self>) {
        if !self.read.load(Ordering::Relaxed) {
            self.read.store(true, Ordering::Relaxed);
        }
        if !self.ticking.load(Ordering::Relaxed)
            && self.ticking.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            let anchor = Arc::downgrade(self);
            let spawned =
                std::thread::Builder::new().name("latchkey-sqlite-anchor".into()).spawn(move || Self::run(&anchor));
            if let Err(e) = spawned {
                // `ticking` stays set: this store reads without an anchor, as it would without
                // this module, rather than trying a thread again on every read.
                tracing::warn!(error = %e, "no thread for the SQLite read anchor; reads go on without it");
            }
        }
    }

    /// The ticking thread: ticks until the store is dropped or reads stop. (A read that comes
    /// as it stops may find `ticking` still set and start no thread: the next read does.)
    fn run(anchor: &Weak<Self>) {
        loop {
            std::thread::sleep(TICK);
            let Some(anchor) = anchor.upgrade() else {
                return;
            };
            let mut ticking = Ticking { anchor: &anchor, go_on: false };
            ticking.go_on = anchor.tick(Instant::now());
            if !ticking.go_on {
                return;
            }
        }
    }

    /// One tick at `now`: lets the anchor go, and takes it again if a read came within [`IDLE`],
    /// nothing was committed for [`QUIET`], and the WAL is wholly checkpointed (a checkpoint cut
    /// short is tried again at the next tick). Whether to go on ticking: false once [`IDLE`]
    /// passed without a read.
    fn tick(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !state.release() {
            return true;
        }
        if self.read.swap(false, Ordering::Relaxed) {
            state.read_at = now;
        } else if now.saturating_duration_since(state.read_at) >= IDLE {
            return false;
        }
        let Ok(version) = data_version(&state.db) else {
            return true;
        };
        if state.note_version(version, now) || now.saturating_duration_since(state.changed_at) < QUIET {
            return true;
        }
        if !state.checkpointed {
            if !checkpoint(&state.db) {
                return true;
            }
            state.checkpointed = true;
        }
        #[cfg(test)]
        if let Some(hook) = state.before_begin.as_mut() {
            hook();
        }
        if state.db.execute_batch("BEGIN").is_err() {
            return true;
        }
        state.held = true;
        // The read that opens the transaction: if a commit came in since the checkpoint, the
        // snapshot may need WAL frames (a slot other than 0), so the anchor is let go at once.
        match data_version(&state.db) {
            Ok(v) if !state.note_version(v, now) => {}
            _ => {
                state.release();
            }
        }
        true
    }

    /// Whether the anchor's transaction is open now.
    #[cfg(test)]
    fn held(&self) -> bool {
        self.state.lock().unwrap().held
    }

    /// Whether a thread ticks the anchor now.
    #[cfg(test)]
    fn ticking(&self) -> bool {
        self.ticking.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{IDLE, QUIET, TICK};
    use crate::adapters::sqlite::SqliteStore;
    use crate::adapters::sqlite::readers::tests::store_with_a_connection;
    use crate::domain::Connection;
    use crate::ports::Store;

    /// A store whose anchor is ticked by the test alone (no thread: the test's own clock).
    async fn store_ticked_by_hand() -> (tempfile::TempDir, SqliteStore, Connection) {
        let (dir, store, c) = store_with_a_connection().await;
        store.readers.anchor.ticking.store(true, std::sync::atomic::Ordering::Release);
        (dir, store, c)
    }

    /// Reads `c` through the store (every reader in turn): its label.
    async fn labels(store: &SqliteStore, c: &Connection) -> Vec<Option<String>> {
        let mut labels = Vec::new();
        for _ in 0..store.readers.len() * 2 {
            labels.push(store.get_connection(&c.org, &c.id).await.unwrap().unwrap().label);
        }
        labels
    }

    /// Reads, then ticks at `now` and after [`QUIET`]: the anchor is taken if the database was
    /// quiet. The time after.
    async fn read_until_anchored(store: &SqliteStore, c: &Connection, now: Instant) -> Instant {
        store.get_connection(&c.org, &c.id).await.unwrap();
        assert!(store.readers.anchor.tick(now));
        store.get_connection(&c.org, &c.id).await.unwrap();
        let later = now + QUIET;
        assert!(store.readers.anchor.tick(later));
        later
    }

    fn relabel(db: &rusqlite::Connection, c: &Connection, label: &str) {
        let changed = db
            .execute("UPDATE connections SET doc = json_set(doc, '$.label', ?2) WHERE id = ?1", [c.id.as_str(), label])
            .unwrap();
        assert_eq!(changed, 1);
    }

    #[tokio::test]
    async fn reads_see_every_commit_made_while_the_anchor_is_held() {
        let (dir, store, c) = store_ticked_by_hand().await;
        let now = read_until_anchored(&store, &c, Instant::now()).await;
        assert!(store.readers.anchor.held(), "hot reads on a quiet database are anchored");
        // Another connection commits (as another process's would): every reader sees it at once.
        // (Only an anchor that answered reads could fail this: a guard.)
        let other = rusqlite::Connection::open(dir.path().join("latchkey.db")).unwrap();
        relabel(&other, &c, "edited elsewhere");
        assert!(labels(&store, &c).await.iter().all(|l| l.as_deref() == Some("edited elsewhere")));
        // The next tick lets the anchor go: something was committed.
        assert!(store.readers.anchor.tick(now + TICK));
        assert!(!store.readers.anchor.held());
        // Quiet again: anchored again; then this process's own writer commits.
        let now = read_until_anchored(&store, &c, now + TICK + QUIET).await;
        assert!(store.readers.anchor.held());
        let mut next = store.get_connection(&c.org, &c.id).await.unwrap().unwrap();
        let expected = next.version;
        next.version += 1;
        next.label = Some("edited here".into());
        store.update_connection(&next, expected).await.unwrap();
        assert!(labels(&store, &c).await.iter().all(|l| l.as_deref() == Some("edited here")));
        assert!(store.readers.anchor.tick(now + TICK));
        assert!(!store.readers.anchor.held());
    }

    #[tokio::test]
    async fn the_wal_is_checkpointed_and_restarted_though_every_commit_lands_on_a_held_anchor() {
        let (dir, store, c) = store_ticked_by_hand().await;
        let path = dir.path().join("latchkey.db");
        // Another connection (as another process's would) writes sparsely, each commit while the
        // anchor is held: about five pages a commit, 2,000 in all, twice SQLite's automatic
        // checkpoint threshold (1,000).
        let other = rusqlite::Connection::open(&path).unwrap();
        other.pragma_update(None, "synchronous", "OFF").unwrap();
        other.execute_batch("CREATE TABLE scratch (b BLOB)").unwrap();
        let mut now = Instant::now();
        for _ in 0..400 {
            now = read_until_anchored(&store, &c, now).await;
            assert!(store.readers.anchor.held());
            other.execute("INSERT INTO scratch VALUES (zeroblob(16384))", []).unwrap();
            now += TICK;
            assert!(store.readers.anchor.tick(now));
            assert!(!store.readers.anchor.held(), "let go at the first tick after a commit");
            now += TICK;
        }
        // Had the anchor kept frames from every checkpoint, the WAL would hold every commit's
        // pages (10 MB, measured with the checkpoint skipped): it restarted at every commit
        // instead, and stays at the size the store's setup left it (about 50 pages).
        let wal = std::fs::metadata(format!("{}-wal", path.display())).unwrap().len();
        assert!(wal < 1000 * 4096, "the WAL grew to {wal} bytes");
        let rows: i64 = other.query_row("SELECT count(*) FROM scratch", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 400);
    }

    #[tokio::test]
    async fn a_commit_just_before_the_anchor_is_taken_lets_it_go_at_once() {
        let (dir, store, c) = store_ticked_by_hand().await;
        // A commit between the checkpoint and the transaction's start, once.
        let other = std::sync::Mutex::new(Some(rusqlite::Connection::open(dir.path().join("latchkey.db")).unwrap()));
        let id = c.id.to_string();
        store.readers.anchor.state.lock().unwrap().before_begin = Some(Box::new(move || {
            if let Some(db) = other.lock().unwrap().take() {
                let changed = db
                    .execute("UPDATE connections SET doc = json_set(doc, '$.label', 'racing') WHERE id = ?1", [&id])
                    .unwrap();
                assert_eq!(changed, 1);
            }
        }));
        let now = read_until_anchored(&store, &c, Instant::now()).await;
        assert!(!store.readers.anchor.held(), "its snapshot may need the commit's frames: let go");
        assert!(labels(&store, &c).await.iter().all(|l| l.as_deref() == Some("racing")));
        assert!(store.readers.anchor.tick(now + TICK));
        assert!(!store.readers.anchor.held(), "not before QUIET after the commit");
        // Quiet again (the hook commits no more): checkpointed, and taken.
        read_until_anchored(&store, &c, now + TICK).await;
        assert!(store.readers.anchor.held());
    }

    #[tokio::test]
    async fn a_busy_database_is_never_anchored_and_a_store_without_reads_lets_go() {
        let (dir, store, c) = store_ticked_by_hand().await;
        let other = rusqlite::Connection::open(dir.path().join("latchkey.db")).unwrap();
        // A commit before every tick: never quiet, never anchored.
        let mut now = Instant::now();
        for i in 0..20 {
            relabel(&other, &c, &format!("edit {i}"));
            store.get_connection(&c.org, &c.id).await.unwrap();
            assert!(store.readers.anchor.tick(now));
            assert!(!store.readers.anchor.held());
            now += QUIET;
        }
        // Quiet, reads, anchored; then no read for IDLE: released, and the ticking stops.
        let now = read_until_anchored(&store, &c, now).await;
        assert!(store.readers.anchor.held());
        assert!(store.readers.anchor.tick(now + IDLE / 2), "still ticking within IDLE of the last read");
        assert!(!store.readers.anchor.tick(now + IDLE));
        assert!(!store.readers.anchor.held());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hot_reads_anchor_themselves_and_the_thread_stops_when_they_stop() {
        let (dir, store, c) = store_with_a_connection().await;
        let anchor = store.readers.anchor.clone();
        assert!(!anchor.ticking() && !anchor.held());
        // Poll: reads until the thread has seen the database quiet for QUIET and anchored it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !anchor.held() {
            assert!(Instant::now() < deadline, "never anchored");
            store.get_connection(&c.org, &c.id).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // (A read starts the thread again if it had stopped: the test thread may stall.)
        store.get_connection(&c.org, &c.id).await.unwrap();
        assert!(anchor.ticking());
        // No more reads: the thread lets go and stops after IDLE.
        while anchor.ticking() {
            assert!(Instant::now() < deadline, "still ticking");
            tokio::time::sleep(TICK).await;
        }
        assert!(!anchor.held());
        // The store dropped while its thread ticks: the thread keeps no hold on the anchor (and so
        // on its connection and transaction) once the store is gone.
        store.get_connection(&c.org, &c.id).await.unwrap();
        assert!(anchor.ticking());
        let weak = std::sync::Arc::downgrade(&anchor);
        drop((anchor, store));
        while weak.upgrade().is_some() {
            assert!(Instant::now() < deadline, "the anchor outlived its store");
            tokio::time::sleep(TICK).await;
        }
        // The anchor closed last and, as the read-only readers before it, left the WAL as it was.
        assert!(dir.path().join("latchkey.db-wal").exists(), "no checkpoint and deletion of the WAL at close");
    }
}
