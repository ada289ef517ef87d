//! Idle handles on an endpoint's connection, kept per worker thread.
//!
//! A call takes a handle, queues its request on it and gives it back at once: with one
//! pool per endpoint, every call locked the same mutex twice from every worker thread,
//! and that lock, bouncing between cores and now and then parking a thread, cost about
//! 7 % of the throughput of a direct `Channel` (`BENCH_ONLY=1 cargo bench --bench
//! balance`, paired runs). Each thread now has a pool of its own, on a cache line of its
//! own, so a call locks a mutex no other thread touches (as tokio and sharded-slab keep
//! per-thread state). Handles are tagged with their connection's generation: a pool never
//! gives out a handle on a connection that has been replaced, and is emptied when the
//! connection is, so a retired connection still closes once its calls end.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use super::conn::Conn;

/// Pools per endpoint: threads beyond this many share them.
const SHARDS: usize = 8;

/// The most idle handles one thread's pool keeps: about the calls it sends at once.
const MAX_PER_SHARD: usize = 128;

/// The idle handles of one endpoint, one pool per thread; allocated on first use, so an
/// endpoint that never connects (outside the subset) costs one pointer.
#[derive(Default)]
pub(crate) struct IdleHandles {
    shards: OnceLock<Box<[Shard]>>,
}

/// One thread's pool, alone on its cache lines (128 bytes: the adjacent-line prefetcher
/// pairs lines on x86).
#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<Vec<(u64, Conn)>>);

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Vec<(u64, Conn)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl IdleHandles {
    /// An idle handle on connection `generation`, from this thread's pool; handles on
    /// older connections found on the way are dropped.
    pub(crate) fn take(&self, generation: u64) -> Option<Conn> {
        let mut pool = self.shards.get()?[shard_index()].lock();
        while let Some((tagged, conn)) = pool.pop() {
            if tagged == generation {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn`, a handle on connection `generation`, in this thread's pool, unless
    /// `current` (the endpoint's generation) has moved on since.
    pub(crate) fn put(&self, conn: Conn, generation: u64, current: &AtomicU64) {
        let shards = self
            .shards
            .get_or_init(|| (0..SHARDS).map(|_| Shard::default()).collect());
        let mut pool = shards[shard_index()].lock();
        // Read under the pool's lock: `clear` moves the generation on before it locks each
        // pool, so a handle on a replaced connection is either refused here or cleared.
        if current.load(Ordering::Acquire) == generation && pool.len() < MAX_PER_SHARD {
            pool.push((generation, conn));
        }
    }

    /// Drops every idle handle: the connection has been replaced or closed, and must not
    /// be kept open by them. Call after moving the endpoint's generation on.
    pub(crate) fn clear(&self) {
        for shard in self.shards.get().into_iter().flatten() {
            shard.lock().clear();
        }
    }

    /// Idle handles kept, in all pools (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .get()
            .into_iter()
            .flatten()
            .map(|s| s.lock().len())
            .sum()
    }
}

/// This thread's pool: threads are numbered, process-wide, as they first take or give a
/// handle, and share pools beyond [`SHARDS`]; two workers may then share one, which costs
/// speed, never correctness.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.try_with(|index| *index).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::transport::Endpoint;

    fn conn() -> Conn {
        Conn::Tonic(Endpoint::from_static("http://127.0.0.1:1").connect_lazy())
    }

    #[tokio::test]
    async fn gives_back_only_handles_on_the_current_connection() {
        let handles = IdleHandles::default();
        let current = AtomicU64::new(1);
        assert!(handles.take(1).is_none(), "nothing kept yet");
        handles.put(conn(), 1, &current);
        assert!(handles.take(1).is_some());
        assert!(handles.take(1).is_none(), "a handle is given out once");
        handles.put(conn(), 1, &current);
        assert!(
            handles.take(2).is_none(),
            "a handle on connection 1 is not one on 2"
        );
        assert_eq!(handles.len(), 0, "and it is dropped on the way");
    }

    #[tokio::test]
    async fn refuses_and_clears_handles_on_a_replaced_connection() {
        let handles = IdleHandles::default();
        let current = AtomicU64::new(1);
        handles.put(conn(), 1, &current);
        current.store(2, Ordering::Release);
        handles.clear();
        assert_eq!(handles.len(), 0, "cleared with its connection");
        handles.put(conn(), 1, &current);
        assert_eq!(handles.len(), 0, "a late handle on connection 1 is refused");
    }

    #[tokio::test]
    async fn keeps_at_most_a_bounded_number_per_thread() {
        let handles = IdleHandles::default();
        let current = AtomicU64::new(1);
        for _ in 0..MAX_PER_SHARD + 10 {
            handles.put(conn(), 1, &current);
        }
        assert_eq!(handles.len(), MAX_PER_SHARD);
    }

    #[test]
    fn threads_get_pools_of_their_own() {
        let indexes: std::collections::BTreeSet<usize> = (0..SHARDS)
            .map(|_| std::thread::spawn(shard_index).join().expect("no panic"))
            .collect();
        // Other tests number their threads too: at least most pools are distinct.
        assert!(indexes.len() > SHARDS / 2, "{indexes:?}");
    }
}
