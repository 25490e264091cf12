//! OCI test servers on loopback: Debian's docker-registry (distribution 2.8.2, [`distribution`]), and the two
//! parts that distribution 2.8.2 cannot play itself:
//! - [`token::TokenIssuer`]: the token endpoint of distribution's `auth: token` mode (no token server is packaged
//!   in Debian). The registry still does all the checking: signature, issuer, audience, expiry, scope.
//! - [`front::Front`]: a pass-through front that pages `tags/list` with `Link` headers, as distribution 3.x, GHCR
//!   and Harbor do (2.8.2 ignores `n`/`last`), and records every request it forwards.

pub use kubectl_snapshot_testkit::registry as distribution;
pub mod front;
pub mod token;

pub use distribution::{Registry, Tls};

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};

pub const USER: &str = "conformance";
pub const PASS: &str = "registry-password-do-not-print";

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// An HTTP/1.1 server on a free loopback port, on its own thread and runtime (so it keeps serving while a test
/// blocks its own thread). Stopped on drop.
pub struct Server {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start<F, Fut>(handler: F) -> Server
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let handler = handler.clone();
                            let service = hyper::service::service_fn(move |req| {
                                let handler = handler.clone();
                                async move { Ok::<_, Infallible>(handler(req).await) }
                            });
                            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service));
                        }
                        _ = &mut stopped => break,
                    }
                }
            });
        });
        Server {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The registry's auth in the backends' tests: htpasswd with [`USER`] and [`PASS`], or tokens from `issuer`.
pub fn htpasswd() -> distribution::Auth<'static> {
    distribution::Auth::Htpasswd {
        user: USER,
        password: PASS,
    }
}

pub fn tokens(issuer: &token::TokenIssuer) -> distribution::Auth<'static> {
    distribution::Auth::Token {
        realm: issuer.realm(),
        service: token::SERVICE,
        issuer: token::ISSUER,
        ca: issuer.ca_pem(),
    }
}
