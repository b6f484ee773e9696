//! Where log lines go: stderr, in batches. Lines at `info` and below (the access log, one line
//! per request) are gathered in memory and written together every [`FLUSH_EVERY`], or at once
//! when [`BATCH_BYTES`] have gathered, so a busy proxy pays one write per batch instead of one
//! per request. A warning or an error is written at once, after the lines gathered before it,
//! so the order of the log holds. [`flush_logs`] writes what is gathered (at exit).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How long a gathered line waits at most before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Gathered bytes that are written at once.
pub const BATCH_BYTES: usize = 64 * 1024;

/// The lines gathered for the process's log.
static GATHERED: OnceLock<Arc<Gathered>> = OnceLock::new();

/// Where gathered lines are written.
type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Lines waiting to be written, and where they go.
struct Gathered {
    lines: Mutex<Vec<u8>>,
    /// Signalled when the first line of a batch is gathered.
    gathered_one: Condvar,
    out: Sink,
    /// Whether lines may wait: only while the flushing thread runs.
    batched: AtomicBool,
}

/// The `MakeWriter` of the process's log: see the module's documentation.
#[derive(Clone)]
pub struct BatchedStderr {
    gathered: Arc<Gathered>,
}

/// One log line's writer: it gathers the line, or, when `urgent`, writes it with what was
/// gathered before it.
pub struct LineWriter<'a> {
    gathered: &'a Gathered,
    urgent: bool,
}

// === impl BatchedStderr ===

impl BatchedStderr {
    /// The process's log writer, with its flushing thread started on first use.
    pub fn get() -> Self {
        let gathered = GATHERED.get_or_init(|| {
            let gathered = Arc::new(Gathered::new(Box::new(|bytes| {
                // A log that cannot be written has nowhere to report it.
                let _ = io::stderr().lock().write_all(bytes);
            })));
            let flusher = Arc::clone(&gathered);
            let spawned =
                std::thread::Builder::new()
                    .name("log-flush".into())
                    .spawn(move || loop {
                        // Asleep while nothing is gathered: an idle proxy does not wake for it.
                        flusher.wait_for_lines();
                        std::thread::sleep(FLUSH_EVERY);
                        flusher.flush();
                    });
            // Without the thread every line is written at once, as unbatched logging does.
            gathered.batched.store(spawned.is_ok(), Ordering::Relaxed);
            gathered
        });
        Self {
            gathered: Arc::clone(gathered),
        }
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            gathered: &self.gathered,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            gathered: &self.gathered,
            // `WARN` and `ERROR` are the levels at or under `WARN` in tracing's order.
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

/// Writes the log lines gathered so far (called at exit; the flushing thread does it meanwhile).
pub fn flush_logs() {
    if let Some(gathered) = GATHERED.get() {
        gathered.flush();
    }
}

// === impl Gathered ===

impl Gathered {
    fn new(out: Sink) -> Self {
        Self {
            lines: Mutex::new(Vec::with_capacity(BATCH_BYTES)),
            gathered_one: Condvar::new(),
            out,
            batched: AtomicBool::new(true),
        }
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a line; writes everything gathered when `urgent` or when the batch is full. The
    /// lock is held while writing, so lines leave in the order they came.
    fn add(&self, line: &[u8], urgent: bool) {
        let mut lines = self.lines();
        let first = lines.is_empty();
        lines.extend_from_slice(line);
        let batched = self.batched.load(Ordering::Relaxed);
        if urgent || !batched || lines.len() >= BATCH_BYTES {
            (self.out)(&lines);
            lines.clear();
        } else if first {
            self.gathered_one.notify_one();
        }
    }

    /// Blocks until some line is gathered.
    fn wait_for_lines(&self) {
        let mut lines = self.lines();
        while lines.is_empty() {
            lines = self
                .gathered_one
                .wait(lines)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn flush(&self) {
        let mut lines = self.lines();
        if !lines.is_empty() {
            (self.out)(&lines);
            lines.clear();
        }
    }
}

// === impl LineWriter ===

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.gathered.add(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Gathered` writing into a shared list of writes, one entry per write.
    fn recording() -> (Gathered, Arc<Mutex<Vec<Vec<u8>>>>) {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&writes);
        let gathered = Gathered::new(Box::new(move |bytes: &[u8]| {
            sink.lock().expect("sink").push(bytes.to_vec());
        }));
        (gathered, writes)
    }

    #[test]
    fn info_lines_gather_and_urgent_ones_go_out_after_them_in_order() {
        let (gathered, writes) = recording();
        gathered.add(b"a\n", false);
        gathered.add(b"b\n", false);
        assert!(writes.lock().expect("writes").is_empty(), "gathered");
        gathered.add(b"warn\n", true);
        assert_eq!(
            *writes.lock().expect("writes"),
            vec![b"a\nb\nwarn\n".to_vec()]
        );
        gathered.add(b"c\n", false);
        gathered.flush();
        gathered.flush();
        assert_eq!(
            writes.lock().expect("writes").len(),
            2,
            "an empty flush writes nothing"
        );
        assert_eq!(writes.lock().expect("writes")[1], b"c\n");
    }

    #[test]
    fn the_flusher_wakes_when_a_line_is_gathered() {
        let (gathered, writes) = recording();
        let gathered = Arc::new(gathered);
        let flusher = Arc::clone(&gathered);
        let thread = std::thread::spawn(move || {
            flusher.wait_for_lines();
            flusher.flush();
        });
        gathered.add(b"late\n", false);
        thread.join().expect("flusher");
        assert_eq!(*writes.lock().expect("writes"), vec![b"late\n".to_vec()]);
    }

    #[test]
    fn a_full_batch_is_written_at_once() {
        let (gathered, writes) = recording();
        let line = vec![b'x'; 1000];
        for _ in 0..(BATCH_BYTES / 1000) {
            gathered.add(&line, false);
        }
        assert!(writes.lock().expect("writes").is_empty());
        gathered.add(&line, false);
        let writes = writes.lock().expect("writes");
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].len(), (BATCH_BYTES / 1000 + 1) * 1000);
    }

    #[test]
    fn warnings_and_errors_are_urgent() {
        let writer = BatchedStderr {
            gathered: Arc::new(recording().0),
        };
        let urgent = |level: Level| {
            let fields =
                tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE));
            let kind = tracing::metadata::Kind::EVENT;
            let meta = Metadata::new("t", "t", level, None, None, None, fields, kind);
            writer.make_writer_for(&meta).urgent
        };
        assert!(urgent(Level::ERROR));
        assert!(urgent(Level::WARN));
        assert!(!urgent(Level::INFO));
        assert!(!urgent(Level::DEBUG));
    }

    /// The callsite the test's metadata names; never registered.
    struct Callsite;
    static CALLSITE: Callsite = Callsite;
    impl tracing::callsite::Callsite for Callsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!("not registered")
        }
    }
}
