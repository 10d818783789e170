//! Read-only connections beside the store's one writer, for the lookup path's point reads.
//!
//! In WAL mode a reader never waits for the writer, and each connection sees every transaction
//! committed before its statement starts (read-your-writes across connections). A point read
//! by primary key from cached pages takes a few microseconds, far less than handing it to
//! tokio's blocking pool and back (two thread wake-ups; with every read also queued behind the
//! writer's mutex, that hand-off was most of an HTTP lookup's CPU time: docs/performance.md,
//! "Lookups over HTTP"). So a read takes a free reader and runs on the calling thread, without
//! waiting on a lock: when every reader is taken, or SQLite answers busy (a reader never sleeps
//! in a busy handler on an async worker), the read goes to the blocking pool with the usual
//! busy timeout.
//!
//! While reads are hot and the database quiet, the [`Anchor`] (an open read transaction) holds
//! the readers' WAL read lock for them, so a read makes no `fcntl` call of its own.
//!
//! Each reader keeps the connection records it parsed last ([`ParsedConnections`]): a read
//! whose document is the same text as the one parsed before takes a copy of that parse instead
//! of parsing it again (`from_json` was the largest share of a lookup's own time:
//! docs/performance.md, "The parse cache").

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use rusqlite::{ErrorCode, OpenFlags};

use super::anchor::Anchor;
use crate::domain::Connection;
use crate::ports::StoreError;

/// The most read connections a store opens (one per core up to this).
pub(super) const MAX_READERS: usize = 16;

/// The most connection records one reader keeps parsed ([`ParsedConnections`]).
pub(super) const PARSED_PER_READER: usize = 256;

/// The most document text one reader keeps, summed (each record's parse beside its text takes
/// about as much again): with [`MAX_READERS`] readers, at most 8 MiB of text in all.
pub(super) const PARSED_TEXT_BUDGET: usize = 512 * 1024;

/// A document longer than this (a connection with tens of KiB of values) is parsed on every
/// read and never kept, so that a few large records cannot push out the rest.
pub(super) const MAX_KEPT_TEXT: usize = 32 * 1024;

/// One read-only connection and what it parsed.
pub(super) struct Reader {
    pub(super) db: rusqlite::Connection,
    pub(super) parsed: ParsedConnections,
}

/// The connection records a reader parsed last, by id: each beside the exact document text it
/// was parsed from. A record is only ever handed out for the same text, so a copy of the kept
/// parse is what parsing the document again would give: any write (a new version, a disconnect,
/// a rotation of its key, another process's write) changes the text and is parsed afresh.
/// Only what the document holds is kept: secrets stay sealed (plaintext credentials are never
/// kept beyond the request that opened them); a deleted connection's record stays until it is
/// pushed out. At most [`PARSED_PER_READER`] records and [`PARSED_TEXT_BUDGET`] bytes of text;
/// a new record past either pushes out kept ones, in turn through the map's order.
#[derive(Default)]
pub(super) struct ParsedConnections {
    by_id: HashMap<String, (Box<str>, Connection)>,
    /// The lengths of the kept texts, summed.
    text_bytes: usize,
    /// Where in the map's order the next record to push out is.
    turn: usize,
    /// Reads answered from a kept parse.
    #[cfg(test)]
    hits: usize,
}

impl ParsedConnections {
    /// The connection record `doc` (the document of connection `id`, as read), from the kept
    /// parse when it was parsed from this very text, else parsed now (and kept, unless longer
    /// than [`MAX_KEPT_TEXT`]).
    pub(super) fn connection(&mut self, id: &str, doc: &str) -> serde_json::Result<Connection> {
        if let Some((text, c)) = self.by_id.get(id)
            && **text == *doc
        {
            #[cfg(test)]
            {
                self.hits += 1;
            }
            return Ok(c.clone());
        }
        let c: Connection = serde_json::from_str(doc)?;
        if let Some((old, _)) = self.by_id.remove(id) {
            self.text_bytes -= old.len();
        }
        if doc.len() > MAX_KEPT_TEXT {
            return Ok(c);
        }
        while !self.by_id.is_empty()
            && (self.by_id.len() >= PARSED_PER_READER || self.text_bytes + doc.len() > PARSED_TEXT_BUDGET)
        {
            self.push_out_one();
        }
        self.text_bytes += doc.len();
        self.by_id.insert(id.to_owned(), (doc.into(), c.clone()));
        Ok(c)
    }

    /// Pushes out the kept record at the current turn.
    fn push_out_one(&mut self) {
        let at = self.turn % self.by_id.len().max(1);
        self.turn = self.turn.wrapping_add(1);
        if let Some(id) = self.by_id.keys().nth(at).cloned()
            && let Some((text, _)) = self.by_id.remove(&id)
        {
            self.text_bytes -= text.len();
        }
    }

    /// How many records are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// The read-only connections of one database file.
pub(super) struct Readers {
    conns: Vec<Mutex<Reader>>,
    /// Where the next read starts looking for a free connection (spreads reads over them).
    next: AtomicUsize,
    /// The busy timeout of reads that went to the blocking pool.
    busy_timeout: Duration,
    /// The read transaction that holds the readers' WAL read lock for them while reads are hot.
    pub(super) anchor: Arc<Anchor>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// SQLite could not start the read now (recovery or a checkpoint restart of the WAL).
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

impl Readers {
    /// Opens `count` (1 to [`MAX_READERS`]) read-only connections to `path`, a database the
    /// writer has already opened in WAL mode with its schema, and their anchor.
    pub(super) fn open(path: &Path, count: usize, busy_timeout: Duration) -> Result<Self, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conns = (0..count.clamp(1, MAX_READERS))
            .map(|_| {
                let db = rusqlite::Connection::open_with_flags(path, flags).map_err(backend)?;
                // No busy handler on the calling thread: a busy read retries in the pool.
                db.busy_timeout(Duration::ZERO).map_err(backend)?;
                Ok(Mutex::new(Reader { db, parsed: ParsedConnections::default() }))
            })
            .collect::<Result<_, StoreError>>()?;
        let anchor = Arc::new(Anchor::open(path).map_err(backend)?);
        Ok(Self { conns, next: AtomicUsize::new(0), busy_timeout, anchor })
    }

    /// How many read connections there are.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.conns.len()
    }

    /// A reader nobody holds, if any.
    fn try_take(&self) -> Option<MutexGuard<'_, Reader>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..self.conns.len()).find_map(|i| match self.conns[(start + i) % self.conns.len()].try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        })
    }

    /// Runs the read `f` (one statement, or several inside its own transaction) on a free
    /// reader on this thread; on the blocking pool when none is free or SQLite is busy.
    pub(super) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&mut Reader) -> rusqlite::Result<T> + Send + 'static,
    {
        self.anchor.note_read();
        if let Some(mut reader) = self.try_take() {
            match f(&mut reader) {
                Err(e) if is_busy(&e) => {}
                done => return done.map_err(backend),
            }
        }
        let readers = self.clone();
        tokio::task::spawn_blocking(move || {
            let start = readers.next.fetch_add(1, Ordering::Relaxed) % readers.conns.len();
            let mut reader = readers.conns[start].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            reader.db.busy_timeout(readers.busy_timeout)?;
            let done = f(&mut reader);
            reader.db.busy_timeout(Duration::ZERO)?;
            done
        })
        .await
        .map_err(|e| StoreError::Backend(Box::new(e)))?
        .map_err(backend)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::SqliteStore;
    use crate::ports::Store;

    /// A store in a fresh directory holding one connection (and its definition).
    pub(in super::super) async fn store_with_a_connection()
    -> (tempfile::TempDir, SqliteStore, crate::domain::Connection) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("latchkey.db")).unwrap();
        let org = crate::conformance::fresh_org();
        let def = crate::conformance::definition(&org, "acme-api");
        let c = crate::conformance::connection(&def, "c-1");
        store.put_definition(&def, crate::ports::Expect::Absent).await.unwrap();
        store.insert_connection(&c).await.unwrap();
        (dir, store, c)
    }

    #[tokio::test]
    async fn a_point_read_neither_waits_for_a_write_in_progress_nor_sees_it() {
        let (_dir, store, c) = store_with_a_connection().await;
        assert!(store.readers.len() >= 2, "one reader per core, at least two");
        // Another thread holds the writer, inside a write transaction that changed the
        // connection: a read on the writer's connection would wait for its mutex until released.
        let writer = store.db.clone();
        let id = c.id.to_string();
        let (held_tx, held) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let mut db = writer.lock().unwrap();
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            tx.execute("UPDATE connections SET version = version + 1 WHERE id = ?1", [id.as_str()]).unwrap();
            held_tx.send(()).unwrap();
            let _ = released.recv();
            tx.rollback().unwrap();
        });
        held.recv().unwrap();
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), store.get_connection(&c.org, &c.id))
            .await
            .expect("the read does not queue behind the writer")
            .unwrap()
            .expect("the committed connection");
        assert_eq!(read.version, c.version, "only committed writes are read");
        let def = tokio::time::timeout(std::time::Duration::from_secs(30), store.get_definition(&c.org, &c.definition))
            .await
            .expect("the read does not queue behind the writer")
            .unwrap();
        assert!(def.is_some());
        release.send(()).unwrap();
        holder.join().unwrap();
    }

    #[tokio::test]
    async fn a_read_sees_every_write_committed_before_it_on_the_writer() {
        let (_dir, store, c) = store_with_a_connection().await;
        for round in 1..=3 {
            let mut next = store.get_connection(&c.org, &c.id).await.unwrap().unwrap();
            let expected = next.version;
            next.version += 1;
            next.label = Some(format!("round {round}"));
            store.update_connection(&next, expected).await.unwrap();
            // Every reader, not only the one the last read took.
            for _ in 0..store.readers.len() * 2 {
                let read = store.get_connection(&c.org, &c.id).await.unwrap().unwrap();
                assert_eq!((read.version, &read.label), (next.version, &next.label));
            }
        }
        let found = store.find_for_selector(&c.org, &c.definition, c.customer.as_ref().unwrap()).await.unwrap();
        assert_eq!(found.iter().map(|f| f.label.as_deref()).collect::<Vec<_>>(), vec![Some("round 3")]);
    }

    #[tokio::test]
    async fn a_changed_document_is_read_afresh_by_every_reader_even_at_the_same_version() {
        let (dir, store, c) = store_with_a_connection().await;
        // Every reader parses (and keeps) the record once.
        for _ in 0..store.readers.len() * 2 {
            assert_eq!(store.get_connection(&c.org, &c.id).await.unwrap().unwrap().label, c.label);
        }
        // Another process rewrites the document and leaves the version as it was (as a tool
        // editing the file would): only the text tells the change.
        let other = rusqlite::Connection::open(dir.path().join("latchkey.db")).unwrap();
        let changed = other
            .execute("UPDATE connections SET doc = json_set(doc, '$.label', 'edited') WHERE id = ?1", [c.id.as_str()])
            .unwrap();
        assert_eq!(changed, 1);
        // Each path on every reader (reads take the readers in turn).
        for _ in 0..store.readers.len() * 2 {
            let read = store.get_connection(&c.org, &c.id).await.unwrap().unwrap();
            assert_eq!((read.version, read.label.as_deref()), (c.version, Some("edited")));
        }
        for _ in 0..store.readers.len() * 2 {
            let found = store.find_for_selector(&c.org, &c.definition, c.customer.as_ref().unwrap()).await.unwrap();
            assert_eq!(found.iter().map(|f| f.label.as_deref()).collect::<Vec<_>>(), vec![Some("edited")]);
        }
        let hits: usize = store.readers.conns.iter().map(|r| r.lock().unwrap().parsed.hits).sum();
        assert!(hits >= store.readers.len() * 2, "the unchanged text was read from kept parses ({hits} hits)");
    }

    /// `n` connection records of one definition, as `(id, document)`, each with `pad` bytes
    /// of values.
    fn documents(n: usize, pad: usize) -> Vec<(String, String)> {
        let org = crate::conformance::fresh_org();
        let def = crate::conformance::definition(&org, "acme-api");
        (0..n)
            .map(|i| {
                let mut c = crate::conformance::connection(&def, &format!("c-{i}"));
                c.values.insert("pad".into(), serde_json::json!("x".repeat(pad)));
                (c.id.to_string(), serde_json::to_string(&c).unwrap())
            })
            .collect()
    }

    #[test]
    fn a_kept_parse_is_handed_out_only_for_its_own_text() {
        let mut parsed = super::ParsedConnections::default();
        let (id, doc) = documents(1, 0).remove(0);
        let first = parsed.connection(&id, &doc).unwrap();
        assert_eq!((parsed.hits, serde_json::to_string(&first).unwrap()), (0, doc.clone()), "parsed");
        let again = parsed.connection(&id, &doc).unwrap();
        assert_eq!((parsed.hits, serde_json::to_string(&again).unwrap()), (1, doc.clone()), "kept, what parsing gives");
        // The same id with another text: the new text's record, never the kept one.
        let mut edited: crate::domain::Connection = serde_json::from_str(&doc).unwrap();
        edited.label = Some("edited".into());
        let edited_doc = serde_json::to_string(&edited).unwrap();
        assert_eq!(parsed.connection(&id, &edited_doc).unwrap().label.as_deref(), Some("edited"));
        assert_eq!(parsed.connection(&id, &doc).unwrap().label, None, "the first text again: its own record");
        assert_eq!((parsed.hits, parsed.len()), (1, 1), "one record a connection, the latest text's");
        assert!(parsed.connection(&id, r#"{"not": "a connection"}"#).is_err(), "an unreadable document fails");
    }

    #[test]
    fn the_kept_parses_are_bounded_in_records_and_text() {
        use super::{MAX_KEPT_TEXT, PARSED_PER_READER, PARSED_TEXT_BUDGET};
        let mut parsed = super::ParsedConnections::default();
        let small = documents(PARSED_PER_READER + 40, 0);
        for (id, doc) in &small {
            parsed.connection(id, doc).unwrap();
        }
        assert_eq!(parsed.len(), PARSED_PER_READER, "bounded in records");
        // Every one read again is what its text says, kept or pushed out.
        for (id, doc) in &small {
            assert_eq!(serde_json::to_string(&parsed.connection(id, doc).unwrap()).unwrap(), *doc);
        }
        let large = documents(64, 20 * 1024);
        for (id, doc) in &large {
            parsed.connection(id, doc).unwrap();
            assert!(parsed.text_bytes <= PARSED_TEXT_BUDGET, "bounded in text ({} bytes)", parsed.text_bytes);
        }
        let kept: usize = parsed.by_id.values().map(|(text, _)| text.len()).sum();
        assert_eq!(kept, parsed.text_bytes, "the running sum is the kept texts' lengths");
        // A document past the per-record limit is parsed every time and never kept.
        let (id, doc) = documents(1, MAX_KEPT_TEXT).remove(0);
        let hits = parsed.hits;
        for _ in 0..2 {
            assert_eq!(serde_json::to_string(&parsed.connection(&id, &doc).unwrap()).unwrap(), doc);
        }
        assert_eq!(parsed.hits, hits, "never answered from a kept parse");
        assert!(!parsed.by_id.contains_key(&id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_waits_in_the_blocking_pool_when_every_reader_is_taken() {
        let (_dir, store, c) = store_with_a_connection().await;
        let store = std::sync::Arc::new(store);
        let held: Vec<_> = store.readers.conns.iter().map(|m| m.lock().unwrap()).collect();
        assert!(store.readers.try_take().is_none());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reading = store.clone();
        let (org, id) = (c.org.clone(), c.id.clone());
        tokio::spawn(async move {
            let _ = tx.send(reading.get_connection(&org, &id).await);
        });
        // The read cannot take a reader on this thread: it waits in the pool until one is free.
        drop(held);
        let read = rx.await.unwrap().unwrap().unwrap();
        assert_eq!(read.id, c.id);
    }
}
