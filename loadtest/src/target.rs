//! What each request looks like, decided once at start-up.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;

/// The content type sent with a body when no `--header` names one: the v2 JSON protocol's.
const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// One request, ready to be stamped out for every send.
///
/// Bodies are held as [`Bytes`], so each request shares a buffer built at start-up instead of
/// copying it. There is usually one body; `--npy` gives several, which connections cycle through.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    /// The URL as given, for reports.
    url: Uri,
    /// Host and port to connect to, from the URL.
    authority: http::uri::Authority,
    method: Method,
    /// Origin-form request target (path and query): what an HTTP/1.1 server expects on the
    /// request line when no proxy is involved.
    path: Uri,
    headers: HeaderMap,
    /// HTTP/2 carries the host in `:authority` (from the absolute URI), not in `Host`.
    h2_headers: HeaderMap,
    /// Never empty.
    bodies: Arc<[Bytes]>,
}

/// Which of a template's bodies a connection sends next: connection `i` of `n` sends bodies
/// `i`, `i + n`, `i + 2n`, ..., so that consecutive requests across connections differ.
#[derive(Debug, Clone, Copy)]
pub struct BodyCursor {
    next: usize,
    step: usize,
}

impl BodyCursor {
    /// The cursor of connection `index` of `connections`.
    pub fn for_connection(index: usize, connections: usize) -> Self {
        Self {
            next: index,
            step: connections.max(1),
        }
    }
}

impl RequestTemplate {
    /// Builds the template from the command line's pieces.
    ///
    /// `method` defaults to POST when there is a body and GET otherwise. A `Content-Type` of
    /// `application/json` is added to a request with a body unless `headers` sets one; `Host`
    /// comes from the URL unless `headers` sets one.
    pub fn new(
        url: &str,
        method: Option<Method>,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> anyhow::Result<Self> {
        let url: Uri = url
            .parse()
            .with_context(|| format!("invalid URL '{url}'"))?;
        match url.scheme_str() {
            Some("http") => {}
            Some(other) => bail!("URL scheme '{other}' is not supported, only 'http'"),
            None => bail!("URL '{url}' has no scheme; expected http://host:port/path"),
        }
        let Some(authority) = url.authority().cloned() else {
            bail!("URL '{url}' has no host");
        };
        let path = match url.path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        };

        let mut header_map = HeaderMap::new();
        for (name, value) in headers {
            // `append`, not `insert`: repeating a header on the command line sends it twice.
            header_map.append(name, value);
        }
        if !header_map.contains_key(HOST) {
            let host = HeaderValue::from_str(authority.as_str())
                .with_context(|| format!("URL authority '{authority}' is not a valid Host"))?;
            header_map.insert(HOST, host);
        }
        if !body.is_empty() && !header_map.contains_key(CONTENT_TYPE) {
            header_map.insert(CONTENT_TYPE, HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
        }

        let mut h2_headers = header_map.clone();
        h2_headers.remove(HOST);
        let method = method.unwrap_or(if body.is_empty() {
            Method::GET
        } else {
            Method::POST
        });
        Ok(Self {
            url,
            authority,
            method,
            path,
            headers: header_map,
            h2_headers,
            bodies: Arc::from([body]),
        })
    }

    /// Replaces the body with several, sent in turn (see [`BodyCursor`]). `bodies` must not be
    /// empty and the method and content type stay what the first body decided.
    pub fn with_bodies(mut self, bodies: Vec<Bytes>) -> anyhow::Result<Self> {
        if bodies.is_empty() {
            bail!("no request bodies");
        }
        self.bodies = Arc::from(bodies);
        Ok(self)
    }

    /// How many different bodies the template cycles through.
    pub fn body_count(&self) -> usize {
        self.bodies.len()
    }

    /// A fresh HTTP/1.1 request with the body `cursor` points at; cheap, since bodies are shared.
    pub fn request(&self, cursor: &mut BodyCursor) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.next_body(cursor)));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.path.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }

    /// A fresh HTTP/2 request: absolute URI (hyper derives `:scheme` and `:authority` from it),
    /// no `Host` header.
    pub fn request_h2(&self, cursor: &mut BodyCursor) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.next_body(cursor)));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.url.clone();
        *request.headers_mut() = self.h2_headers.clone();
        request
    }

    fn next_body(&self, cursor: &mut BodyCursor) -> Bytes {
        let body = self.bodies[cursor.next % self.bodies.len()].clone();
        cursor.next = cursor.next.wrapping_add(cursor.step);
        body
    }

    /// The URL as given on the command line.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// The method every request uses.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Looks the host up once, so reconnects during the run cost a TCP handshake and no DNS.
    pub async fn resolve(&self) -> anyhow::Result<SocketAddr> {
        let host = self.authority.host();
        // `Uri` keeps IPv6 literals bracketed; the resolver wants them bare.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = self.authority.port_u16().unwrap_or(80);
        tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("cannot resolve '{}'", self.authority))?
            .next()
            .with_context(|| format!("'{}' resolved to no address", self.authority))
    }
}

/// Parses a `--header` argument, `Name: value`.
pub fn parse_header(arg: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let Some((name, value)) = arg.split_once(':') else {
        bail!("expected 'Name: value', got '{arg}'");
    };
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("invalid header name '{}'", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .with_context(|| format!("invalid value for header '{name}'"))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_defaults_to_post_json() -> anyhow::Result<()> {
        let t = RequestTemplate::new(
            "http://127.0.0.1:8000/v2/models/churn/infer?x=1",
            None,
            [],
            Bytes::from_static(b"{}"),
        )?;
        let req = t.request(&mut BodyCursor::for_connection(0, 1));
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "/v2/models/churn/infer?x=1");
        assert_eq!(req.headers()[HOST], "127.0.0.1:8000");
        assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
        Ok(())
    }

    #[test]
    fn no_body_defaults_to_get_without_content_type() -> anyhow::Result<()> {
        let t = RequestTemplate::new("http://localhost:8000", None, [], Bytes::new())?;
        let req = t.request(&mut BodyCursor::for_connection(0, 1));
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/");
        assert!(!req.headers().contains_key(CONTENT_TYPE));
        Ok(())
    }

    #[test]
    fn headers_override_defaults() -> anyhow::Result<()> {
        let headers = [
            parse_header("Content-Type: application/octet-stream")?,
            parse_header("host:example.com")?,
            parse_header("X-Tag: a")?,
            parse_header("X-Tag: b")?,
        ];
        let t = RequestTemplate::new(
            "http://127.0.0.1:8000/",
            Some(Method::PUT),
            headers,
            Bytes::from_static(b"x"),
        )?;
        let req = t.request(&mut BodyCursor::for_connection(0, 1));
        assert_eq!(req.method(), Method::PUT);
        assert_eq!(req.headers()[CONTENT_TYPE], "application/octet-stream");
        assert_eq!(req.headers()[HOST], "example.com");
        assert_eq!(req.headers().get_all("x-tag").iter().count(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn connections_cycle_through_the_bodies() -> anyhow::Result<()> {
        use http_body_util::BodyExt;
        let bodies: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![b'0' + i])).collect();
        let t = RequestTemplate::new("http://h:1/", None, [], bodies[0].clone())?
            .with_bodies(bodies)?;
        let mut cursors = [
            BodyCursor::for_connection(0, 2),
            BodyCursor::for_connection(1, 2),
        ];
        let mut sent = Vec::new();
        for i in [0, 1, 0, 1, 0, 1] {
            let body = t.request(&mut cursors[i]).into_body();
            sent.push(body.collect().await?.to_bytes());
        }
        assert_eq!(sent, [&b"0"[..], b"1", b"2", b"3", b"4", b"0"]);
        let h2 = t.request_h2(&mut cursors[0]);
        assert_eq!(h2.uri(), "http://h:1/");
        assert!(!h2.headers().contains_key(HOST));
        Ok(())
    }

    #[test]
    fn rejects_what_it_cannot_send() {
        assert!(RequestTemplate::new("https://h/", None, [], Bytes::new()).is_err());
        assert!(RequestTemplate::new("/just/a/path", None, [], Bytes::new()).is_err());
        assert!(parse_header("no-colon").is_err());
        assert!(parse_header("bad name: v").is_err());
    }
}
