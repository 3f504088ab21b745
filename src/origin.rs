//! Which browser origins may open the WebSocket (defence against cross-site WebSocket hijacking).
//!
//! Requests without an `Origin` header come from non-browser clients, which can forge any header
//! anyway; they are allowed under every policy. The ticket is what authenticates them.

use std::collections::HashSet;

use actix_cors::Cors;
use actix_web::HttpRequest;
use actix_web::http::header;
use url::Url;

#[derive(Debug, Clone)]
pub enum OriginPolicy {
    /// The default: the Origin's `host[:port]` must equal the request's `Host`.
    SameOrigin,
    /// `ALLOWED_ORIGINS=*`.
    Any,
    /// `ALLOWED_ORIGINS=https://a.example,https://b.example`, normalised (lower case, no default port).
    List(HashSet<String>),
}

impl OriginPolicy {
    pub fn parse_list(raw: &str) -> Result<Self, String> {
        let entries: Vec<&str> = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if entries == ["*"] {
            return Ok(OriginPolicy::Any);
        }
        if entries.is_empty() || entries.contains(&"*") {
            return Err("expected `*` alone, or a comma-separated list of origins".into());
        }
        let origins = entries
            .into_iter()
            .map(|entry| {
                normalize_origin(entry).ok_or_else(|| {
                    format!("{entry:?} is not an origin like https://app.example.com")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(OriginPolicy::List(origins))
    }

    /// `origin`: the request's Origin header, if any; `host`: its Host header.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        match self {
            OriginPolicy::Any => true,
            OriginPolicy::List(allowed) => {
                normalize_origin(origin).is_some_and(|o| allowed.contains(&o))
            }
            OriginPolicy::SameOrigin => match (origin_authority(origin), host) {
                (Some(authority), Some(host)) => authority == normalize_host(host),
                _ => false,
            },
        }
    }
}

impl OriginPolicy {
    /// [`allows`](Self::allows) for a request. Same-origin compares with the raw `Host` header,
    /// not `X-Forwarded-Host`: forwarding headers are only trustworthy behind a known proxy, and
    /// the proxy should pass `Host` through. A header that is not text is refused.
    pub fn allows_request(&self, req: &HttpRequest) -> bool {
        let text = |name| match req.headers().get(name) {
            None => Ok(None),
            Some(value) => value.to_str().map(Some),
        };
        match (text(header::ORIGIN), text(header::HOST)) {
            (Ok(origin), Ok(host)) => self.allows(origin, host),
            _ => false,
        }
    }

    /// CORS for `GET /token/ws` (the SPA sends `Authorization`, so browsers preflight it):
    /// answers preflights and adds the response headers for allowed origins. Requests from
    /// other origins are not blocked here but by the handler, with a JSON 403 like `/demo`'s.
    pub fn cors(&self) -> Cors {
        self.cors_for("GET", header::AUTHORIZATION)
    }

    /// The same policy for `POST /sse/messages`, which sends `Content-Type: application/json`
    /// (so browsers preflight it too).
    pub fn cors_for_posts(&self) -> Cors {
        self.cors_for("POST", header::CONTENT_TYPE)
    }

    fn cors_for(&self, method: &'static str, request_header: header::HeaderName) -> Cors {
        let cors = Cors::default()
            .allowed_methods([method])
            .allowed_headers([request_header])
            .max_age(600)
            .block_on_origin_mismatch(false);
        match self {
            // Same-origin requests need no CORS, so no origin is listed.
            OriginPolicy::SameOrigin => cors,
            OriginPolicy::Any => cors.allow_any_origin(),
            OriginPolicy::List(_) => {
                let policy = self.clone();
                cors.allowed_origin_fn(move |origin, _| policy.allows(origin.to_str().ok(), None))
            }
        }
    }
}

/// `scheme://host[:port]`, lower case, default port dropped; `None` for anything else
/// (paths, `null`, opaque origins).
fn normalize_origin(raw: &str) -> Option<String> {
    let url = Url::parse(raw).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.path() != "/" || url.query().is_some() {
        return None;
    }
    // Url::parse keeps a trailing path of "/" for "https://a.b" as well, so the check above
    // only rejects real paths; reject a raw trailing path other than the root too.
    if raw.trim_end_matches('/').matches('/').count() != 2 {
        return None;
    }
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{}://{}:{}", url.scheme(), host, port),
        None => format!("{}://{}", url.scheme(), host),
    })
}

/// The `host[:port]` part of an origin, in the same form as [`normalize_host`].
fn origin_authority(raw: &str) -> Option<String> {
    let origin = normalize_origin(raw)?;
    Some(origin.split_once("://")?.1.to_owned())
}

/// A Host header, lower case, with `:80` and `:443` dropped so it compares with an Origin whose
/// default port the browser already omitted.
fn normalize_host(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    for default_port in [":80", ":443"] {
        if let Some(stripped) = host.strip_suffix(default_port) {
            return stripped.to_owned();
        }
    }
    host
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_compares_host_and_port() {
        let p = OriginPolicy::SameOrigin;
        assert!(p.allows(None, Some("127.0.0.1:8080")));
        assert!(p.allows(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
        assert!(p.allows(Some("https://App.Example.com"), Some("app.example.com")));
        assert!(p.allows(Some("https://app.example.com"), Some("app.example.com:443")));
        assert!(!p.allows(Some("http://127.0.0.1:8081"), Some("127.0.0.1:8080")));
        assert!(!p.allows(Some("https://evil.example"), Some("app.example.com")));
        assert!(!p.allows(Some("null"), Some("app.example.com")));
        assert!(!p.allows(Some("http://127.0.0.1:8080"), None));
    }

    #[test]
    fn list_matches_normalised_origins_only() {
        let p = OriginPolicy::parse_list(" https://a.example , http://localhost:3000/").unwrap();
        assert!(p.allows(Some("https://a.example"), Some("gw")));
        assert!(p.allows(Some("https://A.example:443"), Some("gw")));
        assert!(p.allows(Some("http://localhost:3000"), Some("gw")));
        assert!(!p.allows(Some("http://a.example"), Some("gw")));
        assert!(!p.allows(Some("https://a.example.evil"), Some("gw")));
        assert!(p.allows(None, Some("gw")));
    }

    #[test]
    fn wildcard_and_bad_lists() {
        assert!(matches!(
            OriginPolicy::parse_list("*"),
            Ok(OriginPolicy::Any)
        ));
        assert!(OriginPolicy::parse_list("*,https://a.example").is_err());
        assert!(OriginPolicy::parse_list("https://a.example/path").is_err());
        assert!(OriginPolicy::parse_list("a.example").is_err());
        assert!(OriginPolicy::parse_list(",").is_err());
    }
}
