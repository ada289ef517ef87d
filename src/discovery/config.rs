//! A discovery's configuration, as its builder holds it and its stream runs with it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::DiscoveryStatus;
use super::engine::EngineConfig;
use super::hub::{Settings, Watches};
use super::recipe::EndpointRecipe;
use crate::error::Error;
use crate::format::{Format, check_service};

pub(super) struct Config {
    pub(super) client: etcd_client::Client,
    /// The engines this discovery may share: its group's, or its own.
    pub(super) watches: Arc<Watches>,
    pub(super) service: String,
    pub(super) format: Arc<dyn Format>,
    /// How each instance becomes an endpoint: TLS, then the
    /// [`EtcdDiscover::endpoint`](super::EtcdDiscover::endpoint) hook.
    pub(super) endpoint_hook: EndpointRecipe,
    pub(super) settings: Settings,
    pub(super) status: Arc<watch::Sender<DiscoveryStatus>>,
}

impl Config {
    /// Checks the service in the format, before any I/O: while it is invalid, the status is
    /// `Failed` with the reason, and the stream yields the error.
    pub(super) fn check(&self) -> Result<(), Error> {
        let checked =
            check_service(&self.format, &self.service).and_then(|()| self.check_durations());
        let status = match &checked {
            Ok(()) => DiscoveryStatus::Syncing,
            Err(error) => DiscoveryStatus::Failed {
                error: error.clone(),
            },
        };
        self.status.send_replace(status);
        checked
    }

    /// Refuses the durations with which discovery could never sync.
    fn check_durations(&self) -> Result<(), Error> {
        let zero = |setting, value: Duration, reason| {
            if value.is_zero() {
                Err(Error::InvalidDuration {
                    setting,
                    value,
                    reason,
                })
            } else {
                Ok(())
            }
        };
        zero(
            "request timeout",
            self.settings.request_timeout,
            "every request to etcd would time out at once",
        )?;
        zero(
            "idle timeout",
            self.settings.idle_timeout,
            "every watch would be taken for dead at once",
        )
    }

    /// The configuration of a new shared engine, with its own status channel.
    pub(super) fn engine_config(&self) -> EngineConfig {
        let s = self.settings;
        EngineConfig {
            client: self.client.clone(),
            backoff: s.backoff,
            request_timeout: s.request_timeout,
            progress_interval: s.progress_interval,
            idle_timeout: s.idle_timeout,
            healthy_after: s.healthy_after,
            status: watch::Sender::new(DiscoveryStatus::Syncing),
        }
    }
}
