use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn load(latency: f64) -> Load {
    Load {
        in_flight: 0,
        latency,
        health: 1.0,
    }
}

fn up_if(up: impl Fn(usize) -> bool) -> impl Fn(usize) -> Option<f64> {
    move |i| up(i).then_some(1.0)
}

fn counts(
    set: &Weighted,
    n: usize,
    up: impl Fn(usize) -> bool,
    cost: impl Fn(usize) -> Load,
) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut counts = vec![0; n];
    for _ in 0..10_000 {
        if let Some(i) = set.pick(&mut rng, up_if(&up), &cost, |_, _| false) {
            counts[i] += 1;
        }
    }
    counts
}

#[test]
fn empty_or_all_down_picks_nothing() {
    let mut rng = fastrand::Rng::with_seed(1);
    assert_eq!(
        Weighted::default().pick(&mut rng, |_| Some(1.0), |_| load(0.0), |_, _| true),
        None
    );
    let set = Weighted::new([(0, 1), (1, 1)]);
    assert_eq!(
        set.pick(&mut rng, |_| None, |_| load(0.0), |_, _| true),
        None
    );
}

#[test]
fn never_picks_a_member_that_is_down() {
    let set = Weighted::new((0..10).map(|i| (i, 1)));
    let c = counts(&set, 10, |i| i == 3 || i == 7, |_| load(0.0));
    assert_eq!(c.iter().sum::<usize>(), 10_000);
    assert!(c[3] > 0 && c[7] > 0);
    assert_eq!(c[3] + c[7], 10_000);
}

#[test]
fn lower_cost_wins_the_pair() {
    let set = Weighted::new([(0, 1), (1, 1), (2, 1)]);
    let c = counts(&set, 3, |_| true, |i| load(if i == 2 { 10.0 } else { 1.0 }));
    // Member 2 wins no pair it is in, and is picked alone never: it gets no call.
    assert_eq!(c[2], 0, "{c:?}");
}

#[test]
fn close_latencies_are_noise_and_spread_evenly() {
    let set = Weighted::new([(0, 1), (1, 1)]);
    let c = counts(
        &set,
        2,
        |_| true,
        |i| load(if i == 0 { 0.0010 } else { 0.0015 }),
    );
    assert!(c[0] > 4_000 && c[1] > 4_000, "{c:?}");
}

#[test]
fn fewer_calls_in_flight_win_among_close_latencies() {
    let set = Weighted::new([(0, 1), (1, 1)]);
    let busy = |i| Load {
        in_flight: if i == 0 { 5 } else { 4 },
        latency: 0.001,
        health: 1.0,
    };
    let c = counts(&set, 2, |_| true, busy);
    // Only when eight draws in a row find no second candidate (0.4%) does 0 get a call.
    assert!(c[0] < 100, "{c:?}");
}

#[test]
fn a_failing_member_loses_even_when_fastest() {
    let set = Weighted::new([(0, 1), (1, 1), (2, 1)]);
    let failing = |i| Load {
        health: if i == 0 { 0.05 } else { 1.0 },
        ..load(if i == 0 { 0.0001 } else { 0.001 })
    };
    let c = counts(&set, 3, |_| true, failing);
    assert_eq!(c[0], 0, "{c:?}");
}

#[test]
fn the_chance_scales_the_share() {
    let set = Weighted::new([(0, 1), (1, 1)]);
    let mut rng = fastrand::Rng::with_seed(9);
    let chance = |i| Some(if i == 0 { 0.25 } else { 1.0 });
    let mut first = 0;
    for _ in 0..10_000 {
        // Equal loads: the first drawn wins, so the share is the draw's.
        if set.pick(&mut rng, chance, |_| load(0.001), |_, _| false) == Some(0) {
            first += 1;
        }
    }
    // Draw odds 0.25 : 1, so about a fifth.
    assert!((1_500..2_500).contains(&first), "{first}");
}

#[test]
fn weights_shift_the_share() {
    let set = Weighted::new([(0, 1), (1, 3)]);
    let mut rng = fastrand::Rng::with_seed(3);
    let mut heavy = 0;
    for _ in 0..10_000 {
        if set.draw(&mut rng) == Some(1) {
            heavy += 1;
        }
    }
    assert!((7_000..8_000).contains(&heavy), "{heavy}");
}

#[test]
fn zero_weights_count_as_one() {
    let set = Weighted::new([(0, 0), (1, 0)]);
    let c = counts(&set, 2, |_| true, |_| load(0.0));
    assert!(c[0] > 3_000 && c[1] > 3_000, "{c:?}");
}

#[test]
fn a_due_loser_wins_the_pair_unless_it_fails_or_is_busier() {
    let set = Weighted::new([(0, 1), (1, 1)]);
    let slow = |i| load(if i == 1 { 0.010 } else { 0.001 });
    let c = counts_due(&set, slow, |i, _| i == 1);
    // Wins every pair it is in; alone only when eight draws find no second (0.4%).
    assert!(c[1] > 9_900, "always due, always wins: {c:?}");
    let failing = |i| Load {
        health: if i == 1 { 0.1 } else { 1.0 },
        ..load(0.001)
    };
    let c = counts_due(&set, failing, |i, _| i == 1);
    assert!(c[1] < 50, "only when drawn alone: {c:?}");
    let busier = |i| Load {
        in_flight: if i == 1 { 3 } else { 2 },
        ..slow(i)
    };
    let c = counts_due(&set, busier, |i, _| i == 1);
    assert!(c[1] < 50, "only when drawn alone: {c:?}");
}

fn counts_due(
    set: &Weighted,
    cost: impl Fn(usize) -> Load,
    due: impl Fn(usize, u64) -> bool,
) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(5);
    let mut counts = vec![0; 2];
    for _ in 0..10_000 {
        if let Some(i) = set.pick(&mut rng, |_| Some(1.0), &cost, &due) {
            counts[i] += 1;
        }
    }
    counts
}

/// A run of calls one at a time, each picked `gap` after the last ended.
struct Run {
    /// The members' weights.
    weights: &'static [u32],
    /// How long a call to each member takes, in milliseconds.
    latency: &'static [u64],
    /// A member that first had three calls of 50 ms.
    spiked: Option<usize>,
    /// Whether a member left out is due a forced pick.
    force: bool,
    /// For how long calls are made.
    run: Duration,
    /// The think time between the end of a call and the next pick.
    gap: Duration,
}

/// Where each call of `r` went and when it started, and how many picks were forced.
fn simulate(r: &Run) -> (Vec<(Duration, usize)>, usize) {
    let decay = Duration::from_secs(1);
    let start = Instant::now();
    let n = r.weights.len();
    let set = Weighted::new(r.weights.iter().copied().enumerate());
    let ewmas: Vec<_> = (0..n)
        .map(|_| std::cell::RefCell::new(Ewma::new(decay)))
        .collect();
    let last: Vec<_> = (0..n).map(|_| LastPick::new(start, decay)).collect();
    for (i, ewma) in ewmas.iter().enumerate() {
        let sample = Duration::from_millis(r.latency[i]);
        ewma.borrow_mut().observe(sample, start, 0.0);
    }
    if let Some(i) = r.spiked {
        for _ in 0..3 {
            ewmas[i]
                .borrow_mut()
                .observe(Duration::from_millis(50), start, 0.0);
        }
    }
    let mut rng = fastrand::Rng::with_seed(11);
    let forced = std::cell::Cell::new(0);
    let (mut now, mut calls) = (start, Vec::new());
    while now < start + r.run {
        let load = |i: usize| Load {
            in_flight: 0,
            latency: ewmas[i].borrow().get(now),
            health: 1.0,
        };
        let due = |i: usize, losses: u64| {
            let due = r.force && last[i].claim_if_due(now, losses);
            forced.set(forced.get() + usize::from(due));
            due
        };
        let i = set
            .pick(&mut rng, |_| Some(1.0), load, due)
            .expect("all up");
        last[i].mark(now);
        calls.push((now - start, i));
        let took = Duration::from_millis(r.latency[i]);
        now += took;
        ewmas[i].borrow_mut().observe(took, now, 0.0);
        now += r.gap;
    }
    (calls, forced.get())
}

/// One call at a time for `run` (each picked when the last ends), over members whose calls
/// take `latency`; `spiked` first had three calls of 50 ms. Returns when each call started
/// and where it went.
fn one_in_flight(
    latency: &'static [u64; 3],
    spiked: Option<usize>,
    force: bool,
    run: Duration,
) -> Vec<(Duration, usize)> {
    let r = Run {
        weights: &[1, 1, 1],
        latency,
        spiked,
        force,
        run,
        gap: Duration::ZERO,
    };
    simulate(&r).0
}

fn share(calls: &[(Duration, usize)], member: usize, from: u64, to: u64) -> f64 {
    let window = Duration::from_millis(from)..Duration::from_millis(to);
    let all = calls.iter().filter(|(t, _)| window.contains(t));
    let (n, mine) = all.fold((0, 0), |(n, m), &(_, i)| {
        (n + 1, m + usize::from(i == member))
    });
    mine as f64 / n as f64
}

#[test]
fn a_spiked_member_regains_its_share_within_a_second() {
    let calls = one_in_flight(&[1, 1, 1], Some(2), true, Duration::from_secs(2));
    assert!(share(&calls, 2, 0, 100) < 0.05, "out at first");
    let back = share(&calls, 2, 800, 1_800);
    assert!(back > 0.25, "a third again after 800 ms: {back}");
    // Without the refresh, its estimate only decays: out for over a second.
    let calls = one_in_flight(&[1, 1, 1], Some(2), false, Duration::from_secs(2));
    let still = share(&calls, 2, 0, 1_100);
    assert!(still < 0.01, "{still}");
}

#[test]
fn a_slow_member_gets_about_one_call_per_due_time() {
    let calls = one_in_flight(&[1, 1, 10], None, true, Duration::from_secs(4));
    let on_slow = calls.iter().filter(|&&(_, i)| i == 2).count();
    // 4 s, one refresh per 250 ms: 16 calls of ~3,600; the decay alone would add few.
    assert!((12..=24).contains(&on_slow), "{on_slow} of {}", calls.len());
}

/// The share of calls of `r` that went to `member`, and the share of picks forced.
fn shares(r: &Run, member: usize) -> (f64, f64) {
    let (calls, forced) = simulate(r);
    let mine = calls.iter().filter(|&&(_, i)| i == member).count();
    let n = calls.len() as f64;
    (mine as f64 / n, forced as f64 / n)
}

/// Ten minutes of calls with `gap` between them, over 10, 10 and 100 ms endpoints.
fn slow_third(gap: u64, force: bool) -> Run {
    Run {
        weights: &[1, 1, 1],
        latency: &[10, 10, 100],
        spiked: None,
        force,
        run: Duration::from_secs(600),
        gap: Duration::from_millis(gap),
    }
}

#[test]
fn a_slow_member_keeps_its_share_at_low_call_rates() {
    for gap in [100, 200, 500] {
        let (with, _) = shares(&slow_third(gap, true), 2);
        let (without, _) = shares(&slow_third(gap, false), 2);
        println!("gap {gap} ms: slow member {with:.3} ({without:.3} without forced picks)");
        // Forced by time alone, it got 40%, 66% and 38%: the loser won most pairs.
        assert!(with < 1.0 / 3.0, "gap {gap} ms: {with}");
        assert!(with < without + 0.03, "gap {gap} ms: {with} vs {without}");
    }
}

#[test]
fn weights_keep_their_ratio_at_low_call_rates() {
    let light = |force| Run {
        weights: &[1, 4],
        latency: &[10, 10],
        spiked: None,
        force,
        run: Duration::from_secs(600),
        gap: Duration::from_millis(500),
    };
    let (with, forced) = shares(&light(true), 0);
    let (without, _) = shares(&light(false), 0);
    println!("weight 1 of 1:4: {with:.3} ({without:.3} without), forced {forced:.3}");
    // Forced by time alone, every pick was forced and weight 4 took them all.
    assert!((0.15..0.25).contains(&with), "about a fifth: {with}");
}

#[test]
fn forced_picks_are_a_bounded_share_at_any_call_rate() {
    // One in `LOSSES_PER_SHARE * 3 + 1` at most: each needs that many lost pairs.
    let bound = 1.0 / (LOSSES_PER_SHARE * 3 + 1) as f64;
    for gap in [0, 1, 10, 50, 100, 200, 500, 1_000] {
        let (_, forced) = shares(&slow_third(gap, true), 2);
        let spiked = Run {
            latency: &[1, 1, 1],
            spiked: Some(2),
            ..slow_third(gap, true)
        };
        let (_, forced_spiked) = shares(&spiked, 2);
        println!("gap {gap} ms: forced {forced:.4}, {forced_spiked:.4} after a spike");
        assert!(forced <= bound, "gap {gap} ms: {forced}");
        assert!(forced_spiked <= bound, "gap {gap} ms: {forced_spiked}");
    }
}
