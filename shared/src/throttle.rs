//! Bounds on log lines a peer can trigger: a [`Throttle`] lets a few a minute
//! through and counts the rest.

use std::time::{Duration, Instant};

/// Allows at most `per_minute` events a minute; counts the rest.
#[derive(Debug)]
pub struct Throttle {
    per_minute: u32,
    window_start: Instant,
    in_window: u32,
    /// Events refused since the last one allowed.
    pub suppressed: u64,
}

impl Throttle {
    /// A throttle allowing `per_minute` events a minute.
    pub fn new(per_minute: u32) -> Throttle {
        Throttle {
            per_minute,
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether this event may be logged.
    pub fn allow(&mut self) -> bool {
        if self.window_start.elapsed() >= Duration::from_secs(60) {
            self.window_start = Instant::now();
            self.in_window = 0;
        }
        if self.in_window < self.per_minute {
            self.in_window += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn allows_the_first_n_a_minute() {
        let mut t = super::Throttle::new(3);
        assert_eq!((0..10).filter(|_| t.allow()).count(), 3);
        assert_eq!(t.suppressed, 7);
    }
}
