//! `latchkey connections list|get`: what connections there are and how they are doing. Reads
//! never show a secret (a set password reads `{"set": true}`).

use std::io::IsTerminal;

use clap::{Args, Subcommand};
use latchkey_client::{Connection, ConnectionFilter};

use super::{Failure, Remote, line, print_json};

/// `latchkey connections ...`.
#[derive(Debug, Subcommand)]
pub enum Connections {
    /// List connections (every page): a table, or JSON with --json.
    List(List),
    /// Show one connection as JSON.
    Get {
        /// The connection's id (`con_...`).
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `latchkey connections list`.
#[derive(Debug, Args)]
pub struct List {
    /// Only connections of this definition.
    #[arg(long)]
    pub definition: Option<String>,
    /// Only this customer's connections.
    #[arg(long)]
    pub customer: Option<String>,
    /// Only connections in this status: pending, configured, active, error, disconnected.
    #[arg(long)]
    pub status: Option<String>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: Remote,
}

/// Runs `latchkey connections ...`.
///
/// # Errors
/// The API's refusal or no answer.
pub async fn run(command: Connections) -> Result<(), Failure> {
    match command {
        Connections::Get { id, remote } => print_json(&remote.client()?.get_connection(&id).await?),
        Connections::List(list) => {
            let client = list.remote.client()?;
            let filter = ConnectionFilter {
                definition: list.definition,
                customer: list.customer,
                status: list.status,
                ..ConnectionFilter::default()
            };
            // Many pages take a while: say how far it got, where someone is watching.
            let progress = std::io::stderr().is_terminal().then(|| {
                let p = indicatif::ProgressBar::new_spinner();
                p.set_message("reading connections");
                p
            });
            let all = client
                .all_connections(&filter, |n| {
                    if let Some(p) = &progress {
                        p.set_message(format!("{n} connections read"));
                    }
                })
                .await;
            if let Some(p) = progress {
                p.finish_and_clear();
            }
            let all = all.map_err(|e| list.remote.listing_failure(e))?;
            if list.json { print_json(&all) } else { print_table(&all) }
        }
    }
}

fn print_table(all: &[Connection]) -> Result<(), Failure> {
    let rows: Vec<[String; 6]> = all
        .iter()
        .map(|c| {
            let status = match &c.error {
                Some(e) => format!("{} ({})", c.status, e.code),
                None => c.status.to_string(),
            };
            Ok([
                c.id.clone(),
                c.definition.clone(),
                c.customer.clone().unwrap_or_else(|| "-".into()),
                c.scope.clone(),
                status,
                c.updated_at.format(&time::format_description::well_known::Rfc3339)?,
            ])
        })
        .collect::<Result<_, time::error::Format>>()?;
    let header = ["ID", "DEFINITION", "CUSTOMER", "SCOPE", "STATUS", "UPDATED"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        line(cells.join("  ").trim_end())?;
    }
    eprintln!("{} connection{}", rows.len(), if rows.len() == 1 { "" } else { "s" });
    Ok(())
}
