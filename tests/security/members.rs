//! A member that refuses for good (an untrusted certificate) among members that answer.

use super::support::{Etcd, TestPki};
use super::tls::mutual_tls_config;

/// Issue 12 point 0: no operation fails while a member answers. A member whose certificate
/// the client does not trust fails its TLS handshake at once; before, that first answer
/// ended `connect` although the other member was fine.
#[tokio::test]
async fn a_member_with_an_untrusted_certificate_does_not_fail_connect() {
    let pki = TestPki::new();
    let trusted = Etcd::start_tls(&pki).await;
    let stranger = TestPki::new();
    let untrusted = Etcd::start_tls(&stranger).await;
    for round in 0..5 {
        let mut client = mutual_tls_config(vec![untrusted.endpoint(), trusted.endpoint()], &pki)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("round {round}: connect failed: {}", e.report()));
        client
            .put("members/probe", "ok", None)
            .await
            .unwrap_or_else(|e| panic!("round {round}: put failed: {e}"));
    }
}
