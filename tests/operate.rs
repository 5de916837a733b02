//! Operating walbox: /metrics moves as events flow, /readyz follows the broker, /healthz
//! answers, JSON logs are JSON.

mod common;

use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);

/// `GET path` over HTTP/1.0: (status code, body), or None if nothing listens.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body)?;
    Some((status, body.to_owned()))
}

/// The address walbox says it serves on, from its JSON log.
async fn served_address(env: &TestEnv, run: usize) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        for line in env.run_log(run).lines() {
            let entry: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("log line is not JSON ({error}): {line}"));
            if let Some(address) = entry["address"].as_str() {
                return address.to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "walbox never said where it serves; log:\n{}",
            env.run_log(run)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of an unlabelled (or exactly labelled) sample in a scrape.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{scrape}"))
}

async fn scrape(addr: &str) -> String {
    let (status, body) = get(addr, "/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200);
    body
}

/// Poll `path` until it answers `status`.
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_events_and_readiness_follows_the_broker() {
    let amqp_proxy = Proxy::start(amqp_port()).await;
    let mut env = TestEnv::new("operate").await;
    env.amqp_port = amqp_proxy.port;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    let addr = served_address(&env, run).await;

    assert_eq!(
        get(&addr, "/healthz").await.map(|(code, _)| code),
        Some(200)
    );
    wait_status(&addr, "/readyz", 200, WAIT).await;
    let before = scrape(&addr).await;
    assert_eq!(sample(&before, "walbox_events_published_total"), 0.0);
    assert_eq!(sample(&before, "walbox_state{state=\"streaming\"}"), 1.0);

    for n in 0..25 {
        env.insert("order", "created", &format!("{{\"n\": {n}}}"))
            .await;
    }
    let delivered = receive(&mut consumer, 25, WAIT).await;
    assert_eq!(delivered.len(), 25);
    let after_commit = env.current_wal_lsn().await;
    env.wait_confirmed(after_commit, WAIT).await;
    // The flush position reaches the server before the next scrape shows it; give the gauge
    // a moment to catch up with what PostgreSQL already has.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = scrape(&addr).await;
    assert_eq!(sample(&after, "walbox_events_published_total"), 25.0);
    assert_eq!(sample(&after, "walbox_events_confirmed_total"), 25.0);
    assert!(sample(&after, "walbox_transactions_total") >= 25.0);
    assert_eq!(sample(&after, "walbox_in_flight_messages"), 0.0);
    assert_eq!(sample(&after, "walbox_confirm_latency_seconds_count"), 25.0);
    assert_eq!(
        sample(&after, "walbox_commit_to_confirm_seconds_count"),
        25.0
    );
    assert!(sample(&after, "walbox_confirmed_lsn") >= after_commit.as_u64() as f64);
    assert!(sample(&after, "walbox_received_lsn") >= sample(&after, "walbox_confirmed_lsn"));
    assert_eq!(sample(&after, "walbox_oldest_unconfirmed_age_seconds"), 0.0);

    // The broker goes away: not ready, a reconnect on the amqp side; it comes back: ready.
    amqp_proxy.cut();
    let went_unready = wait_status(&addr, "/readyz", 503, Duration::from_secs(15)).await;
    // Reconnecting is not standing by: the orchestrator's probe says not ready either.
    assert_eq!(
        get(&addr, "/standbyz").await.map(|(code, _)| code),
        Some(503)
    );
    let cut = scrape(&addr).await;
    assert!(sample(&cut, "walbox_reconnects_total{side=\"amqp\"}") >= 1.0);
    assert_eq!(sample(&cut, "walbox_state{state=\"streaming\"}"), 0.0);
    assert_eq!(
        get(&addr, "/healthz").await.map(|(code, _)| code),
        Some(200)
    );
    amqp_proxy.restore();
    let came_back = wait_status(&addr, "/readyz", 200, WAIT).await;
    eprintln!("readyz: 503 {went_unready:?} after the cut, 200 {came_back:?} after the restore");

    env.insert("order", "shipped", "{}").await;
    let delivered = receive(&mut consumer, 1, WAIT).await;
    assert_eq!(delivered.len(), 1, "log:\n{}", env.run_log(run));
    // A consumer can receive a persistent message before the broker's confirm of it reaches
    // walbox (the confirm waits for the disk), so the counter may follow a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&scrape(&addr).await, "walbox_events_confirmed_total") < 26.0 {
        assert!(
            Instant::now() < deadline,
            "the event after the reconnect was never counted as confirmed; log:\n{}",
            env.run_log(run)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The slot poller reads the server every few seconds.
    let deadline = Instant::now() + Duration::from_secs(12);
    while !scrape(&addr)
        .await
        .contains("walbox_slot_retained_wal_bytes ")
        || sample(&scrape(&addr).await, "walbox_slot_retained_wal_bytes") == 0.0
    {
        assert!(Instant::now() < deadline, "slot gauges never filled in");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    env.terminate(run);
}

#[tokio::test]
async fn logs_are_json_when_stdout_is_not_a_terminal() {
    let env = TestEnv::new("jsonlog").await;
    // No --log-format: the default picks JSON because stdout is not a terminal here. An
    // unreachable server keeps walbox retrying (transient), logging as it goes.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_walbox"))
        .args([
            "run",
            "--metrics-addr",
            "none",
            "--max-retry-delay-ms",
            "200",
        ])
        .args(["--postgres-url", "postgres://postgres@127.0.0.1:1/nowhere"])
        .args(["--slot", &env.name])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn walbox");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "a transient failure must not stop walbox"
    );
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.len() >= 2,
        "expected a start line and retries:\n{log}"
    );
    for line in &lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|line| line.contains("reconnecting")),
        "no reconnect line:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_alive_available_but_not_ready_until_it_takes_over() {
    let mut env = TestEnv::new("standbyready").await;
    let mut consumer = env.queue("all", "#").await;
    let active = env.spawn_run(&[]);
    let active_addr = served_address(&env, active).await;
    wait_status(&active_addr, "/readyz", 200, WAIT).await;
    let standby = env.spawn_run(&[]);
    let standby_addr = served_address(&env, standby).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = get(&standby_addr, "/readyz").await;
        if answer
            .as_ref()
            .is_some_and(|(code, body)| *code == 503 && body.contains("standing_by"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "standby never said so: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&standby_addr, "/healthz").await.map(|(code, _)| code),
        Some(200)
    );
    // /standbyz, the orchestrator's readiness probe, counts both: the standby is fit to take
    // over, so a rolling update may stop the active one.
    for addr in [&active_addr, &standby_addr] {
        assert_eq!(
            get(addr, "/standbyz").await.map(|(code, _)| code),
            Some(200)
        );
    }
    let body = get(&standby_addr, "/standbyz").await.map(|(_, body)| body);
    assert!(
        body.as_deref()
            .is_some_and(|body| body.contains("standing_by")),
        "{body:?}"
    );

    env.kill(active);
    let took_over = wait_status(&standby_addr, "/readyz", 200, WAIT).await;
    eprintln!("standby ready {took_over:?} after the active one was killed");
    env.insert("order", "created", "{}").await;
    assert_eq!(receive(&mut consumer, 1, WAIT).await.len(), 1);
    env.terminate(standby);
}
