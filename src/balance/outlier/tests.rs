//! Set-wide behaviour: the limits on ejection, the panic threshold and the sweep, with
//! explicit instants and seeded random numbers.

use std::time::Duration;

use tokio::time::Instant;

use super::{
    Counts, Ejection, EjectionReason, FailurePercentageEjection, MIN_PICK_FACTOR, Outcome,
    OutlierDetection, OutlierState, SuccessRateEjection, allows_ejection, in_panic, sweep,
    try_eject,
};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `n` fresh endpoints.
fn set(n: usize, config: &OutlierDetection, now: Instant) -> Vec<OutlierState> {
    (0..n).map(|_| OutlierState::new(config, now)).collect()
}

/// Records `ok` successes and `failed` failures on `state`, interleaved so that no row of
/// failures grows long.
fn calls(state: &mut OutlierState, ok: u64, failed: u64, config: &OutlierDetection, now: Instant) {
    let mut left = (ok, failed);
    while left != (0, 0) {
        if left.0 > 0 {
            state.record(Outcome::Success, config, now);
            left.0 -= 1;
        }
        if left.1 > 0 {
            state.record(Outcome::Failure, config, now);
            left.1 -= 1;
        }
    }
}

/// Fails every call of `state` until it asks for an ejection.
fn fail_in_a_row(state: &mut OutlierState, config: &OutlierDetection, now: Instant) {
    while !state.record(Outcome::Failure, config, now) {}
}

fn refs(states: &mut [OutlierState]) -> Vec<&mut OutlierState> {
    states.iter_mut().collect()
}

/// Ejects endpoint `i` for failures in a row, if the set allows.
fn eject(states: &mut [OutlierState], i: usize, config: &OutlierDetection, now: Instant) -> bool {
    try_eject(
        &mut refs(states),
        i,
        EjectionReason::ConsecutiveFailures,
        config,
        now,
    )
}

fn panics(states: &[OutlierState], config: &OutlierDetection, now: Instant) -> bool {
    in_panic(&states.iter().collect::<Vec<_>>(), config, now)
}

fn ejected(states: &[OutlierState], now: Instant) -> Vec<usize> {
    (0..states.len())
        .filter(|&i| states[i].is_ejected(now))
        .collect()
}

#[test]
fn one_failing_endpoint_among_three_is_ejected_at_once() {
    let now = Instant::now();
    let config = OutlierDetection::default();
    let mut states = set(3, &config, now);
    fail_in_a_row(&mut states[1], &config, now);
    assert!(eject(&mut states, 1, &config, now));
    assert_eq!(ejected(&states, now), [1]);
    let ejection = Ejection {
        reason: EjectionReason::ConsecutiveFailures,
        since: now,
        until: now + secs(30),
    };
    assert_eq!(states[1].ejection(now), Some(ejection));
    assert_eq!(
        states[1].readmitted_at(now + secs(31)),
        Some(now + secs(30))
    );
    assert_eq!(
        ejected(&states, now + secs(30)),
        [] as [usize; 0],
        "back after 30 s"
    );
}

#[test]
fn at_least_one_but_no_more_than_the_max_percent() {
    let now = Instant::now();
    let config = OutlierDetection::default();
    let mut states = set(3, &config, now);
    for i in [0, 2] {
        fail_in_a_row(&mut states[i], &config, now);
    }
    assert!(eject(&mut states, 0, &config, now));
    // 2 of 3 is over 10 %: only the first goes.
    assert!(!eject(&mut states, 2, &config, now));
    // At 70 %, two of three may go, and still one stays.
    let config = config.max_ejection_percent(70);
    assert!(eject(&mut states, 2, &config, now));
    assert_eq!(ejected(&states, now), [0, 2]);
}

#[test]
fn never_ejects_the_last_endpoint_in_rotation() {
    let now = Instant::now();
    let config = OutlierDetection::default()
        .max_ejection_percent(100)
        .panic_threshold(0);
    let mut states = set(2, &config, now);
    assert!(eject(&mut states, 0, &config, now));
    assert!(!eject(&mut states, 1, &config, now));
    let mut single = set(1, &config, now);
    assert!(!eject(&mut single, 0, &config, now));
    assert!(!eject(&mut single, 5, &config, now));
    let off = config.max_ejection_percent(0);
    let mut pair = set(2, &off, now);
    assert!(
        !allows_ejection(&refs(&mut pair), 0, &off, now),
        "0 % turns ejection off"
    );
}

#[test]
fn failures_past_the_limit_ask_for_ejection_once_per_limit_more() {
    let config = OutlierDetection::default().consecutive_failures(3);
    let now = Instant::now();
    let mut state = OutlierState::new(&config, now);
    let asked: Vec<bool> = (0..9)
        .map(|_| state.record(Outcome::Failure, &config, now))
        .collect();
    let expected = [false, false, true, false, false, true, false, false, true];
    assert_eq!(asked, expected, "not on every failure past the limit");
}

#[test]
fn when_every_endpoint_fails_none_is_ejected() {
    let now = Instant::now();
    let config = OutlierDetection::default().max_ejection_percent(100);
    let mut states = set(4, &config, now);
    for state in &mut states {
        fail_in_a_row(state, &config, now);
    }
    assert!(panics(&states, &config, now));
    assert!((0..4).all(|i| !eject(&mut states, i, &config, now)));
    // With the panic threshold off, ejection goes on, but one endpoint stays.
    let config = config.panic_threshold(0);
    assert!(!panics(&states, &config, now));
    let count = (0..4)
        .filter(|&i| eject(&mut states, i, &config, now))
        .count();
    assert_eq!(count, 3);
}

#[test]
fn a_failing_endpoint_kept_in_rotation_gets_a_trickle() {
    let now = Instant::now();
    let config = OutlierDetection::default();
    let mut states = set(3, &config, now);
    for state in &mut states {
        fail_in_a_row(state, &config, now);
        calls(state, 0, 50, &config, now);
    }
    assert!(!eject(&mut states, 0, &config, now));
    assert!(states.iter().all(|s| s.pick_factor(now) == MIN_PICK_FACTOR));
    // Its failures are forgiven while it gets no call, so it is tried again.
    assert!(states[0].pick_factor(now + secs(10)) > 0.3);
}

#[test]
fn two_failing_of_three_still_eject_one() {
    // The healthy share of the *other* endpoints decides: for either failing endpoint,
    // one of the two others is healthy, which is not below 50 %.
    let now = Instant::now();
    let config = OutlierDetection::default();
    let mut states = set(3, &config, now);
    for i in [1, 2] {
        fail_in_a_row(&mut states[i], &config, now);
    }
    assert!(panics(&states, &config, now), "one healthy of three");
    assert!(eject(&mut states, 2, &config, now));
    assert_eq!(ejected(&states, now), [2]);
}

#[test]
fn success_rate_ejects_the_endpoint_far_below_the_others() {
    let now = Instant::now();
    let config = OutlierDetection::default().consecutive_failures(0);
    let mut states = set(6, &config, now);
    for (i, state) in states.iter_mut().enumerate() {
        match i {
            4 => calls(state, 100, 100, &config, now),
            _ => calls(state, 199, 1, &config, now),
        }
    }
    let mut rng = fastrand::Rng::with_seed(1);
    let out = sweep(&mut refs(&mut states), &config, now, &mut rng);
    assert_eq!(out, [(4, EjectionReason::SuccessRate)]);
    let closed = Counts {
        successes: 100,
        failures: 100,
    };
    assert_eq!(states[4].last_interval(), closed, "the interval is closed");
    // The next sweep sees an empty interval and ejects nothing more.
    let later = now + secs(10);
    assert!(sweep(&mut refs(&mut states), &config, later, &mut rng).is_empty());
}

#[test]
fn success_rate_needs_enough_endpoints_with_enough_calls() {
    let now = Instant::now();
    let config = OutlierDetection::default().consecutive_failures(0);
    let mut rng = fastrand::Rng::with_seed(1);
    // Five endpoints, but one has too few calls: four rated, fewer than five.
    let mut states = set(5, &config, now);
    for (i, state) in states.iter_mut().enumerate() {
        match i {
            0 => calls(state, 10, 89, &config, now),
            _ => calls(state, 200, 0, &config, now),
        }
    }
    assert!(sweep(&mut refs(&mut states), &config, now, &mut rng).is_empty());
    // Equal rates are no outliers, however the mean rounds.
    let mut states = set(7, &config, now);
    states
        .iter_mut()
        .for_each(|s| calls(s, 90, 10, &config, now));
    assert!(sweep(&mut refs(&mut states), &config, now, &mut rng).is_empty());
    // With three endpoints and A50's factor, a failing one is not an outlier.
    let config = config.success_rate(Some(SuccessRateEjection::default().minimum_hosts(3)));
    let mut states = set(3, &config, now);
    calls(&mut states[0], 0, 200, &config, now);
    calls(&mut states[1], 200, 0, &config, now);
    calls(&mut states[2], 200, 0, &config, now);
    assert!(sweep(&mut refs(&mut states), &config, now, &mut rng).is_empty());
}

#[test]
fn failure_percentage_ejects_worst_first_within_the_max_percent() {
    let now = Instant::now();
    let rule = FailurePercentageEjection::default();
    let config = OutlierDetection::default()
        .consecutive_failures(0)
        .success_rate(None)
        .failure_percentage(Some(rule));
    let mut states = set(10, &config, now);
    calls(&mut states[3], 10, 90, &config, now);
    calls(&mut states[7], 0, 100, &config, now);
    calls(&mut states[8], 20, 80, &config, now);
    for i in [0, 1, 2, 4, 5, 6, 9] {
        calls(&mut states[i], 100, 0, &config, now);
    }
    let mut rng = fastrand::Rng::with_seed(1);
    let out = sweep(&mut refs(&mut states), &config, now, &mut rng);
    // 80 % is below the threshold; of 3 and 7, 10 % allows one: the worst.
    assert_eq!(out, [(7, EjectionReason::FailurePercentage)]);
    let config = config.max_ejection_percent(20);
    let mut states = set(10, &config, now);
    calls(&mut states[3], 10, 90, &config, now);
    calls(&mut states[7], 0, 100, &config, now);
    let out = sweep(&mut refs(&mut states), &config, now, &mut rng);
    assert_eq!(out.iter().map(|&(i, _)| i).collect::<Vec<_>>(), [7, 3]);
}

#[test]
fn enforcement_percentage_ejects_about_that_share_of_outliers() {
    let now = Instant::now();
    let rule = FailurePercentageEjection::default()
        .minimum_hosts(2)
        .enforcement_percentage(30);
    let config = OutlierDetection::default()
        .consecutive_failures(0)
        .success_rate(None)
        .failure_percentage(Some(rule));
    let mut rng = fastrand::Rng::with_seed(21);
    let mut count = 0;
    for _ in 0..1000 {
        let mut states = set(2, &config, now);
        calls(&mut states[0], 0, 60, &config, now);
        count += sweep(&mut refs(&mut states), &config, now, &mut rng).len();
    }
    assert!((240..360).contains(&count), "{count}");
}

#[test]
fn the_ejection_time_grows_for_a_repeat_offender_and_relaxes_after() {
    let start = Instant::now();
    let config = OutlierDetection::default();
    let mut states = set(3, &config, start);
    let mut rng = fastrand::Rng::with_seed(1);
    let mut now = start;
    let mut lengths = Vec::new();
    for _ in 0..3 {
        fail_in_a_row(&mut states[0], &config, now);
        assert!(eject(&mut states, 0, &config, now));
        let until = states[0].ejection(now).map(|e| e.until).expect("ejected");
        lengths.push((until - now).as_secs());
        // Sweeps while ejected keep the multiplier; it is back at `until`.
        while states[0].is_ejected(now) {
            now += config.sweep_interval();
            sweep(&mut refs(&mut states), &config, now, &mut rng);
        }
    }
    assert_eq!(lengths, [30, 60, 90]);
    // Each interval spent in rotation takes one off the multiplier (3): after two, a new
    // ejection lasts 2 × 30 s; after three, 30 s again.
    for _ in 0..2 {
        now += config.sweep_interval();
        sweep(&mut refs(&mut states), &config, now, &mut rng);
    }
    let mut early = states.clone();
    fail_in_a_row(&mut early[0], &config, now);
    assert!(eject(&mut early, 0, &config, now));
    assert_eq!(
        early[0].ejection(now).map(|e| e.until),
        Some(now + secs(60))
    );
    now += config.sweep_interval();
    sweep(&mut refs(&mut states), &config, now, &mut rng);
    fail_in_a_row(&mut states[0], &config, now);
    assert!(eject(&mut states, 0, &config, now));
    assert_eq!(
        states[0].ejection(now).map(|e| e.until),
        Some(now + secs(30))
    );
    assert_eq!(states[0].times_ejected(), 4);
}

#[test]
fn a_new_connection_keeps_the_multiplier() {
    let start = Instant::now();
    let config = OutlierDetection::default();
    let mut states = set(3, &config, start);
    fail_in_a_row(&mut states[0], &config, start);
    assert!(eject(&mut states, 0, &config, start));
    let back = start + secs(30);
    states[0].came_up(back);
    assert_eq!(states[0].success_rate(back), 1.0);
    fail_in_a_row(&mut states[0], &config, back);
    assert!(eject(&mut states, 0, &config, back));
    let until = states[0].ejection(back).map(|e| e.until);
    assert_eq!(
        until,
        Some(back + secs(60)),
        "the second ejection lasts twice as long"
    );
}

mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the settings and whichever endpoints fail, trying to eject every
        /// endpoint in turn keeps one in rotation, stays within the max ejection percent
        /// (or one), and ejects nothing while every endpoint fails and panic is on.
        #[test]
        fn ejection_never_empties_the_set_nor_storms(
            failing in proptest::collection::vec(any::<bool>(), 1..30),
            max_percent in prop_oneof![Just(0u32), Just(100u32), 0u32..=100],
            panic in prop_oneof![Just(0u32), 0u32..=100],
            order_seed in any::<u64>(),
        ) {
            let now = Instant::now();
            let config = OutlierDetection::default()
                .max_ejection_percent(max_percent)
                .panic_threshold(panic);
            let n = failing.len();
            let mut states = set(n, &config, now);
            for (state, &fails) in states.iter_mut().zip(&failing) {
                if fails {
                    fail_in_a_row(state, &config, now);
                }
            }
            let mut order: Vec<usize> = (0..n).collect();
            fastrand::Rng::with_seed(order_seed).shuffle(&mut order);
            for i in order {
                eject(&mut states, i, &config, now);
            }
            let count = ejected(&states, now).len();
            prop_assert!(count < n || n == 0);
            let allowed = (max_percent as usize * n / 100).max(usize::from(max_percent > 0));
            prop_assert!(count <= allowed, "{count} of {n} at {max_percent} %");
            if panic > 0 && failing.iter().all(|&f| f) {
                prop_assert_eq!(count, 0);
            }
        }
    }
}
