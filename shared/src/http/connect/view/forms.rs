//! The Connect button and the values forms (a new connection's, a connection's update) with
//! their fields.

use std::collections::{BTreeMap, BTreeSet};

use maud::{Markup, html};
use serde_json::Value;

use super::PageView;
use crate::domain::InputType;
use crate::service::{PageDefinition, PageInput};

pub(super) fn authorize_form(
    v: &PageView<'_>,
    def: &PageDefinition,
    connection_id: Option<&str>,
    label: &str,
) -> Markup {
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
pub(super) fn values_form(
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
    let name = format!("{}{}", super::super::form::VALUE_PREFIX, input.name);
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
