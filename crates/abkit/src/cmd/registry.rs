//! The options every command that talks to an OCI registry shares
//! (`install oci://...`, `bundle push`): plain http on request only, and
//! where the credentials come from (docs/oci.md, "Credentials").

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

/// Environment variable with the registry user name (`--registry-user` wins).
pub const USER_ENV: &str = "ABKIT_REGISTRY_USER";
/// Environment variable with the registry password or access token.
pub const PASSWORD_ENV: &str = "ABKIT_REGISTRY_PASSWORD";

#[derive(Args, Clone, Default)]
pub struct RegistryArgs {
    /// Talk plain http to the registry instead of https (a registry on a
    /// trusted network, or a test). Credentials then travel unencrypted;
    /// the bundle's signature still decides what installs.
    #[arg(long, help_heading = "Registry (oci:// source)")]
    pub insecure_registry: bool,

    /// User name for the registry (Basic auth, or for its token service);
    /// also $ABKIT_REGISTRY_USER. The password comes from
    /// $ABKIT_REGISTRY_PASSWORD or --registry-password-file, never from the
    /// command line. Without a user, credentials come from a docker-style
    /// config.json (see --registry-auth-file).
    #[arg(long, value_name = "USER", help_heading = "Registry (oci:// source)")]
    pub registry_user: Option<String>,

    /// File whose first line is the registry password or access token.
    #[arg(long, value_name = "FILE", help_heading = "Registry (oci:// source)")]
    pub registry_password_file: Option<PathBuf>,

    /// A docker-style config.json to take the registry's credentials from
    /// ("auths" → "HOST[:PORT]" → "auth": base64 of user:password). Default:
    /// the first of $REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json,
    /// ~/.docker/config.json, /etc/abkit/registry-auth.json that names the
    /// registry.
    #[arg(long, value_name = "FILE", help_heading = "Registry (oci:// source)")]
    pub registry_auth_file: Option<PathBuf>,

    /// Trust only the certificate authorities in this PEM file for the
    /// registry's https (a private CA) instead of the built-in public roots.
    #[arg(long, value_name = "FILE", help_heading = "Registry (oci:// source)")]
    pub registry_ca: Option<PathBuf>,
}

impl RegistryArgs {
    /// The registry settings, with `policy`'s timeouts and retry budget.
    pub fn options(
        &self,
        policy: &abkit_fetch::RetryPolicy,
    ) -> anyhow::Result<abkit_oci::RegistryOptions> {
        let user = self
            .registry_user
            .clone()
            .or_else(|| std::env::var(USER_ENV).ok().filter(|u| !u.is_empty()));
        let password = match &self.registry_password_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| {
                        format!("cannot read --registry-password-file {}", file.display())
                    })?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            ),
            None => std::env::var(PASSWORD_ENV).ok(),
        };
        let credentials = match (user, password) {
            (Some(username), Some(password)) => Some(abkit_oci::Credentials { username, password }),
            (Some(user), None) => anyhow::bail!(
                "registry user {user:?} given without a password: set ${PASSWORD_ENV} or pass \
                 --registry-password-file"
            ),
            (None, Some(_)) if self.registry_password_file.is_some() => anyhow::bail!(
                "--registry-password-file needs a user: pass --registry-user or set ${USER_ENV}"
            ),
            (None, _) => None,
        };
        let roots = match &self.registry_ca {
            Some(file) => abkit_fetch::TrustRoots::Pem(
                std::fs::read(file)
                    .with_context(|| format!("cannot read --registry-ca {}", file.display()))?,
            ),
            None => abkit_fetch::TrustRoots::Builtin,
        };
        Ok(abkit_oci::RegistryOptions {
            insecure: self.insecure_registry,
            credentials,
            auth_file: self.registry_auth_file.clone(),
            policy: policy.clone(),
            roots,
        })
    }
}
