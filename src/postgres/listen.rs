//! The live tail: one dedicated connection that LISTENs for the notifications of the events
//! table's trigger (and of checkpoint commits), and ticks the matching watch channels. It
//! reconnects with backoff after a lost connection, and ticks every channel after reconnecting,
//! because notifications sent while it was away are lost. Runners also poll, so a lost
//! notification only delays them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{debug, info, warn};

pub(crate) fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|n| *n = n.wrapping_add(1));
}

pub(crate) struct Listener {
    pub config: tokio_postgres::Config,
    /// Channel names and the watch each one ticks.
    pub channels: Vec<(String, Arc<watch::Sender<u64>>)>,
    pub connected: Arc<AtomicBool>,
    pub location: String,
}

impl Listener {
    /// Runs until `stop`'s sender is dropped (when the last handle of the store goes).
    pub async fn run(self, mut stop: watch::Receiver<()>) {
        const MIN: Duration = Duration::from_millis(50);
        const MAX: Duration = Duration::from_secs(10);
        let mut backoff = MIN;
        let listen: String = self
            .channels
            .iter()
            .map(|(c, _)| format!("LISTEN \"{}\";", c.replace('"', "\"\"")))
            .collect();
        loop {
            match self.config.connect(NoTls).await {
                Ok((client, mut connection)) => {
                    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
                    let driver = tokio::spawn(async move {
                        let mut messages =
                            futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(message) = messages.next().await {
                            match message {
                                Ok(AsyncMessage::Notification(n)) => {
                                    if tx.send(n.channel().to_owned()).is_err() {
                                        break;
                                    }
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    debug!(error = %e, "listener connection ended");
                                    break;
                                }
                            }
                        }
                    });
                    match client.batch_execute(&listen).await {
                        Ok(()) => {
                            if backoff > MIN {
                                info!(location = %self.location, "listening for new events again");
                            }
                            backoff = MIN;
                            self.connected.store(true, Ordering::SeqCst);
                            // Anything may have happened while no one listened.
                            self.bump_all();
                            loop {
                                tokio::select! {
                                    n = rx.recv() => match n {
                                        Some(channel) => {
                                            for (c, w) in &self.channels {
                                                if *c == channel {
                                                    bump(w);
                                                }
                                            }
                                        }
                                        None => break,
                                    },
                                    _ = stop.changed() => {
                                        driver.abort();
                                        return;
                                    }
                                }
                            }
                            self.connected.store(false, Ordering::SeqCst);
                            self.bump_all();
                            warn!(location = %self.location, retry_in = ?backoff, "lost the notification connection; reconnecting (runners keep polling meanwhile)");
                        }
                        Err(e) => {
                            warn!(location = %self.location, error = %super::error::describe(&e), retry_in = ?backoff, "cannot LISTEN for new events; retrying (runners keep polling meanwhile)");
                        }
                    }
                    driver.abort();
                }
                Err(e) => {
                    warn!(location = %self.location, error = %super::error::describe(&e), retry_in = ?backoff, "cannot connect to listen for new events; retrying (runners keep polling meanwhile)");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX);
        }
    }

    fn bump_all(&self) {
        for (_, w) in &self.channels {
            bump(w);
        }
    }
}
