//! Watches the proxy process from outside: resident memory and open file descriptors from
//! `/proc`, tokio tasks from its metrics, and its health.

use std::time::{Duration, Instant};

/// One look at the process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Seconds since the load started.
    pub at_s: u64,
    pub rss_kb: u64,
    pub fds: u64,
    pub tasks: u64,
}

/// What counts as back at `baseline`: within a quarter and 16. A leak per page, per include
/// or per connection leaves hundreds or thousands behind after this load; a few timers of
/// the last requests may outlive it briefly.
pub fn slack(baseline: u64) -> u64 {
    baseline + baseline / 4 + 16
}

/// Looks at one process.
pub struct Probe {
    pid: u32,
    base: String,
    token: String,
    client: reqwest::Client,
}

// === impl Probe ===

impl Probe {
    pub fn new(pid: u32, base: &str, token: &str) -> Probe {
        Probe {
            pid,
            base: base.to_owned(),
            token: token.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// A sample a second until `deadline`.
    pub async fn sample_until(&self, deadline: Instant, started: Instant) -> Vec<Sample> {
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut s = self.quiet().await;
            s.at_s = started.elapsed().as_secs();
            samples.push(s);
        }
        samples
    }

    /// Samples every 500 ms until descriptors and tasks are back within `slack` of `baseline`
    /// or `limit` passes; returns the last sample, its `at_s` the seconds it took.
    pub async fn settle(&self, baseline: Sample, limit: Duration) -> Sample {
        let started = Instant::now();
        loop {
            let mut s = self.quiet().await;
            s.at_s = started.elapsed().as_secs();
            if (s.fds <= slack(baseline.fds) && s.tasks <= slack(baseline.tasks))
                || started.elapsed() >= limit
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// One sample now.
    pub async fn quiet(&self) -> Sample {
        Sample {
            at_s: 0,
            rss_kb: self.rss_kb(),
            fds: self.fds(),
            tasks: self.tasks().await,
        }
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("the proxy is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    fn fds(&self) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("the proxy's fd table")
            .count() as u64
    }

    async fn tasks(&self) -> u64 {
        let text = self.admin("/_esi/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix("esi_proxy_runtime_tasks "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("esi_proxy_runtime_tasks in the metrics:\n{text}"))
    }

    /// `/_esi/health?detail`.
    pub async fn health(&self) -> String {
        self.admin("/_esi/health?detail").await
    }

    async fn admin(&self, path: &str) -> String {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.text().await.expect("admin body")
    }
}
