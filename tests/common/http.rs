//! Reading walbox's HTTP endpoints from a test: where it serves (from its JSON log), a plain
//! `GET`, and one sample of a Prometheus scrape.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TestEnv;

/// `GET path` over HTTP/1.0: (status code, body), or None if nothing listens.
pub async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body)?;
    Some((status, body.to_owned()))
}

/// The address run `run` says it serves on, from its JSON log.
pub async fn served_address(env: &TestEnv, run: usize, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        for line in env.run_log(run).lines() {
            if let Ok(entry) = serde_json::from_str::<serde_json::Value>(line)
                && let Some(address) = entry["address"].as_str()
            {
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

/// The value of one series (name with its labels, exactly) in a scrape, if present.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}
