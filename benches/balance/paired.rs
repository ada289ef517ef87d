//! A paired comparison of two peers' throughput: short runs in A B B A blocks.
//!
//! On a shared VM the cost of the same call drifts by a factor of two within seconds (the
//! CPU time per call of one peer went from 29 to 60 µs between rounds of 2 s), so the ratio
//! of two long runs is mostly the drift. Runs of a quarter of a second, in blocks ordered
//! A B B A, see nearly the same machine: a drift that is linear over a block cancels, and
//! the blocks are many, so the median ratio has a confidence interval, and a sign test says
//! whether one peer is faster.

use std::time::Duration;

use crate::common::{self, Budget, Client, Load};

/// The ratios of `b` over `a`, one per block.
#[derive(Debug, Default)]
pub(crate) struct Paired {
    /// Calls per second of `b` ÷ those of `a`, per block.
    pub(crate) throughput: Vec<f64>,
    /// CPU time per call of `a` ÷ that of `b` (above 1: `b` is cheaper), per block.
    pub(crate) cpu: Vec<f64>,
    /// Calls per second over all runs: `a`, `b`.
    pub(crate) rates: (f64, f64),
    /// Calls that failed, both peers together.
    pub(crate) failed: u64,
}

/// Runs `blocks` blocks of `a`, `b`, `b`, `a`, each run `slice` long at `in_flight` calls in
/// flight, after a warm-up of each.
pub(crate) async fn paired(
    a: &Client,
    b: &Client,
    in_flight: usize,
    slice: Duration,
    blocks: usize,
) -> Paired {
    for client in [a, b] {
        let warm = common::load(client, in_flight, Budget::For(slice * 2), None).await;
        assert_eq!(warm.failed, 0, "a peer failed calls while warming up");
    }
    let mut paired = Paired::default();
    let (mut totals_a, mut totals_b) = (Load::default(), Load::default());
    for _ in 0..blocks {
        let run = |client| common::load(client, in_flight, Budget::For(slice), None);
        let a1 = run(a).await;
        let b1 = run(b).await;
        let b2 = run(b).await;
        let a2 = run(a).await;
        let (mut block_a, mut block_b) = (a1, b1);
        block_a.merge(a2);
        block_b.merge(b2);
        // Sequential runs of one peer: their times add up; latencies are not needed here.
        block_a.latencies.clear();
        block_b.latencies.clear();
        paired.throughput.push(block_b.rate() / block_a.rate());
        paired
            .cpu
            .push(block_a.cpu_per_call() / block_b.cpu_per_call());
        paired.failed += block_a.failed + block_b.failed;
        totals_a.merge(block_a);
        totals_b.merge(block_b);
    }
    paired.rates = (totals_a.rate(), totals_b.rate());
    paired
}

impl Paired {
    /// The median throughput ratio, and a 95 % confidence interval of it.
    pub(crate) fn throughput(&self) -> Estimate {
        Estimate::of(&self.throughput)
    }

    /// The median CPU-per-call ratio, and a 95 % confidence interval of it.
    pub(crate) fn cpu(&self) -> Estimate {
        Estimate::of(&self.cpu)
    }
}

/// A median with a distribution-free 95 % confidence interval, and a sign test.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Estimate {
    pub(crate) median: f64,
    pub(crate) low: f64,
    pub(crate) high: f64,
    /// Blocks above 1, of `blocks`.
    pub(crate) above: usize,
    pub(crate) blocks: usize,
}

impl Estimate {
    /// The interval is between the order statistics `n/2 ∓ 0.98 √n` (the binomial's normal
    /// approximation): it holds the true median with about 95 % probability, whatever the
    /// distribution of the ratios.
    pub(crate) fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let half_width = 0.98 * (n as f64).sqrt();
        let low =
            ((n as f64 / 2.0 - half_width).floor().max(0.0) as usize).min(n.saturating_sub(1));
        let high = ((n as f64 / 2.0 + half_width).ceil() as usize).clamp(1, n.max(1)) - 1;
        Estimate {
            median: common::median(&sorted),
            low: sorted.get(low).copied().unwrap_or(f64::NAN),
            high: sorted.get(high).copied().unwrap_or(f64::NAN),
            above: sorted.iter().filter(|&&r| r > 1.0).count(),
            blocks: n,
        }
    }

    /// The one-sided sign test's p-value of "above 1 no more often than below": the chance
    /// of at least `above` of `blocks` fair coin tosses landing heads.
    pub(crate) fn sign_p(&self) -> f64 {
        let n = self.blocks;
        // pmf(k) of Binomial(n, 1/2), from pmf(0) = 2^-n upwards.
        let mut pmf = 0.5f64.powi(i32::try_from(n).unwrap_or(i32::MAX));
        let mut tail = 0.0;
        for k in 0..=n {
            if k >= self.above {
                tail += pmf;
            }
            pmf *= (n - k) as f64 / (k + 1) as f64;
        }
        tail
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} (95% CI {:.3}–{:.3}; above 1 in {} of {} blocks, sign test p = {:.3})",
            self.median,
            self.low,
            self.high,
            self.above,
            self.blocks,
            self.sign_p()
        )
    }
}
