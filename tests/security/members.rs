//! A member that refuses for good (an untrusted certificate) among members that answer.

use tonic_etcd::EtcdConfig;

use super::support::{Etcd, TestPki};

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
        let mut client = EtcdConfig::new([untrusted.endpoint(), trusted.endpoint()])
            .ca_certificate(pki.ca_pem.as_bytes())
            .identity(
                pki.client.cert_pem.as_bytes(),
                pki.client.key_pem.as_bytes(),
            )
            .connect()
            .await
            .unwrap_or_else(|e| panic!("round {round}: connect failed: {}", e.report()));
        client
            .put("members/probe", "ok", None)
            .await
            .unwrap_or_else(|e| panic!("round {round}: put failed: {e}"));
    }
}
