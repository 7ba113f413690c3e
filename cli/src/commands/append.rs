//! `projectionist append`: append one event and print its position.

use anyhow::Result;
use projectionist::{EventLog, ExpectedVersion, NewEvent};
use serde_json::Value;

use super::Ctx;
use crate::args::AppendArgs;
use crate::exit::usage;

pub async fn run(ctx: &Ctx, a: AppendArgs) -> Result<()> {
    if a.stream.trim().is_empty() {
        return Err(usage("--stream must not be empty"));
    }
    if a.event_type.trim().is_empty() {
        return Err(usage("--type must not be empty"));
    }
    let data: Value = serde_json::from_str(&a.data).map_err(|e| {
        usage(format!(
            "--data is not valid JSON: {e}; quote it for your shell, e.g. --data '{{\"a\": 1}}'"
        ))
    })?;
    let mut event = NewEvent::new(a.event_type, data);
    if let Some(m) = &a.metadata {
        let metadata: Value =
            serde_json::from_str(m).map_err(|e| usage(format!("--metadata is not valid JSON: {e}")))?;
        if !metadata.is_object() {
            return Err(usage(
                "--metadata must be a JSON object, e.g. --metadata '{\"user_id\": \"u1\"}'",
            ));
        }
        event = event.with_metadata(metadata);
    }
    if let Some(id) = &a.event_id {
        let id = uuid::Uuid::parse_str(id).map_err(|e| usage(format!("--event-id is not a UUID: {e}")))?;
        event = event.with_id(id);
    }
    let expected = match a.expected_version {
        Some(v) if v < 0 => {
            return Err(usage(format!(
                "--expected-version must be 0 (the stream must not exist yet) or more, found {v}"
            )))
        }
        v => ExpectedVersion::from_option(v),
    };
    let db = ctx.database().await?;
    let appended = db.store.append(a.stream, expected, vec![event]).await?;
    // The token `projectionist wait` accepts: the position on SQLite, TXID:POSITION on
    // PostgreSQL.
    println!("{}", appended.token);
    Ok(())
}
