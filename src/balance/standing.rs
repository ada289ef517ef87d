//! An endpoint's standing: what outlier detection knows of it, and since when it is in
//! rotation, for slow start. Written as calls end and connections come up; read by the
//! pick and by `endpoints()`.

use std::ops::{Deref, DerefMut};
use std::sync::MutexGuard;

use tokio::time::Instant;

use super::outlier::{OutlierDetection, OutlierState};
use super::slow_start::{self, SlowStart};

/// One endpoint's standing; behind the endpoint's own lock.
#[derive(Debug, Clone)]
pub(crate) struct Standing {
    pub(crate) outlier: OutlierState,
    /// When its current connection came up.
    up_since: Instant,
}

/// What the pick needs of a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct View {
    /// Out of rotation by outlier detection.
    pub(crate) ejected: bool,
    /// The factor of its recent success rate, in `(0, 1]`.
    pub(crate) health: f64,
    /// Its slow-start factor, in `(0, 1]`.
    pub(crate) ramp: f64,
}

impl View {
    /// The chance that a draw of the candidate stands: its share scales by this.
    pub(crate) fn chance(&self) -> f64 {
        self.health * self.ramp
    }
}

impl Standing {
    pub(crate) fn new(config: &OutlierDetection, now: Instant) -> Self {
        Standing {
            outlier: OutlierState::new(config, now),
            up_since: now,
        }
    }

    /// A new connection came up: a slow-start ramp begins, and outlier detection judges
    /// the endpoint afresh ([`OutlierState::came_up`]).
    pub(crate) fn came_up(&mut self, now: Instant) {
        self.up_since = now;
        self.outlier.came_up(now);
    }

    /// When the endpoint last came into rotation: its connection came up, or its
    /// outlier ejection ended, whichever is later.
    pub(crate) fn in_rotation_since(&self, now: Instant) -> Instant {
        self.outlier
            .readmitted_at(now)
            .map_or(self.up_since, |readmitted| readmitted.max(self.up_since))
    }

    /// What the pick sees at `now`.
    pub(crate) fn view(&self, slow_start: Option<&SlowStart>, now: Instant) -> View {
        View {
            ejected: self.outlier.is_ejected(now),
            health: self.outlier.pick_factor(now),
            ramp: slow_start::factor(slow_start, self.in_rotation_since(now), now),
        }
    }
}

/// A locked standing, seen as its outlier state: what the set-wide decisions of
/// `outlier::sweep` take.
pub(crate) struct OutlierGuard<'a>(pub(crate) MutexGuard<'a, Standing>);

impl Deref for OutlierGuard<'_> {
    type Target = OutlierState;

    fn deref(&self) -> &OutlierState {
        &self.0.outlier
    }
}

impl DerefMut for OutlierGuard<'_> {
    fn deref_mut(&mut self) -> &mut OutlierState {
        &mut self.0.outlier
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::outlier::Outcome;

    #[test]
    fn the_ramp_restarts_when_the_endpoint_comes_back() {
        let start = Instant::now();
        let config = OutlierDetection::default().consecutive_failures(0);
        let ramp = SlowStart::new(Duration::from_secs(10));
        let mut standing = Standing::new(&config, start);
        let view = standing.view(Some(&ramp), start + Duration::from_secs(5));
        assert!((view.ramp - 0.5).abs() < 1e-9 && view.health == 1.0 && !view.ejected);
        let later = start + Duration::from_secs(20);
        assert_eq!(standing.view(Some(&ramp), later).ramp, 1.0);
        standing.came_up(later);
        let view = standing.view(Some(&ramp), later + Duration::from_secs(1));
        assert!((view.ramp - 0.1).abs() < 1e-9, "{view:?}");
        assert_eq!(standing.view(None, later).ramp, 1.0, "off: full weight");
    }

    #[test]
    fn a_new_connection_is_judged_afresh() {
        let now = Instant::now();
        let config = OutlierDetection::default().consecutive_failures(3);
        let mut standing = Standing::new(&config, now);
        while !standing.outlier.record(Outcome::Failure, &config, now) {}
        standing.outlier.record(Outcome::Failure, &config, now);
        standing.outlier.record(Outcome::Failure, &config, now);
        let later = now + Duration::from_secs(1);
        standing.came_up(later);
        assert_eq!(standing.outlier.last_interval().total(), 0);
        assert_eq!(
            standing.outlier.success_rate(later),
            1.0,
            "no near-floor rate"
        );
        let asked = standing.outlier.record(Outcome::Failure, &config, later);
        assert!(
            !asked,
            "one failure of a restarted server does not eject it"
        );
    }

    #[test]
    fn failures_lower_the_chance() {
        let now = Instant::now();
        let config = OutlierDetection::default().consecutive_failures(0);
        let mut standing = Standing::new(&config, now);
        for _ in 0..3 {
            standing.outlier.record(Outcome::Failure, &config, now);
        }
        let view = standing.view(None, now);
        assert!(
            view.chance() < 0.3 && view.health == view.chance(),
            "{view:?}"
        );
    }
}
