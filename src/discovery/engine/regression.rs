//! What the machine does when a watch response says etcd went back in time: make sure, then
//! list again.

use tracing::{debug, warn};

use super::{Engine, Output, WatchState};
use crate::etcd::history::Regression;
use crate::etcd::list::cluster_header;

impl Engine {
    /// Whether `regression` is real. A revision below the applied one may only mean that the
    /// watch is served by a member lagging behind the one the listing came from: a follower
    /// applies what the leader committed a little later, and a watch may land on any member.
    /// A linearizable read, which a member answers only in step with the leader, tells: if
    /// the cluster's revision is not below the applied one, the watch goes on, and that
    /// member sends the events once it has caught up. If the read fails, the regression is
    /// taken as real.
    pub(super) async fn is_real(&self, regression: Regression) -> bool {
        let Regression::Revision { applied, current } = regression else {
            return true;
        };
        let timeout = self.config.request_timeout;
        match cluster_header(&*self.etcd, &self.prefix, timeout).await {
            Ok(cluster) if cluster.revision >= applied => {
                debug!(
                    prefix = %self.prefix,
                    applied,
                    member = current,
                    cluster = cluster.revision,
                    "the watch's member lags behind the cluster, watching on"
                );
                false
            }
            Ok(_) => true,
            Err(error) => {
                debug!(prefix = %self.prefix, %error, "cannot read the cluster's revision");
                true
            }
        }
    }

    /// Lists again after a short jittered pause: etcd serves an older history than the one
    /// applied. The pause grows if it happens again before the watch has been healthy for a
    /// while, so a lagging member that keeps answering so cannot make the machine spin.
    pub(super) async fn went_back(&mut self, regression: Regression) -> (Output, WatchState) {
        let delay = self.retry.next_delay();
        warn!(prefix = %self.prefix, %regression, ?delay, "etcd went back in time, listing again");
        tokio::time::sleep(delay).await;
        (Ok(Vec::new()), WatchState::List)
    }
}
