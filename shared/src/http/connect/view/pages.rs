//! The pages of their own: a message, the Connect button's "Continue to", a device code.

use maud::{Markup, html};

use super::{document, when};
use crate::service::DeviceAuthorizeResponse;

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
pub(super) fn device_code(d: &DeviceAuthorizeResponse) -> Markup {
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
