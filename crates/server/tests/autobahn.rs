//! The server's socket code (accept loop, socket settings, close codes) against the
//! Autobahn|Testsuite cases of sections 1 to 10, driven by `kosoku` (scripts/test installs it
//! into `target/tools`; `KOSOKU` names another): no case may fail.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Outcomes Autobahn counts as passing.
const PASSING: [&str; 3] = ["OK", "NON-STRICT", "INFORMATIONAL"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_code_passes_every_autobahn_case_of_sections_1_to_10() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let server = tokio::spawn(switchboard::conformance::serve_echo(listener, stop.clone()));
    let reports = tempfile::tempdir().unwrap();
    let program = kosoku();
    let output = tokio::process::Command::new(&program)
        .args([
            "-m",
            "fuzzingclient",
            &address,
            "-x",
            "11.*",
            "-x",
            "12.*",
            "-x",
            "13.*",
            "-o",
        ])
        .arg(reports.path())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): scripts/test installs it (pip install kosoku==0.1.0)"));
    stop.cancel();
    server.await.unwrap();
    assert!(
        output.status.success(),
        "{program} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let outcomes = outcomes(reports.path());
    assert!(outcomes.len() > 400, "only {} cases ran", outcomes.len() / 2);
    let mut tally = BTreeMap::<&str, usize>::new();
    for behavior in outcomes.values() {
        *tally.entry(behavior.as_str()).or_default() += 1;
    }
    eprintln!("Autobahn cases 1 to 10, behaviors and closes: {tally:?}");
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|(_, behavior)| !PASSING.contains(&behavior.as_str()))
        .collect();
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

/// `KOSOKU`, else the one `scripts/test` installs in `target/tools`, else `kosoku` on the PATH.
fn kosoku() -> String {
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/venv/bin/kosoku");
    std::env::var("KOSOKU").unwrap_or_else(|_| {
        if installed.exists() {
            installed.to_string_lossy().into_owned()
        } else {
            "kosoku".to_owned()
        }
    })
}

/// "case id, behavior or behaviorClose" → the outcome, from the report's `index.json` (wherever kosoku put it under `dir`).
fn outcomes(dir: &Path) -> BTreeMap<String, String> {
    let index = find(dir, "index.json").expect("kosoku wrote an index.json");
    let index: Value = serde_json::from_str(&std::fs::read_to_string(index).unwrap()).unwrap();
    let mut outcomes = BTreeMap::new();
    for agent in index.as_object().expect("an object of agents").values() {
        for (case, result) in agent.as_object().expect("an object of cases") {
            // A case passes when its behaviour and the way the connection closed both do.
            for key in ["behavior", "behaviorClose"] {
                let behavior = result[key].as_str().unwrap_or("missing").to_owned();
                outcomes.insert(format!("{case} {key}"), behavior);
            }
        }
    }
    outcomes
}

fn find(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}
