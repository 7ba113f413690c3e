//! The adapter that runs a backend-neutral body ([`AnyBody`]) on a concrete store, whose
//! bodies get its own context type.

use std::sync::Arc;

use super::AnyBody;
use crate::core::error::{BatchFailure, HandlerError};
use crate::core::event::Event;
use crate::core::projection::{Applied, Apply, Prefetch, Projection};
use crate::core::sql::SqlTx;

/// Runs an [`AnyBody`] on a store whose context is `C`, passing the context as `&dyn SqlTx`.
struct Neutral(Arc<AnyBody>);

impl<C: SqlTx + 'static> Apply<C> for Neutral {
    fn event_types(&self) -> Option<Vec<String>> {
        self.0.event_types()
    }

    fn setup(&self, cx: &C) -> Result<(), HandlerError> {
        self.0.setup(cx)
    }

    fn reset(&self, cx: &C) -> Result<(), HandlerError> {
        self.0.reset(cx)
    }

    fn apply(&self, cx: &C, events: &[Event]) -> Result<Applied, BatchFailure> {
        self.0.apply(cx, events)
    }

    fn prefetch(&self, events: &[Event]) -> Vec<Prefetch> {
        self.0.prefetch(events)
    }

    fn batch_wide(&self) -> bool {
        self.0.batch_wide()
    }

    fn reads(&self) -> bool {
        self.0.reads()
    }

    fn around(&self, run: &mut dyn FnMut()) {
        self.0.around(run)
    }

    fn declarative(&self) -> Option<&crate::declarative::SqlBody> {
        self.0.declarative()
    }
}

/// `body` as a body of a store whose context is `C`.
pub(super) fn concrete<C: SqlTx + 'static>(body: Arc<AnyBody>) -> Arc<dyn Apply<C>> {
    Arc::new(Neutral(body))
}

/// `projection` over a store whose context is `C`.
pub(super) fn concrete_projection<C: SqlTx + 'static>(
    projection: &Projection<AnyBody>,
) -> Projection<dyn Apply<C>> {
    projection.with_body(concrete(projection.body().clone()))
}
