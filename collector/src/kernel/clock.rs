//! The injectable clock. `Ctx` holds one [`ClockHandle`]; capabilities ask it
//! for the time (session and approval timeouts, the login throttle), and
//! tests swap in their own clock instead of sleeping.

use std::sync::{Arc, Mutex};

/// Where the time comes from.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        common::time::now_ms()
    }
}

/// The clock in force, replaceable while running (tests).
pub struct ClockHandle(Mutex<Arc<dyn Clock>>);

impl Default for ClockHandle {
    fn default() -> Self {
        ClockHandle(Mutex::new(Arc::new(SystemClock)))
    }
}

impl std::fmt::Debug for ClockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockHandle")
    }
}

impl ClockHandle {
    pub fn now_ms(&self) -> i64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).now_ms()
    }

    /// Replaces the clock (tests).
    pub fn set(&self, clock: Arc<dyn Clock>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = clock;
    }
}
