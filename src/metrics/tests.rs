//! What a Prometheus exporter shows of the metrics recorded.

use ::metrics::with_local_recorder;
use metrics_exporter_prometheus::PrometheusBuilder;

use super::*;

/// Runs `record` with a Prometheus recorder of its own; returns the text it would serve.
fn scrape(record: impl FnOnce()) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    with_local_recorder(&recorder, || {
        describe();
        record();
    });
    handle.render()
}

#[test]
fn ejections_are_counted_by_target_and_reason() {
    let text = scrape(|| {
        ejection("greeter", Ejection::Transport);
        ejection("greeter", Ejection::Transport);
        ejection("greeter", Ejection::HealthCheck);
    });
    assert!(
        text.contains(r#"tonic_etcd_lb_ejections{grpc_target="greeter",reason="transport"} 2"#),
        "{text}"
    );
    assert!(text.contains(r#"reason="health_check"} 1"#), "{text}");
    assert!(text.contains("# HELP tonic_etcd_lb_ejections"), "{text}");
}

#[test]
fn endpoints_are_counted_by_state_every_state_present() {
    let text = scrape(|| {
        let states = [EndpointState::Up, EndpointState::Up, EndpointState::Ejected];
        endpoints("greeter", states);
    });
    for (state, n) in [("connecting", 0), ("up", 2), ("ejected", 1), ("idle", 0)] {
        let line =
            format!(r#"tonic_etcd_lb_endpoints{{grpc_target="greeter",state="{state}"}} {n}"#);
        assert!(text.contains(&line), "{line} in {text}");
    }
}

#[test]
fn statuses_are_one_hot_and_synced_sets_the_revision() {
    let text = scrape(|| {
        discovery_status("greeter/", &DiscoveryStatus::Syncing);
        let synced = DiscoveryStatus::Synced {
            revision: 42,
            endpoints: 3,
            prefix: "greeter/".into(),
            skipped: 0,
            skip_reason: None,
        };
        discovery_status("greeter/", &synced);
        registrar_status(&RegistrationStatus::Registered { lease_id: 7 });
    });
    for line in [
        r#"tonic_etcd_discovery_status{prefix="greeter/",status="synced"} 1"#,
        r#"tonic_etcd_discovery_status{prefix="greeter/",status="syncing"} 0"#,
        r#"tonic_etcd_discovery_revision{prefix="greeter/"} 42"#,
        r#"tonic_etcd_discovery_keys{prefix="greeter/"} 3"#,
        r#"tonic_etcd_registrar_status{status="registered"} 1"#,
        r#"tonic_etcd_registrar_status{status="registering"} 0"#,
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[test]
fn a_wait_is_counted_when_it_starts_and_timed_when_it_ends() {
    let text = scrape(|| drop(Waiting::start("greeter")));
    assert!(
        text.contains(r#"tonic_etcd_lb_waits{grpc_target="greeter"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tonic_etcd_lb_wait_duration_count{grpc_target="greeter"} 1"#),
        "{text}"
    );
}
