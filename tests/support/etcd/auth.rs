//! Users, roles and authentication on a test etcd.
//!
//! Add the roles and users first, while authentication is off, then call
//! [`Etcd::enable_auth`]: from then on every client must authenticate
//! ([`Etcd::client_as`]), and the harness's own unauthenticated client can no longer read,
//! so [`Etcd::restart`] and [`Etcd::revision`] are off limits.

use etcd_client::{Client, ConnectOptions, Permission};

use super::member;
use super::{Etcd, HEALTH_DEADLINE};

/// The name of etcd's superuser, which must exist before authentication is enabled.
pub const ROOT_USER: &str = "root";

impl Etcd {
    /// Adds `role`, granted `permissions` (for example
    /// `Permission::read(prefix).with_prefix()`). Call it before [`Etcd::enable_auth`].
    pub async fn add_role(&self, role: &str, permissions: Vec<Permission>) {
        let mut client = self.client().await;
        client
            .role_add(role)
            .await
            .unwrap_or_else(|e| panic!("add role {role}: {e}"));
        for permission in permissions {
            client
                .role_grant_permission(role, permission)
                .await
                .unwrap_or_else(|e| panic!("grant a permission to role {role}: {e}"));
        }
    }

    /// Adds `user` with `password` and grants it `roles`. Call it before
    /// [`Etcd::enable_auth`].
    pub async fn add_user(&self, user: &str, password: &str, roles: &[&str]) {
        let mut client = self.client().await;
        client
            .user_add(user, password, None)
            .await
            .unwrap_or_else(|e| panic!("add user {user}: {e}"));
        for role in roles {
            client
                .user_grant_role(user, *role)
                .await
                .unwrap_or_else(|e| panic!("grant role {role} to user {user}: {e}"));
        }
    }

    /// Adds the `root` user with `root_password` and the `root` role, then enables
    /// authentication.
    pub async fn enable_auth(&self, root_password: &str) {
        self.add_user(ROOT_USER, root_password, &["root"]).await;
        self.client()
            .await
            .auth_enable()
            .await
            .unwrap_or_else(|e| panic!("enable authentication: {e}"));
    }

    /// A client authenticated as `user`.
    ///
    /// # Panics
    ///
    /// Panics if etcd refuses the credentials.
    pub async fn client_as(&self, user: &str, password: &str) -> Client {
        let member = &self.group.members[0];
        let options = ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(2))
            .with_user(user, password);
        let options = member::with_tls(options, member.tls.as_ref());
        let connect = Client::connect([self.endpoint()], Some(options));
        match tokio::time::timeout(HEALTH_DEADLINE, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("authenticate to etcd as {user}: {e}"),
            Err(_) => panic!("authenticate to etcd as {user}: no answer in {HEALTH_DEADLINE:?}"),
        }
    }
}
