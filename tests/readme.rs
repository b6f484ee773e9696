//! The README's commands, run exactly as written, from the repository root, through `bash` and
//! `cargo`: the demo serves its composed page and stops on Ctrl-C, `lint` prints what the README
//! shows, every `serve` line composes a page from an origin on the README's port (the
//! several-nodes ones on the README's `redis-server`, kept running for them), `check-config`
//! accepts the documented config, the demo answers the purge by key, and the benches named
//! exist. A command the README gains that this file does not know fails the test, so no command
//! can be shown without being checked.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

/// The first `cargo run --release` builds the release binary: minutes on a cold CI machine.
const FIRST_BUILD: Duration = Duration::from_secs(1200);
/// Any later wait: the binary is built, it only has to start or finish.
const STEP: Duration = Duration::from_secs(120);

/// The layout the README's `serve` lines compose, from an origin on `127.0.0.1:8081`.
const LAYOUT: &str = "<html><body><esi:include src=\"/fragment\"/></body></html>";
const COMPOSED: &str = "<html><body>composed from a fragment</body></html>";

/// One README test in order, since the demo and both `serve` lines use port 8080.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_the_readme_shows_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = code_blocks(&readme);
    let commands: Vec<&str> = blocks
        .iter()
        .filter(|b| b.lang == "sh")
        .flat_map(|b| b.lines.iter().map(String::as_str))
        .collect();
    assert!(
        commands.first() == Some(&"cargo run --release -- demo"),
        "the README's first command is the demo: {commands:?}"
    );
    let mut timeout = FIRST_BUILD;
    // Servers a command started for the commands after it (the shared tier's redis-server),
    // stopped when the test ends.
    let mut servers = Vec::new();
    for command in commands {
        // Words up to a trailing `# comment`, which `sh` ignores too.
        let words: Vec<&str> = command
            .split_whitespace()
            .take_while(|w| !w.starts_with('#'))
            .collect();
        let after_and = words
            .iter()
            .rposition(|w| *w == "&&")
            .map_or(0, |at| at + 1);
        match words.as_slice() {
            ["cargo", "run", "--release", "--", "demo", ..] => demo(root, command, timeout).await,
            ["cargo", "run", "--release", "--", "lint", ..] => {
                let shown = blocks
                    .iter()
                    .skip_while(|b| !b.lines.iter().any(|l| l == command))
                    .nth(1)
                    .expect("the README shows lint's output after the command");
                lint(root, command, &shown.lines, timeout);
            }
            ["cargo", "run", "--release", "--", "serve", ..] => {
                serve(root, command, timeout).await;
            }
            ["curl", "-X", "POST", url] if url.contains("/_esi/purge?key=") => {
                purge_demo(root, command, url, timeout).await;
            }
            ["redis-server", "--port", port, ..] => {
                servers.push(redis_server(root, command, port));
            }
            ["cargo", "run", "--release", "--", "check-config", ..] => {
                let (status, out) = run_to_end(root, command, timeout);
                assert!(status.success(), "{command}: {status:?}\n{out}");
            }
            ["cargo", "build", "--release", "-p", "esi-proxy", "--no-default-features"] => {
                // Other features than the demo's build: esi-proxy and the crates whose features
                // differ compile again, minutes on a busy machine.
                production_build(root, command, FIRST_BUILD);
            }
            ["cargo", "test", "--workspace"] => {
                // What is running this test; CI must run it exactly as written.
                let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
                assert!(
                    ci.lines().any(|l| l.trim() == command),
                    ".ci/run runs `{command}`"
                );
            }
            [.., "cargo", "bench", "--bench", name] => {
                // Running a bench is the bench's job; the command must find its target.
                let check = format!("cargo bench --bench {name} --no-run");
                // The first bench build compiles the root package in the bench profile.
                let (status, out) = run_to_end(root, &check, FIRST_BUILD);
                assert!(status.success(), "{command}: `{check}` fails\n{out}");
            }
            ["cargo", "install", "cargo-fuzz", "&&", "cd", "fuzz", "&&", ..]
                if words[after_and..].ends_with(&["cargo", "fuzz", "run", "parse"]) =>
            {
                // Fuzzing needs the network (cargo install) and minutes; the targets must exist.
                for target in ["parse", "expr"] {
                    let file = root.join(format!("fuzz/fuzz_targets/{target}.rs"));
                    assert!(file.is_file(), "{command}: no {}", file.display());
                }
            }
            _ => panic!("the README shows `{command}`, which this test does not check: add it"),
        }
        timeout = STEP;
    }
}

/// `cargo run --release -- demo`: prints the URL, serves the composed page, exits 0 on Ctrl-C.
async fn demo(root: &Path, command: &str, timeout: Duration) {
    let mut child = Spawned::new(root, command);
    let url = child.wait_for_line(timeout, |line| {
        line.trim()
            .strip_prefix("open")
            .map(|u| u.trim().to_owned())
    });
    let page = get(&url).await;
    assert!(
        page.contains("Trailhead 2 Waterproof Hiking Jacket"),
        "{page}"
    );
    assert!(!page.contains("esi:"), "every ESI tag is composed: {page}");
    child.interrupt();
    let status = child.wait(STEP);
    assert!(status.success(), "{command} exits 0 on Ctrl-C: {status:?}");
}

/// `curl -X POST <demo>/_esi/purge?key=K`, run as written against the demo (started for it on
/// its default address, which the URL must name): the demo's fragments carry the key, so the
/// answer counts the cached entries it dropped, and the page composes again after it.
async fn purge_demo(root: &Path, command: &str, url: &str, timeout: Duration) {
    let mut demo = Spawned::new(root, "cargo run --release -- demo");
    let page_url = demo.wait_for_line(timeout, |line| {
        line.trim()
            .strip_prefix("open")
            .map(|u| u.trim().to_owned())
    });
    assert!(
        url.starts_with(page_url.trim_end_matches('/')),
        "{command}: the demo serves {page_url}"
    );
    assert!(
        get(&page_url).await.contains("Trailhead 2"),
        "page warms the cache"
    );
    let (status, out) = run_to_end(root, command, STEP);
    assert!(status.success(), "{command}: {status:?}\n{out}");
    let answer = out
        .lines()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("{command}: no JSON answer\n{out}"));
    let answer: serde_json::Value = serde_json::from_str(answer).expect("purge JSON");
    assert_eq!(answer["purged"], true, "{answer}");
    assert!(
        answer["entries"].as_u64().is_some_and(|n| n > 0),
        "{command}: the demo's fragments carry the key: {answer}"
    );
    assert!(
        get(&page_url).await.contains("Trailhead 2"),
        "composed again"
    );
    demo.interrupt();
    let status = demo.wait(STEP);
    assert!(status.success(), "the demo exits 0 on Ctrl-C: {status:?}");
}

/// `cargo run --release -- lint ...`: exit status 1, and every output line the README shows.
fn lint(root: &Path, command: &str, shown: &[String], timeout: Duration) {
    let (status, out) = run_to_end(root, command, timeout);
    assert_eq!(status.code(), Some(1), "{command}: errors give 1\n{out}");
    for line in shown.iter().filter(|l| l.as_str() != "...") {
        assert!(
            out.lines().any(|o| o == line),
            "{command} prints `{line}`\n{out}"
        );
    }
}

/// The production build: it builds, and its binary has no demo (exit status 2, saying so).
fn production_build(root: &Path, command: &str, timeout: Duration) {
    let (status, out) = run_to_end(root, command, timeout);
    assert!(status.success(), "{command}: {status:?}\n{out}");
    let (status, out) = run_to_end(root, "target/release/esi-proxy demo", STEP);
    assert_eq!(
        status.code(),
        Some(2),
        "a build without the demo refuses it\n{out}"
    );
    assert!(out.contains("no demo"), "{out}");
}

/// A `serve` line: an origin on the README's origin address, the proxy on its listen address,
/// and one page composed through it.
async fn serve(root: &Path, command: &str, timeout: Duration) {
    let words: Vec<&str> = command.split_whitespace().collect();
    let flag = |name: &str| {
        let at = words.iter().position(|w| *w == name)?;
        words.get(at + 1).map(|v| (*v).to_owned())
    };
    let file = flag("--config").map(|f| {
        esi_proxy::config::Config::load(&root.join(f)).expect("the README's config loads")
    });
    let listen =
        flag("--listen").unwrap_or_else(|| file.as_ref().expect("a config").server.listen.clone());
    let origin =
        flag("--origin").unwrap_or_else(|| file.as_ref().expect("a config").server.origin.clone());
    let origin_addr = origin.strip_prefix("http://").expect("an http origin");
    let origin = start_origin(origin_addr).await;

    let mut child = Spawned::new(root, command);
    child.wait_for_line(timeout, |line| {
        line.contains("esi-proxy listening").then_some(())
    });
    let page = get(&format!("http://{listen}/")).await;
    assert_eq!(page, COMPOSED, "{command}");
    child.interrupt();
    let status = child.wait(STEP);
    origin.abort();
    let _ = origin.await; // the listener is closed once the task is gone
    assert!(status.success(), "{command} exits 0 on Ctrl-C: {status:?}");
}

/// `redis-server --port P ...`: started and kept running for the `serve --redis` lines after it,
/// once it answers PING on its port.
fn redis_server(root: &Path, command: &str, port: &str) -> Spawned {
    use std::io::Write as _;

    let port: u16 = port.parse().expect("the README's Redis port is a number");
    let server = Spawned::new(root, command);
    let deadline = Instant::now() + STEP;
    loop {
        let pong = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(1)))?;
            stream.write_all(b"PING\r\n")?;
            let mut reply = [0; 7];
            stream.read_exact(&mut reply)?;
            Ok(reply)
        });
        if pong.is_ok_and(|reply| &reply == b"+PONG\r\n") {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "{command}: no PONG on port {port} within {STEP:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A hyper origin on exactly `addr` (the README names the port): the layout at `/`, its
/// fragment at `/fragment`.
async fn start_origin(addr: &str) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("the README's origin address {addr} must be free: {e}"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                let response = if req.uri().path() == "/" {
                    hyper::Response::builder()
                        .header("content-type", "text/html")
                        .header("surrogate-control", "content=\"ESI/1.0\"")
                        .body(Full::new(Bytes::from_static(LAYOUT.as_bytes())))
                } else {
                    hyper::Response::builder()
                        .header("content-type", "text/html")
                        .body(Full::new(Bytes::from_static(b"composed from a fragment")))
                };
                Ok::<_, Infallible>(response.expect("valid response"))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    })
}

async fn get(url: &str) -> String {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    response.text().await.expect("a text body")
}

// === running commands ===

/// A README command started with `bash -c` in its own process group (so Ctrl-C and cleanup reach
/// cargo and the binary alike; `bash` execs a lone command, as a terminal would run it); killed with the group when dropped, even after a failed assert.
struct Spawned {
    child: Child,
    command: String,
    output: mpsc::Receiver<String>,
}

impl Spawned {
    fn new(root: &Path, command: &str) -> Self {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(command)
            .current_dir(root)
            .env("PATH", path_with_cargo())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("bash -c {command}: {e}"));
        // stdout (the demo's URL, lint's findings) and stderr (cargo, the server's log) as one
        // stream of lines, in the order each pipe delivers them.
        let (tx, output) = mpsc::channel();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        forward_lines(out, tx.clone());
        forward_lines(err, tx);
        Self {
            child,
            command: command.to_owned(),
            output,
        }
    }

    /// Reads output until `pick` accepts a line; panics with what was printed on timeout or exit.
    fn wait_for_line<T>(&mut self, timeout: Duration, pick: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = pick(&line) {
                        return found;
                    }
                    seen.push(line);
                }
                Err(e) => panic!(
                    "{}: no expected line ({e:?}); stdout: {seen:#?}",
                    self.command
                ),
            }
        }
    }

    /// Ctrl-C, as a terminal sends it: SIGINT to the whole process group.
    fn interrupt(&self) {
        signal_group(self.child.id(), "INT");
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.command
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal_group(self.child.id(), "KILL");
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let rest: Vec<String> = self.output.try_iter().collect();
            eprintln!("{} output:\n{}", self.command, rest.join("\n"));
        }
    }
}

fn signal_group(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pid}")])
        .status();
}

/// Runs a command to its end; stdout and stderr together.
fn run_to_end(root: &Path, command: &str, timeout: Duration) -> (ExitStatus, String) {
    let mut child = Spawned::new(root, command);
    let status = child.wait(timeout);
    // The pipes close with the process; their threads hang up the channel when drained.
    let out: Vec<String> = child.output.iter().collect();
    (status, out.join("\n"))
}

/// Sends each line read from `pipe` to `tx` until the pipe closes.
fn forward_lines(pipe: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// `PATH` with the directory of the cargo running this test first, so `bash` finds the same one.
fn path_with_cargo() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    match std::env::var_os("CARGO").map(PathBuf::from) {
        Some(cargo) => match cargo.parent() {
            Some(dir) => format!("{}:{path}", dir.display()),
            None => path,
        },
        None => path,
    }
}

/// Every `toml` block of the README is config an operator can paste: it parses under the
/// schema (unknown fields and wrong types are refused), and where it names no file, it validates.
#[test]
fn every_toml_block_the_readme_shows_is_valid_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks: Vec<Block> = code_blocks(&readme)
        .into_iter()
        .filter(|b| b.lang == "toml")
        .collect();
    assert!(blocks.len() >= 3, "the README's config examples");
    for block in blocks {
        let text = block.lines.join("\n");
        let config = esi_proxy::config::Config::parse(&text, Path::new("README.md"))
            .unwrap_or_else(|e| panic!("README config block does not parse: {e}\n{text}"));
        if config.esi.primary_error_pages.is_empty() && config.fetch.ca_certs.is_empty() {
            config
                .validate()
                .unwrap_or_else(|e| panic!("README config block is invalid: {e}\n{text}"));
        }
    }
}

// === the README's code blocks ===

struct Block {
    lang: String,
    lines: Vec<String>,
}

/// Fenced code blocks in order; `sh` lines without blanks and `#` comment lines.
fn code_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for line in markdown.lines() {
        if let Some(fence) = line.strip_prefix("```") {
            match open.take() {
                Some(block) => blocks.push(block),
                None => {
                    open = Some(Block {
                        lang: fence.trim().to_owned(),
                        lines: Vec::new(),
                    })
                }
            }
        } else if let Some(block) = open.as_mut() {
            let comment = block.lang == "sh" && line.starts_with('#');
            if !line.trim().is_empty() && !comment {
                block.lines.push(line.to_owned());
            }
        }
    }
    blocks
}
