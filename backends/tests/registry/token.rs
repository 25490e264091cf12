//! The token endpoint of distribution's `auth: token` mode (the Docker registry token protocol).
//!
//! `GET /token?service=S&scope=repository:NAME:ACTIONS` (scope repeatable) with Basic credentials answers
//! `{"token": JWT}`: an ES256 JWT whose `x5c` header holds a certificate issued by the CA that the registry
//! trusts (`rootcertbundle`), granting the requested actions the policy allows. Wrong or missing credentials
//! get 401. The registry verifies everything else (signature, chain, issuer, audience, expiry, and that the
//! token's access covers each request), so a client that asks for the wrong scope fails as it would for real.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hyper::{Request, Response, StatusCode};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use super::{Body, Server, full};

pub const SERVICE: &str = "kst-test-registry";
pub const ISSUER: &str = "kst-test-issuer";

struct State {
    key: EcdsaKeyPair,
    leaf_der: Vec<u8>,
    user: String,
    pass: String,
    /// Actions never granted (as a registry's access policy would refuse them).
    refused: Mutex<Vec<String>>,
    /// Every `scope` asked for, and whether credentials were right.
    asked: Mutex<Vec<(String, bool)>>,
}

pub struct TokenIssuer {
    state: Arc<State>,
    server: Server,
    dir: tempfile::TempDir,
}

impl TokenIssuer {
    pub fn start(user: &str, pass: &str) -> TokenIssuer {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        // One P-256 key: rcgen puts it in the certificate, ring signs with it (r||s, as JWS wants).
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let cert_key = KeyPair::try_from(pkcs8.as_ref()).unwrap();
        let leaf = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .signed_by(&cert_key, &ca)
            .unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let state = Arc::new(State {
            key,
            leaf_der: leaf.der().to_vec(),
            user: user.into(),
            pass: pass.into(),
            refused: Mutex::default(),
            asked: Mutex::default(),
        });
        let s = Arc::clone(&state);
        let server = Server::start(move |req| {
            let s = Arc::clone(&s);
            async move { issue(&s, &req) }
        });
        TokenIssuer { state, server, dir }
    }

    /// The `realm` of the registry's challenges.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.server.port)
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// From now on, never grant `action`.
    pub fn refuse(&self, action: &str) {
        self.state.refused.lock().unwrap().push(action.into());
    }

    /// The scopes asked for so far, with whether the credentials were accepted.
    pub fn asked(&self) -> Vec<(String, bool)> {
        self.state.asked.lock().unwrap().clone()
    }
}

fn issue(s: &State, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let credentials_ok = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .is_some_and(|b| b == format!("{}:{}", s.user, s.pass).as_bytes());
    let scopes: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str())
        .collect();
    s.asked
        .lock()
        .unwrap()
        .extend(scopes.iter().map(|sc| (sc.to_string(), credentials_ok)));
    if !credentials_ok {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .body(full(r#"{"details":"incorrect username or password"}"#))
            .unwrap();
    }
    let service = params
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let refused = s.refused.lock().unwrap().clone();
    // scope = TYPE:NAME:ACTIONS (a repository name holds no ':').
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|sc| {
            let (kind, rest) = sc.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let granted: Vec<&str> = actions.split(',').filter(|a| !refused.iter().any(|r| r == a)).collect();
            Some(serde_json::json!({"type": kind, "name": name, "actions": granted}))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&s.leaf_der)]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": s.user, "aud": service, "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", s.asked.lock().unwrap().len()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = s.key.sign(&SystemRandom::new(), signing_input.as_bytes()).unwrap();
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300});
    Response::builder()
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}
