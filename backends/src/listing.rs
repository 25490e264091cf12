//! S3 listings that survive keys object_store cannot represent.
//!
//! object_store parses every key of a `ListObjectsV2` page into its `Path`, and one key it rejects (a control
//! character, a `.` or `..` segment, an empty segment) fails the whole page (`client/s3.rs`: `Path::parse(key)?`
//! for each of the page's `Contents`). Any tool can write such a key into a shared bucket, and then `list`, `prune`
//! and `delete --remote` would fail for everyone. Such keys are outside our layout, so this HTTP service, placed
//! under object_store's S3 client, drops them from listing pages before object_store reads them; every other
//! request and response passes through untouched.

use async_trait::async_trait;
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use quick_xml::events::Event;

/// The most a listing page may be: S3 pages hold at most 1000 keys of at most 1024 bytes.
const PAGE_MAX: usize = 32 << 20;

/// Connects object_store's S3 client through [`SkipForeignKeys`].
#[derive(Debug, Default)]
pub(crate) struct Connector;

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(SkipForeignKeys { inner }))
    }
}

#[derive(Debug)]
struct SkipForeignKeys {
    inner: HttpClient,
}

#[async_trait]
impl HttpService for SkipForeignKeys {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let listing = req.method() == http::Method::GET
            && req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "list-type=2"));
        let response = self.inner.execute(req).await?;
        if !listing || !response.status().is_success() {
            return Ok(response);
        }
        let (mut parts, body) = response.into_parts();
        let mut page = Vec::new();
        let mut chunks = body.bytes_stream();
        while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
            page.extend_from_slice(&chunk?);
            if page.len() > PAGE_MAX {
                return Err(HttpError::new(
                    HttpErrorKind::Decode,
                    std::io::Error::other(format!("a listing page of more than {PAGE_MAX} bytes")),
                ));
            }
        }
        let kept = without_foreign_keys(&page).map_err(|e| HttpError::new(HttpErrorKind::Decode, e))?;
        parts.headers.remove(http::header::CONTENT_LENGTH);
        Ok(HttpResponse::from_parts(parts, kept.into()))
    }
}

/// Whether object_store can name the key (the rule it applies when it reads a listing).
fn representable(key: &str) -> bool {
    object_store::path::Path::parse(key).is_ok()
}

/// A `ListObjectsV2` result without the `Contents` and `CommonPrefixes` whose key object_store cannot represent.
fn without_foreign_keys(xml: &[u8]) -> Result<Vec<u8>, quick_xml::Error> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut writer = quick_xml::Writer::new(Vec::with_capacity(xml.len()));
    // An entry being read: its events, held until its key is known, and that key's text so far.
    let mut held: Option<Vec<Event<'static>>> = None;
    let mut key: Option<String> = None;
    let mut in_key = false;
    let mut depth = 0usize;
    loop {
        let event = reader.read_event()?;
        if let Event::Eof = event {
            break;
        }
        let Some(events) = held.as_mut() else {
            if let Event::Start(e) = &event
                && matches!(e.local_name().as_ref(), b"Contents" | b"CommonPrefixes")
            {
                held = Some(vec![event.into_owned()]);
                key = None;
                depth = 1;
                continue;
            }
            writer.write_event(event)?;
            continue;
        };
        match &event {
            Event::Start(e) => {
                depth += 1;
                if depth == 2 && matches!(e.local_name().as_ref(), b"Key" | b"Prefix") {
                    in_key = true;
                    key = Some(String::new());
                }
            }
            Event::End(_) => {
                depth -= 1;
                in_key = false;
            }
            Event::Text(t) if in_key => {
                if let Some(k) = key.as_mut() {
                    k.push_str(&t.decode().map_err(quick_xml::Error::Encoding)?);
                }
            }
            Event::GeneralRef(r) if in_key => {
                let name = r.decode().map_err(quick_xml::Error::Encoding)?;
                let text = match r.resolve_char_ref()? {
                    Some(c) => c.to_string(),
                    None => quick_xml::escape::resolve_predefined_entity(&name)
                        .unwrap_or_default()
                        .to_owned(),
                };
                if let Some(k) = key.as_mut() {
                    k.push_str(&text);
                }
            }
            _ => {}
        }
        events.push(event.into_owned());
        if depth == 0 {
            let events = held.take().unwrap_or_default();
            if key.as_deref().is_none_or(representable) {
                for e in events {
                    writer.write_event(e)?;
                }
            }
        }
    }
    Ok(writer.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(xml: &[u8]) -> Vec<String> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Page {
            #[serde(default)]
            contents: Vec<Contents>,
            #[serde(default)]
            next_continuation_token: Option<String>,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Contents {
            key: String,
        }
        let page: Page = quick_xml::de::from_reader(xml).unwrap();
        let mut out: Vec<String> = page.contents.into_iter().map(|c| c.key).collect();
        out.extend(page.next_continuation_token);
        out
    }

    #[test]
    fn keys_object_store_cannot_name_are_dropped_and_the_rest_of_the_page_kept() {
        let page = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult \
            xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b</Name><KeyCount>6</KeyCount>\
            <Contents><Key>team/c/a/metadata.json</Key><Size>2</Size></Contents>\
            <Contents><Key>team/c/../x</Key><Size>1</Size></Contents>\
            <Contents><Key>team/c/e&#x1b;]0;t&#7;/metadata.json</Key><Size>1</Size></Contents>\
            <Contents><Key>team/c/raw\u{1}ctl/x</Key><Size>1</Size></Contents>\
            <Contents><Key>team//empty</Key><Size>1</Size></Contents>\
            <Contents><Key>team/c/b&amp;c/index.json</Key><Size>3</Size></Contents>\
            <NextContinuationToken>tok</NextContinuationToken></ListBucketResult>";
        let kept = without_foreign_keys(page.as_bytes()).unwrap();
        assert_eq!(
            keys(&kept),
            ["team/c/a/metadata.json", "team/c/b&c/index.json", "tok"],
            "{}",
            String::from_utf8_lossy(&kept)
        );
    }

    #[test]
    fn a_page_of_good_keys_reads_the_same() {
        let page = b"<ListBucketResult><Contents><Key>a/b</Key><Size>1</Size></Contents>\
            <CommonPrefixes><Prefix>a/</Prefix></CommonPrefixes></ListBucketResult>";
        assert_eq!(without_foreign_keys(page).unwrap(), page.to_vec());
    }
}
