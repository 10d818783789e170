//! The headers of every connect page answer: its Content-Security-Policy (with the configured
//! `frame-ancestors`), `no-store`, `no-referrer`, `nosniff`; and the session cookie, read from
//! `Cookie` and written as `Set-Cookie` with the `cookie` crate.

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};

/// What `LATCHKEY_CONNECT_FRAME_ANCESTORS` may not be: the source at fault (a setting, never a
/// secret, so it may be quoted).
#[derive(Debug, thiserror::Error)]
pub enum FrameAncestorsError {
    #[error("{0:?} is neither an origin (https://app.example.com, https://*.example.com:8443) nor 'self' or 'none'")]
    NotASource(String),
    #[error("'none' cannot be combined with other sources")]
    NoneWithOthers,
}

/// Parses `LATCHKEY_CONNECT_FRAME_ANCESTORS`: a space-separated CSP source list of origins
/// (`http`/`https`, a host that may start with `*.`, an optional port or `:*`, no path) and the
/// keywords `'self'` and `'none'` (alone). Blank is `'none'`. Returns the list joined by single
/// spaces, ready to follow `frame-ancestors` in a CSP: nothing in it can end the directive.
///
/// # Errors
/// The first source that is neither, or `'none'` beside another source.
pub fn parse_frame_ancestors(s: &str) -> Result<String, FrameAncestorsError> {
    let sources: Vec<&str> = s.split_ascii_whitespace().collect();
    if sources.is_empty() {
        return Ok("'none'".to_owned());
    }
    for source in &sources {
        let keyword = matches!(*source, "'self'" | "'none'");
        if !keyword && !is_origin_source(source) {
            return Err(FrameAncestorsError::NotASource((*source).to_owned()));
        }
    }
    if sources.len() > 1 && sources.contains(&"'none'") {
        return Err(FrameAncestorsError::NoneWithOthers);
    }
    Ok(sources.join(" "))
}

/// `scheme://host[:port]` as a CSP host-source: scheme `http` or `https`, host DNS labels (the
/// first may be `*`) or an IPv4 address, port digits or `*`, nothing after.
fn is_origin_source(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")) else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    };
    let port_ok =
        port.is_none_or(|p| p == "*" || (!p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())));
    let host = host.strip_prefix("*.").unwrap_or(host);
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    port_ok && !host.is_empty() && host.len() <= 253 && host.split('.').all(label)
}

/// The page's Content-Security-Policy: only this origin's script and style (no inline ones),
/// forms posted here only (the Connect button's answer is a page of this origin that links to
/// the provider, not a redirect a browser would check against `form-action`), framed only by
/// `frame_ancestors` (checked by [`parse_frame_ancestors`]).
pub fn content_security_policy(frame_ancestors: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
         base-uri 'none'; frame-ancestors {frame_ancestors}"
    )
}

/// Sets the headers every connect page answer carries, `csp` among them.
pub fn set_page_headers(res: &mut Response, csp: &str) {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
}

/// Every cookie of the request by name (the last of a repeated name), from all its `Cookie`
/// headers; pairs that do not parse are skipped.
pub fn request_cookies(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| cookie::Cookie::split_parse(v.to_owned()))
        .filter_map(Result::ok)
        .map(|c| (c.name().to_owned(), c.value().to_owned()))
        .collect()
}

/// The cookie name of session `id`: `latchkey_connect_{id}`.
pub fn cookie_name(session_id: &str) -> String {
    format!("{}{session_id}", crate::domain::connect::SESSION_COOKIE_PREFIX)
}

/// The browser secret of session `id` sent by the browser, if any.
pub fn browser_secret(headers: &HeaderMap, session_id: &str) -> Option<SecretString> {
    request_cookies(headers).remove(&cookie_name(session_id)).filter(|v| !v.is_empty()).map(SecretString::from)
}

/// `Set-Cookie` of session `id`: the browser secret, `HttpOnly; SameSite=Lax; Path=/`, for
/// `max_age_secs`, and `Secure` unless `public_url` is plain `http://` on a loopback host
/// (`latchkey serve` on a developer's machine, where a browser would drop a Secure cookie sent
/// over http). No public URL known: Secure.
pub fn session_cookie(session_id: &str, secret: &SecretString, max_age_secs: i64, public_url: Option<&str>) -> String {
    cookie::Cookie::build((cookie_name(session_id), secret.expose_secret().to_owned()))
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .path("/")
        .max_age(cookie::time::Duration::seconds(max_age_secs.max(0)))
        .secure(!public_url.is_some_and(is_loopback_http))
        .build()
        .to_string()
}

/// Whether `url` is `http://` on `localhost` or a loopback address.
fn is_loopback_http(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    url.scheme() == "http"
        && match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
            None => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ancestors_are_origins_or_keywords() {
        assert_eq!(parse_frame_ancestors("").unwrap(), "'none'");
        assert_eq!(parse_frame_ancestors("'none'").unwrap(), "'none'");
        assert_eq!(
            parse_frame_ancestors(
                "  'self'   https://app.example.com https://*.example.com:8443 http://127.0.0.1:3000 "
            )
            .unwrap(),
            "'self' https://app.example.com https://*.example.com:8443 http://127.0.0.1:3000"
        );
        for bad in [
            "none",
            "*",
            "https:",
            "https://app.example.com/path",
            "https://app.example.com;script-src",
            "'unsafe-inline'",
            "javascript://x",
            "https://a..b",
            "https://app.example.com:",
            "https://user@app.example.com",
            "https://app.example.com,https://b.example.com",
        ] {
            assert!(parse_frame_ancestors(bad).is_err(), "{bad}");
        }
        assert!(matches!(parse_frame_ancestors("'none' 'self'"), Err(FrameAncestorsError::NoneWithOthers)));
    }

    #[test]
    fn forms_are_posted_to_this_origin_only() {
        assert_eq!(
            content_security_policy("'self' https://app.example.com"),
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; base-uri 'none'; frame-ancestors 'self' https://app.example.com"
        );
    }

    #[test]
    fn the_cookie_is_secure_except_on_loopback_http() {
        let secret = SecretString::from("s3cr3t".to_owned());
        let local = session_cookie("01J", &secret, 1800, Some("http://127.0.0.1:8080"));
        assert!(local.starts_with("latchkey_connect_01J=s3cr3t"), "{local}");
        for part in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=1800"] {
            assert!(local.contains(part), "{part} in {local}");
        }
        assert!(!local.contains("Secure"), "{local}");
        assert!(session_cookie("01J", &secret, 5, Some("http://localhost:8080")).split("; ").all(|p| p != "Secure"));
        for public in [Some("https://auth.example.com"), Some("http://auth.example.com"), None] {
            assert!(session_cookie("01J", &secret, 5, public).contains("; Secure"), "{public:?}");
        }
    }

    #[test]
    fn cookies_are_read_from_every_cookie_header() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; latchkey_connect_01J=abc"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        let cookies = request_cookies(&headers);
        assert_eq!(cookies.get("a").map(String::as_str), Some("1"));
        assert_eq!(cookies.get("b").map(String::as_str), Some("2"));
        assert_eq!(browser_secret(&headers, "01J").map(|s| s.expose_secret().to_owned()).as_deref(), Some("abc"));
        assert!(browser_secret(&headers, "01K").is_none());
    }
}
