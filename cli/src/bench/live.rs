//! The live phase: latency from an append until its effect is visible.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use projectionist::backend::{Source, Store};
use projectionist::workload::WorkloadEvent;
use projectionist::{Appended, Checkpoint, Engine};

use super::store::LIVE;

/// Runs `engine`'s projection [`LIVE`] live, appends `events` at `rate` per second with
/// `append`, and returns each event's latency from the start of its append until the live
/// projection's checkpoint passed it (its effect is then visible: same transaction), and the
/// seconds from the first append to the last one's visibility.
pub async fn measure<S, St, F, Fut>(
    engine: Arc<Engine<S, St>>,
    events: Vec<WorkloadEvent>,
    rate: u32,
    append: F,
) -> Result<(Vec<Duration>, f64)>
where
    S: Source,
    St: Store,
    F: Fn(WorkloadEvent) -> Fut,
    Fut: std::future::Future<Output = projectionist::Result<Appended>>,
{
    engine.catch_up().await?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let runner = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_until(projectionist::when_true(shutdown)).await })
    };
    // Appended tokens waiting to become visible, with when their append started.
    let pending: Arc<Mutex<BTreeMap<Checkpoint, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let total = events.len();
    // An append that the runner applied before the appender recorded it is found at once.
    let nudge = Arc::new(tokio::sync::Notify::new());
    let watcher = {
        let (engine, pending, latencies, nudge) =
            (engine.clone(), pending.clone(), latencies.clone(), nudge.clone());
        let mut changes = engine.store().checkpoint_changes();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = nudge.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
                let Ok(Some(record)) = engine.store().record(LIVE, 0).await else {
                    continue;
                };
                let now = Instant::now();
                let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                let still = p.split_off(&Checkpoint {
                    txid: record.checkpoint.txid,
                    position: record.checkpoint.position + 1,
                });
                let mut l = latencies.lock().unwrap_or_else(|e| e.into_inner());
                l.extend(p.values().map(|t0| now - *t0));
                *p = still;
                if l.len() >= total {
                    return;
                }
            }
        })
    };
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for e in events {
        tick.tick().await;
        let t0 = Instant::now();
        let appended = append(e).await?;
        pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(appended.token, t0);
        nudge.notify_one();
    }
    let finished = tokio::time::timeout(Duration::from_secs(30), watcher).await;
    let _ = stop.send(true);
    runner.await??;
    if finished.is_err() {
        bail!("the live projection did not catch up within 30 s of the last append");
    }
    let seconds = started.elapsed().as_secs_f64();
    let out = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((out, seconds))
}
