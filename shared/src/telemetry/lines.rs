//! Where the log's lines go: standard error, one `write(2)` a line and no lock of our own, and
//! within an HTTP request one `write(2)` for all the request's lines, made before it is answered.
//!
//! Why (`docs/performance.md`, "Log lines"): a token lookup writes two lines, the audit line and
//! the request line. Through `std::io::stderr()` each took the process-wide stderr lock and made
//! its own `write(2)`; with two runtime workers the lock was contended, and a worker slept on its
//! futex while the other wrote. The kernel already keeps one `write(2)` whole: on a regular file
//! it holds the file's position lock for the write, and on a pipe a write of at most `PIPE_BUF`
//! (4,096 bytes) is atomic. So a line is written as it was formatted, in one call.
//!
//! [`gathering`] is the per-request part: the lines written while its future runs, on its task,
//! are kept in memory and written in one `write(2)` (pieces of whole lines of at most
//! [`PIPE_BUF`] bytes, when there are more) when the future ends, or is dropped (a client
//! that hung up, a panic), or once they pass [`GATHER_LIMIT`]. Nothing is lost and nothing is
//! written late: the HTTP middleware (`http::trace_request`) answers only once its future has
//! ended, so the audit line of a lookup is on standard error before the credentials leave. Lines
//! of tasks the request spawns are not gathered (they are not on its task); neither are a Lambda
//! invocation's (a sweep runs for minutes and its lines should appear as they happen).

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

/// Gathered lines are written once they pass this many bytes, even before the request ends, so
/// that a request that logs a lot holds at most about this much.
pub const GATHER_LIMIT: usize = 64 * 1024;

/// Where lines are written: each call gets whole lines (one, or a request's gathered lines).
pub trait Destination: Send + Sync + 'static {
    /// Writes `lines` (UTF-8, each ending in `\n`) in one piece where the destination allows.
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
/// `PIPE_BUF`; Linux's is 4,096).
pub const PIPE_BUF: usize = 4_096;

impl Destination for Stderr {
    /// Writes `lines` in pieces of whole lines of at most [`PIPE_BUF`] bytes (one piece for a
    /// single line or a request's few), each in one `write(2)`: on a pipe (a container's log
    /// driver, Lambda) a piece is never split by another thread's line. Only a single line longer
    /// than `PIPE_BUF` can be, and only while the pipe is full.
    fn write_lines(&self, lines: &[u8]) -> io::Result<()> {
        for piece in pieces(lines, PIPE_BUF) {
            match self.0.as_ref() {
                // `Write for &File`: `write_all` retries a short write and EINTR.
                Some(mut fd) => fd.write_all(piece)?,
                None => io::stderr().write_all(piece)?,
            }
        }
        Ok(())
    }
}

/// `lines` cut after a `\n` into pieces of at most `max` bytes; a line longer than `max` is a
/// piece of its own, and so is an unterminated tail.
fn pieces(lines: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = lines;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let line_end = |from: &[u8]| from.iter().position(|&b| b == b'\n').map_or(from.len(), |i| i + 1);
        let mut end = line_end(rest);
        while end < rest.len() {
            let next = end + line_end(&rest[end..]);
            if next > max {
                break;
            }
            end = next;
        }
        let (piece, after) = rest.split_at(end);
        rest = after;
        Some(piece)
    })
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

/// One request's lines, written when it is dropped (see [`gathering`]).
struct Gathered {
    lines: RefCell<Vec<u8>>,
    destination: RefCell<Option<Arc<dyn Destination>>>,
}

impl Gathered {
    /// Keeps `line` for `destination`; false when the lines kept are for another destination
    /// (two subscribers, in tests), which then writes it itself.
    fn push(&self, destination: &Arc<dyn Destination>, line: &[u8]) -> bool {
        let mut kept = self.destination.borrow_mut();
        match kept.as_ref() {
            Some(d) if !Arc::ptr_eq(d, destination) => return false,
            Some(_) => {}
            None => *kept = Some(destination.clone()),
        }
        let mut lines = self.lines.borrow_mut();
        lines.extend_from_slice(line);
        if lines.len() >= GATHER_LIMIT {
            // Best effort, as a line written straight out would be: the log has nowhere to
            // report its own failure.
            let _ = destination.write_lines(&lines);
            lines.clear();
        }
        true
    }
}

impl Drop for Gathered {
    fn drop(&mut self) {
        let lines = self.lines.get_mut();
        if let Some(destination) = self.destination.get_mut()
            && !lines.is_empty()
        {
            let _ = destination.write_lines(lines);
        }
    }
}

/// Runs `work` with the lines it logs on its own task gathered, and writes them in one piece
/// when it ends or is dropped (module docs). Returns `work`'s output once the lines are written.
pub async fn gathering<F: Future>(work: F) -> F::Output {
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

    #[test]
    fn stderr_writes_whole_lines_in_pieces_a_pipe_keeps_whole() {
        fn cut(lines: &str, max: usize) -> Vec<&str> {
            pieces(lines.as_bytes(), max).map(|p| std::str::from_utf8(p).unwrap()).collect()
        }
        assert_eq!(cut("a\nbb\nccc\n", 100), ["a\nbb\nccc\n"], "a request's few lines: one write");
        assert_eq!(cut("a\nbb\nccc\n", 5), ["a\nbb\n", "ccc\n"]);
        assert_eq!(cut("a\nbb\nccc\n", 4), ["a\n", "bb\n", "ccc\n"]);
        assert_eq!(cut("a\nlonger than max\nb\n", 4), ["a\n", "longer than max\n", "b\n"], "a long line alone");
        assert_eq!(cut("a\nno newline", 4), ["a\n", "no newline"]);
        assert!(cut("", 4).is_empty());
        let many = "x".repeat(99) + "\n";
        let big = many.repeat(100);
        let written = cut(&big, PIPE_BUF);
        assert!(written.iter().all(|p| p.len() <= PIPE_BUF && p.ends_with('\n')), "whole lines under PIPE_BUF");
        assert_eq!(written.concat(), big, "nothing lost or reordered");
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
    async fn a_request_that_logs_a_lot_writes_at_the_limit() {
        let calls = Arc::new(Calls::default());
        let _guard = tracing::subscriber::set_default(subscriber(&calls));
        let probe = calls.clone();
        let line = "x".repeat(1_000);
        gathering(async move {
            for _ in 0..GATHER_LIMIT / 1_001 + 1 {
                tracing::info!("{line}");
            }
            let early = probe.taken();
            assert_eq!(early.len(), 1, "one write at the limit");
            assert!(early[0].len() >= GATHER_LIMIT && early[0].lines().all(|l| l.len() == 1_000));
            tracing::info!("last");
        })
        .await;
        assert_eq!(calls.taken(), ["last\n"]);
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
