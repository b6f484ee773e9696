//! The soak's figures as Markdown: traffic, page times, the RSS curve, descriptors and tasks.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::faults::Chores;
use super::probe::Sample;
use super::traffic::{LogSummary, Tally};

/// Points of the RSS curve shown.
const CURVE_POINTS: usize = 12;

pub struct Report<'a> {
    pub secs: u64,
    pub clients: usize,
    /// Fragment bodies every page was checked for.
    pub expected_bodies: usize,
    pub tally: &'a Tally,
    pub samples: &'a [Sample],
    /// Index of the first sample after warm-up.
    pub measured_from: usize,
    pub warm_rss: u64,
    pub baseline: Sample,
    pub after: Sample,
    pub chores: Chores,
    pub log: &'a LogSummary,
    pub faulted: &'a BTreeSet<&'static str>,
}

// === impl Report ===

impl Report<'_> {
    pub fn render(&self) -> String {
        let t = self.tally;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# Soak\n");
        let _ = writeln!(
            out,
            "{} s, {} clients; faulted services: {}",
            self.secs,
            self.clients,
            self.faulted.iter().copied().collect::<Vec<_>>().join(", ")
        );
        let _ = writeln!(
            out,
            "- requests answered as expected: {} ({} whole pages, each checked for {} fragment \
             bodies), unexpected: {}",
            t.answered(),
            t.pages(),
            self.expected_bodies,
            t.failed()
        );
        let _ = writeln!(
            out,
            "- page time: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            t.page_ms(0.5),
            t.page_ms(0.99),
            t.page_ms(1.0)
        );
        let _ = writeln!(
            out,
            "- chores: {} purges, {} reloads; proxy log: {} lines, {} warnings, {} panics",
            self.chores.purges,
            self.chores.reloads,
            self.log.lines,
            self.log.warnings,
            self.log.panics
        );
        let after_warm = &self.samples[self.measured_from.min(self.samples.len())..];
        let peak = after_warm.iter().map(|s| s.rss_kb).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "- RSS: warm-up peak {} kB, after warm-up peak {} kB ({:+.1} %)",
            self.warm_rss,
            peak,
            (peak as f64 / self.warm_rss.max(1) as f64 - 1.0) * 100.0
        );
        let _ = writeln!(
            out,
            "- quiet baseline: {} fds, {} tasks, {} kB; {} s after the load: {} fds, {} tasks, \
             {} kB",
            self.baseline.fds,
            self.baseline.tasks,
            self.baseline.rss_kb,
            self.after.at_s,
            self.after.fds,
            self.after.tasks,
            self.after.rss_kb
        );
        let _ = writeln!(out, "\n| s | RSS kB | fds | tasks |\n|---|---|---|---|");
        let step = (self.samples.len() / CURVE_POINTS).max(1);
        for s in self.samples.iter().step_by(step) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                s.at_s, s.rss_kb, s.fds, s.tasks
            );
        }
        out
    }
}
