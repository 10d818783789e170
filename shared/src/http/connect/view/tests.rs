//! The markup of the connect page, rendered from hand-made pages.

use serde_json::{Value, json};

use super::*;
use crate::domain::{AuthKind, ConnectContext, InputType, LogEntry, LogType, Status, StatusError};
use crate::service::{PageConnection, PageDefinition, PageInput};

fn input(name: &str, kind: InputType, default: Option<Value>) -> PageInput {
    PageInput { name: name.into(), label: format!("{name} label"), kind, required: true, default, description: None }
}

fn page() -> ConnectPage {
    let red = PageConnection {
        id: "con_red".into(),
        label: Some("<b>Prod</b>".into()),
        status: Status::Error,
        error: Some(StatusError {
            code: "reported".into(),
            provider_code: None,
            message: "Acme said <no>".into(),
            at: time::OffsetDateTime::UNIX_EPOCH,
        }),
        editable: true,
        instance: Some("Shop <EU>".into()),
        created_at: time::OffsetDateTime::UNIX_EPOCH,
        secrets_held: ["apiKey".to_owned()].into(),
        // A password value in the connection's values must not show even if it got there.
        values: [("apiKey".to_owned(), json!("sk_in_values")), ("region".to_owned(), json!("eu"))].into(),
        logs: Vec::new(),
        device: None,
    };
    ConnectPage {
        context: ConnectContext::default(),
        parent_origin: Some("https://app.example.com".into()),
        definitions: vec![PageDefinition {
            key: "acme-api".into(),
            label: "Acme".into(),
            description: None,
            auth: AuthKind::ApiKey,
            oauth: false,
            inputs: vec![
                input("apiKey", InputType::Password, Some(json!("sk_in_default"))),
                input("region", InputType::String, Some(json!("us"))),
                input("sandbox", InputType::Boolean, Some(json!(true))),
            ],
            connections: vec![red],
        }],
    }
}

#[test]
fn a_password_input_never_has_a_value_and_text_is_escaped() {
    let page = page();
    let state = FormState {
        definition: "acme-api".into(),
        connection_id: None,
        values: [("apiKey".to_owned(), "sk_in_state".to_owned()), ("region".to_owned(), "typed".to_owned())].into(),
        errors: [("apiKey".to_owned(), "is required".to_owned())].into(),
    };
    let html = super::page(&PageView {
        session_id: "01J",
        reconnect: None,
        page: &page,
        csrf: "tok",
        banner: Some(Banner::Error("Please <fix>".into())),
        connected: None,
        form: Some(&state),
    });
    for secret in ["sk_in_values", "sk_in_default", "sk_in_state"] {
        assert!(!html.contains(secret), "{secret}");
    }
    assert!(html.contains("&lt;b&gt;Prod&lt;/b&gt;") && html.contains("Acme said &lt;no&gt;"));
    assert!(html.contains("Please &lt;fix&gt;"));
    assert!(
        html.contains(
            "<p class=\"field-error\" id=\"new-acme-api-apiKey-error\" data-field=\"apiKey\">is required</p>"
        )
    );
    assert!(html.contains("data-parent-origin=\"https://app.example.com\""));
    // The red connection's update form is open, its region prefilled, the new form's default.
    assert!(html.contains("<details class=\"update\" open>"), "{html}");
    assert!(html.contains("id=\"c-con_red-region\" name=\"value.region\" value=\"eu\""), "{html}");
    assert!(html.contains("id=\"new-acme-api-region\" name=\"value.region\" value=\"typed\""), "{html}");
    assert!(html.contains("Leave blank to keep the current value."));
    assert!(!html.contains("<script>") && !html.contains("style="));
}

#[test]
fn a_new_form_starts_from_the_defaults() {
    let page = page();
    let html = super::page(&PageView {
        session_id: "01J",
        reconnect: None,
        page: &page,
        csrf: "tok",
        banner: None,
        connected: None,
        form: None,
    });
    assert!(!html.contains("sk_in_default") && !html.contains("sk_in_values"));
    assert!(html.contains("id=\"new-acme-api-region\" name=\"value.region\" value=\"us\""), "{html}");
    assert!(html.contains("id=\"new-acme-api-sandbox\" name=\"value.sandbox\" value=\"true\" checked"), "{html}");
    assert!(html.contains("Leave blank to keep the current value."));
    assert!(!html.contains("<script>") && !html.contains("style="));
}

#[test]
fn a_reconnect_session_offers_no_new_connection() {
    let page = page();
    let view = |reconnect| PageView {
        session_id: "01J",
        reconnect,
        page: &page,
        csrf: "tok",
        banner: None,
        connected: None,
        form: None,
    };
    assert!(super::page(&view(None)).contains("id=\"new-acme-api\""));
    assert!(!super::page(&view(Some("con_red"))).contains("id=\"new-acme-api\""));
}

#[test]
fn a_wiped_password_is_required_again_on_update() {
    let mut page = page();
    let red = &mut page.definitions[0].connections[0];
    red.status = Status::Disconnected;
    red.secrets_held.clear();
    let html = super::page(&PageView {
        session_id: "01J",
        reconnect: Some("con_red"),
        page: &page,
        csrf: "tok",
        banner: None,
        connected: None,
        form: None,
    });
    assert!(!html.contains("Leave blank to keep the current value."), "{html}");
    assert!(
        html.contains(
            "type=\"password\" id=\"c-con_red-apiKey\" name=\"value.apiKey\" autocomplete=\"new-password\" required"
        ),
        "{html}"
    );
    assert!(html.contains("apiKey label<span class=\"required\""), "{html}");
}

#[test]
fn rows_say_their_instance_and_creation_and_log_lines_are_sentences() {
    let mut page = page();
    page.definitions[0].connections[0].logs = vec![
        LogEntry::new(time::OffsetDateTime::UNIX_EPOCH, LogType::Created, "created"),
        LogEntry::new(
            time::OffsetDateTime::UNIX_EPOCH,
            LogType::Revoked,
            "tokens dropped: the definition has no revokeUrl",
        ),
        LogEntry::new(time::OffsetDateTime::UNIX_EPOCH, LogType::AuthorizeFailed, "access_denied: the user said no"),
    ];
    let html = super::page(&PageView {
        session_id: "01J",
        reconnect: None,
        page: &page,
        csrf: "tok",
        banner: None,
        connected: None,
        form: None,
    });
    assert!(html.contains("Instance <strong>Shop &lt;EU&gt;</strong> · Created <time"), "{html}");
    assert!(
        html.contains("1970-01-01 00:00 UTC</time> <span class=\"log-type\">Connection created</span></li>"),
        "{html}"
    );
    assert!(!html.contains("revokeUrl"), "{html}");
    assert!(
        html.contains("Authorization failed</span>: <span class=\"log-detail\">access_denied: the user said no</span>"),
        "{html}"
    );
    assert!(html.contains("data-action=\"disconnect\" data-confirm=\"Disconnect &lt;b&gt;Prod&lt;/b&gt;?"), "{html}");
}
