//! The deploy/ files agree with walbox as it runs:
//!
//! - every metric the Grafana dashboard and the Prometheus alert rules query is one a running
//!   walbox exports (scraped from a real one, relaying on the real servers);
//! - every sample configuration file (one per preset) loads (`walbox config check`);
//! - the Kubernetes manifests use flags walbox has, probe endpoints it serves, and the port it
//!   listens on, and a rolling update as Kubernetes runs it (start the new pod, wait until its
//!   readiness probe passes, stop the old one) keeps one active relay and loses no event.
//!
//! The alert rules' own logic is tested by `promtool test rules` and the systemd unit by
//! `systemd-analyze verify` (scripts/check-deploy.sh).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{get, served_address};
use common::*;
use serde_norway::Value;

const WAIT: Duration = Duration::from_secs(30);

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Poll `path` until it answers `status`; how long that took.
async fn wait_status(addr: &str, path: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let answer = get(addr, path).await;
        if answer.as_ref().map(|(code, _)| *code) == Some(status) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{path} did not answer {status} within {within:?}; last answer {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- dashboard and alert rules against a running walbox ------------------------------------

/// The series names a scrape exposes: gauges as they are, counters with `_total`, histograms
/// with `_bucket`, `_sum` and `_count`, from the `# TYPE` lines (so a family without samples
/// yet counts too) and from the samples.
fn exposed_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            names.insert(name.to_owned());
        }
    }
    names
}

/// The walbox metric names an expression uses (`walbox_` followed by name characters).
fn metric_names(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("walbox_") {
        let preceded_by_name = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !preceded_by_name {
            found.push(name.clone());
        }
        rest = &rest[at + name.len()..];
    }
    found
}

/// Every `expr` string in a JSON document (the dashboard's panel targets).
fn json_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => json_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| json_exprs(item, out)),
        _ => {}
    }
}

/// Every alert rule's (name, expr).
fn alert_exprs() -> Vec<(String, String)> {
    let rules: Value = serde_norway::from_str(&read("deploy/prometheus/walbox-alerts.yml"))
        .expect("walbox-alerts.yml is YAML");
    let mut found = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert name").to_owned();
            let expr = rule["expr"].as_str().expect("an expr").to_owned();
            found.push((name, expr));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_query_only_metrics_a_running_walbox_exports() {
    let mut env = TestEnv::new("deploymetrics").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    let addr = served_address(&env, run, WAIT).await;
    wait_status(&addr, "/readyz", 200, WAIT).await;
    // Events through, so the histograms and counters have samples, not only their TYPE lines.
    for n in 0..3 {
        env.insert("order", "created", &format!("{{\"n\": {n}}}"))
            .await;
    }
    assert_eq!(receive(&mut consumer, 3, WAIT).await.len(), 3);
    let (code, scrape) = get(&addr, "/metrics").await.expect("a scrape");
    assert_eq!(code, 200);
    let exposed = exposed_names(&scrape);
    assert!(
        exposed.contains("walbox_events_confirmed_total"),
        "{exposed:?}"
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/walbox.json")).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    json_exprs(&dashboard, &mut exprs);
    let mut queried = BTreeSet::new();
    let mut missing = Vec::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "a dashboard query names no walbox metric: {expr}"
        );
        for name in names {
            if !exposed.contains(&name) {
                missing.push(format!("dashboard: {name} in {expr}"));
            }
            queried.insert(name);
        }
    }
    for (alert, expr) in alert_exprs() {
        let names = metric_names(&expr);
        // WalboxDown is about the scrape itself (Prometheus's `up`), not a walbox metric.
        assert!(
            !names.is_empty() || expr.starts_with("up{"),
            "alert {alert} names no walbox metric: {expr}"
        );
        for name in names {
            if !exposed.contains(&name) {
                missing.push(format!("alert {alert}: {name} in {expr}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "queried but not exported by walbox:\n{}\nexported: {exposed:?}",
        missing.join("\n")
    );
    eprintln!(
        "dashboard: {} queries over {} metrics, all exported; {} alert rules checked",
        exprs.len(),
        queried.len(),
        alert_exprs().len()
    );
    assert!(env.terminate(run).success());
}

// --- sample configuration files ---------------------------------------------------------------

#[test]
fn every_sample_configuration_loads() {
    let dir = repo_path("deploy/config");
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deploy-config");
    std::fs::create_dir_all(&scratch).unwrap();
    // The samples name files under /etc/walbox (CA, passwords); walbox reads them when it
    // loads the configuration, so the copy points at files that exist, and nothing else changes.
    std::fs::copy(
        repo_path("tests/data/example-ca.pem"),
        scratch.join("pg-ca.pem"),
    )
    .unwrap();
    std::fs::write(scratch.join("postgres-password"), "secret-pg\n").unwrap();
    std::fs::write(scratch.join("amqp-password"), "secret-mq\n").unwrap();
    let mut presets = BTreeSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let copy = scratch.join(path.file_name().unwrap());
        let etc = format!("{}/", scratch.display());
        std::fs::write(&copy, text.replace("/etc/walbox/", &etc)).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_walbox"))
            .args(["config", "check", "--config", copy.to_str().unwrap()])
            .env_clear()
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{} does not load: {stderr}",
            path.display()
        );
        assert!(
            !stdout.contains("secret-"),
            "a password was printed: {stdout}"
        );
        let table = toml::from_str::<toml::Table>(&text).unwrap();
        if let Some(preset) = table.get("preset").and_then(|p| p.as_str()) {
            assert_eq!(
                path.file_stem().and_then(|s| s.to_str()),
                Some(preset),
                "a preset's sample is named after it"
            );
            assert!(
                stdout.contains(&format!("# preset {preset}")),
                "{preset}: the preset set nothing?\n{stdout}"
            );
            presets.insert(preset.to_owned());
        }
    }
    let every: BTreeSet<String> = [
        "cap",
        "masstransit",
        "nservicebus",
        "eshop",
        "dapr",
        "cloudevents",
    ]
    .map(String::from)
    .into();
    assert_eq!(presets, every, "one sample per preset");
    assert_eq!(
        files,
        every.len() + 1,
        "the presets' samples and outbox.toml"
    );
}

// --- Kubernetes --------------------------------------------------------------------------------

fn manifest(name: &str) -> Value {
    serde_norway::from_str(&read(&format!("deploy/kubernetes/{name}")))
        .unwrap_or_else(|e| panic!("deploy/kubernetes/{name} is not YAML: {e}"))
}

/// The environment variables `walbox run` reads, from its --help (`[env: NAME=…]`).
fn walbox_env_vars() -> HashSet<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_walbox"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn kubernetes_manifests_agree_with_walbox() {
    let deployment = manifest("deployment.yaml");
    let service = manifest("service.yaml");
    let secret = manifest("secret.yaml");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(1));
    // A rolling update starts the new pod before it stops the old one.
    assert_eq!(
        spec["strategy"]["rollingUpdate"]["maxUnavailable"].as_u64(),
        Some(0)
    );
    assert_eq!(
        spec["strategy"]["rollingUpdate"]["maxSurge"].as_u64(),
        Some(1)
    );
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];

    let known = walbox_env_vars();
    assert!(known.contains("WALBOX_POSTGRES_URL"), "{known:?}");
    let mut env = std::collections::HashMap::new();
    for var in container["env"].as_sequence().expect("env") {
        let name = var["name"].as_str().unwrap().to_owned();
        assert!(
            known.contains(&name),
            "{name} is no flag's variable of `walbox run`"
        );
        env.insert(name, var["value"].as_str().unwrap_or_default().to_owned());
    }
    let port = container["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(env["WALBOX_METRICS_ADDR"], format!("0.0.0.0:{port}"));
    assert_eq!(container["ports"][0]["name"].as_str(), Some("metrics"));
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/standbyz")
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            container[probe]["httpGet"]["port"].as_str(),
            Some("metrics")
        );
    }
    // Longer than the shutdown grace walbox waits for confirms (default 10 s) and the 3 s it
    // may then take to close its connections.
    let grace = env
        .get("WALBOX_SHUTDOWN_GRACE")
        .map_or(10, |grace| grace.parse::<u64>().unwrap());
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > grace + 3);

    // The password files are the Secret's keys, where the Secret is mounted.
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let keys: Vec<&str> = secret["stringData"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|key| key.as_str().unwrap())
        .collect();
    for var in ["WALBOX_POSTGRES_PASSWORD_FILE", "WALBOX_AMQP_PASSWORD_FILE"] {
        let file = env[var]
            .strip_prefix(&format!("{mount}/"))
            .expect("in the mount");
        assert!(
            keys.contains(&file),
            "{var}: {file} is not a key of the Secret"
        );
    }
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    // The image runs as 10001; the Secret's files must be readable by it.
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(10001));
    assert_eq!(pod["securityContext"]["fsGroup"].as_u64(), Some(10001));

    // The Service finds the pods, also those that are not ready (a halted walbox is scraped).
    let labels = &spec["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&labels[key.as_str().unwrap()], value);
    }
    assert_eq!(
        service["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_str(),
        Some("metrics")
    );
}

/// What Kubernetes does in a rolling update of the Deployment above, with two real walbox
/// processes on the real servers while a writer keeps committing: start the new one, wait for
/// its readiness probe (/standbyz) to pass, then SIGTERM the old one. Counted: every committed
/// event is delivered, the two were never streaming at once, the new one takes over, the old
/// one exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_keeps_one_active_relay_and_loses_nothing() {
    let mut env = TestEnv::new("rollout").await;
    let mut consumer = env.queue("all", "#").await;
    let old = env.spawn_run(&[]);
    let old_addr = served_address(&env, old, WAIT).await;
    wait_status(&old_addr, "/readyz", 200, WAIT).await;

    let writer_db = pg_connect(&env.postgres_url()).await;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move {
        let mut ids = Vec::new();
        while !*stop_rx.borrow_and_update() {
            let row = writer_db
                .query_one(
                    "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                     VALUES ('order', 'a-1', 'created', '{}') RETURNING id::text",
                    &[],
                )
                .await
                .expect("insert");
            ids.push(row.get::<_, String>(0));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The new pod: it stands by, and its readiness probe passes.
    let new = env.spawn_run(&[]);
    let new_addr = served_address(&env, new, WAIT).await;
    let new_ready = wait_status(&new_addr, "/standbyz", 200, WAIT).await;
    let (_, body) = get(&new_addr, "/standbyz").await.unwrap();
    assert!(body.contains("standing_by"), "{body}");

    // Kubernetes now stops the old pod; meanwhile watch that at most one walbox streams.
    let watcher = {
        let (old_addr, new_addr) = (old_addr.clone(), new_addr.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut both = 0;
            let mut took_over = None;
            while started.elapsed() < Duration::from_secs(20) {
                let old_streams = get(&old_addr, "/readyz").await.map(|(c, _)| c) == Some(200);
                let new_streams = get(&new_addr, "/readyz").await.map(|(c, _)| c) == Some(200);
                both += usize::from(old_streams && new_streams);
                if new_streams && took_over.is_none() {
                    took_over = Some(started.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (both, took_over)
        })
    };
    let stopped_at = Instant::now();
    let old_exit = env.terminate(old);
    let old_stopped = stopped_at.elapsed();
    let (both, took_over) = watcher.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    let committed = writer.await.unwrap();

    let mut delivered = Vec::new();
    let deadline = Instant::now() + WAIT;
    let wanted: HashSet<&String> = committed.iter().collect();
    while Instant::now() < deadline {
        for delivery in receive_any(&mut consumer, Duration::from_millis(500)).await {
            delivered.push(message_id(&delivery));
        }
        let seen: HashSet<&String> = delivered.iter().collect();
        if wanted.is_subset(&seen) {
            break;
        }
    }
    let seen: HashSet<&String> = delivered.iter().collect();
    let lost = wanted.difference(&seen).count();
    let duplicates = delivered.len() - seen.len();
    eprintln!(
        "rolling update: new pod ready (standing by) after {new_ready:?}; old pod stopped in \
         {old_stopped:?} (exit {old_exit}); new pod streaming {took_over:?} after the stop began; \
         committed {}, delivered {}, duplicates {duplicates}, lost {lost}, both streaming in {both} samples",
        committed.len(),
        delivered.len()
    );
    assert!(old_exit.success(), "old: {}", env.run_log(old));
    assert!(
        took_over.is_some(),
        "the new walbox never streamed: {}",
        env.run_log(new)
    );
    assert_eq!(both, 0, "two walboxes streamed at once");
    assert!(
        committed.len() > 50,
        "the writer wrote too little to tell: {}",
        committed.len()
    );
    assert_eq!(lost, 0, "events lost; new log:\n{}", env.run_log(new));
    assert!(seen.is_subset(&wanted), "an event nobody committed arrived");
    assert!(env.terminate(new).success());
}
