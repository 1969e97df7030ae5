//! Real Mosquitto brokers on free loopback ports, and `mosquitto_sub` as the reference client.
//! Panics with instructions when Mosquitto is not installed (scripts/test.sh installs it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, write_file, Pki};

fn binary(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed: the MQTT tests need a real broker and client; install them \
         with `apt-get install mosquitto mosquitto-clients` (scripts/test.sh does)"
    );
}

fn stay_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    let user = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    format!("user {user}")
}

/// A Mosquitto broker on a loopback port; stopped on drop.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    conf: PathBuf,
}

impl Broker {
    /// A plain listener without authentication.
    pub fn plain(dir: &Path) -> Broker {
        let port = free_port();
        let conf = write_file(
            dir,
            "mosquitto.conf",
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        );
        Broker::run(port, conf)
    }

    /// A TLS listener (the dev PKI's server certificate) that wants `user`/`password`.
    pub fn tls_with_password(pki: &Pki, user: &str, password: &str) -> Broker {
        let dir = pki.dir.path();
        let passwords = dir.join("mosquitto.passwd");
        let made = Command::new(binary("mosquitto_passwd"))
            .args(["-c", "-b"])
            .arg(&passwords)
            .args([user, password])
            .status()
            .unwrap();
        assert!(made.success(), "mosquitto_passwd failed");
        let port = free_port();
        let conf = write_file(
            dir,
            "mosquitto-tls.conf",
            &format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n{}\n\
                 cafile {}\ncertfile {}\nkeyfile {}\npersistence false\n",
                passwords.display(),
                // run as root (CI), mosquitto drops to its own user, who cannot read the test's
                // private temp folder: stay the user that started it
                stay_user(),
                pki.path("ca.pem"),
                pki.path("server.pem"),
                pki.path("server.key"),
            ),
        );
        Broker::run(port, conf)
    }

    fn run(port: u16, conf: PathBuf) -> Broker {
        let mut broker = Broker {
            child: None,
            port,
            conf,
        };
        broker.start();
        broker
    }

    pub fn start(&mut self) {
        let child = Command::new(binary("mosquitto"))
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.conf.with_extension("log")).unwrap())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let log = self.conf.with_extension("log");
        super::wait_listening(self.port, Duration::from_secs(10), || {
            format!(
                "mosquitto ({})",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `mosquitto_sub -v` on a topic filter: every (topic, payload) it prints.
pub struct Subscriber {
    child: Child,
    lines: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Subscriber {
    pub fn start(args: &[&str]) -> Subscriber {
        let mut child = Command::new(binary("mosquitto_sub"))
            .args(["-v", "-q", "1", "-h", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mosquitto_sub");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
                let value = serde_json::from_str(payload)
                    .unwrap_or_else(|e| panic!("{topic}: payload is not JSON ({e}): {payload}"));
                sink.lock().unwrap().push((topic.to_owned(), value));
            }
        });
        // the subscription is in place once the client connected; give it a moment
        std::thread::sleep(Duration::from_millis(300));
        Subscriber { child, lines }
    }

    /// Waits until `topic` arrived (up to 10 s) and returns its latest payload.
    pub fn wait(&self, topic: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((_, v)) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|(t, _)| t == topic)
            {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no message on {topic} within 10 s; got {:?}",
                self.topics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn topics(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Every (topic, payload) received so far.
    pub fn messages(&self) -> Vec<(String, Value)> {
        self.lines.lock().unwrap().clone()
    }

    pub fn count(&self, topic: &str) -> usize {
        self.topics().iter().filter(|t| *t == topic).count()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
