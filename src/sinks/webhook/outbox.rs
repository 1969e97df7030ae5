//! The durable outbox: every message is committed to SQLite (WAL, `synchronous=FULL`) before
//! its frame's ticket completes, and deleted only once its receiver answered 2xx or it was
//! written (and synced) to the dead-letter file. One writer thread owns the database and
//! commits whatever queued up meanwhile in one transaction (group commit).

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use rusqlite::{params, Connection};
use tokio::sync::mpsc::UnboundedSender;

use super::message::Message;
use super::now_ms;
use crate::sinks::DeliveryTicket;

/// A message the outbox holds, with its row id (delivery order) and when it entered (ms).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Row id: the order messages entered the outbox.
    pub seq: i64,
    /// When it entered the outbox (ms since the epoch).
    pub created_ms: i64,
    /// The message.
    pub message: Message,
}

/// Work for the writer thread.
pub enum Op {
    /// Store these messages, then complete the ticket and hand them to delivery.
    Put(Vec<Message>, DeliveryTicket),
    /// Delivered: forget it.
    Delivered(i64),
    /// Undeliverable: append it to the dead-letter file with why, then forget it.
    DeadLetter(Box<Stored>, String),
    /// Answer once everything before it is committed.
    Sync(std::sync::mpsc::Sender<()>),
}

/// The handle to the writer thread.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Op>,
    /// Ops sent and not yet committed.
    pending: Arc<AtomicUsize>,
    /// Messages held: stored or being stored, not yet delivered or dead-lettered.
    held: Arc<AtomicUsize>,
}

fn open(dir: &Path) -> anyhow::Result<Connection> {
    std::fs::create_dir_all(dir).map_err(|e| {
        anyhow::anyhow!(
            "fleetgate.webhook: cannot create the outbox folder {}: {e}",
            dir.display()
        )
    })?;
    let path = dir.join("outbox.sqlite");
    let db = Connection::open(&path).map_err(|e| {
        anyhow::anyhow!(
            "fleetgate.webhook: cannot open the outbox {}: {e}",
            path.display()
        )
    })?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            created_ms INTEGER NOT NULL,
            endpoint TEXT NOT NULL,
            vin TEXT NOT NULL,
            id TEXT NOT NULL,
            headers TEXT NOT NULL,
            body BLOB NOT NULL)",
    )?;
    Ok(db)
}

/// Every message the outbox holds, oldest first.
fn load(db: &Connection) -> anyhow::Result<Vec<Stored>> {
    let mut stmt = db.prepare(
        "SELECT seq, created_ms, endpoint, vin, id, headers, body FROM outbox ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        let headers: String = r.get(5)?;
        Ok(Stored {
            seq: r.get(0)?,
            created_ms: r.get(1)?,
            message: Message {
                endpoint: r.get(2)?,
                vin: r.get(3)?,
                id: r.get(4)?,
                headers: serde_json::from_str(&headers).unwrap_or_default(),
                body: r.get(6)?,
            },
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One dead-letter line: the message with why it was given up, readable and replayable.
pub fn dead_letter_line(s: &Stored, reason: &str, at_ms: i64) -> String {
    let body = match std::str::from_utf8(&s.message.body) {
        Ok(text) => serde_json::from_str::<serde_json::Value>(text)
            .unwrap_or_else(|_| serde_json::Value::String(text.to_owned())),
        Err(_) => serde_json::Value::Null,
    };
    serde_json::json!({
        "endpoint": s.message.endpoint, "vin": s.message.vin, "id": s.message.id,
        "entered_outbox_ms": s.created_ms, "dead_lettered_ms": at_ms, "reason": reason,
        "headers": s.message.headers.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "body": body,
    })
    .to_string()
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir` and starts its writer thread. Returns the
    /// messages it already held (a restart's backlog), oldest first. Stored messages go to
    /// `deliver`.
    pub fn start(
        dir: &Path,
        dead_letter_file: &Path,
        deliver: UnboundedSender<Stored>,
    ) -> anyhow::Result<(Outbox, Vec<Stored>)> {
        let db = open(dir)?;
        let backlog = load(&db)?;
        if let Some(parent) = dead_letter_file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                anyhow::anyhow!(
                    "fleetgate.webhook.dead_letter_file: cannot create {}: {e}",
                    parent.display()
                )
            })?;
        }
        let dead = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dead_letter_file)
            .map_err(|e| {
                anyhow::anyhow!(
                    "fleetgate.webhook.dead_letter_file: cannot open {}: {e}",
                    dead_letter_file.display()
                )
            })?;
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(backlog.len()));
        let (p, h) = (pending.clone(), held.clone());
        std::thread::Builder::new()
            .name("webhook-outbox".into())
            .spawn(move || write_loop(db, dead, rx, deliver, p, h))?;
        Ok((Outbox { tx, pending, held }, backlog))
    }

    /// Queues work for the writer; false when the writer is gone (its ticket fails).
    pub fn send(&self, op: Op) -> bool {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(op).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Makes room for `n` more messages unless that would pass `max`.
    pub fn reserve(&self, n: usize, max: usize) -> bool {
        if self.held.fetch_add(n, Ordering::AcqRel) + n > max {
            self.held.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives back room reserved for messages that were not handed over.
    pub fn unreserve(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }

    /// Messages held (stored or being stored, not yet delivered or dead-lettered).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Ops not yet committed.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

fn write_loop(
    mut db: Connection,
    mut dead: std::fs::File,
    rx: mpsc::Receiver<Op>,
    deliver: UnboundedSender<Stored>,
    pending: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
) {
    const BATCH: usize = 1024;
    let mut ops = Vec::with_capacity(BATCH);
    while let Ok(first) = rx.recv() {
        ops.push(first);
        while ops.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let n = ops.len();
        let removed = ops
            .iter()
            .filter(|op| matches!(op, Op::Delivered(_) | Op::DeadLetter(..)))
            .count();
        let put: usize = ops
            .iter()
            .map(|op| match op {
                Op::Put(m, _) => m.len(),
                _ => 0,
            })
            .sum();
        let mut stored: Vec<(Vec<Stored>, DeliveryTicket)> = Vec::new();
        let mut syncs = Vec::new();
        let result = (|| -> anyhow::Result<()> {
            let dead_letters: Vec<String> = ops
                .iter()
                .filter_map(|op| match op {
                    Op::DeadLetter(s, why) => Some(dead_letter_line(s, why, now_ms())),
                    _ => None,
                })
                .collect();
            if !dead_letters.is_empty() {
                // the dead-letter file has them (synced) before the outbox forgets them
                let mut text = dead_letters.join("\n");
                text.push('\n');
                dead.write_all(text.as_bytes())?;
                dead.sync_data()?;
            }
            let t = db.transaction()?;
            {
                let mut insert = t.prepare_cached(
                    "INSERT INTO outbox (created_ms, endpoint, vin, id, headers, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                let mut delete = t.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
                let now = now_ms();
                for op in ops.drain(..) {
                    match op {
                        Op::Put(messages, ticket) => {
                            let mut rows = Vec::with_capacity(messages.len());
                            for m in messages {
                                insert.execute(params![
                                    now,
                                    m.endpoint,
                                    m.vin,
                                    m.id,
                                    serde_json::to_string(&m.headers)?,
                                    m.body
                                ])?;
                                rows.push(Stored {
                                    seq: t.last_insert_rowid(),
                                    created_ms: now,
                                    message: m,
                                });
                            }
                            stored.push((rows, ticket));
                        }
                        Op::Delivered(seq) => {
                            delete.execute([seq])?;
                        }
                        Op::DeadLetter(s, _) => {
                            delete.execute([s.seq])?;
                        }
                        Op::Sync(done) => syncs.push(done),
                    }
                }
            }
            t.commit()?;
            Ok(())
        })();
        ops.clear();
        held.fetch_sub(removed, Ordering::AcqRel);
        match result {
            Ok(()) => {
                for (rows, ticket) in stored {
                    ticket.complete(true);
                    for row in rows {
                        let _ = deliver.send(row);
                    }
                }
            }
            Err(e) => {
                // nothing of this batch is stored: the frames' tickets fail (not acked, so the
                // vehicles resend); deliveries and dead letters are retried by the dispatcher
                tracing::error!(error = %e, "webhook outbox: cannot commit a batch (disk full or read-only?); its frames are not acked");
                metrics::counter!(crate::metrics::WEBHOOK_OUTBOX_ERRORS_TOTAL).increment(1);
                held.fetch_sub(put, Ordering::AcqRel);
                drop(stored);
            }
        }
        pending.fetch_sub(n, Ordering::AcqRel);
        for s in syncs {
            let _ = s.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(vin: &str, n: u8) -> Message {
        Message {
            endpoint: "orders".into(),
            vin: vin.into(),
            id: format!("id-{n}"),
            body: vec![b'{', b'}'],
            headers: vec![("content-type".into(), "application/json".into())],
        }
    }

    fn sync(o: &Outbox) {
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(o.send(Op::Sync(tx)));
        rx.recv().unwrap();
    }

    #[tokio::test]
    async fn stored_messages_survive_a_reopen_until_delivered_or_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join("dead.jsonl");
        let (deliver, mut delivered) = tokio::sync::mpsc::unbounded_channel();
        let (outbox, backlog) = Outbox::start(dir.path(), &dead, deliver).unwrap();
        assert!(backlog.is_empty());
        let (ctx, mut crx) = tokio::sync::mpsc::unbounded_channel();
        outbox.send(Op::Put(
            vec![message("A", 1), message("B", 2)],
            DeliveryTicket::tracked(ctx.clone(), 7, None),
        ));
        outbox.send(Op::Put(
            vec![message("A", 3)],
            DeliveryTicket::tracked(ctx, 8, None),
        ));
        sync(&outbox);
        assert_eq!(crx.recv().await.unwrap().seq, 7);
        assert!(crx.recv().await.unwrap().delivered);
        let a1 = delivered.recv().await.unwrap();
        let b2 = delivered.recv().await.unwrap();
        let a3 = delivered.recv().await.unwrap();
        assert!(a1.seq < b2.seq && b2.seq < a3.seq);
        outbox.send(Op::Delivered(a1.seq));
        outbox.send(Op::DeadLetter(Box::new(b2.clone()), "too old".into()));
        sync(&outbox);
        drop(outbox);
        let (deliver, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (_outbox, backlog) = Outbox::start(dir.path(), &dead, deliver).unwrap();
        assert_eq!(backlog, vec![a3]);
        let lines = std::fs::read_to_string(&dead).unwrap();
        let line: serde_json::Value = serde_json::from_str(lines.trim()).unwrap();
        assert_eq!(line["id"], "id-2");
        assert_eq!(line["reason"], "too old");
        assert_eq!(line["body"], serde_json::json!({}));
    }
}
