//! A `redis-server` of a test's own: on a free loopback port (no fixed port, no system
//! service), with persistence off, spoken to over raw RESP, and killed by PID when the guard is
//! dropped, so a failed assertion never leaves a server behind.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{closed_port, MUST};

/// A running `redis-server`, killed and reaped when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts one on a free loopback port and waits until it answers PING.
    pub async fn start() -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: closed_port(),
        };
        server.restart().await;
        server
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty, and waits until it answers PING.
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--enable-debug-command", "local"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian's redis-server package; .ci/run installs it)");
        self.child = Some(child);
        tokio::time::timeout(MUST, async {
            loop {
                if let Ok(reply) = self.try_command(&["PING"]).await {
                    if reply == "PONG" {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("redis-server on port {} did not answer PING", self.port));
    }

    /// Sends one command and returns its reply as text: a status, an integer, a bulk string
    /// (`(nil)` for none) or an error (`ERR ...`), or the count of an array's items.
    pub async fn command(&self, args: &[&str]) -> String {
        tokio::time::timeout(MUST, self.try_command(args))
            .await
            .expect("redis answers")
            .expect("redis command")
    }

    async fn try_command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).await?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let line = line.trim_end().to_owned();
        let (kind, rest) = line.split_at(1.min(line.len()));
        Ok(match kind {
            "$" if rest == "-1" => "(nil)".into(),
            "$" => {
                let len: usize = rest.parse().expect("bulk length");
                let mut bulk = vec![0; len + 2];
                reader.read_exact(&mut bulk).await?;
                bulk.truncate(len);
                String::from_utf8_lossy(&bulk).into_owned()
            }
            _ => rest.to_owned(),
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
