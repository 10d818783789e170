//! Walking every connection a filter matches, page by page: the use cases that act on all of a
//! definition's connections (sealing new password inputs, re-arming after a client-settings
//! fix, periodic checks) share this instead of each writing the cursor loop.

use futures_util::stream::{self, Stream, StreamExt};

use crate::domain::{Connection, ConnectionId, OrgId};
use crate::ports::{ConnectionFilter, Store, StoreError};

use super::MAX_PAGE;

/// Every connection of `org` matching `filter`, newest first, read [`MAX_PAGE`] at a time as
/// the stream is consumed (never the whole listing in memory). A store error is yielded once
/// and ends the stream: callers log it and stop, as a half-walked listing cannot resume.
pub(crate) fn connections<'a>(
    store: &'a dyn Store,
    org: &'a OrgId,
    filter: &'a ConnectionFilter,
) -> impl Stream<Item = Result<Connection, StoreError>> + Send + 'a {
    // The state is the next page's cursor (`Some(None)`: the first page), `None` once done.
    let pages = stream::unfold(Some(None::<ConnectionId>), move |state| async move {
        let cursor = state?;
        match store.list_connections(org, filter, MAX_PAGE, cursor.as_ref()).await {
            Ok(page) => Some((Ok(page.items), page.next.map(Some))),
            Err(e) => Some((Err(e), None)),
        }
    });
    pages.flat_map(|page| {
        let items: Vec<Result<Connection, StoreError>> = match page {
            Ok(items) => items.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        stream::iter(items)
    })
}
