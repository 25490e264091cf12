//! A pass-through front for a registry that pages tag lists, and records every request.
//!
//! `GET /v2/NAME/tags/list?n=&last=` is answered from the registry's full (unpaged) list: sorted, the tags after
//! `last`, at most `min(n, page)` of them, and `Link: </v2/NAME/tags/list?n=N&last=T>; rel="next"` while more
//! remain (the distribution-spec's paging, as distribution 3.x, GHCR and Harbor serve it; a registry may return
//! fewer than `n` when it sends `Link`). Every other request is forwarded unchanged (streamed both ways, the
//! `Host` kept so the registry's `Location` headers point back here). The front holds no credentials: it
//! passes on whatever `Authorization` the client sends, and the registry decides.
//!
//! [`Front::fail_next_uploads`] makes the next blob-upload `PUT`s fail with 503 after their body is read, as a
//! registry (or a proxy before it) answers when its storage fails; [`Front::limit_body`] answers 413 to a
//! request whose declared body is larger, as nginx's `client_max_body_size` does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};

use super::{Body, Server, full};

/// One request as the front saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The `Authorization` scheme the client sent (`Basic`, `Bearer`), if any.
    pub auth: Option<String>,
    pub status: u16,
}

struct State {
    upstream: u16,
    page: usize,
    /// Misbehave: every `Link` points back at the first page.
    looping: bool,
    /// Blob-upload PUTs still to fail.
    failing_uploads: AtomicUsize,
    /// Largest request body accepted (0: any).
    body_limit: AtomicUsize,
    client: reqwest::Client,
    log: Mutex<Vec<Logged>>,
}

pub struct Front {
    state: Arc<State>,
    server: Server,
}

impl Front {
    /// In front of the registry on `upstream`, at most `page` tags a page.
    pub fn start(upstream: u16, page: usize) -> Front {
        Self::with(upstream, page, false)
    }

    /// A broken registry whose `Link` always leads back to the first page.
    pub fn looping(upstream: u16) -> Front {
        Self::with(upstream, 1, true)
    }

    fn with(upstream: u16, page: usize, looping: bool) -> Front {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let state = Arc::new(State {
            upstream,
            page,
            looping,
            failing_uploads: AtomicUsize::new(0),
            body_limit: AtomicUsize::new(0),
            client,
            log: Mutex::default(),
        });
        let s = Arc::clone(&state);
        let server = Server::start(move |req| {
            let s = Arc::clone(&s);
            async move { handle(&s, req).await }
        });
        Front { state, server }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }

    /// The next `n` blob-upload PUTs are answered 503 once their body has been read.
    pub fn fail_next_uploads(&self, n: usize) {
        self.state.failing_uploads.store(n, Ordering::SeqCst);
    }

    /// Requests declaring a body over `bytes` are answered 413.
    pub fn limit_body(&self, bytes: usize) {
        self.state.body_limit.store(bytes, Ordering::SeqCst);
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }
}

async fn handle(s: &State, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(' ').next())
        .map(str::to_owned);
    let path = req.uri().path().to_owned();
    let tags_of = path
        .strip_prefix("/v2/")
        .and_then(|p| p.strip_suffix("/tags/list"))
        .map(str::to_owned);
    let upload = req.method() == hyper::Method::PUT && path.contains("/blobs/uploads/");
    let fail = upload
        && s.failing_uploads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let limit = s.body_limit.load(Ordering::SeqCst);
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let resp = match tags_of {
        _ if limit > 0 && declared > limit => {
            let body = "<html><head><title>413 Request Entity Too Large</title></head><body><center><h1>413 Request Entity Too Large</h1></center></body></html>";
            Response::builder()
                .status(StatusCode::PAYLOAD_TOO_LARGE)
                .header("content-type", "text/html")
                .body(full(body))
                .unwrap()
        }
        _ if fail => {
            let _ = req.into_body().collect().await;
            let body = r#"{"errors":[{"code":"UNAVAILABLE","message":"storage unavailable"}]}"#;
            Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("content-type", "application/json")
                .body(full(body))
                .unwrap()
        }
        Some(name) if req.method() == hyper::Method::GET => tags_page(s, req, &name).await,
        _ => forward(s, req).await,
    };
    s.log.lock().unwrap().push(Logged {
        method,
        target,
        auth,
        status: resp.status().as_u16(),
    });
    resp
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

fn upstream_request(
    s: &State,
    method: hyper::Method,
    target: &str,
    headers: &hyper::HeaderMap,
) -> reqwest::RequestBuilder {
    let mut rb = s
        .client
        .request(method, format!("http://127.0.0.1:{}{target}", s.upstream));
    for (k, v) in headers {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            rb = rb.header(k, v);
        }
    }
    rb
}

async fn relay(up: reqwest::Response) -> Response<Body> {
    let mut out = Response::builder().status(up.status().as_u16());
    for (k, v) in up.headers() {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            out = out.header(k, v);
        }
    }
    let stream = up
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
    out.body(BodyExt::boxed(StreamBody::new(stream))).unwrap()
}

fn bad_gateway(e: reqwest::Error) -> Response<Body> {
    Response::builder()
        .status(StatusCode::BAD_GATEWAY)
        .body(full(format!("front: {e}")))
        .unwrap()
}

async fn forward(s: &State, req: Request<Incoming>) -> Response<Body> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let mut rb = upstream_request(s, req.method().clone(), &target, req.headers());
    if hyper::body::Body::size_hint(req.body()).exact() != Some(0) {
        rb = rb.body(reqwest::Body::wrap_stream(req.into_body().into_data_stream()));
    }
    match rb.send().await {
        Ok(up) => relay(up).await,
        Err(e) => bad_gateway(e),
    }
}

async fn tags_page(s: &State, req: Request<Incoming>, name: &str) -> Response<Body> {
    let query: Vec<(String, String)> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
    let up = match upstream_request(s, hyper::Method::GET, &format!("/v2/{name}/tags/list"), req.headers())
        .send()
        .await
    {
        Ok(up) => up,
        Err(e) => return bad_gateway(e),
    };
    if up.status() != reqwest::StatusCode::OK {
        return relay(up).await;
    }
    let body: serde_json::Value = up.json().await.unwrap_or_default();
    let mut tags: Vec<String> = body["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    tags.sort();
    let last = get("last");
    let after: Vec<String> = tags
        .into_iter()
        .filter(|t| last.as_ref().is_none_or(|l| t > l))
        .collect();
    let n = get("n").and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
    let shown = &after[..after.len().min(n).min(s.page)];
    let mut out = Response::builder().header("content-type", "application/json");
    if s.looping {
        out = out.header("link", format!("</v2/{name}/tags/list?n={n}>; rel=\"next\""));
    } else if shown.len() < after.len() {
        let t = shown.last().map_or("", String::as_str);
        out = out.header("link", format!("</v2/{name}/tags/list?n={n}&last={t}>; rel=\"next\""));
    }
    out.body(full(serde_json::json!({"name": name, "tags": shown}).to_string()))
        .unwrap()
}
