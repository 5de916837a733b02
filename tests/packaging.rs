//! Static checks of the container packaging in docker/: the compose file, the Dockerfile, the
//! health-check script and the demo broker definitions agree with each other and with walbox's
//! real command line. Nothing here needs Docker; no image is built and no container started.
//!
//! The flags are read from the built binary (`walbox run --help`), so a variable in compose.yml
//! that no flag reads, e.g. after a flag is renamed, fails here instead of being silently
//! ignored inside a container.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use serde_norway::Value;

const METRICS_PORT: u16 = 9820;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// --- compose.yml ---------------------------------------------------------------------------

fn compose() -> Value {
    serde_norway::from_str(&read("docker/compose.yml"))
        .unwrap_or_else(|e| panic!("docker/compose.yml is not valid YAML: {e}"))
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|services| services.get(name))
        .unwrap_or_else(|| panic!("docker/compose.yml has no service `{name}`"))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("expected a scalar in docker/compose.yml, found {other:?}"),
    }
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        None => Vec::new(),
        Some(Value::Sequence(items)) => items.iter().map(text).collect(),
        Some(scalar) => vec![text(scalar)],
    }
}

/// A service's environment, in either compose form (a mapping, or a list of `KEY=value`).
fn environment(service: &Value) -> Vec<(String, String)> {
    match service.get("environment") {
        None => Vec::new(),
        Some(Value::Mapping(map)) => map.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let item = text(item);
                match item.split_once('=') {
                    Some((key, value)) => (key.to_owned(), value.to_owned()),
                    None => (item, String::new()),
                }
            })
            .collect(),
        Some(other) => panic!("unexpected environment in docker/compose.yml: {other:?}"),
    }
}

fn env_value<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Container ports of a service's `ports`, short (`[ip:]host:container[/proto]`) or long form.
fn container_ports(service: &Value) -> Vec<u16> {
    let Some(Value::Sequence(ports)) = service.get("ports") else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|port| {
            let container = match port {
                Value::Mapping(_) => text(port.get("target").expect("long-form port has target")),
                short => {
                    let short = text(short);
                    let without_proto = short.split('/').next().unwrap_or_default().to_owned();
                    without_proto
                        .rsplit(':')
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                }
            };
            container
                .parse()
                .unwrap_or_else(|_| panic!("cannot read the container port of {port:?}"))
        })
        .collect()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("`{addr}` has no port"))
}

#[test]
fn compose_has_the_services() {
    let compose = compose();
    for name in ["postgres", "rabbitmq", "walbox"] {
        service(&compose, name);
    }
}

#[test]
fn compose_postgres_has_logical_wal_and_the_outbox_table() {
    let compose = compose();
    let postgres = service(&compose, "postgres");
    let command = strings(postgres.get("command")).join(" ");
    for setting in [
        "wal_level=logical",
        "max_replication_slots=",
        "max_wal_senders=",
    ] {
        assert!(
            command.contains(setting),
            "postgres command `{command}` does not set {setting}"
        );
    }
    let volumes = strings(postgres.get("volumes"));
    assert!(
        volumes
            .iter()
            .any(|volume| volume.starts_with("../sql/outbox.sql:/docker-entrypoint-initdb.d/")),
        "postgres does not mount sql/outbox.sql into /docker-entrypoint-initdb.d: {volumes:?}"
    );
    assert!(
        postgres.get("healthcheck").is_some(),
        "postgres has no healthcheck"
    );
}

#[test]
fn compose_walbox_is_built_here_waits_for_healthy_servers_and_publishes_metrics() {
    let compose = compose();
    let walbox = service(&compose, "walbox");

    let build = walbox.get("build").expect("walbox has no build section");
    let context = repo_path("docker").join(text(build.get("context").expect("build.context")));
    let dockerfile = context.join(text(build.get("dockerfile").expect("build.dockerfile")));
    assert!(
        dockerfile.is_file(),
        "walbox builds from {}, which does not exist",
        dockerfile.display()
    );

    for dependency in ["postgres", "rabbitmq"] {
        let condition = walbox
            .get("depends_on")
            .and_then(|depends| depends.get(dependency))
            .and_then(|dependency| dependency.get("condition"))
            .map(text);
        assert_eq!(
            condition.as_deref(),
            Some("service_healthy"),
            "walbox must wait for {dependency} to be healthy"
        );
        assert!(
            service(&compose, dependency).get("healthcheck").is_some(),
            "{dependency} has no healthcheck, so service_healthy never holds"
        );
    }
    assert_eq!(
        walbox.get("restart").map(text).as_deref(),
        Some("unless-stopped")
    );

    let env = environment(walbox);
    for required in [
        "WALBOX_POSTGRES_URL",
        "WALBOX_AMQP_URL",
        "WALBOX_METRICS_ADDR",
    ] {
        assert!(
            env_value(&env, required).is_some(),
            "walbox sets no {required}"
        );
    }
    let metrics = env_value(&env, "WALBOX_METRICS_ADDR").unwrap_or_default();
    assert!(
        metrics.starts_with("0.0.0.0:") || metrics.starts_with("[::]:"),
        "WALBOX_METRICS_ADDR `{metrics}` must listen on every interface to be reachable from the host"
    );
    assert_eq!(port_of(metrics), METRICS_PORT);
    assert!(
        container_ports(walbox).contains(&METRICS_PORT),
        "walbox does not publish port {METRICS_PORT}"
    );
}

#[test]
fn compose_bind_mounts_exist() {
    let compose = compose();
    let Some(Value::Mapping(services)) = compose.get("services") else {
        panic!("docker/compose.yml has no services");
    };
    for (name, service) in services {
        for volume in strings(service.get("volumes")) {
            let source = volume.split(':').next().unwrap_or_default();
            if source.starts_with('.') {
                let path = repo_path("docker").join(source);
                assert!(
                    path.exists(),
                    "service {} mounts {}, which does not exist",
                    text(name),
                    path.display()
                );
            }
        }
    }
}

// --- walbox's flags ------------------------------------------------------------------------

/// The long flags `walbox run --help` lists (without `--help`/`--version`), and the variables
/// its `[env: NAME=]` annotations name.
fn run_flags() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_walbox"));
    command.args(["run", "--help"]);
    // The help shows a set variable's value: keep this process's settings out of it.
    for (key, _) in std::env::vars() {
        if key.starts_with("WALBOX_") {
            command.env_remove(key);
        }
    }
    let output = command.output().expect("running walbox run --help");
    assert!(
        output.status.success(),
        "walbox run --help failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let help = String::from_utf8(output.stdout).expect("help is UTF-8");

    let mut flags = BTreeSet::new();
    for line in help.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        if let Some(flag) = line
            .split_whitespace()
            .find_map(|word| word.trim_end_matches(',').strip_prefix("--"))
        {
            let flag = flag.split('=').next().unwrap_or_default();
            if !flag.is_empty() && flag != "help" && flag != "version" {
                flags.insert(flag.to_owned());
            }
        }
    }
    let annotated = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect();
    assert!(
        flags.contains("postgres-url"),
        "could not read the flags from:\n{help}"
    );
    (flags, annotated)
}

fn env_name(flag: &str) -> String {
    format!("WALBOX_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// `ENV` variables the Dockerfile sets (`ENV KEY=value ...` or `ENV KEY value`).
fn dockerfile_env(instructions: &[(String, String)]) -> Vec<String> {
    instructions
        .iter()
        .filter(|(instruction, _)| instruction == "ENV")
        .flat_map(|(_, arguments)| {
            if arguments.contains('=') {
                arguments
                    .split_whitespace()
                    .filter_map(|pair| pair.split_once('=').map(|(key, _)| key.to_owned()))
                    .collect::<Vec<_>>()
            } else {
                arguments
                    .split_whitespace()
                    .take(1)
                    .map(str::to_owned)
                    .collect()
            }
        })
        .collect()
}

#[test]
fn every_walbox_variable_in_compose_and_the_dockerfile_is_a_flag_of_walbox_run() {
    let (flags, annotated) = run_flags();
    let known: BTreeSet<String> = flags.iter().map(|flag| env_name(flag)).collect();

    let compose = compose();
    let Some(Value::Mapping(services)) = compose.get("services") else {
        panic!("docker/compose.yml has no services");
    };
    let mut used: Vec<(String, String)> = Vec::new();
    for (name, service) in services {
        for (key, _) in environment(service) {
            if key.starts_with("WALBOX_") {
                used.push((format!("docker/compose.yml service {}", text(name)), key));
            }
        }
    }
    for key in dockerfile_env(&dockerfile()) {
        if key.starts_with("WALBOX_") {
            used.push(("docker/Dockerfile ENV".to_owned(), key));
        }
    }
    assert!(!used.is_empty(), "no WALBOX_ variable found at all");

    let mut problems = Vec::new();
    for (place, key) in &used {
        if !known.contains(key) {
            problems.push(format!("{place}: {key} matches no flag of `walbox run`"));
        } else if !annotated.is_empty() && !annotated.contains(key) {
            problems.push(format!(
                "{place}: {key} matches a flag, but `walbox run --help` shows no \
                 [env: {key}] for it, so walbox does not read it"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nvariables walbox run reads: {known:?}",
        problems.join("\n")
    );
}

// --- Dockerfile ----------------------------------------------------------------------------

/// The Dockerfile's instructions as (INSTRUCTION, arguments): continuation lines joined,
/// comments and blank lines dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("docker/Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(start) => {
                current.push_str(start);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (instruction, arguments) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                instructions.push((
                    instruction.to_ascii_uppercase(),
                    arguments.trim().to_owned(),
                ));
                current.clear();
            }
        }
    }
    assert!(
        current.is_empty(),
        "docker/Dockerfile ends in a continuation"
    );
    instructions
}

fn arguments_of<'a>(instructions: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    instructions
        .iter()
        .filter(|(instruction, _)| instruction == name)
        .map(|(_, arguments)| arguments.as_str())
        .collect()
}

/// An exec-form (JSON array) argument list.
fn exec_form(arguments: &str, what: &str) -> Vec<String> {
    serde_json::from_str(arguments)
        .unwrap_or_else(|_| panic!("{what} `{arguments}` is not in exec form (a JSON array)"))
}

#[test]
fn dockerfile_is_multi_stage_and_runs_walbox_as_a_user() {
    let instructions = dockerfile();

    let stages = arguments_of(&instructions, "FROM");
    assert!(
        stages.len() >= 2,
        "expected a multi-stage build, found FROM {stages:?}"
    );
    assert!(
        arguments_of(&instructions, "COPY")
            .iter()
            .any(|copy| copy.starts_with("--from=")),
        "the runtime stage copies nothing from the build stage"
    );

    let user = *arguments_of(&instructions, "USER")
        .last()
        .expect("the Dockerfile sets no USER, so walbox runs as root");
    let name = user.split(':').next().unwrap_or_default();
    assert!(name != "root" && name != "0", "the image runs as `{user}`");

    // Exec form: walbox is PID 1 and receives docker stop's SIGTERM itself.
    let entrypoint = arguments_of(&instructions, "ENTRYPOINT");
    let entrypoint = exec_form(entrypoint.last().expect("no ENTRYPOINT"), "ENTRYPOINT");
    assert!(
        entrypoint
            .first()
            .is_some_and(|program| program == "walbox" || program.ends_with("/walbox")),
        "ENTRYPOINT {entrypoint:?} does not start walbox"
    );
    let cmd = arguments_of(&instructions, "CMD");
    assert_eq!(exec_form(cmd.last().expect("no CMD"), "CMD"), ["run"]);

    let exposed: Vec<&str> = arguments_of(&instructions, "EXPOSE")
        .iter()
        .flat_map(|ports| ports.split_whitespace())
        .collect();
    assert!(
        exposed
            .iter()
            .any(|port| port.split('/').next() == Some(&METRICS_PORT.to_string())),
        "the image does not EXPOSE {METRICS_PORT}: {exposed:?}"
    );
}

#[test]
fn dockerfile_health_check_asks_healthz_with_a_program_the_image_has() {
    let instructions = dockerfile();
    let healthcheck = *arguments_of(&instructions, "HEALTHCHECK")
        .last()
        .expect("the Dockerfile has no HEALTHCHECK");
    assert!(
        healthcheck.contains("/healthz"),
        "HEALTHCHECK `{healthcheck}` does not ask /healthz"
    );
    let command = healthcheck
        .split_once("CMD ")
        .map(|(_, command)| exec_form(command.trim(), "HEALTHCHECK CMD"))
        .expect("HEALTHCHECK has no CMD");
    let program = command.first().expect("HEALTHCHECK CMD is empty");
    let copied_to: Vec<&str> = arguments_of(&instructions, "COPY")
        .iter()
        .filter_map(|copy| copy.split_whitespace().last())
        .collect();
    assert!(
        copied_to
            .iter()
            .any(|destination| destination.rsplit('/').next() == Some(program.as_str())),
        "the health check runs `{program}`, which no COPY puts into the image ({copied_to:?})"
    );

    // The metrics address the image defaults to is the port it exposes and the check asks.
    let metrics = instructions
        .iter()
        .filter(|(instruction, _)| instruction == "ENV")
        .find_map(|(_, arguments)| {
            arguments
                .split_whitespace()
                .find_map(|pair| pair.strip_prefix("WALBOX_METRICS_ADDR="))
        })
        .expect("the image sets no WALBOX_METRICS_ADDR, so nothing may serve /healthz");
    assert_eq!(port_of(metrics), METRICS_PORT);
}

#[test]
fn dockerfile_copies_only_what_the_build_context_holds() {
    let instructions = dockerfile();
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('!'))
        .map(|line| line.trim_end_matches('/').to_owned())
        .collect();
    for copy in arguments_of(&instructions, "COPY") {
        let words: Vec<&str> = copy
            .split_whitespace()
            .filter(|word| !word.starts_with("--"))
            .collect();
        if copy.contains("--from=") || words.len() < 2 {
            continue;
        }
        for source in &words[..words.len() - 1] {
            if *source == "." {
                continue;
            }
            assert!(
                repo_path(source).exists(),
                "COPY {source}: no such file in the repository"
            );
            assert!(
                !ignored
                    .iter()
                    .any(|pattern| source == pattern || source.starts_with(&format!("{pattern}/"))),
                "COPY {source}: .dockerignore leaves it out of the build context"
            );
        }
    }
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "benches",
        "tests",
        "examples",
    ] {
        assert!(
            !ignored.iter().any(|pattern| pattern == needed),
            ".dockerignore leaves out {needed}, which cargo build needs"
        );
    }
}

// --- docker/healthcheck.sh -----------------------------------------------------------------

/// Runs docker/healthcheck.sh against a one-request HTTP server on 127.0.0.1 that answers
/// `status_line`; returns the script's output and the request line the server saw.
fn healthcheck_against(status_line: &'static str) -> (Output, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a local port");
    let port = listener.local_addr().expect("local address").port();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accepting the health check");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("setting a timeout");
        let mut reader = BufReader::new(&stream);
        let mut request_line = String::new();
        reader
            .read_line(&mut request_line)
            .expect("reading the request");
        let mut header = String::new();
        while reader.read_line(&mut header).is_ok_and(|n| n > 0) && header != "\r\n" {
            header.clear();
        }
        (&stream)
            .write_all(format!("{status_line}\r\nContent-Length: 2\r\n\r\nok").as_bytes())
            .expect("answering");
        request_line.trim_end().to_owned()
    });
    let output = healthcheck(&format!("0.0.0.0:{port}"));
    let request_line = server.join().expect("the test server panicked");
    (output, request_line)
}

fn healthcheck(metrics_addr: &str) -> Output {
    Command::new("bash")
        .arg(repo_path("docker/healthcheck.sh"))
        .arg("/healthz")
        .env("WALBOX_METRICS_ADDR", metrics_addr)
        .output()
        .expect("running bash docker/healthcheck.sh")
}

#[test]
fn healthcheck_script_passes_on_200_only() {
    let (output, request_line) = healthcheck_against("HTTP/1.1 200 OK");
    assert_eq!(request_line, "GET /healthz HTTP/1.0");
    assert!(
        output.status.success(),
        "200 judged unhealthy: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let (output, _) = healthcheck_against("HTTP/1.1 503 Service Unavailable");
    assert_eq!(
        output.status.code(),
        Some(1),
        "503 must be unhealthy (exit 1)"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("503"));

    // Nothing listening: a port that was just free.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("finding a free port")
        .port();
    let output = healthcheck(&format!("127.0.0.1:{port}"));
    assert_eq!(
        output.status.code(),
        Some(1),
        "a closed port must be unhealthy (exit 1)"
    );
}

// --- docker/rabbitmq/definitions.json -------------------------------------------------------

#[test]
fn demo_broker_definitions_route_walbox_events_to_a_queue_and_admit_its_user() {
    let definitions: serde_json::Value =
        serde_json::from_str(&read("docker/rabbitmq/definitions.json"))
            .expect("docker/rabbitmq/definitions.json is not valid JSON");
    let compose = compose();
    let env = environment(service(&compose, "walbox"));
    let exchange = env_value(&env, "WALBOX_EXCHANGE").unwrap_or("outbox");
    let list = |key: &str| definitions[key].as_array().cloned().unwrap_or_default();

    // walbox declares its exchange as a durable topic exchange: a different declaration would
    // make it fail with PRECONDITION_FAILED.
    let declared = list("exchanges")
        .into_iter()
        .find(|e| e["name"] == exchange)
        .unwrap_or_else(|| panic!("definitions.json declares no exchange {exchange}"));
    assert_eq!(declared["type"], "topic");
    assert_eq!(declared["durable"], true);

    // walbox publishes with mandatory set: without a bound queue every event comes back.
    let bound: Vec<String> = list("bindings")
        .iter()
        .filter(|b| b["source"] == exchange && b["destination_type"] == "queue")
        .filter_map(|b| b["destination"].as_str().map(str::to_owned))
        .collect();
    assert!(
        bound
            .iter()
            .any(|queue| list("queues").iter().any(|q| q["name"] == queue.as_str())),
        "no declared queue is bound to exchange {exchange}"
    );

    // A node that imports definitions at boot creates no default user: walbox's must be there.
    let amqp_url = env_value(&env, "WALBOX_AMQP_URL").expect("WALBOX_AMQP_URL");
    let user = amqp_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(credentials, _)| credentials.split(':').next().unwrap_or_default())
        .expect("WALBOX_AMQP_URL names no user");
    assert!(
        list("users").iter().any(|u| u["name"] == user),
        "definitions.json has no user {user}, which WALBOX_AMQP_URL uses"
    );
    assert!(
        list("permissions").iter().any(|p| p["user"] == user),
        "user {user} has no permissions in definitions.json"
    );
}
