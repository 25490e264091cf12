//! Credentials for a registry: `--oci-username` with a password, else the Docker config (credential helpers
//! included), else Podman's auth file, else anonymous.

use super::*;

/// The Docker config file, as the Docker CLI finds it: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub(super) fn docker_config_path() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")))?;
    Some(dir.join("config.json"))
}

/// The Docker config's credential for `registry`: `None` when there is no config or it names none; an error when
/// it is there but cannot be used (malformed, a helper that fails), never a silent fall back to anonymous access.
pub(super) fn docker_credential_for(
    registry: &str,
) -> Result<Option<(docker_credential::DockerCredential, String)>, Error> {
    use docker_credential::CredentialRetrievalError as E;
    let Some(path) = docker_config_path() else {
        return Ok(None);
    };
    let from = format!("the Docker config ({})", path.display());
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Config(format!("{from}: {e}"))),
    };
    match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), registry) {
        Ok(c) => Ok(Some((c, from))),
        Err(E::NoCredentialConfigured) => Ok(None),
        Err(E::ConfigReadError) => Err(Error::Config(format!(
            "{from} is not valid JSON; fix it, or pass --oci-username with --oci-password-stdin"
        ))),
        // A helper's output may hold the secret: only its name and what failed are shown.
        Err(E::HelperFailure { helper, .. }) => Err(Error::Config(format!(
            "{from}: its credential helper docker-credential-{helper} failed for {registry}; run \
             `docker login {registry}`, or pass --oci-username with --oci-password-stdin"
        ))),
        Err(e) => Err(Error::Config(format!(
            "{from}: the credential for {registry} cannot be read ({e}); run `docker login {registry}`, or pass \
             --oci-username with --oci-password-stdin"
        ))),
    }
}

pub(super) fn credentials(o: &OciOptions) -> Result<(RegistryAuth, String), Error> {
    match (&o.username, &o.password) {
        (Some(u), Some(p)) => {
            return Ok((
                RegistryAuth::Basic(u.clone(), p.expose().to_owned()),
                "--oci-username".into(),
            ));
        }
        (Some(_), None) => {
            return Err(Error::Config(
                "--oci-username needs a password: --oci-password-stdin".into(),
            ));
        }
        _ => {}
    }
    let found = match docker_credential_for(&o.registry)? {
        Some(found) => Some(found),
        None => docker_credential::get_podman_credential(&o.registry)
            .ok()
            .map(|c| (c, "Podman's auth file".to_owned())),
    };
    match found {
        Some((docker_credential::DockerCredential::UsernamePassword(u, p), from)) => {
            Ok((RegistryAuth::Basic(u, p), from))
        }
        Some((docker_credential::DockerCredential::IdentityToken(_), from)) => Err(Error::Config(format!(
            "{from} holds an identity token for {}, which is not supported; use --oci-username",
            o.registry
        ))),
        None => Ok((RegistryAuth::Anonymous, "anonymous".into())),
    }
}
