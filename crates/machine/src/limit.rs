//! Rate limits as plain values: the caller passes the time in, so they stay pure.
//!
//! - [`Window`]: at most `max` events per period (a fixed window).
//! - [`Every`]: one event per interval, counting those held back in between (for log lines).
//! - [`PerKey`]: one limit per key (per peer), with a bounded number of keys.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// At most `max` events per `period`, counted in fixed windows that start with their first
/// event.
#[derive(Debug, Clone)]
pub struct Window {
    max: u32,
    period: Duration,
    current: Option<(Instant, u32)>,
}

impl Window {
    /// At most `max` events per `period`.
    pub fn new(max: u32, period: Duration) -> Self {
        Self {
            max,
            period,
            current: None,
        }
    }

    /// Whether an event at `now` is within the limit (and counts it if so).
    pub fn admit(&mut self, now: Instant) -> bool {
        match &mut self.current {
            Some((start, count)) if now.saturating_duration_since(*start) < self.period => {
                if *count >= self.max {
                    return false;
                }
                *count += 1;
                true
            }
            _ => {
                self.current = Some((now, 1));
                self.max > 0
            }
        }
    }

    /// Whether the window has ended at `now` (a key whose window ended can be forgotten).
    fn ended(&self, now: Instant) -> bool {
        self.current
            .is_none_or(|(start, _)| now.saturating_duration_since(start) >= self.period)
    }
}

/// One event per `interval`; the events in between are held back and counted.
#[derive(Debug, Clone)]
pub struct Every {
    interval: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Every {
    /// One event per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            held: 0,
        }
    }

    /// `Some(n)` if an event at `now` may go ahead, with the `n` held back since the last one;
    /// `None` (and it is counted) if it is held back.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.interval)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// A [`Window`] per key, for at most `max_keys` keys: when a new key finds the map full, keys
/// whose window has ended are forgotten, and if none has, the new key is refused (so a flood of
/// new identities cannot push out the limits of the ones already counted).
#[derive(Debug, Clone)]
pub struct PerKey<K> {
    template: Window,
    max_keys: usize,
    windows: HashMap<K, Window>,
}

impl<K: Hash + Eq + Clone> PerKey<K> {
    /// At most `max` events per `period` for each of at most `max_keys` keys.
    pub fn new(max: u32, period: Duration, max_keys: usize) -> Self {
        Self {
            template: Window::new(max, period),
            max_keys,
            windows: HashMap::new(),
        }
    }

    /// Whether an event of `key` at `now` is within its limit (and counts it if so).
    pub fn admit(&mut self, key: &K, now: Instant) -> Admit {
        if let Some(window) = self.windows.get_mut(key) {
            return if window.admit(now) {
                Admit::Yes
            } else {
                Admit::OverLimit
            };
        }
        if self.windows.len() >= self.max_keys {
            self.windows.retain(|_, w| !w.ended(now));
            if self.windows.len() >= self.max_keys {
                return Admit::TooManyKeys;
            }
        }
        let mut window = self.template.clone();
        let admitted = window.admit(now);
        self.windows.insert(key.clone(), window);
        if admitted {
            Admit::Yes
        } else {
            Admit::OverLimit
        }
    }
}

/// What [`PerKey::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Within the key's limit.
    Yes,
    /// Past the key's limit.
    OverLimit,
    /// A new key, and as many keys are counted as may be (none of their windows has ended).
    TooManyKeys,
}

impl Admit {
    /// Whether the event may go ahead.
    pub fn is_yes(self) -> bool {
        self == Admit::Yes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_max_per_period() {
        let t0 = Instant::now();
        let mut w = Window::new(3, Duration::from_secs(60));
        assert!((0..3).all(|i| w.admit(t0 + Duration::from_secs(i))));
        assert!(!w.admit(t0 + Duration::from_secs(59)));
        assert!(w.admit(t0 + Duration::from_secs(60)));
        assert!(!Window::new(0, Duration::from_secs(1)).admit(t0));
    }

    #[test]
    fn every_counts_what_it_held_back() {
        let t0 = Instant::now();
        let mut e = Every::new(Duration::from_secs(10));
        assert_eq!(e.admit(t0), Some(0));
        assert_eq!(e.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(e.admit(t0 + Duration::from_secs(9)), None);
        assert_eq!(e.admit(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(e.admit(t0 + Duration::from_secs(30)), Some(0));
    }

    #[test]
    fn per_key_limits_each_key_and_bounds_the_keys() {
        let t0 = Instant::now();
        let mut p = PerKey::new(2, Duration::from_secs(60), 2);
        assert!(p.admit(&"a", t0).is_yes() && p.admit(&"a", t0).is_yes());
        assert_eq!(p.admit(&"a", t0), Admit::OverLimit, "a's third");
        assert!(p.admit(&"b", t0).is_yes(), "b has its own limit");
        assert_eq!(
            p.admit(&"c", t0),
            Admit::TooManyKeys,
            "no room for a third key while both windows run"
        );
        let later = t0 + Duration::from_secs(60);
        assert!(p.admit(&"c", later).is_yes(), "ended windows make room");
        assert!(p.admit(&"a", later).is_yes(), "a's window started again");
    }
}
