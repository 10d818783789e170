//! Unit tests of verify requests: their checks, templates and rendering.
use std::collections::BTreeMap;

use serde_json::json;

use super::*;

fn verify(v: Value) -> Result<Verify, Vec<FieldError>> {
    verify_from_json(&v, |n| ["apiKey", "account", "access_token"].contains(&n))
}

fn values(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<SecretString> {
    let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |n| map.get(n).map(|v| SecretString::from(v.clone()))
}

fn fields(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn templates_parse_into_text_and_names() {
    assert_eq!(
        pieces("Bearer {{apiKey}}!").unwrap(),
        vec![Piece::Text("Bearer "), Piece::Name("apiKey"), Piece::Text("!")]
    );
    assert_eq!(pieces("{a}").unwrap(), vec![Piece::Text("{a}")], "single braces are text");
    assert_eq!(pieces("{{a}}{{b}}").unwrap(), vec![Piece::Name("a"), Piece::Name("b")]);
    assert_eq!(pieces("x {{apiKey"), Err(TemplateError::Unclosed));
    assert_eq!(pieces("x }} y"), Err(TemplateError::StrayClose));
    assert_eq!(pieces("{{ apiKey }}"), Err(TemplateError::BadName(" apiKey ".into())));
    assert_eq!(pieces("{{a|upper}}"), Err(TemplateError::BadName("a|upper".into())), "no template logic");
    assert_eq!(pieces("{{{{a}}}}"), Err(TemplateError::BadName("{{a".into())));
}

#[test]
fn a_well_formed_verify_block_reads_and_writes_the_same() {
    let body = json!({"method": "GET", "url": "https://api.acme.com/v1/me",
                      "headers": {"Authorization": "Bearer {{apiKey}}"}, "expect_status": [200]});
    let v = verify(body.clone()).unwrap();
    assert_eq!(serde_json::to_value(&v).unwrap(), body);
    assert_eq!(v.names(), vec!["apiKey"]);
}

#[test]
fn bad_blocks_name_each_field() {
    let errs = verify(json!({"method": "GET", "url": "https://api.acme.com/{{nope}}",
        "headers": {"Host": "x", "Bad Name": "y", "X-A": "a\r\nb", "X-B": "{{apiKey"},
        "body": {"k": "v"}, "expect_status": [401, 200]}))
    .unwrap_err();
    let f = fields(&errs);
    for expected in [
        "verify.url",
        "verify.headers.Host",
        "verify.headers.Bad Name",
        "verify.headers.X-A",
        "verify.headers.X-B",
        "verify.body",
        "verify.expect_status",
    ] {
        assert!(f.contains(&expected), "{expected} in {errs:?}");
    }
    assert!(verify(json!({"method": "DELETE", "url": "https://a.example/"})).is_err());
    assert!(verify(json!({"method": "GET", "url": "https://a.example/", "extra": 1})).is_err());
}

#[test]
fn the_url_follows_the_provider_url_policy_and_templates_stay_out_of_the_origin() {
    for (url, ok) in [
        ("https://api.acme.com/v1/me", true),
        ("http://127.0.0.1:9/me", true),
        ("http://localhost/me?key={{apiKey}}", true),
        ("https://api.acme.com/accounts/{{account}}/me", true),
        ("http://api.acme.com/me", false),
        ("ftp://api.acme.com/me", false),
        ("https://{{account}}.acme.com/me", false),
        ("https://api.acme.com{{account}}/me", false),
        ("https://api.acme.com:44{{account}}/me", false),
        ("https://{{apiKey}}@api.acme.com/me", false),
        ("https://user:pw@api.acme.com/me", false),
        ("{{account}}/me", false),
        ("https://api.acme.com/me#{{apiKey}}", false),
    ] {
        assert_eq!(verify(json!({"method": "GET", "url": url})).is_ok(), ok, "{url}");
    }
}

#[test]
fn a_refused_url_template_says_why() {
    use UrlTemplateError as E;
    let long = format!("https://a.example/{}", "x".repeat(MAX_URL));
    assert!(matches!(check_url_template(&long), Err(E::TooLong)));
    assert!(matches!(check_url_template("https://a.example/{{apiKey"), Err(E::Template(TemplateError::Unclosed))));
    assert!(matches!(check_url_template("http://api.acme.com/me"), Err(E::Url(UrlError::NotSecure))));
    assert!(matches!(check_url_template("{{account}}/me"), Err(E::Url(UrlError::NotAbsolute))));
    assert!(matches!(check_url_template("https://{{account}}.acme.com/me"), Err(E::InOrigin)));
    assert!(matches!(check_url_template("https://user:pw@api.acme.com/me"), Err(E::UserInfo)));
    assert!(matches!(check_url_template("https://api.acme.com/me#{{apiKey}}"), Err(E::Fragment)));
    // The field message is the reason's, the wrapped ones' unchanged.
    let errs = verify(json!({"method": "GET", "url": "http://api.acme.com/me"})).unwrap_err();
    assert_eq!(errs[0].message, UrlError::NotSecure.to_string());
    assert_eq!(E::TooLong.to_string(), "must be at most 2048 bytes");
}

#[test]
fn access_token_is_a_name_only_where_known_allows_it() {
    let block =
        json!({"method": "GET", "url": "https://a.example/", "headers": {"Authorization": "Bearer {{access_token}}"}});
    assert!(verify(block.clone()).is_ok());
    assert!(verify_from_json(&block, |n| n == "apiKey").is_err());
}

#[test]
fn a_verify_block_is_an_object_not_its_members_in_order() {
    let errs = verify(json!(["GET", "https://api.acme.com/me"])).unwrap_err();
    assert_eq!(fields(&errs), ["verify"]);
    let errs =
        verify(json!({"method": "GET", "url": "https://api.acme.com/me", "basic": ["{{apiKey}}", ""]})).unwrap_err();
    assert_eq!(fields(&errs), ["verify.basic"]);
    assert!(verify(json!({"method": "GET", "url": "https://api.acme.com/me"})).is_ok());
}

#[test]
fn values_are_percent_encoded_in_the_url_and_cannot_add_parameters_or_segments() {
    let v = verify(json!({"method": "GET", "url": "https://api.acme.com/a/{{account}}?key={{apiKey}}&x=1"})).unwrap();
    let r = v.render(values(&[("account", "../admin?x=1#f"), ("apiKey", "k&admin=true =+%")])).unwrap();
    assert_eq!(r.url.as_str(), "https://api.acme.com/a/..%2Fadmin%3Fx%3D1%23f?key=k%26admin%3Dtrue%20%3D%2B%25&x=1");
    assert_eq!(r.url.path_segments().unwrap().count(), 2);
    let q: Vec<(String, String)> = r.url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    assert_eq!(q, vec![("key".into(), "k&admin=true =+%".into()), ("x".into(), "1".into())]);
    assert_eq!(r.url.host_str(), Some("api.acme.com"));
}

#[test]
fn header_values_with_control_characters_are_refused() {
    let v =
        verify(json!({"method": "GET", "url": "https://a.example/", "headers": {"X-Key": "k={{apiKey}}"}})).unwrap();
    for bad in ["a\r\nX-Admin: 1", "a\nb", "a\0", "a\u{7f}", "a\u{85}"] {
        assert_eq!(
            v.render(values(&[("apiKey", bad)])).err(),
            Some(RenderError::ControlCharacter("apiKey".into())),
            "{bad:?}"
        );
    }
    let ok = v.render(values(&[("apiKey", "sk_live_1 2")])).unwrap();
    assert_eq!(ok.headers[0].0, "X-Key");
    assert_eq!(ok.headers[0].1.expose_secret(), "k=sk_live_1 2");
}

#[test]
fn body_values_stay_json_strings() {
    let v = verify(json!({"method": "POST", "url": "https://a.example/check",
                          "body": {"key": "{{apiKey}}", "n": 1, "list": ["{{account}}"]}}))
    .unwrap();
    let r = v.render(values(&[("apiKey", "\",\"admin\":true,\"x\":\""), ("account", "a\nb")])).unwrap();
    let sent: Value = serde_json::from_str(r.body.as_ref().unwrap().expose_secret()).unwrap();
    assert_eq!(sent, json!({"key": "\",\"admin\":true,\"x\":\"", "n": 1, "list": ["a\nb"]}));
}

#[test]
fn a_missing_value_is_named_and_no_value_appears_in_errors_or_debug() {
    let v = verify(json!({"method": "GET", "url": "https://a.example/?k={{apiKey}}",
                          "headers": {"Authorization": "Bearer {{apiKey}}", "X-Account": "{{account}}"}}))
    .unwrap();
    assert_eq!(v.render(values(&[("apiKey", "k")])).err(), Some(RenderError::Missing("account".into())));
    let r = v.render(values(&[("apiKey", "canary-secret-1"), ("account", "a")])).unwrap();
    let debug = format!("{r:?}");
    assert!(!debug.contains("canary-secret-1"), "{debug}");
    assert!(debug.contains("Authorization"));
    let e = v.render(values(&[("apiKey", "canary-secret-1\r\n"), ("account", "a")])).unwrap_err();
    assert!(!e.to_string().contains("canary"));
}

#[test]
fn basic_credentials_are_one_encoded_authorization_header() {
    let v = verify(json!({"method": "GET", "url": "https://a.example/Accounts/{{account}}",
                          "basic": {"username": "{{account}}", "password": "{{apiKey}}"}}))
    .unwrap();
    assert_eq!(v.names(), vec!["account", "apiKey"]);
    let r = v.render(values(&[("account", "AC1"), ("apiKey", "s3cret:x")])).unwrap();
    assert_eq!(r.headers.len(), 1);
    assert_eq!(r.headers[0].0, "Authorization");
    // base64("AC1:s3cret:x")
    assert_eq!(r.headers[0].1.expose_secret(), "Basic QUMxOnMzY3JldDp4");
    let key_only =
        verify(json!({"method": "GET", "url": "https://a.example/", "basic": {"username": "{{apiKey}}"}})).unwrap();
    let r = key_only.render(values(&[("apiKey", "sk_1")])).unwrap();
    assert_eq!(r.headers[0].1.expose_secret(), "Basic c2tfMTo=", "base64(\"sk_1:\")");
    assert_eq!(key_only.render(values(&[])).err(), Some(RenderError::Missing("apiKey".into())));

    let errs = verify(json!({"method": "GET", "url": "https://a.example/",
        "headers": {"authorization": "Bearer {{apiKey}}"}, "basic": {"username": "{{nope}}", "extra": 1}}))
    .unwrap_err();
    assert!(!errs.is_empty(), "an unknown member of basic");
    let errs = verify(json!({"method": "GET", "url": "https://a.example/",
        "headers": {"authorization": "Bearer {{apiKey}}"}, "basic": {"username": "{{nope}}"}}))
    .unwrap_err();
    assert_eq!(fields(&errs), vec!["verify.basic.username", "verify.basic"]);
}

#[test]
fn statuses_read_as_verdicts() {
    let any_2xx = verify(json!({"method": "HEAD", "url": "https://a.example/"})).unwrap();
    assert_eq!(any_2xx.verdict(204), Verdict::Accepted);
    assert_eq!(any_2xx.verdict(401), Verdict::Rejected);
    assert_eq!(any_2xx.verdict(403), Verdict::Rejected);
    assert_eq!(any_2xx.verdict(429), Verdict::Unavailable);
    assert_eq!(any_2xx.verdict(503), Verdict::Unavailable);
    assert_eq!(any_2xx.verdict(404), Verdict::Unexpected);
    assert_eq!(any_2xx.verdict(302), Verdict::Unexpected);
    let only_200 = verify(json!({"method": "GET", "url": "https://a.example/", "expect_status": [200, 404]})).unwrap();
    assert_eq!(only_200.verdict(204), Verdict::Unexpected);
    assert_eq!(only_200.verdict(404), Verdict::Accepted);
}

#[test]
fn sizes_are_bounded() {
    let long = format!("https://a.example/{}", "a".repeat(MAX_URL));
    assert!(verify(json!({"method": "GET", "url": long})).is_err());
    let headers: serde_json::Map<String, Value> = (0..=MAX_HEADERS).map(|i| (format!("X-{i}"), json!("v"))).collect();
    assert!(verify(json!({"method": "GET", "url": "https://a.example/", "headers": headers})).is_err());
    let big = json!({"k": "x".repeat(MAX_BODY)});
    assert!(verify(json!({"method": "POST", "url": "https://a.example/", "body": big})).is_err());
    let many: String = (0..=MAX_PLACEHOLDERS).map(|_| "{{apiKey}}").collect();
    assert!(verify(json!({"method": "GET", "url": "https://a.example/", "headers": {"X": many}})).is_err());
}
