//! What an oci-client error means: the HTTP status, or the registry's error codes (the distribution spec's
//! envelope), and whether trying again may help.

use super::*;

/// Whether the registry answered with the error code `code` (the distribution spec's error envelope).
/// oci-client parses the envelope for some requests (`RegistryError`); for others (an upload's final PUT) it
/// hands over the status and body (`ServerError`), and the body is parsed here as the same envelope.
pub(super) fn registry_code(
    e: &oci_client::errors::OciDistributionError,
    code: oci_client::errors::OciErrorCode,
) -> bool {
    any_code(e, |c| *c == code)
}

pub(super) fn transient(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::RequestError(r) => !r.is_builder() && r.status().is_none_or(|s| s.is_server_error() || s.as_u16() == 429),
        E::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

/// Whether the registry's error envelope holds a code for which `f` is true.
pub(super) fn any_code(
    e: &oci_client::errors::OciDistributionError,
    f: impl Fn(&oci_client::errors::OciErrorCode) -> bool,
) -> bool {
    use oci_client::errors::{OciDistributionError as E, OciEnvelope};
    match e {
        E::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| f(&x.code)),
        E::ServerError { message, .. } => serde_json::from_str::<OciEnvelope>(message)
            .is_ok_and(|envelope| envelope.errors.iter().any(|x| f(&x.code))),
        _ => false,
    }
}

pub(super) fn kind(e: &oci_client::errors::OciDistributionError) -> Kind {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    let status = match e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => return Kind::Denied,
        E::ImageManifestNotFoundError(_) => return Kind::NotFound,
        E::ServerError { code, .. } => Some(*code),
        E::RequestError(r) => r.status().map(|s| s.as_u16()),
        _ => None,
    };
    match status {
        Some(401 | 403) => return Kind::Denied,
        Some(404) => return Kind::NotFound,
        _ => {}
    }
    if any_code(e, |c| matches!(c, C::Unauthorized | C::Denied)) {
        Kind::Denied
    } else if any_code(e, |c| {
        matches!(c, C::ManifestUnknown | C::NameUnknown | C::BlobUnknown | C::NotFound)
    }) {
        Kind::NotFound
    } else {
        Kind::Other
    }
}

pub(super) fn not_found_like(e: &oci_client::errors::OciDistributionError) -> bool {
    kind(e) == Kind::NotFound
}
