//! Per-sender rate limits (`limits.sender_rate`, `limits.sender_burst`): a token bucket
//! per sender, in a map of bounded size, sharded so that senders do not queue on one lock.
//! One table for every way in: HTTP sends (`http/send.rs`, 429) and sends on a WebSocket
//! (`hub/conn.rs`, an error frame), so a sender cannot double its rate by switching.
//!
//! A bucket that has filled up again says nothing a new bucket would not, so it is
//! dropped when room is needed; only senders that sent in the last `burst / rate`
//! seconds hold an entry. When every entry is in use (more than [`MAX_SENDERS`] senders
//! active at once), an arbitrary one is dropped: that sender starts again with a full
//! bucket. Memory stays bounded; the limit stays exact for any smaller number of senders.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Senders tracked at once, at most (about 100 bytes each).
pub const MAX_SENDERS: usize = 65_536;

const SHARDS: usize = 16;

pub struct Senders {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    rate: f64,
    burst: f64,
    /// As configured, for the refusal's words.
    limits: (u32, u32),
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<Box<str>, Bucket>,
    /// When the shard was last swept for full buckets: one sweep per refill time at
    /// most, so that a shard full of active senders does not sweep on every send.
    swept: Option<Instant>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Senders {
    pub fn new(rate: u32, burst: u32) -> Senders {
        Senders {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            limits: (rate, burst),
        }
    }

    /// Take one message's token for `sender`; when there is none, how long until there is.
    pub fn take(&self, sender: &str) -> Result<(), Duration> {
        self.take_at(sender, Instant::now())
    }

    /// What to tell `sender`, refused with `wait` to go: the reason, and whole seconds to
    /// wait (at least 1).
    pub fn refusal(&self, sender: &str, wait: Duration) -> (String, u64) {
        let retry_after = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        let (rate, burst) = self.limits;
        (
            format!(
                "sender {sender:?} is over its rate limit ({rate} messages a second, bursts of {burst}): nothing was stored; retry after {retry_after} s"
            ),
            retry_after,
        )
    }

    fn take_at(&self, sender: &str, now: Instant) -> Result<(), Duration> {
        let i = (self.hasher.hash_one(sender) as usize) % SHARDS;
        let mut shard = self.shards[i].lock();
        if let Some(b) = shard.buckets.get_mut(sender) {
            return self.take_from(b, now);
        }
        if shard.buckets.len() >= MAX_SENDERS / SHARDS {
            self.make_room(&mut shard, now);
        }
        shard.buckets.insert(sender.into(), Bucket { tokens: self.burst - 1.0, at: now });
        Ok(())
    }

    fn take_from(&self, b: &mut Bucket, now: Instant) -> Result<(), Duration> {
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
    }

    fn make_room(&self, shard: &mut Shard, now: Instant) {
        let refill = Duration::from_secs_f64(self.burst / self.rate);
        if shard.swept.is_none_or(|t| now.saturating_duration_since(t) >= refill) {
            shard.swept = Some(now);
            let (rate, burst) = (self.rate, self.burst);
            shard
                .buckets
                .retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
        }
        if shard.buckets.len() >= MAX_SENDERS / SHARDS
            && let Some(k) = shard.buckets.keys().next().cloned()
        {
            shard.buckets.remove(&k);
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().buckets.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let s = Senders::new(10, 3);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let got: Vec<Result<(), Duration>> =
            [0, 0, 0, 0, 50, 100, 100].into_iter().map(|ms| s.take_at("flood", at(ms))).collect();
        assert_eq!(
            got,
            vec![
                Ok(()),
                Ok(()),
                Ok(()),
                Err(Duration::from_millis(100)),
                Err(Duration::from_millis(50)),
                Ok(()),
                Err(Duration::from_millis(100)),
            ]
        );
        assert_eq!(s.take_at("quiet", at(100)), Ok(()));
    }

    #[test]
    fn memory_is_bounded_however_many_senders() {
        let s = Senders::new(1, 1000);
        let t0 = Instant::now();
        for i in 0..MAX_SENDERS * 3 {
            assert_eq!(s.take_at(&format!("u{i}"), t0), Ok(()));
        }
        assert!(s.tracked() <= MAX_SENDERS, "{} senders tracked", s.tracked());
        // Buckets that have filled up again are dropped first.
        let later = t0 + Duration::from_secs(2000);
        for i in 0..SHARDS * 4 {
            s.take_at(&format!("new{i}"), later).unwrap();
        }
        assert!(s.tracked() < MAX_SENDERS / 2, "{} senders tracked", s.tracked());
    }
}
