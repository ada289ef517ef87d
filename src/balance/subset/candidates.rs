//! The endpoints that may join the subset, in the client's zone and elsewhere, drawn by
//! weight.
//!
//! The lists may hold endpoints since removed, replaced, drawn or put to rest: the caller
//! says which are still candidates, those that are not are skipped when drawn, and swept out
//! once they outnumber the endpoints.

use super::Id;

/// How many times a draw puts a candidate back for its weight before it takes any.
const WEIGHT_REJECTIONS: u32 = 8;

#[derive(Debug, Default)]
pub(super) struct Candidates {
    local: Vec<Id>,
    others: Vec<Id>,
}

impl Candidates {
    pub(super) fn push(&mut self, id: Id, local: bool) {
        match local {
            true => self.local.push(id),
            false => self.others.push(id),
        }
    }

    fn list(&mut self, local: bool) -> &mut Vec<Id> {
        match local {
            true => &mut self.local,
            false => &mut self.others,
        }
    }

    /// Whether the client's zone has no candidate left, current or stale.
    pub(super) fn no_local(&self) -> bool {
        self.local.is_empty()
    }

    /// Whether any current candidate remains.
    pub(super) fn any(&self, current: impl Fn(Id) -> bool) -> bool {
        self.local.iter().chain(&self.others).any(|&id| current(id))
    }

    /// A current candidate of the zone class `local`, drawn by weight: a candidate is kept
    /// with the odds of its weight over `max_weight`, a few times, then whatever comes.
    pub(super) fn draw(
        &mut self,
        local: bool,
        rng: &mut fastrand::Rng,
        current: impl Fn(Id) -> bool,
        weight: impl Fn(Id) -> u32,
        max_weight: u32,
    ) -> Option<Id> {
        let max_weight = max_weight.max(1);
        let mut rejected = 0;
        loop {
            let list = self.list(local);
            if list.is_empty() {
                return None;
            }
            let id = list.swap_remove(rng.usize(..list.len()));
            if !current(id) {
                continue;
            }
            if rejected < WEIGHT_REJECTIONS && rng.u32(..max_weight) >= weight(id) {
                rejected += 1;
                self.list(local).push(id);
                continue;
            }
            return Some(id);
        }
    }

    /// Drops the stale candidates once the lists hold more than twice `known` (and 64).
    pub(super) fn sweep(&mut self, known: usize, current: impl Fn(Id) -> bool) {
        if self.local.len() + self.others.len() <= 2 * known + 64 {
            return;
        }
        self.local.retain(|&id| current(id));
        self.others.retain(|&id| current(id));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.local.len() + self.others.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_skip_stale_candidates_and_favour_weight() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut heavy = 0;
        for _ in 0..2_000 {
            let mut c = Candidates::default();
            for i in 0..3 {
                c.push(Id(i), false);
            }
            // 0 is stale; 2 weighs 4 times 1.
            let id = c.draw(
                false,
                &mut rng,
                |id| id != Id(0),
                |id| 1 + 3 * (id == Id(2)) as u32,
                4,
            );
            assert_ne!(id, Some(Id(0)));
            heavy += usize::from(id == Some(Id(2)));
        }
        assert!((1_400..1_900).contains(&heavy), "{heavy} of 2000");
    }

    #[test]
    fn sweeps_only_once_stale_ones_pile_up() {
        let mut c = Candidates::default();
        for i in 0..100 {
            c.push(Id(i), i % 2 == 0);
        }
        c.sweep(50, |id| id.0 < 10);
        assert_eq!(c.len(), 100, "100 <= 2 * 50 + 64: kept");
        c.sweep(10, |id| id.0 < 10);
        assert_eq!(c.len(), 10);
        assert!(!c.no_local());
    }
}
