//! Purges in the shared tier: by URL or prefix (SCAN over the `u:` names) or by surrogate key
//! (the key's set of value names), hard (names removed) or soft (fragment values rewritten as
//! stale from now, layouts removed), then announced under a new generation; and the format of
//! that announcement, which `listen` reads back. Never touches the in-process caches.

use std::time::Duration;

use super::client::Mode;
use super::codec::Value;
use super::keys::{held, Held, Kind};
use super::{millis, unix_now, SharedError, SharedPurge, SharedTier, MAX_PURGE_STEPS};
use crate::cache::store::Urls;
use crate::cache::tags::{PurgeMode, PurgeTarget};

/// Adds `ARGV[1]` to the set `KEYS[1]` and makes the set live at least `ARGV[2]` ms (a set
/// with no expiry gets one), so it goes with the longest-lived value it names.
pub(super) const TAG_SCRIPT: &str = "redis.call('SADD', KEYS[1], ARGV[1]) \
    local t = redis.call('PTTL', KEYS[1]) \
    if t < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 1";

/// Most value names one surrogate key's set gives a purge.
const MAX_TAGGED: usize = 1_000_000;

/// What one announcement asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Announcement {
    pub(super) generation: u64,
    pub(super) target: PurgeTarget,
    pub(super) mode: PurgeMode,
}

// === impl SharedTier ===

impl SharedTier {
    /// Drops (or, soft, makes stale) what `target` names in Redis and announces the purge to
    /// every node under a new generation. Names that would be gone by themselves are left out
    /// of the counts.
    ///
    /// # Errors
    /// [`SharedError`] when Redis did not answer; the other nodes may then keep their copies.
    pub async fn purge(
        &self,
        target: &PurgeTarget,
        mode: PurgeMode,
    ) -> Result<SharedPurge, SharedError> {
        let target = match target {
            PurgeTarget::Url(url) => {
                let Urls::Equal(normal) = Urls::equal(url) else {
                    unreachable!("Urls::equal is Equal")
                };
                PurgeTarget::Url(normal.to_string())
            }
            other => other.clone(),
        };
        let removed = match &target {
            PurgeTarget::Url(url) => self.purge_pattern(&Urls::equal(url), mode).await?,
            PurgeTarget::Prefix(prefix) => self.purge_pattern(&Urls::prefix(prefix), mode).await?,
            PurgeTarget::Keys(tags) => {
                let mut n = 0;
                for tag in tags {
                    n += self.purge_tag(tag, mode).await?;
                }
                n
            }
        };
        let incr = redis::cmd("INCR").arg(self.keys.generation()).clone();
        let generation: u64 = self.redis.query(Mode::Admin, &incr).await?;
        let publish = redis::cmd("PUBLISH")
            .arg(self.keys.channel())
            .arg(announce(generation, &target, mode))
            .clone();
        let _: u64 = self.redis.query(Mode::Admin, &publish).await?;
        self.stats.purge_published();
        Ok(SharedPurge {
            removed,
            generation,
        })
    }

    /// Every stored name of `urls`, purged as `mode` says.
    async fn purge_pattern(&self, urls: &Urls, mode: PurgeMode) -> Result<u64, SharedError> {
        let pattern = self.keys.pattern(urls);
        let mut cursor: u64 = 0;
        let mut purged = 0;
        for _ in 0..MAX_PURGE_STEPS {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .clone();
            let (next, found): (u64, Vec<Vec<u8>>) = self.redis.query(Mode::Admin, &scan).await?;
            purged += self.purge_names(found, mode, true).await?;
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(purged)
    }

    /// The values `tag` names, purged as `mode` says; a hard purge drops the set too.
    async fn purge_tag(&self, tag: &str, mode: PurgeMode) -> Result<u64, SharedError> {
        let set = self.keys.tag(tag);
        let mut cursor: u64 = 0;
        let mut names = Vec::new();
        loop {
            let scan = redis::cmd("SSCAN")
                .arg(&set)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .clone();
            let (next, found): (u64, Vec<Vec<u8>>) = self.redis.query(Mode::Admin, &scan).await?;
            names.extend(found);
            cursor = next;
            if cursor == 0 || names.len() >= MAX_TAGGED {
                break;
            }
        }
        let purged = self.purge_names(names, mode, false).await?;
        if mode == PurgeMode::Hard {
            let unlink = redis::cmd("UNLINK").arg(&set).clone();
            let _: u64 = self.redis.query(Mode::Admin, &unlink).await?;
        }
        Ok(purged)
    }

    /// Purges the stored `names`: hard, every one goes (vary specs only when `with_vary`);
    /// soft, fragment values are rewritten stale from now and layout values go. Returns how
    /// many values there were.
    async fn purge_names(
        &self,
        names: Vec<Vec<u8>>,
        mode: PurgeMode,
        with_vary: bool,
    ) -> Result<u64, SharedError> {
        let mut unlink = Vec::new();
        let mut soften = Vec::new();
        for name in names {
            match (held(&name), mode) {
                (Some(Held::Vary), PurgeMode::Hard) if with_vary => unlink.push(name),
                (Some(Held::Vary) | None, _) => {}
                (Some(Held::Value(_)), PurgeMode::Hard)
                | (Some(Held::Value(Kind::Layout)), PurgeMode::Soft { .. }) => unlink.push(name),
                (Some(Held::Value(Kind::Fragment)), PurgeMode::Soft { .. }) => soften.push(name),
            }
        }
        let mut purged = 0;
        if !unlink.is_empty() {
            let cmd = redis::cmd("UNLINK").arg(&unlink).clone();
            purged += self.redis.query::<u64>(Mode::Admin, &cmd).await?;
        }
        if let (PurgeMode::Soft { grace }, false) = (mode, soften.is_empty()) {
            purged += self.soften(soften, grace).await?;
        }
        Ok(purged)
    }

    /// Rewrites the fragment values under `names` stale from now (see [`soften`]), each for
    /// what is left of its stale windows, never bringing back one that went meanwhile.
    async fn soften(&self, names: Vec<Vec<u8>>, grace: Duration) -> Result<u64, SharedError> {
        let get = redis::cmd("MGET").arg(&names).clone();
        let records: Vec<Option<Vec<u8>>> = self.redis.query(Mode::Admin, &get).await?;
        let now = millis(unix_now());
        let mut pipe = redis::pipe();
        let mut found = 0;
        for (name, record) in names.iter().zip(records) {
            let Some(record) = record else { continue };
            found += 1;
            match Value::decode(&record) {
                Ok(mut value) => {
                    if let Some(left) = soften(&mut value, now, grace) {
                        let ms = millis(left).max(1);
                        pipe.cmd("SET")
                            .arg(name)
                            .arg(value.encode(self.compress_min_bytes))
                            .arg("PX")
                            .arg(ms)
                            .arg("XX")
                            .ignore();
                    }
                }
                // Unreadable: nobody is served it anyway.
                Err(_) => {
                    pipe.cmd("UNLINK").arg(name).ignore();
                }
            }
        }
        self.redis.pipeline::<()>(Mode::Admin, &pipe).await?;
        Ok(found)
    }
}

// === helpers ===

/// Makes a stored value stale at `now_ms` (its TTL cut to its age), its stale-while-revalidate
/// window at least `grace`; returns how long it is then kept (its longer stale window), or
/// `None` when it was stale already and is left as it is.
pub(super) fn soften(value: &mut Value, now_ms: u64, grace: Duration) -> Option<Duration> {
    let age = Duration::from_millis(now_ms.saturating_sub(value.stored_at_ms));
    let [ttl, swr, sie] = value.times;
    if age >= ttl {
        return None;
    }
    let swr = swr.max(grace);
    value.times = [age, swr, sie];
    Some(swr.max(sie))
}

/// The announcement of a purge: `<generation> <kind>[:soft=<grace ms>] <target>`, the target a
/// URL, a prefix, or space-separated surrogate keys. Hard URL and prefix purges read as they
/// always did (`7 url http://a/f`).
pub(super) fn announce(generation: u64, target: &PurgeTarget, mode: PurgeMode) -> String {
    let soft = match mode {
        PurgeMode::Hard => String::new(),
        PurgeMode::Soft { grace } => format!(":soft={}", millis(grace)),
    };
    let what = match target {
        PurgeTarget::Url(url) => url.clone(),
        PurgeTarget::Prefix(prefix) => prefix.clone(),
        PurgeTarget::Keys(tags) => tags.join(" "),
    };
    format!("{generation} {}{soft} {what}", target.kind())
}

/// An announcement read back; `None` when it is not one [`announce`] writes.
pub(super) fn announcement(payload: &[u8]) -> Option<Announcement> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(3, ' ');
    let generation = parts.next()?.parse().ok()?;
    let word = parts.next()?;
    let (kind, mode) = match word.split_once(":soft=") {
        Some((kind, ms)) => (
            kind,
            PurgeMode::Soft {
                grace: Duration::from_millis(ms.parse().ok()?),
            },
        ),
        None => (word, PurgeMode::Hard),
    };
    let what = parts.next()?;
    let target = match kind {
        "url" => PurgeTarget::Url(what.to_owned()),
        "prefix" => PurgeTarget::Prefix(what.to_owned()),
        "key" => {
            let tags: Vec<String> = what
                .split(' ')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
            if tags.is_empty() {
                return None;
            }
            PurgeTarget::Keys(tags)
        }
        _ => return None,
    };
    Some(Announcement {
        generation,
        target,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_and_old_ones_still_read() {
        let soft = PurgeMode::Soft {
            grace: Duration::from_secs(10),
        };
        let cases = [
            (
                PurgeTarget::Url("http://a.test/f?x=1 2".into()),
                PurgeMode::Hard,
                "7 url http://a.test/f?x=1 2",
            ),
            (
                PurgeTarget::Prefix("http://a.test/".into()),
                soft,
                "7 prefix:soft=10000 http://a.test/",
            ),
            (
                PurgeTarget::Keys(vec!["product-4410".into(), "prices".into()]),
                PurgeMode::Hard,
                "7 key product-4410 prices",
            ),
            (
                PurgeTarget::Keys(vec!["a".into()]),
                soft,
                "7 key:soft=10000 a",
            ),
        ];
        for (target, mode, text) in cases {
            assert_eq!(announce(7, &target, mode), text);
            let read = announcement(text.as_bytes()).expect("reads back");
            assert_eq!((read.generation, read.target, read.mode), (7, target, mode));
        }
        for bad in [
            &b"x url http://a.test/"[..],
            b"9 purge k",
            b"9 url",
            b"9 key ",
            b"9 key:soft=x a",
            b"\xff url x",
        ] {
            assert_eq!(announcement(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn soft_purged_values_are_stale_now_for_their_window_or_the_grace() {
        let value = |stored_at_ms, times: [u64; 3]| Value {
            stored_at_ms,
            times: times.map(Duration::from_millis),
            status: 200,
            source: crate::cache::TtlSource::Default,
            names: Vec::new(),
            vary: Vec::new(),
            tags: Vec::new(),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::new(),
        };
        let grace = Duration::from_millis(10_000);
        // (stored at, [ttl, swr, sie], now, want times, want kept for)
        let cases = [
            (
                1000,
                [60_000, 0, 0],
                6000,
                Some(([5000, 10_000, 0], 10_000)),
            ),
            (
                1000,
                [60_000, 30_000, 0],
                6000,
                Some(([5000, 30_000, 0], 30_000)),
            ),
            (
                1000,
                [60_000, 0, 90_000],
                6000,
                Some(([5000, 10_000, 90_000], 90_000)),
            ),
            (1000, [4000, 0, 0], 6000, None),
        ];
        for (stored, times, now, want) in cases {
            let mut v = value(stored, times);
            let kept = soften(&mut v, now, grace);
            match want {
                Some((want_times, want_kept)) => {
                    assert_eq!(v.times, want_times.map(Duration::from_millis));
                    assert_eq!(kept, Some(Duration::from_millis(want_kept)));
                }
                None => {
                    assert_eq!(kept, None);
                    assert_eq!(v.times, times.map(Duration::from_millis), "left as it is");
                }
            }
        }
    }
}
