//! `table+postgres://…`, `table+sqlite://…`, `eventsourcing+postgres://…` and
//! `eventsourcing+sqlite://…`: an events table a team already has, read where it lies.

use anyhow::Result;
use projectionist::backend::BoxFuture;
use projectionist::declarative::Config;
use projectionist::table::TableMapping;

use super::registry::{not_opened, OpenedSource};
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
            // A missing table or column, a wrong type, a cached sequence: the user's to fix.
            let source = projectionist::table::open(url)
                .await
                .map_err(|e| not_opened(shown, e))?;
            Ok(OpenedSource { source, describe })
        })
    }
}
