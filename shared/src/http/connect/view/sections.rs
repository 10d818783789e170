//! The connect page: its header, banner and one section per definition it offers.

use std::collections::{BTreeMap, BTreeSet};

use maud::{Markup, html};

use super::forms::{authorize_form, values_form};
use super::rows::connection;
use super::{Banner, PageView, document};
use crate::service::PageDefinition;

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
