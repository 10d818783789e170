//! The connect page's HTML (maud: checked at compile time, every interpolation escaped). The
//! markup follows the contract the browser suite selects by (`/work/notes/issue13-design.md`,
//! "Markup contract"): `section.definition[data-definition]`, `li.connection[data-status]`,
//! `.status`, `.error-message`, `details.logs`, `button[data-action]`, `form.values-form`,
//! `.field-error[data-field]`. No inline script or style: the CSP allows neither.
//!
//! - [`pages`]: the pages of their own (a message, "Continue to", a device code);
//! - [`sections`]: the connect page and its definitions' sections;
//! - [`rows`]: a connection's row (status, actions, log lines);
//! - [`forms`]: the Connect button and the values forms with their fields.

mod forms;
mod pages;
mod rows;
mod sections;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use maud::{DOCTYPE, Markup, html};

use crate::service::ConnectPage;

pub use pages::{INVALID_LINK_TEXT, INVALID_LINK_TITLE, continue_page, device_page, message_page};
pub use sections::page;

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

/// `2026-11-30 05:12 UTC`.
fn when(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", at.year(), u8::from(at.month()), at.day(), at.hour(), at.minute())
}
