//! docs/operating.md's curl walkthrough, run verbatim against a real server: the day-one
//! document stays true.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_operating_guides_curl_walkthrough_runs_as_written() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operating.md")).unwrap();
    let block = doc
        .split("<!-- walkthrough -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- /walkthrough -->").next())
        .expect("docs/operating.md has the walkthrough block");
    let script = block
        .trim()
        .strip_prefix("```sh")
        .and_then(|s| s.strip_suffix("```"))
        .expect("the walkthrough is one ```sh block");
    let pki = Pki::new();
    let server = Server::start(&base_config(&pki));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env(
            "ADMIN",
            format!("http://{}", server.admin.as_deref().unwrap()),
        )
        .env("TOKEN", TOKEN)
        .output()
        .expect("bash and curl run the walkthrough");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the walkthrough failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // what it did is what it says
    for expected in [
        "\"id\":\"store-12\"",
        "\"watch_id\":\"order-1001\"",
        "\"emitted\":true",
        "\"connections\":[]",
    ] {
        assert!(stdout.contains(expected), "`{expected}` not in:\n{stdout}");
    }
    assert_eq!(server.admin("GET", "/v1/watches/order-1001", None).0, 404);
    let arrived = server.wait_for_records(1, std::time::Duration::from_secs(5), |v| {
        v["type"] == "fleetgate.arrival.arrived" && v["data"]["watch_id"] == "order-1001"
    });
    assert_eq!(arrived.len(), 1, "{:?}", server.stdout_lines());
}
