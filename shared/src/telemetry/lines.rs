//! Where the log's lines go: standard error, one `write(2)` a line and no lock of our own, and
//! within an HTTP request of `latchkey serve` one `write(2)` for the request's lines, made before
//! it is answered.
//!
//! Why (`docs/performance.md`, "Log lines"): a token lookup writes two lines, the audit line and
//! the request line. Through `std::io::stderr()` each took the process-wide stderr lock and made
//! its own `write(2)`; with two runtime workers the lock was contended, and a worker slept on its
//! futex while the other wrote. The kernel already keeps one `write(2)` whole: on a regular file
//! it holds the file's position lock for the write, and on a pipe a write of at most
//! [`PIPE_BUF`] bytes is atomic. So an event's line(s) are written as formatted, in one call.
//!
//! [`gathering`] is the per-request part: the lines written while its future runs, on its task,
//! are kept in memory and written in one `write(2)` when the future ends or is dropped (a client
//! that hung up), and whenever the next event would take them past [`PIPE_BUF`] (so every write
//! of gathered lines is whole events a pipe keeps whole). The HTTP middleware
//! (`http::trace::trace_request`) answers only once its future has ended, so the audit line of a lookup
//! is on standard error before the credentials leave. A panic (release builds abort) writes the
//! panicking task's lines first ([`write_gathered_on_panic`]). Not gathered: lines of tasks the
//! request spawns (not on its task), and everything on Lambda ([`init_gathering`]): there a
//! request killed at the function's timeout should leave the lines it wrote.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

/// Where lines are written: each call gets whole events (one event's line, or a request's
/// gathered events), to write in one piece.
pub trait Destination: Send + Sync + 'static {
    /// Writes `lines` (UTF-8, each event ending in `\n`) in one piece where the destination
    /// allows.
    fn write_lines(&self, lines: &[u8]) -> io::Result<()>;
}

/// The process's standard error (fd 2) as a [`Destination`], written through a duplicate of the
/// descriptor: the same open file (same offset, same `O_APPEND`), without `std`'s stderr lock.
/// When the descriptor cannot be duplicated, `std::io::stderr()` (and its lock) is used.
pub struct Stderr(Option<File>);

impl Stderr {
    fn get() -> Arc<Self> {
        static STDERR: OnceLock<Arc<Stderr>> = OnceLock::new();
        STDERR.get_or_init(|| Arc::new(Stderr(io::stderr().as_fd().try_clone_to_owned().ok().map(File::from)))).clone()
    }
}

/// The most bytes one `write(2)` to a pipe keeps whole, whatever other writers do (POSIX
/// `PIPE_BUF`; Linux's is 4,096). Gathered lines are written in calls of at most this many
/// bytes, unless one event alone is longer.
pub const PIPE_BUF: usize = 4_096;

impl Destination for Stderr {
    /// One `write_all` on the duplicated descriptor: `Write for &File` retries a short write
    /// (a full disk; a pipe write over `PIPE_BUF` while the pipe is full) and EINTR.
    fn write_lines(&self, lines: &[u8]) -> io::Result<()> {
        match self.0.as_ref() {
            Some(mut fd) => fd.write_all(lines),
            None => io::stderr().write_all(lines),
        }
    }
}

/// A `tracing_subscriber` writer ([`MakeWriter`]) for [`Destination`] `D`: lines written inside
/// [`gathering`] go to its buffer, others straight to `D`.
pub struct Lines<D: Destination> {
    destination: Arc<D>,
}

impl Lines<Stderr> {
    /// Lines to standard error (see [`Stderr`]).
    pub fn stderr() -> Self {
        Self { destination: Stderr::get() }
    }
}

impl<D: Destination> Lines<D> {
    /// Lines to `destination`.
    pub fn new(destination: Arc<D>) -> Self {
        Self { destination }
    }
}

impl<'a, D: Destination> MakeWriter<'a> for Lines<D> {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { destination: self.destination.clone() }
    }
}

/// One event's writer: `tracing_subscriber` formats the whole line first and hands it over with
/// one `write_all`.
pub struct LineWriter {
    destination: Arc<dyn Destination>,
}

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let gathered = GATHERED.try_with(|g| g.push(&self.destination, line));
        match gathered {
            Ok(true) => Ok(line.len()),
            // Outside a gathering future, or gathered for another destination: straight out.
            Ok(false) | Err(_) => self.destination.write_lines(line).map(|()| line.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

tokio::task_local! {
    static GATHERED: Gathered;
}

/// Whether [`gathering`] gathers (see [`init_gathering`]).
static GATHER: AtomicBool = AtomicBool::new(true);

/// Turns request gathering on (`latchkey serve`, tests) or off (Lambda), for the process.
pub(super) fn init_gathering(on: bool) {
    GATHER.store(on, Ordering::Relaxed);
}

/// One request's lines, written when it is dropped (see [`gathering`]).
struct Gathered {
    lines: RefCell<Vec<u8>>,
    destination: RefCell<Option<Arc<dyn Destination>>>,
}

impl Gathered {
    /// Keeps the event `line` for `destination`, first writing what is kept when `line` would
    /// take it past [`PIPE_BUF`]; an event longer than that is written at once. False when the
    /// lines kept are for another destination (two subscribers, in tests), which then writes
    /// `line` itself. Never writes while a `RefCell` is borrowed.
    fn push(&self, destination: &Arc<dyn Destination>, line: &[u8]) -> bool {
        {
            let mut kept = self.destination.borrow_mut();
            match kept.as_ref() {
                Some(d) if !Arc::ptr_eq(d, destination) => return false,
                Some(_) => {}
                None => *kept = Some(destination.clone()),
            }
        }
        let full = {
            let mut lines = self.lines.borrow_mut();
            if lines.len() + line.len() <= PIPE_BUF {
                lines.extend_from_slice(line);
                return true;
            }
            std::mem::take(&mut *lines)
        };
        // Best effort, as a line written straight out would be: the log has nowhere to report
        // its own failure.
        if !full.is_empty() {
            let _ = destination.write_lines(&full);
        }
        if line.len() > PIPE_BUF {
            let _ = destination.write_lines(line);
        } else {
            self.lines.borrow_mut().extend_from_slice(line);
        }
        true
    }

    /// What is kept and where it goes, leaving nothing kept (None while a borrow is held: a
    /// panic inside [`Gathered::push`]).
    fn take(&self) -> Option<(Vec<u8>, Arc<dyn Destination>)> {
        let destination = self.destination.try_borrow().ok()?.clone()?;
        let lines = std::mem::take(&mut *self.lines.try_borrow_mut().ok()?);
        (!lines.is_empty()).then_some((lines, destination))
    }
}

impl Drop for Gathered {
    fn drop(&mut self) {
        if let Some((lines, destination)) = self.take() {
            let _ = destination.write_lines(&lines);
        }
    }
}

/// Writes the lines the current task has gathered now, if it is inside [`gathering`]: for a
/// panic hook, since a release build aborts on panic and would never drop them.
pub(super) fn write_gathered_on_panic() {
    if let Ok(Some((lines, destination))) = GATHERED.try_with(Gathered::take) {
        let _ = destination.write_lines(&lines);
    }
}

/// Runs `work` with the lines it logs on its own task gathered, and writes them in one piece
/// when it ends or is dropped (module docs). Returns `work`'s output once the lines are written.
pub(crate) async fn gathering<F: Future>(work: F) -> F::Output {
    if !GATHER.load(Ordering::Relaxed) {
        return work.await;
    }
    let gathered = Gathered { lines: RefCell::new(Vec::new()), destination: RefCell::new(None) };
    // The scope's future, and the `Gathered` in it, is dropped (writing the lines) as this
    // `.await` completes, before the output is returned.
    GATHERED.scope(gathered, work).await
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Each `write_lines` call, as written.
    #[derive(Default)]
    struct Calls(Mutex<Vec<String>>);

    impl Destination for Calls {
        fn write_lines(&self, lines: &[u8]) -> io::Result<()> {
            self.0.lock().unwrap().push(String::from_utf8(lines.to_vec()).unwrap());
            Ok(())
        }
    }

    impl Calls {
        fn taken(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    fn subscriber(calls: &Arc<Calls>) -> impl tracing::Subscriber + Send + Sync {
        tracing_subscriber::fmt()
            .with_writer(Lines::new(calls.clone()))
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_level(false)
            .finish()
    }

    #[tokio::test]
    async fn outside_a_gathering_future_each_line_is_written_at_once() {
        let calls = Arc::new(Calls::default());
        let _guard = tracing::subscriber::set_default(subscriber(&calls));
        tracing::info!("one");
        assert_eq!(calls.taken(), ["one\n"]);
        tracing::info!("two");
        assert_eq!(calls.taken(), ["two\n"]);
    }

    #[tokio::test]
    async fn a_requests_lines_are_written_in_one_call_before_its_output_is_returned() {
        let calls = Arc::new(Calls::default());
        let _guard = tracing::subscriber::set_default(subscriber(&calls));
        let probe = calls.clone();
        let out = gathering(async move {
            tracing::info!("credentials read");
            tokio::task::yield_now().await;
            tracing::info!("request");
            assert!(probe.taken().is_empty(), "nothing is written while the request runs");
            7
        })
        .await;
        assert_eq!(out, 7);
        assert_eq!(calls.taken(), ["credentials read\nrequest\n"]);
    }

    #[tokio::test]
    async fn a_dropped_request_still_writes_what_it_logged() {
        let calls = Arc::new(Calls::default());
        let _guard = tracing::subscriber::set_default(subscriber(&calls));
        let mut work = Box::pin(gathering(async {
            tracing::info!("before the client hung up");
            std::future::pending::<()>().await;
        }));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(work.as_mut().poll(&mut cx).is_pending());
        assert!(calls.taken().is_empty());
        drop(work);
        assert_eq!(calls.taken(), ["before the client hung up\n"]);
    }

    #[tokio::test]
    async fn a_request_that_logs_a_lot_writes_whole_events_of_at_most_pipe_buf() {
        let calls = Arc::new(Calls::default());
        let _guard = tracing::subscriber::set_default(subscriber(&calls));
        let probe = calls.clone();
        let short = "x".repeat(99);
        let long = "y".repeat(PIPE_BUF + 10);
        let (short_line, long_line) = (format!("{short}\n"), format!("{long}\n"));
        gathering(async move {
            for _ in 0..100 {
                tracing::info!("{short}");
            }
            tracing::info!("two lines\nof one event");
            tracing::info!("{long}");
            tracing::info!("last");
            let early = probe.0.lock().unwrap().len();
            assert!(early >= 3, "written while the request runs, as the kept lines reach PIPE_BUF: {early}");
        })
        .await;
        let writes = calls.taken();
        for w in &writes {
            assert!(w.ends_with('\n'), "whole events only");
            assert!(w.len() <= PIPE_BUF || *w == long_line, "at most PIPE_BUF unless one event is longer");
        }
        let expected = format!("{}two lines\nof one event\n{long_line}last\n", short_line.repeat(100));
        assert_eq!(writes.concat(), expected, "nothing lost or reordered");
        assert!(writes.iter().any(|w| w.contains("two lines\nof one event")), "an event is never split");
    }

    #[tokio::test]
    async fn the_panic_hook_writes_the_tasks_gathered_lines_at_once() {
        let calls = Arc::new(Calls::default());
        let _guard = tracing::subscriber::set_default(subscriber(&calls));
        let probe = calls.clone();
        gathering(async move {
            tracing::info!("before the panic");
            write_gathered_on_panic();
            assert_eq!(probe.taken(), ["before the panic\n"], "written by the hook, before the abort");
            tracing::info!("after");
        })
        .await;
        assert_eq!(calls.taken(), ["after\n"], "not written twice");
        write_gathered_on_panic();
        assert!(calls.taken().is_empty(), "outside a request: nothing to write");
    }

    #[tokio::test]
    async fn lines_of_a_task_the_request_spawns_are_not_held_by_it() {
        let calls = Arc::new(Calls::default());
        // The test's runtime has one thread: the spawned task sees the same default subscriber.
        let _guard = tracing::subscriber::set_default(subscriber(&calls));
        let probe = calls.clone();
        gathering(async move {
            tracing::info!("request");
            tokio::spawn(async { tracing::info!("background") }).await.unwrap();
            assert_eq!(probe.taken(), ["background\n"]);
        })
        .await;
        assert_eq!(calls.taken(), ["request\n"]);
    }
}
