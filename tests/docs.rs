//! Documentation stays true: every config key is in docs/config.md, every metric the Grafana
//! dashboard queries is exported, and every event type has an example in docs/events.md.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every key path of a JSON value (`a.b`, arrays as `a[]`), skipping user-named maps.
fn key_paths(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                // children of these are user-chosen names (librdkafka keys, topics, field names)
                if ![
                    "kafka",
                    "records",
                    "reliable_ack_sources",
                    "fleetgate.changes_only.min_delta",
                    "fleetgate.sources.smartcar.vehicles",
                    "fleetgate.tesla.fields",
                    "fleetgate.webhook.endpoints[].headers",
                ]
                .contains(&path.as_str())
                {
                    key_paths(&path, child, out);
                }
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(first) = items.first() {
                key_paths(&format!("{prefix}[]"), first, out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_config_key_is_documented() {
    let full =
        fleetgate::config::Config::from_json(&read("config/fleetgate.full.json"), Path::new("x"))
            .unwrap();
    assert!(
        full.unknown_keys.is_empty(),
        "the full example has unknown keys: {:?}",
        full.unknown_keys
    );
    let value = serde_json::to_value(&full).unwrap();
    let mut paths = Vec::new();
    key_paths("", &value, &mut paths);
    let docs = read("docs/config.md");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !docs.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "config keys missing from docs/config.md: {missing:?}"
    );
    assert!(paths.len() > 50);
}

#[test]
fn every_dashboard_metric_is_exported() {
    let dash: serde_json::Value = serde_json::from_str(&read("dashboards/fleetgate.json")).unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 10);
    // one instance or several: every query follows the dashboard's instance variable
    assert!(
        dash["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "instance"),
        "no instance variable"
    );
    for expr in &exprs {
        assert!(
            expr.contains("instance=~\"$instance\""),
            "not scoped to $instance: {expr}"
        );
    }
    // what docs/operating.md tells operators to watch is on the dashboard
    let operating = read("docs/operating.md");
    let named = regex::Regex::new(r"fleetgate_[a-z_]+").unwrap();
    for m in named.find_iter(&operating) {
        assert!(
            exprs.iter().any(|e| e.contains(m.as_str())),
            "docs/operating.md names {}, which no dashboard panel shows",
            m.as_str()
        );
    }
    let re = regex::Regex::new(r"fleetgate_[a-z_]+").unwrap();
    for expr in &exprs {
        for m in re.find_iter(expr) {
            let name = m.as_str();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(
                fleetgate::metrics::FAMILIES.iter().any(|f| f.name == base),
                "dashboard queries {name}, which fleetgate does not export"
            );
        }
    }
}

#[test]
fn every_event_type_has_an_example() {
    let docs = read("docs/events.md");
    for kind in fleetgate::event::EventType::ALL {
        assert!(
            docs.contains(&format!("\"type\": \"{}\"", kind.as_str())),
            "docs/events.md lacks an example of {}",
            kind.as_str()
        );
    }
}

#[test]
fn the_readme_layout_matches_src() {
    let readme = read("README.md");
    let layout = readme
        .split("## Layout")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a Layout section");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // every module of src/ is in the table
    for entry in std::fs::read_dir(root.join("src")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let shown = if entry.file_type().unwrap().is_dir() {
            format!("`src/{name}/`")
        } else {
            format!("`src/{name}`")
        };
        assert!(
            layout.contains(&shown),
            "{shown} is missing from the README layout"
        );
    }
    // and every path the table names exists
    let re = regex::Regex::new(r"`([a-zA-Z0-9_./-]+)`").unwrap();
    for row in layout.lines().filter(|l| l.starts_with("| `")) {
        let first_cell = row.split('|').nth(1).unwrap();
        for cap in re.captures_iter(first_cell) {
            let path = &cap[1];
            assert!(
                root.join(path).exists(),
                "README layout names {path}, which does not exist"
            );
        }
    }
}

#[test]
fn docs_and_comments_speak_of_the_product_only() {
    // no tracker references ("issue 11") and no files that are not in the repository
    let re =
        regex::Regex::new(r"(?i)\bissue #?\d+|\bWIRE\.md\b|\bDESIGN\.md\b|\bSTYLE\.md\b").unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut offenders = Vec::new();
    let mut stack = vec![
        root.join("src"),
        root.join("docs"),
        root.join("tests"),
        root.join("benches"),
        root.join("scripts"),
        root.join("README.md"),
    ];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
            continue;
        }
        // this test names the patterns it looks for
        if path.ends_with("tests/docs.rs") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            if re.is_match(line) {
                offenders.push(format!("{}:{}: {line}", path.display(), n + 1));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn tables_are_not_cut_by_a_blank_line() {
    // a blank line between rows ends the table: the rows after it render as plain text
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        files.push(entry.unwrap().path());
    }
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for i in 1..lines.len().saturating_sub(1) {
            let cut = lines[i].trim().is_empty()
                && lines[i - 1].starts_with('|')
                && lines[i + 1].starts_with('|')
                && !lines[i + 2..]
                    .first()
                    .is_some_and(|l| l.starts_with("|---"));
            assert!(
                !cut,
                "{}:{}: a blank line cuts a table",
                file.display(),
                i + 1
            );
        }
    }
}

/// The README's `decode` example, run as written (with this build instead of `cargo run`):
/// it decodes every frame it names and exits 0; the bad frames it mentions exit 1.
#[test]
fn the_readme_decode_example_runs_clean() {
    let readme = read("README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("cargo run --release -- decode "))
        .expect("README has a decode example");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for arg in line.split_whitespace().skip(5) {
        match arg.strip_suffix("*.bin") {
            Some(prefix) => {
                let (dir, stem) = prefix.rsplit_once('/').unwrap();
                for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                    let name = entry.unwrap().file_name().into_string().unwrap();
                    if name.starts_with(stem) && name.ends_with(".bin") {
                        files.push(root.join(dir).join(name));
                    }
                }
            }
            None => files.push(root.join(arg)),
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .arg("decode")
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        files.len()
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .arg("decode")
        .arg(root.join("testdata/frames/bad_empty.bin"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
}
