//! The connect page's HTML (maud: checked at compile time, every interpolation escaped). The
//! markup follows the contract the browser suite selects by (`/work/notes/issue13-design.md`,
//! "Markup contract"): `section.definition[data-definition]`, `li.connection[data-status]`,
//! `.status`, `.error-message`, `details.logs`, `button[data-action]`, `form.values-form`,
//! `.field-error[data-field]`. No inline script or style: the CSP allows neither.

use std::collections::{BTreeMap, BTreeSet};

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;

use crate::domain::{InputType, LogEntry, LogType, Status};
use crate::service::{ConnectPage, DeviceAuthorizeResponse, PageConnection, PageDefinition, PageInput};

/// Where the page's stylesheet and script are served.
pub const CSS_PATH: &str = "/connect/assets/connect.css";
pub const JS_PATH: &str = "/connect/assets/connect.js";

/// The message at the top of the page.
pub enum Banner {
    /// Green, `role="status"`.
    Success(String),
    /// Red, `role="alert"`.
    Error(String),
}

/// A form posted back with errors: which form it was, what was typed (never a password's
/// value) and each field's error, by input name.
#[derive(Debug, Default)]
pub struct FormState {
    pub definition: String,
    pub connection_id: Option<String>,
    pub values: BTreeMap<String, String>,
    pub errors: BTreeMap<String, String>,
}

impl FormState {
    fn is_for(&self, definition: &str, connection_id: Option<&str>) -> bool {
        self.definition == definition && self.connection_id.as_deref() == connection_id
    }
}

/// Everything one render of the page needs.
pub struct PageView<'a> {
    pub session_id: &'a str,
    /// The session reconnects this one connection: no forms for new connections.
    pub reconnect: Option<&'a str>,
    pub page: &'a ConnectPage,
    pub csrf: &'a str,
    pub banner: Option<Banner>,
    /// The connection that just succeeded (`data-connected`, for connect.js's postMessage).
    pub connected: Option<&'a str>,
    pub form: Option<&'a FormState>,
}

/// The whole document of `title` around `content`, with `body` attributes of the contract.
fn document(title: &str, session_id: &str, parent_origin: &str, connected: &str, content: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex";
                title { (title) }
                link rel="stylesheet" href=(CSS_PATH);
                script src=(JS_PATH) defer {}
            }
            body data-session=(session_id) data-parent-origin=(parent_origin) data-connected=(connected) {
                main { (content) }
            }
        }
    }
    .into_string()
}

/// A page that only says `title` and `text` (a refused link, a refused form).
pub fn message_page(title: &str, text: &str) -> String {
    let content = html! {
        div.refused {
            h1 { (title) }
            p { (text) }
        }
    };
    document(title, "", "", "", content)
}

/// The answer to the Connect button: a page of this origin that goes on to the provider's
/// `authorize_url` (connect.js follows the `a[data-continue]` link at once; without script the
/// customer clicks it), so the page's CSP never needs another origin in `form-action`.
pub fn continue_page(label: &str, authorize_url: &str) -> String {
    let title = format!("Continue to {label}");
    let content = html! {
        div.refused {
            h1 { (title) }
            p { "Sign in there and approve the connection." }
            p { a.continue href=(authorize_url) rel="noreferrer" data-continue="" { (title) } }
        }
    };
    document(&title, "", "", "", content)
}

/// The answer to the Connect button of a device-flow definition (RFC 8628): the user code, where
/// to enter it (and the link with the code filled in, when the provider has one), when it
/// expires, and the way back to the connect page, which shows the connection's status once the
/// sweep has polled. No `a[data-continue]`: nothing is followed automatically.
pub fn device_page(session_id: &str, label: &str, d: &DeviceAuthorizeResponse) -> String {
    let title = format!("Connect {label}");
    let content = html! {
        div.device {
            h1 { (title) }
            (device_code(d))
            p {
                a.back href=(format!("/connect/{session_id}")) {
                    "Back to the connections (the status shows once you have approved)"
                }
            }
        }
    };
    document(&title, session_id, "", "", content)
}

/// A device authorization's user code, where to enter it (and the link with the code filled
/// in, when the provider has one) and when it expires: on the Connect button's answer and in the
/// row of a connection whose authorization is in progress.
fn device_code(d: &DeviceAuthorizeResponse) -> Markup {
    html! {
        p {
            "Go to "
            a.verification href=(d.verification_uri) rel="noreferrer" target="_blank" { (d.verification_uri) }
            " and enter this code:"
        }
        p { code.user-code data-user-code="" { (d.user_code) } }
        @if let Some(complete) = &d.verification_uri_complete {
            p {
                a.verification-complete href=(complete) rel="noreferrer" target="_blank" {
                    "Open the page with the code filled in"
                }
            }
        }
        p.expires { "The code expires at " (when(d.expires_at)) "." }
    }
}

/// What the refused and expired links show (HTTP 403).
pub const INVALID_LINK_TITLE: &str = "This connect link is no longer valid";
pub const INVALID_LINK_TEXT: &str = "Connect links work once and expire after 30 minutes. Go back to the \
                                     application that sent you here and open the page again.";

/// The connect page.
pub fn page(v: &PageView<'_>) -> String {
    let ctx = &v.page.context;
    let heading = match ctx.integration_name.as_deref() {
        Some(name) => format!("Connect {name}"),
        None => "Connect your accounts".to_owned(),
    };
    let content = html! {
        header.page-header {
            h1 { (heading) }
            @if let Some(instance) = ctx.instance_name.as_deref() {
                p { "For " strong { (instance) } }
            } @else {
                p { "Connect the services below. Your credentials are stored encrypted and never shown again." }
            }
        }
        @match &v.banner {
            Some(Banner::Success(text)) => div.banner.success role="status" { (text) },
            Some(Banner::Error(text)) => div.banner.error role="alert" { (text) },
            None => {},
        }
        @if v.page.definitions.is_empty() {
            p.empty { "There is nothing to connect here." }
        }
        @for def in &v.page.definitions {
            (definition(v, def))
        }
        footer { "Secured by Latchkey" }
    };
    let parent = v.page.parent_origin.as_deref().unwrap_or_default();
    document(&heading, v.session_id, parent, v.connected.unwrap_or_default(), content)
}

fn definition(v: &PageView<'_>, def: &PageDefinition) -> Markup {
    let heading_id = format!("def-{}", def.key);
    html! {
        section.definition data-definition=(def.key) aria-labelledby=(heading_id) {
            h2 id=(heading_id) { (def.label) }
            @if let Some(d) = def.description.as_deref() {
                p.description { (d) }
            }
            @if def.connections.is_empty() {
                p.empty { "Not connected yet." }
            } @else {
                ul.connections {
                    @for c in &def.connections {
                        (connection(v, def, c))
                    }
                }
            }
            @if v.reconnect.is_none() {
                div.new-connection {
                    @if def.oauth {
                        (authorize_form(v, def, None, if def.connections.is_empty() { "Connect" } else { "Connect another account" }))
                    } @else {
                        h3 { @if def.connections.is_empty() { "Connect" } @else { "Add another connection" } }
                        (values_form(v, def, None, &BTreeMap::new(), &BTreeSet::new()))
                    }
                }
            }
        }
    }
}

/// The badge text of a status: never colour alone.
pub fn status_text(s: Status) -> &'static str {
    match s {
        Status::Active => "Active",
        Status::Configured => "Configured",
        Status::Error => "Error",
        Status::Pending => "Pending",
        Status::Disconnected => "Disconnected",
    }
}

fn connection(v: &PageView<'_>, def: &PageDefinition, c: &PageConnection) -> Markup {
    let status: &'static str = c.status.into();
    let name = c.label.clone().unwrap_or_else(|| format!("{} connection", def.label));
    let posted_here = v.form.is_some_and(|f| f.is_for(&def.key, Some(&c.id)));
    let open_update = posted_here || matches!(c.status, Status::Error | Status::Disconnected);
    html! {
        li.connection data-connection-id=(c.id) data-status=(status) {
            div.connection-head {
                span.connection-name { (name) }
                span class={ "status status-" (status) } { (status_text(c.status)) }
            }
            (connection_meta(c))
            @if c.status == Status::Error {
                p.error-message {
                    (c.error.as_ref().map_or("This connection stopped working.", |e| e.message.as_str()))
                }
            }
            @if !c.editable {
                p.meta { "Managed by your administrator." }
            }
            @if let Some(d) = &c.device {
                div.device-pending { (device_code(d)) }
            }
            @if c.editable {
                @if def.oauth {
                    div.actions {
                        (authorize_form(v, def, Some(&c.id), if c.status == Status::Pending { "Connect" } else { "Reconnect" }))
                    }
                }
                @if !def.oauth && !def.inputs.is_empty() {
                    details.update open[open_update] {
                        summary { "Update credentials" }
                        (values_form(v, def, Some(&c.id), &c.values, &c.secrets_held))
                    }
                }
                @if c.status != Status::Disconnected {
                    (disconnect_form(v, c, &name))
                }
            }
            (logs(&c.logs))
        }
    }
}

/// What tells a connection's row apart from its neighbours: the instance it is bound to, and
/// when it was created.
fn connection_meta(c: &PageConnection) -> Markup {
    html! {
        p.meta.connection-meta {
            @if let Some(instance) = c.instance.as_deref() {
                "Instance " strong { (instance) } " · "
            }
            "Created " time datetime=(c.created_at.format(&Rfc3339).unwrap_or_default()) { (when(c.created_at)) }
        }
    }
}

/// The Disconnect button, after the row's main action: connect.js asks `data-confirm` first
/// (without script the form posts at once).
fn disconnect_form(v: &PageView<'_>, c: &PageConnection, name: &str) -> Markup {
    let confirm = format!("Disconnect {name}? Its credentials are removed; you can connect again later.");
    html! {
        div.actions.disconnect-actions {
            form.disconnect-form method="post" action=(format!("/connect/{}/disconnect", v.session_id)) {
                input type="hidden" name="csrf" value=(v.csrf);
                input type="hidden" name="connection_id" value=(c.id);
                button.danger type="submit" data-action="disconnect" data-confirm=(confirm) { "Disconnect" }
            }
        }
    }
}

fn logs(entries: &[LogEntry]) -> Markup {
    html! {
        details.logs {
            summary { "Activity (" (entries.len()) ")" }
            @if entries.is_empty() {
                p.meta { "Nothing yet." }
            } @else {
                ol {
                    @for e in entries {
                        li {
                            time datetime=(e.at.format(&Rfc3339).unwrap_or_default()) { (when(e.at)) }
                            " "
                            span.log-type { (log_sentence(e.kind)) }
                            @if shows_details(e.kind) && !e.message.trim().is_empty() {
                                ": " span.log-detail { (e.message) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A log line as the customer reads it: a short sentence per type. The stored message is the
/// organization's wording (which endpoint, which tokens): the page shows it only for the
/// failures a customer can act on ([`shows_details`]).
fn log_sentence(kind: LogType) -> &'static str {
    match kind {
        LogType::Created => "Connection created",
        LogType::Updated => "Details updated",
        LogType::AuthorizeStarted => "Authorization started",
        LogType::Authorized => "Authorized",
        LogType::Reconnected => "Connected again",
        LogType::AuthorizeFailed => "Authorization failed",
        LogType::Refreshed => "Access renewed",
        LogType::RefreshFailed => "Access could not be renewed",
        LogType::Used => "Used by the application",
        LogType::ErrorReported => "A problem was reported",
        LogType::Disconnected => "Disconnected",
        LogType::Revoked => "Access withdrawn at the provider",
        LogType::RevokeFailed => "Access could not be withdrawn at the provider",
        LogType::RefreshTokenExpiring => "Access expires soon: connect again to keep it",
        LogType::Verified => "Credentials checked",
        LogType::VerifyFailed => "Credentials could not be confirmed",
    }
}

/// Whether a log line of `kind` shows its message after the sentence: the failures, whose
/// message says what the provider answered.
fn shows_details(kind: LogType) -> bool {
    matches!(kind, LogType::AuthorizeFailed | LogType::RefreshFailed | LogType::ErrorReported | LogType::VerifyFailed)
}

/// `2026-11-30 05:12 UTC`.
fn when(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", at.year(), u8::from(at.month()), at.day(), at.hour(), at.minute())
}

fn authorize_form(v: &PageView<'_>, def: &PageDefinition, connection_id: Option<&str>, label: &str) -> Markup {
    html! {
        form.authorize-form method="post" action=(format!("/connect/{}/authorize", v.session_id)) {
            input type="hidden" name="csrf" value=(v.csrf);
            input type="hidden" name="definition" value=(def.key);
            @if let Some(id) = connection_id {
                input type="hidden" name="connection_id" value=(id);
            }
            button type="submit" data-action="connect" class=[connection_id.map(|_| "secondary")] { (label) }
            p.new-window-note hidden { "Opens in a new window." }
        }
    }
}

/// A JSON value as a form field shows it.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The form of `def`'s inputs: a new connection (`connection_id` `None`, prefilled with the
/// defaults) or an update of one (prefilled with its `current` non-secret values). A password
/// input never has a value; on an update, blank keeps the current one when the connection
/// holds one (`held`), else it is as required as on a new connection.
fn values_form(
    v: &PageView<'_>,
    def: &PageDefinition,
    connection_id: Option<&str>,
    current: &BTreeMap<String, Value>,
    held: &BTreeSet<String>,
) -> Markup {
    let form_id = match connection_id {
        Some(id) => format!("c-{id}"),
        None => format!("new-{}", def.key),
    };
    let state = v.form.filter(|f| f.is_for(&def.key, connection_id));
    let update = connection_id.is_some();
    let keeps = |i: &PageInput| update && i.kind == InputType::Password && held.contains(&i.name);
    let any_required = def.inputs.iter().any(|i| i.required && !keeps(i));
    html! {
        form.values-form id=(form_id) method="post" action=(format!("/connect/{}/values", v.session_id))
            data-definition=(def.key) data-connection-id=[connection_id] novalidate {
            input type="hidden" name="csrf" value=(v.csrf);
            input type="hidden" name="definition" value=(def.key);
            @if let Some(id) = connection_id {
                input type="hidden" name="connection_id" value=(id);
            }
            @if any_required {
                p.meta { "Fields marked " span.required aria-hidden="true" { "*" } " are required." }
            }
            @for input in &def.inputs {
                @let value = match state {
                    Some(s) => s.values.get(&input.name).cloned(),
                    None if update => current.get(&input.name).map(shown),
                    None => input.default.as_ref().map(shown),
                };
                (field(&form_id, input, value, state.and_then(|s| s.errors.get(&input.name)), keeps(input)))
            }
            button type="submit" data-action="save" { @if update { "Save" } @else { "Connect" } }
        }
    }
}

/// One input's field; `keep_blank`: a password the connection holds, which blank keeps.
fn field(form_id: &str, input: &PageInput, value: Option<String>, error: Option<&String>, keep_blank: bool) -> Markup {
    let id = format!("{form_id}-{}", input.name);
    let name = format!("{}{}", super::form::VALUE_PREFIX, input.name);
    let hint_id = format!("{id}-hint");
    let error_id = format!("{id}-error");
    let required = input.required && !keep_blank;
    let described: Vec<&str> = [
        input.description.as_ref().map(|_| hint_id.as_str()),
        keep_blank.then_some(hint_id.as_str()),
        error.map(|_| error_id.as_str()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let described = (!described.is_empty()).then(|| {
        let mut d = described;
        d.dedup();
        d.join(" ")
    });
    let invalid = error.map(|_| "true");
    let label = html! {
        label for=(id) {
            (input.label)
            @if required { span.required aria-hidden="true" { "*" } }
        }
    };
    html! {
        div class={ "field" @if input.kind == InputType::Boolean { " checkbox" } } {
            @match input.kind {
                InputType::Boolean => {
                    input type="checkbox" id=(id) name=(name) value="true"
                        checked[value.as_deref() == Some("true")] aria-describedby=[described.as_deref()]
                        aria-invalid=[invalid];
                    (label)
                }
                InputType::Password => {
                    (label)
                    // Never a value: not the stored secret, not even what was just typed.
                    input type="password" id=(id) name=(name) autocomplete="new-password" required[required]
                        aria-describedby=[described.as_deref()] aria-invalid=[invalid];
                }
                InputType::Text => {
                    (label)
                    textarea id=(id) name=(name) rows="4" required[required]
                        aria-describedby=[described.as_deref()] aria-invalid=[invalid] { (value.unwrap_or_default()) }
                }
                InputType::Number => {
                    (label)
                    // Text with a numeric keyboard: the server, not the browser, says what is wrong.
                    input type="text" inputmode="decimal" id=(id) name=(name) value=[value] required[required]
                        aria-describedby=[described.as_deref()] aria-invalid=[invalid];
                }
                InputType::Url => {
                    (label)
                    input type="url" id=(id) name=(name) value=[value] required[required] autocomplete="off"
                        spellcheck="false" aria-describedby=[described.as_deref()] aria-invalid=[invalid];
                }
                InputType::String => {
                    (label)
                    input type="text" id=(id) name=(name) value=[value] required[required] autocomplete="off"
                        spellcheck="false" aria-describedby=[described.as_deref()] aria-invalid=[invalid];
                }
            }
            @if input.description.is_some() || keep_blank {
                p.hint id=(hint_id) {
                    @if let Some(d) = input.description.as_deref() { (d) }
                    @if keep_blank {
                        @if input.description.is_some() { " " }
                        "Leave blank to keep the current value."
                    }
                }
            }
            @if let Some(e) = error {
                p.field-error id=(error_id) data-field=(input.name) { (e) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::{AuthKind, ConnectContext, StatusError};

    fn input(name: &str, kind: InputType, default: Option<Value>) -> PageInput {
        PageInput {
            name: name.into(),
            label: format!("{name} label"),
            kind,
            required: true,
            default,
            description: None,
        }
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
        assert!(html.contains(
            "<p class=\"field-error\" id=\"new-acme-api-apiKey-error\" data-field=\"apiKey\">is required</p>"
        ));
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
            LogEntry::new(
                time::OffsetDateTime::UNIX_EPOCH,
                LogType::AuthorizeFailed,
                "access_denied: the user said no",
            ),
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
            html.contains(
                "Authorization failed</span>: <span class=\"log-detail\">access_denied: the user said no</span>"
            ),
            "{html}"
        );
        assert!(
            html.contains("data-action=\"disconnect\" data-confirm=\"Disconnect &lt;b&gt;Prod&lt;/b&gt;?"),
            "{html}"
        );
    }
}
