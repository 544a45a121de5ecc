//! The WeChat channel's clock, in unix seconds. WeChat's rules run for minutes to days
//! (a click's window 1 minute, a message's 48 hours, a media id 3 days): tests move this
//! clock instead of waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// The system clock plus an offset that only tests change. Clones share the offset.
#[derive(Clone, Default)]
pub struct Clock(Arc<AtomicI64>);

impl Clock {
    /// Unix seconds now.
    pub fn now(&self) -> i64 {
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        system.saturating_add(self.0.load(Ordering::Relaxed))
    }

    /// Move the clock `secs` ahead (for tests).
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock(+{}s)", self.0.load(Ordering::Relaxed))
    }
}
