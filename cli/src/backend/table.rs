//! `table+postgres://…`, `table+sqlite://…`, `eventsourcing+postgres://…` and
//! `eventsourcing+sqlite://…`: an events table a team already has, read where it lies.

use anyhow::Result;
use projectionist::backend::BoxFuture;
use projectionist::declarative::Config;
use projectionist::table::TableMapping;

use super::registry::OpenedSource;
use super::SourceBackend;
use crate::exit::usage;

/// The table source backend.
pub struct Table;

impl SourceBackend for Table {
    fn open<'a>(
        &'a self,
        url: &'a str,
        shown: &'a str,
        _config: Option<&'a Config>,
    ) -> BoxFuture<'a, Result<OpenedSource>> {
        Box::pin(async move {
            let mapping = TableMapping::from_url(url).map_err(|e| usage(format!("{shown}: {e}")))?;
            let describe = mapping.describe();
            match projectionist::table::open(url).await {
                Ok(source) => Ok(OpenedSource { source, describe }),
                // A missing table or column, a wrong type, a cached sequence: the user's to fix.
                Err(e @ (projectionist::Error::Config(_) | projectionist::Error::Unsupported(_))) => {
                    Err(usage(format!("{shown}: {e}")))
                }
                Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read events from {shown}"))),
            }
        })
    }
}
