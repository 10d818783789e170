//! A connection's row: its name, status and what tells it apart, its actions (Connect or
//! Update, Disconnect), a device code in progress, and its log lines as sentences.

use maud::{Markup, html};
use time::format_description::well_known::Rfc3339;

use super::forms::{authorize_form, values_form};
use super::pages::device_code;
use super::{PageView, when};
use crate::domain::{LogEntry, LogType, Status};
use crate::service::{PageConnection, PageDefinition};

pub(super) fn connection(v: &PageView<'_>, def: &PageDefinition, c: &PageConnection) -> Markup {
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

/// The badge text of a status: never colour alone.
fn status_text(s: Status) -> &'static str {
    match s {
        Status::Active => "Active",
        Status::Configured => "Configured",
        Status::Error => "Error",
        Status::Pending => "Pending",
        Status::Disconnected => "Disconnected",
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
