//! A webhook receiver written as an order service would write it (tests/sdk/webhook_receiver.py:
//! the Standard Webhooks library checks signatures, the CloudEvents SDK reads the events), on
//! a loopback port that survives its restarts.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The signing secret the tests give fleetgate and the receiver.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The receiver process; killed on drop.
pub struct Receiver {
    child: Option<Child>,
    pub port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Starts one on a free port.
    pub fn start() -> Receiver {
        let port = super::free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut r = Receiver {
            child: None,
            port,
            out: dir.path().join("received.jsonl"),
            _dir: dir,
        };
        r.up();
        r
    }

    /// The base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// (Re)starts the process on the same port and waits until it answers.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "already up");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/webhook_receiver.py");
        let child = Command::new(super::test_python())
            .arg(script)
            .arg(self.port.to_string())
            .arg(SECRET)
            .arg(&self.out)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the webhook receiver");
        self.child = Some(child);
        super::wait_listening(self.port, Duration::from_secs(20), || {
            "the webhook receiver".into()
        });
    }

    /// Kills the process: connections to the port are refused until [`Receiver::up`].
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every message accepted so far, in arrival order.
    pub fn received(&self) -> Vec<Value> {
        read_lines(&self.out)
    }

    /// Requests refused (bad signature, not a CloudEvent): must stay empty.
    pub fn refused(&self) -> Vec<Value> {
        read_lines(&self.out.with_extension("jsonl.errors"))
    }

    /// Waits until `pred` holds for what was received, up to `timeout`; returns it either way.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if pred(&got) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn read_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}
