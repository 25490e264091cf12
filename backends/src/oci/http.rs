//! The distribution API requests oci-client does not make (tag pages, manifest deletes, blob uploads that stream
//! from a file), with the registry's own authentication challenges.

use super::*;

/// What a 401 asks for.
pub(super) enum Challenge {
    Bearer {
        realm: Option<String>,
        service: Option<String>,
    },
    Basic,
}

/// The challenge among a response's `WWW-Authenticate` challenges that we can answer (Bearer before Basic).
pub(super) fn challenge(headers: &reqwest::header::HeaderMap) -> Option<Challenge> {
    let header = headers.get("www-authenticate")?.to_str().ok()?;
    let challenges = http_auth::parse_challenges(header).ok()?;
    if let Some(bearer) = challenges.iter().find(|c| c.scheme.eq_ignore_ascii_case("bearer")) {
        let param = |k: &str| {
            bearer
                .params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.to_unescaped())
        };
        return Some(Challenge::Bearer {
            realm: param("realm"),
            service: param("service"),
        });
    }
    challenges
        .iter()
        .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
        .then_some(Challenge::Basic)
}

/// A bound on tag pages, against a registry that keeps inventing new ones.
pub(super) const MAX_TAG_PAGES: usize = 10_000;

/// The target of the `rel="next"` link in a `Link` header (RFC 8288), if any.
pub(super) fn next_link(header: &str) -> Option<String> {
    header.split('<').skip(1).find_map(|link| {
        let (target, params) = link.split_once('>')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().trim_end_matches(',').trim();
            p.strip_prefix("rel=").is_some_and(|v| {
                v.trim_matches('"')
                    .split_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
            })
        });
        is_next.then(|| target.trim().to_owned())
    })
}

/// What an oci-client error means, from its type: the HTTP status, or the registry's error codes (the
/// distribution spec's envelope, parsed by oci-client or, for a bare `ServerError`, here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    NotFound,
    Denied,
    Other,
}

impl OciStore {
    pub(super) fn url(&self, path: &str) -> String {
        let scheme = if self.opts.insecure { "http" } else { "https" };
        format!("{scheme}://{}{path}", self.opts.registry)
    }

    /// Sends a request, answering the registry's challenge the way the registry asks: Basic credentials for a
    /// `Basic` challenge, a token for `scope` from the realm of a `Bearer` challenge. Credentials go out only once a
    /// challenge asks for them, so a token registry never sees the password; `session` keeps the answer for the
    /// next requests (tag pages). For what oci-client does not do: tag paging and delete.
    pub(super) async fn authed(
        &self,
        method: reqwest::Method,
        url: &str,
        scope: &str,
        session: &mut Option<Answer>,
    ) -> Result<reqwest::Response, Error> {
        let fail = |m: String| Error::Remote {
            remote: self.description.clone(),
            message: m,
        };
        let send = |answer: &Option<Answer>| {
            let rb = self.http.request(method.clone(), url);
            match (answer, &self.auth) {
                (Some(Answer::Bearer(t)), _) => rb.bearer_auth(t),
                (Some(Answer::Basic), RegistryAuth::Basic(u, p)) => rb.basic_auth(u, Some(p)),
                _ => rb,
            }
            .send()
        };
        let resp = send(session)
            .await
            .map_err(|e| fail(format!("{method} {url}: {}", crate::chain(&e))))?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let answer = match challenge(resp.headers()) {
            Some(Challenge::Bearer { realm, service }) => {
                let realm = realm.ok_or_else(|| fail(format!("{method} {url}: Bearer challenge without a realm")))?;
                Answer::Bearer(self.token(&realm, service.as_deref(), scope).await?)
            }
            Some(Challenge::Basic) if matches!(self.auth, RegistryAuth::Basic(..)) => Answer::Basic,
            _ => return Ok(resp),
        };
        if session.as_ref() == Some(&answer) {
            // Already answered this way, and refused.
            return Ok(resp);
        }
        *session = Some(answer);
        send(session)
            .await
            .map_err(|e| fail(format!("{method} {url}: {}", crate::chain(&e))))
    }

    /// One monolithic upload of `size` bytes of `bundle` from `offset` (POST, then one streamed PUT). The registry
    /// recomputes the digest, so bytes not matching it are refused (`DIGEST_INVALID`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn upload(
        &self,
        r: &Reference,
        bundle: &Path,
        offset: u64,
        digest: &str,
        size: u64,
        reported: &std::sync::atomic::AtomicU64,
        progress: OnBytes<'_>,
    ) -> Result<(), oci_client::errors::OciDistributionError> {
        use std::sync::atomic::Ordering::Relaxed;
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = tokio::fs::File::open(bundle).await?;
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(size), 1 << 20)
            .inspect_ok(move |b| {
                let _ = tx.send(b.len() as u64);
            })
            .map_err(oci_client::errors::OciDistributionError::IoError);
        let upload = self.client.push_blob_stream(r, stream, digest, Some(size));
        let report = async {
            let mut sent = 0u64;
            while let Some(n) = rx.recv().await {
                sent += n;
                let before = reported.fetch_max(sent, Relaxed);
                if sent > before {
                    progress(sent - before);
                }
            }
        };
        let (uploaded, ()) = tokio::join!(upload, report);
        uploaded.map(|_| ())
    }

    pub(super) fn refuse_cleartext_realm(&self, realm: &str) -> Result<(), Error> {
        if self.opts.insecure || realm.starts_with("https://") {
            return Ok(());
        }
        Err(Error::Remote {
            remote: self.description.clone(),
            message: format!("the registry's token realm {realm} is not HTTPS; refusing to send credentials to it"),
        })
    }

    /// Once, before any request that may carry credentials: oci-client fetches tokens on its own, from whatever
    /// realm the registry names, so an HTTPS registry whose token realm is plain HTTP is refused up front rather
    /// than sent the password in clear text.
    pub(super) async fn check_realm(&self) -> Result<(), Error> {
        if self.opts.insecure || matches!(self.auth, RegistryAuth::Anonymous) {
            return Ok(());
        }
        self.realm_checked
            .get_or_try_init(|| async {
                let url = self.url("/v2/");
                let resp = self.http.get(&url).send().await.map_err(|e| Error::Remote {
                    remote: self.description.clone(),
                    message: format!("GET {url}: {}", crate::chain(&e)),
                })?;
                match challenge(resp.headers()) {
                    Some(Challenge::Bearer { realm: Some(realm), .. }) => self.refuse_cleartext_realm(&realm),
                    _ => Ok(()),
                }
            })
            .await
            .map(|_| ())
    }

    /// A token for `scope` from a Bearer challenge's realm, with the Basic credentials if there are any.
    pub(super) async fn token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String, Error> {
        let fail = |m: String| Error::Remote {
            remote: self.description.clone(),
            message: m,
        };
        self.refuse_cleartext_realm(realm)?;
        // Several scopes (a cross-repository mount needs two) are space-separated here, repeated in the query.
        let mut req = self.http.get(realm);
        for one in scope.split_whitespace() {
            req = req.query(&[("scope", one)]);
        }
        if let Some(service) = service {
            req = req.query(&[("service", service)]);
        }
        if let RegistryAuth::Basic(u, p) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        let answer = req
            .send()
            .await
            .map_err(|e| fail(format!("token from {realm}: {}", crate::chain(&e))))?;
        if !answer.status().is_success() {
            return Err(Error::Denied {
                remote: self.description.clone(),
                message: format!("token from {realm} for {scope}: HTTP {}", answer.status()),
            });
        }
        let body: serde_json::Value = answer
            .json()
            .await
            .map_err(|e| fail(format!("token from {realm}: {}", crate::chain(&e))))?;
        let t = body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .ok_or_else(|| fail(format!("token from {realm}: no token in the answer")))?;
        Ok(t.to_owned())
    }

    /// All tags of a repository, following `Link: <…>; rel="next"` pages (oci-client drops that header). Pages
    /// that loop, or a `Link` to another host (which would be sent our credentials), are errors.
    pub(super) async fn tags(&self, repo: &str) -> Result<Vec<String>, Error> {
        let fail = |m: String| Error::Remote {
            remote: self.description.clone(),
            message: format!("listing tags of {repo}: {m}"),
        };
        let origin = self.url("/");
        let mut url = self.url(&format!("/v2/{repo}/tags/list?n=1000"));
        let mut session = None;
        let mut all = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            if !seen.insert(url.clone()) {
                return Err(fail(format!("the registry's Link pages loop back to {url}")));
            }
            if seen.len() > MAX_TAG_PAGES {
                return Err(fail(format!("more than {MAX_TAG_PAGES} pages")));
            }
            let resp = self
                .authed(
                    reqwest::Method::GET,
                    &url,
                    &format!("repository:{repo}:pull"),
                    &mut session,
                )
                .await?;
            match resp.status().as_u16() {
                404 => return Ok(Vec::new()),
                401 | 403 => {
                    return Err(Error::Denied {
                        remote: self.description.clone(),
                        message: format!("listing tags of {repo}: HTTP {}", resp.status()),
                    });
                }
                s if !(200..300).contains(&s) => return Err(fail(format!("HTTP {s}"))),
                _ => {}
            }
            let next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let body: serde_json::Value = resp.json().await.map_err(|e| fail(e.to_string()))?;
            // `"tags": null` for an empty repository (distribution, GHCR).
            all.extend(
                body["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned)),
            );
            url = match next {
                None => break,
                Some(n) if n.starts_with('/') => self.url(&n),
                Some(n) if n.starts_with(&origin) => n,
                Some(n) => {
                    return Err(fail(format!(
                        "the registry's Link leads to another host ({n}); not following it"
                    )));
                }
            };
        }
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// DELETE of a manifest by digest (oci-client has no delete), with a `delete`-scoped token where required.
    pub(super) async fn delete_manifest(&self, repo: &str, digest: &str) -> Result<(), Error> {
        let url = self.url(&format!("/v2/{repo}/manifests/{digest}"));
        let resp = self
            .authed(
                reqwest::Method::DELETE,
                &url,
                &format!("repository:{repo}:delete,pull"),
                &mut None,
            )
            .await?;
        let fail = |m: String| Error::Remote {
            remote: self.description.clone(),
            message: m,
        };
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            401 | 403 => Err(Error::Denied {
                remote: self.description.clone(),
                message: format!(
                    "deleting {repo}@{digest}: HTTP {}: these credentials may not delete in {repo}",
                    resp.status()
                ),
            }),
            400 | 405 => Err(fail(format!(
                "the registry refuses deletes through the API (HTTP {}); delete {repo}@{digest} with the registry's own UI or API",
                resp.status()
            ))),
            s => Err(fail(format!("deleting {repo}@{digest}: HTTP {s}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links() {
        assert_eq!(
            next_link(r#"</v2/r/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/r/tags/list?n=2&last=b")
        );
        assert_eq!(
            next_link(r#"</a?last=x>; rel="prev", <https://reg/b?n=1,2>; rel="next""#).as_deref(),
            Some("https://reg/b?n=1,2")
        );
        assert_eq!(
            next_link(r#"<https://reg/c>; title="x"; rel=next"#).as_deref(),
            Some("https://reg/c")
        );
        assert_eq!(next_link(r#"</a>; rel="prev""#), None);
        assert_eq!(next_link(""), None);
    }
}
