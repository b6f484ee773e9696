//! Other nodes' purges, applied here: a task subscribed to the purge channel drops the matching
//! in-process entries, and on every (re)subscription compares the purge generation with the
//! last one it heard of: a node that missed an announcement drops its whole in-process cache.

use std::sync::{PoisonError, Weak};
use std::time::Duration;

use futures::StreamExt;

use super::client::Mode;
use super::purge::{announcement, Announcement};
use super::{FragmentCache, LayoutCache, SharedTier};

/// First wait before subscribing again after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two subscription attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Subscribes, applies announcements, and subscribes again when the connection is lost, until
/// the tier or the caches are gone.
pub(super) async fn run(
    tier: Weak<SharedTier>,
    fragments: Weak<FragmentCache>,
    layouts: Weak<LayoutCache>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(strong) = tier.upgrade() else { return };
        let (client, channel, connect_timeout) = (
            strong.redis.client.clone(),
            strong.keys.channel(),
            strong.redis.connect_timeout,
        );
        drop(strong);
        let subscribed = tokio::time::timeout(connect_timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        if let Ok(Ok(pubsub)) = subscribed {
            backoff = FIRST_BACKOFF;
            let mut messages = pubsub.into_on_message();
            // Subscribed first, then the generation read: a purge after the read arrives as a
            // message, one before it shows in the generation.
            match tier.upgrade() {
                Some(strong) => {
                    if !strong.catch_up(&fragments, &layouts).await {
                        // Not known whether a purge was missed: try again.
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                    strong
                        .listening
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                None => return,
            }
            while let Some(message) = messages.next().await {
                let Some(strong) = tier.upgrade() else { return };
                match announcement(message.get_payload_bytes()) {
                    Some(a) => strong.apply(&a, &fragments, &layouts).await,
                    None => tracing::warn!(
                        payload = %String::from_utf8_lossy(message.get_payload_bytes()),
                        "purge announcement not understood"
                    ),
                }
            }
            match tier.upgrade() {
                Some(strong) => strong
                    .listening
                    .store(false, std::sync::atomic::Ordering::Relaxed),
                None => return,
            }
            tracing::warn!("shared cache purge channel lost; subscribing again");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

// === impl SharedTier ===

impl SharedTier {
    /// Compares the purge generation with the last one heard of and drops the in-process
    /// caches whole when they differ (a purge was announced while this node was not
    /// listening, or Redis restarted empty). The first subscription drops them too, unless
    /// this is the start (nothing cached yet). Returns whether the generation was read.
    async fn catch_up(&self, fragments: &Weak<FragmentCache>, layouts: &Weak<LayoutCache>) -> bool {
        let get = redis::cmd("GET").arg(self.keys.generation()).clone();
        let Ok(now) = self.redis.query::<Option<u64>>(Mode::Admin, &get).await else {
            return false;
        };
        let now = now.unwrap_or(0);
        let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        let missed = match *heard {
            Some(last) => last != now,
            None => fragments.upgrade().is_some_and(|f| f.entry_count() > 0),
        };
        *heard = Some(now);
        drop(heard);
        if missed {
            tracing::warn!(
                generation = now,
                "purges may have been missed while disconnected: in-process caches dropped"
            );
            self.stats.flush();
            if let Some(f) = fragments.upgrade() {
                f.purge_prefix("");
            }
            if let Some(l) = layouts.upgrade() {
                l.purge_prefix("");
            }
        }
        true
    }

    /// Applies one announcement to the in-process caches.
    async fn apply(
        &self,
        a: &Announcement,
        fragments: &Weak<FragmentCache>,
        layouts: &Weak<LayoutCache>,
    ) {
        if let Some(f) = fragments.upgrade() {
            f.purge(&a.target, a.mode).await;
        }
        if let Some(l) = layouts.upgrade() {
            l.purge(&a.target, a.mode).await;
        }
        let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        *heard = Some(heard.map_or(a.generation, |last| last.max(a.generation)));
        drop(heard);
        self.stats.purge_received();
        tracing::debug!(
            generation = a.generation,
            target = ?a.target,
            mode = a.mode.label(),
            "purge announcement applied"
        );
    }
}
