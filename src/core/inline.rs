//! Inline appends: an append and the inline projections applied in its own transaction, so that
//! their read models show the events as soon as the append returns. [`Engine::append`] is
//! written once here, over [`InlineAppend`]; each backend applies the projections its own way.

use std::future::Future;

use super::engine::Engine;
use super::error::Result;
use super::event::{Appended, ExpectedVersion, NewEvent, StreamAppend};
use super::projection::Projection;
use super::source::Source;
use super::store::Store;

/// A store that appends to the event log `L` and applies inline projections in the same
/// transaction. Only where the events and the read models share a database.
pub trait InlineAppend<L: ?Sized>: Store {
    /// Appends `appends` to `log` and brings each of `inline` up to the new head, in one
    /// transaction: all or nothing. A failing inline handler fails the append with
    /// [`Error::InlineProjection`](super::error::Error::InlineProjection), and nothing of it is
    /// written. With no inline projections it is a plain append to `log`. Fails when there are
    /// inline projections and `log` is not in this store's database.
    fn append_inline(
        &self,
        log: &L,
        appends: Vec<StreamAppend>,
        inline: Vec<Projection<Self::Body>>,
    ) -> impl Future<Output = Result<Vec<Appended>>> + Send;
}

impl<S: Source, St: InlineAppend<S>> Engine<S, St> {
    /// Appends events to one stream and applies every inline projection in the same
    /// transaction: when this returns, inline read models already show the events. A failing
    /// inline handler fails the append with
    /// [`Error::InlineProjection`](super::error::Error::InlineProjection), and nothing of it is
    /// written. Projections that are not inline are applied by runners, as usual.
    pub async fn append(
        &self,
        stream_id: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended> {
        Appended::only(
            self.append_many(vec![StreamAppend::new(stream_id, expected, events)])
                .await?,
        )
    }

    /// Appends to several streams, with the inline projections, in one transaction.
    pub async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<Appended>> {
        let inline: Vec<Projection<St::Body>> = self
            .projections()
            .iter()
            .filter(|p| p.options().inline)
            .cloned()
            .collect();
        self.store().append_inline(self.source(), appends, inline).await
    }
}
