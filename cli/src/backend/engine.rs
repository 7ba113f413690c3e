//! The one engine type every command runs on.

use std::sync::Arc;

use projectionist::backend::{AnyEngine, AnySource, Store};
use projectionist::declarative::Config;

use super::Database;

/// The engine of every command: any source, any store, declarative projections.
pub type CliEngine = AnyEngine;

/// The engine that reads events from `source` and keeps the read models (and checkpoints) of
/// `config`'s projections in `db`, with the store's runner settings.
pub fn engine(db: &Database, source: AnySource, config: Option<&Config>) -> projectionist::Result<CliEngine> {
    let settings = db.store.runner_settings();
    let mut engine = CliEngine::new(Arc::new(source), Arc::new(db.store.clone())).settings(settings);
    if let Some(config) = config {
        for def in &config.projections {
            engine.register(projectionist::declarative::projection(def))?;
        }
    }
    Ok(engine)
}
