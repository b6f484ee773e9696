//! The `esi-proxy` binary as a child process: built once per run, started with its output
//! read line by line on a thread of its own, waited for with a deadline, and killed when the
//! guard is dropped, so a failed assertion never leaves a process behind.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::MUST;

/// The path of the `esi-proxy` binary of this build profile, building it if it is missing.
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/tests-<hash> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target/<profile>")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // The features the test binary links esi-proxy with, so both use one build of it.
        build.args([
            "build",
            "-p",
            "esi-proxy",
            "--bin",
            "esi-proxy",
            "--features",
            "test-hooks",
        ]);
        if release {
            build.arg("--release");
        }
        // A cold build on a busy machine takes minutes; a hung one is killed.
        let mut cargo = build.spawn().expect("cargo runs");
        let deadline = std::time::Instant::now() + Duration::from_secs(30 * 60);
        let status = loop {
            if let Some(status) = cargo.try_wait().expect("waitpid") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = cargo.kill();
                let _ = cargo.wait();
                panic!("building esi-proxy took more than 30 minutes");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "building esi-proxy failed");
        profile_dir.join(format!("esi-proxy{}", std::env::consts::EXE_SUFFIX))
    })
    .clone()
}

/// Which of the child's outputs is read line by line (the other is discarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Standard output (what `demo` prints).
    Stdout,
    /// Standard error (where `serve` logs).
    Stderr,
}

/// A running child process, killed and reaped when dropped.
pub struct Proc {
    child: Child,
    /// The watched output's lines; closed when the process exits.
    pub lines: UnboundedReceiver<String>,
}

impl Proc {
    /// Starts `esi-proxy args...` with text logs at `info`, reading `watch` line by line.
    pub fn esi_proxy(args: &[&str], watch: Watch) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Proc::spawn(cmd, watch)
    }

    /// Starts `cmd`, reading `watch` line by line (the other output is as `cmd` sets it).
    pub fn spawn(mut cmd: Command, watch: Watch) -> Proc {
        match watch {
            Watch::Stdout => cmd.stdout(Stdio::piped()),
            Watch::Stderr => cmd.stderr(Stdio::piped()),
        };
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?} starts: {e}"));
        let lines = match watch {
            Watch::Stdout => lines(child.stdout.take().expect("piped")),
            Watch::Stderr => lines(child.stderr.take().expect("piped")),
        };
        Proc { child, lines }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most [`MUST`]) for the first line from which `find` takes a value; `what`
    /// names it in the failure message.
    pub async fn line<T>(&mut self, what: &str, find: impl Fn(&str) -> Option<T>) -> T {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if let Some(found) = find(&line) {
                    return found;
                }
            }
            panic!("the process ended before printing {what}");
        };
        tokio::time::timeout(MUST, wait)
            .await
            .unwrap_or_else(|_| panic!("no {what} within {MUST:?}"))
    }

    /// Waits (at most [`MUST`]) for the line holding `needle`.
    pub async fn line_with(&mut self, needle: &str) {
        self.line(needle, |line| line.contains(needle).then_some(()))
            .await;
    }

    /// Sends `signal` (`"TERM"`, `"INT"`, `"HUP"`) to the process.
    pub async fn signal(&self, signal: &str) {
        let mut kill = Command::new("kill");
        kill.arg(format!("-{signal}"))
            .arg(self.id().to_string())
            .stdout(Stdio::null());
        let mut kill = Proc::spawn(kill, Watch::Stderr);
        let status = kill.exit().await;
        assert!(status.success(), "kill -{signal} {}: {status:?}", self.id());
    }

    /// Waits (at most [`MUST`]) for the process to exit and returns how it did.
    pub async fn exit(&mut self) -> ExitStatus {
        self.exit_within(MUST).await
    }

    /// Waits at most `limit` for the process to exit and returns how it did.
    pub async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        tokio::time::timeout(limit, async {
            loop {
                if let Some(status) = self.child.try_wait().expect("waitpid") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("process {} did not exit within {limit:?}", self.id()))
    }

    /// The rest of the watched output, to the end (the process has exited or is exiting).
    pub async fn rest(&mut self) -> Vec<String> {
        self.rest_within(MUST).await
    }

    /// [`Proc::rest`], waiting at most `limit`.
    pub async fn rest_within(&mut self, limit: Duration) -> Vec<String> {
        let mut tail = Vec::new();
        tokio::time::timeout(limit, async {
            while let Some(line) = self.lines.recv().await {
                tail.push(line);
            }
        })
        .await
        .expect("the output closes when the process exits");
        tail
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Already reaped when the test waited for it; otherwise SIGKILL cannot be ignored, so
        // the wait is short.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `esi-proxy serve args...` started, with the address it logged that it listens on.
pub async fn serve(args: &[&str]) -> (Proc, String) {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let mut proc = Proc::esi_proxy(&all, Watch::Stderr);
    let addr = proc
        .line("the listening address", |line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .map(str::to_owned)
        })
        .await;
    (proc, addr)
}

/// `esi-proxy demo args...` started, with the URL it printed to open.
pub async fn demo(args: &[&str]) -> (Proc, String) {
    let mut all = vec!["demo"];
    all.extend_from_slice(args);
    let mut proc = Proc::esi_proxy(&all, Watch::Stdout);
    let url = proc
        .line("the URL to open", |line| {
            line.trim()
                .strip_prefix("open")
                .map(|u| u.trim().to_owned())
        })
        .await;
    (proc, url)
}

/// Runs `esi-proxy args...` to its end (at most [`MUST`]) and returns what it wrote.
pub async fn run(args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    output(cmd).await
}

/// Runs `cmd` to its end (at most [`MUST`], killed if it takes longer) and returns what it
/// wrote.
pub async fn output(cmd: Command) -> Output {
    output_within(cmd, MUST).await
}

/// [`output`] with another limit than [`MUST`].
pub async fn output_within(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut proc = Proc::spawn(cmd, Watch::Stderr);
    let stdout = proc.child.stdout.take().expect("piped");
    let stdout = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = std::io::Read::read_to_end(&mut { stdout }, &mut text);
        text
    });
    let stderr = proc.rest_within(limit).await;
    let status = proc.exit_within(limit).await;
    let stdout = tokio::task::spawn_blocking(move || stdout.join().expect("reader thread"))
        .await
        .expect("joined");
    Output {
        status,
        stdout,
        stderr: stderr.join("\n").into_bytes(),
    }
}

/// The lines `pipe` carries, read on a thread of their own so a test can wait on them.
fn lines(pipe: impl std::io::Read + Send + 'static) -> UnboundedReceiver<String> {
    use std::io::BufRead;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
