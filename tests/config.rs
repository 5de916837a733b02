//! Configuration: precedence flag > environment > file > default, `config check` redacts
//! secrets, a bad file is a usage error, and the docs' option and metric reference tables
//! match the code.

use std::process::{Command, Output};

fn walbox(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_walbox"));
    command.args(args);
    // This process's own WALBOX_ settings must not leak into what is checked.
    for (key, _) in std::env::vars() {
        if key.starts_with("WALBOX_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run walbox")
}

fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// The `key = value  # source` line of `config check`'s output.
fn line<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find(|line| line.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{output}"))
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let file = config_file(
        "precedence",
        "slot = \"from_file\"\npublication = \"from_file\"\nexchange = \"from-file\"\n\
         max_in_flight = 77\n",
    );
    let output = walbox(
        &[
            "config",
            "check",
            "--config",
            file.to_str().unwrap(),
            "--slot",
            "from_flag",
        ],
        &[
            ("WALBOX_SLOT", "from_env"),
            ("WALBOX_PUBLICATION", "from_env"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(line(&stdout, "slot"), "slot = \"from_flag\"  # flag");
    assert_eq!(
        line(&stdout, "publication"),
        "publication = \"from_env\"  # env WALBOX_PUBLICATION"
    );
    assert_eq!(
        line(&stdout, "exchange"),
        "exchange = \"from-file\"  # file"
    );
    assert_eq!(line(&stdout, "max-in-flight"), "max-in-flight = 77  # file");
    assert_eq!(
        line(&stdout, "table"),
        "table = \"public.outbox\"  # default"
    );

    // The file can be named by the environment too.
    let output = walbox(
        &["config", "check"],
        &[("WALBOX_CONFIG", file.to_str().unwrap())],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(line(&stdout, "slot"), "slot = \"from_file\"  # file");
    std::fs::remove_file(file).unwrap();
}

#[test]
fn poison_settings_come_from_flag_environment_or_file_and_are_validated() {
    let file = config_file(
        "poison",
        "poison_after = 3\ndead-letter-exchange = \"dlx-from-file\"\n",
    );
    let path = file.to_str().unwrap();
    let output = walbox(&["config", "check", "--config", path], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(line(&stdout, "poison-after"), "poison-after = 3  # file");
    assert_eq!(
        line(&stdout, "dead-letter-exchange"),
        "dead-letter-exchange = \"dlx-from-file\"  # file"
    );
    let output = walbox(
        &["config", "check", "--config", path, "--poison-after", "9"],
        &[("WALBOX_DEAD_LETTER_EXCHANGE", "dlx-from-env")],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(line(&stdout, "poison-after"), "poison-after = 9  # flag");
    assert_eq!(
        line(&stdout, "dead-letter-exchange"),
        "dead-letter-exchange = \"dlx-from-env\"  # env WALBOX_DEAD_LETTER_EXCHANGE"
    );
    let defaults = walbox(&["config", "check"], &[]);
    let stdout = String::from_utf8_lossy(&defaults.stdout);
    assert_eq!(line(&stdout, "poison-after"), "poison-after = 5  # default");
    for bad in [
        &["--poison-after", "0"][..],
        &["--poison-after", "many"],
        &["--dead-letter-exchange", ""],
    ] {
        let mut args = vec!["config", "check"];
        args.extend_from_slice(bad);
        let output = walbox(&args, &[]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::remove_file(file).unwrap();
}

#[test]
fn config_check_redacts_secrets_from_every_source() {
    let file = config_file(
        "secrets",
        "postgres-url = \"postgres://walbox:file-secret@db:5432/app\"\n",
    );
    let output = walbox(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[("WALBOX_AMQP_URL", "amqps://relay:env-secret@mq:5671/prod")],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        !stdout.contains("file-secret") && !stdout.contains("env-secret"),
        "{stdout}"
    );
    assert_eq!(
        line(&stdout, "postgres-url"),
        "postgres-url = \"postgres://walbox:***@db:5432/app\"  # file"
    );
    assert_eq!(
        line(&stdout, "amqp-url"),
        "amqp-url = \"amqps://relay:***@mq:5671/prod\"  # env WALBOX_AMQP_URL"
    );
    std::fs::remove_file(file).unwrap();
}

#[test]
fn config_check_redacts_every_broker_node_of_the_list() {
    let repeated = walbox(
        &[
            "config",
            "check",
            "--amqp-url",
            "amqp://relay:first-secret@mq1:5672/%2f,amqp://relay:second-secret@mq2:5672/%2f",
            "--amqp-url",
            "amqp://relay:third-secret@mq3:5672/%2f",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&repeated.stdout);
    assert!(repeated.status.success(), "{stdout}");
    assert!(!stdout.contains("-secret"), "{stdout}");
    assert_eq!(
        line(&stdout, "amqp-url"),
        "amqp-url = \"amqp://relay:***@mq1:5672/%2f,amqp://relay:***@mq2:5672/%2f,\
         amqp://relay:***@mq3:5672/%2f\"  # flag"
    );
    // A bad node in the list is a usage error that does not print any password either.
    let bad = walbox(
        &["config", "check"],
        &[(
            "WALBOX_AMQP_URL",
            "amqp://relay:first-secret@mq1:5672/%2f,http://relay:second-secret@mq2/",
        )],
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("must start with amqp://"), "{stderr}");
    assert!(!stderr.contains("-secret"), "{stderr}");
}

#[test]
fn config_check_redacts_every_stream_node_and_checks_the_stream_flags() {
    let checked = walbox(
        &[
            "config",
            "check",
            "--target",
            "stream",
            "--stream",
            "orders",
            "--stream-url",
            "rabbitmq-stream://relay:first-secret@mq1:5552/%2f,rabbitmq-stream://relay:second-secret@mq2:5552/%2f",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{stdout}");
    assert!(!stdout.contains("-secret"), "{stdout}");
    // A stream without --target stream, and a stream target without a stream, are usage errors.
    for args in [
        &["config", "check", "--stream", "orders"][..],
        &["config", "check", "--target", "stream"][..],
        &[
            "config",
            "check",
            "--target",
            "stream",
            "--stream",
            "orders",
            "--stream-url",
            "http://relay:third-secret@mq3/",
        ][..],
    ] {
        let bad = walbox(args, &[]);
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(bad.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("-secret"), "{stderr}");
    }
}

#[test]
fn password_and_ca_files_come_from_the_file_too_and_only_their_paths_show() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let password = dir.join(format!("password-{}", std::process::id()));
    std::fs::write(&password, "toml-file-secret\n").unwrap();
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/example-ca.pem");
    let file = config_file(
        "files",
        &format!(
            "postgres-password-file = {0:?}\namqp_password_file = {0:?}\namqp-ca-file = {1:?}\n",
            password.display().to_string(),
            ca.display().to_string()
        ),
    );
    let output = walbox(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("toml-file-secret"), "{stdout}");
    assert_eq!(
        line(&stdout, "amqp-password-file"),
        format!(
            "amqp-password-file = {:?}  # file",
            password.display().to_string()
        )
    );
    assert!(line(&stdout, "amqp-ca-file").ends_with("example-ca.pem\"  # file"));

    // A password file that cannot be read is a usage error naming it, not its content.
    let output = walbox(
        &[
            "config",
            "check",
            "--postgres-password-file",
            "/nonexistent/pw",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/pw"));
    std::fs::remove_file(file).unwrap();
    std::fs::remove_file(password).unwrap();
}

#[test]
fn bad_configuration_is_a_usage_error() {
    let unknown = config_file("unknown", "slott = \"typo\"\n");
    let not_toml = config_file("not-toml", "slot = \n");
    let bad_value = config_file("bad-value", "start-lsn = \"yesterday\"\n");
    for (file, expected) in [
        (&unknown, "unknown key `slott`"),
        (&not_toml, "not valid TOML"),
        (&bad_value, "--start-lsn"),
    ] {
        let output = walbox(
            &["config", "check", "--config", file.to_str().unwrap()],
            &[],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{expected} not in: {stderr}");
    }
    let output = walbox(
        &["config", "check", "--config", "/nonexistent/walbox.toml"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    for file in [unknown, not_toml, bad_value] {
        std::fs::remove_file(file).unwrap();
    }
}

/// The reference pages in docs/src/reference/ are generated from the code (src/cli/docs.rs:
/// the command line from clap, the metrics from the registry, the exit codes); the committed
/// pages must be exactly that output. With WALBOX_BLESS=1 the test writes them instead of
/// failing.
#[test]
fn reference_pages_match_the_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src/reference");
    let mut stale = Vec::new();
    for (name, generated) in walbox::cli::docs::reference_pages() {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(generated.as_str()) {
            continue;
        }
        if std::env::var_os("WALBOX_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        stale.push(name);
    }
    assert!(
        stale.is_empty(),
        "docs/src/reference/{stale:?} differ from what the code generates; run \
         `WALBOX_BLESS=1 cargo test --test config reference_pages`"
    );
}

/// `config check`'s output as key → value, comments dropped. Parsing it as TOML also proves it
/// holds every key once.
fn settings(output: &Output) -> toml::Table {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.parse::<toml::Table>().unwrap_or_else(|error| {
        panic!("config check's output is not a config file: {error}\n{stdout}")
    })
}

/// Every preset's expansion, printed by `config check`, loads back as a config file and expands
/// to the same configuration: the same value for every setting, and nothing else given.
#[test]
fn every_preset_round_trips_through_config_check() {
    for preset in [
        "cap",
        "masstransit",
        "nservicebus",
        "eshop",
        "dapr",
        "cloudevents",
    ] {
        // Extra headers from the environment, one replacing a preset's (NServiceBus), one
        // holding a comma that must not split it.
        let env = [(
            "WALBOX_HEADER",
            r"NServiceBus.ContentType=text/json,x-tenant={aggregate_id},x-list=a\,b=c",
        )];
        let first = walbox(&["config", "check", "--preset", preset], &env);
        let expanded = settings(&first);
        let file = config_file(
            &format!("round-trip-{preset}"),
            &String::from_utf8_lossy(&first.stdout),
        );
        let again = walbox(
            &["config", "check", "--config", file.to_str().unwrap()],
            &[],
        );
        let reloaded = settings(&again);
        assert_eq!(
            expanded, reloaded,
            "--preset {preset} does not expand to the same configuration when loaded back"
        );
        let headers = expanded["header"].as_array().expect("header is a list");
        let names: Vec<&str> = headers
            .iter()
            .map(|pair| pair.as_str().unwrap().split_once('=').unwrap().0)
            .collect();
        assert!(
            names.contains(&"x-tenant") && names.contains(&"x-list"),
            "{names:?}"
        );
        assert_eq!(
            names
                .iter()
                .filter(|name| **name == "NServiceBus.ContentType")
                .count(),
            1,
            "{names:?}"
        );
        if preset == "nservicebus" {
            assert!(
                headers.contains(&toml::Value::from("NServiceBus.ContentType=text/json")),
                "the given header replaces the preset's: {headers:?}"
            );
            assert_eq!(
                names.len(),
                6,
                "four of the preset's and three given, one replacing"
            );
        }
        std::fs::remove_file(file).unwrap();
    }
}

/// `--header` gives the same headers from flags, the environment (comma-separated) and the file
/// (a list, or one comma-separated string).
#[test]
fn repeatable_header_works_from_flags_environment_and_file() {
    let header_line = |output: &Output| {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        line(&stdout, "header")
            .split("  #")
            .next()
            .unwrap()
            .to_owned()
    };
    let expected = r#"header = ["a=x", "b={id}", "c=Ns.Type, Assembly, Version=1.0"]"#;
    let flags = walbox(
        &[
            "config",
            "check",
            "--header",
            "a=x",
            "--header",
            "b={id}",
            "--header",
            "c=Ns.Type, Assembly, Version=1.0",
        ],
        &[],
    );
    assert_eq!(header_line(&flags), expected);
    let env = walbox(
        &["config", "check"],
        &[(
            "WALBOX_HEADER",
            "a=x,b={id},c=Ns.Type, Assembly, Version=1.0",
        )],
    );
    assert_eq!(header_line(&env), expected);
    let list = config_file(
        "header-list",
        "header = [\"a=x\", \"b={id}\", \"c=Ns.Type, Assembly, Version=1.0\"]\n",
    );
    let string = config_file(
        "header-string",
        "header = \"a=x,b={id},c=Ns.Type, Assembly, Version=1.0\"\n",
    );
    for file in [list, string] {
        let output = walbox(
            &["config", "check", "--config", file.to_str().unwrap()],
            &[],
        );
        assert_eq!(header_line(&output), expected, "{}", file.display());
        std::fs::remove_file(file).unwrap();
    }
    // A list for a flag that takes one value is refused.
    let bad = config_file("slot-list", "slot = [\"a\", \"b\"]\n");
    let output = walbox(&["config", "check", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("takes one value"));
    std::fs::remove_file(bad).unwrap();
}

/// A preset names its framework's table where the framework fixes it; a given --table wins.
#[test]
fn a_preset_sets_its_frameworks_table() {
    let table = |args: &[&str]| {
        let mut all = vec!["config", "check"];
        all.extend_from_slice(args);
        let output = walbox(&all, &[]);
        line(&String::from_utf8_lossy(&output.stdout), "table").to_owned()
    };
    assert_eq!(
        table(&["--preset", "cap"]),
        "table = \"cap.published\"  # preset cap"
    );
    assert_eq!(
        table(&["--preset", "eshop"]),
        "table = \"public.IntegrationEventLog\"  # preset eshop"
    );
    assert_eq!(
        table(&["--preset", "cap", "--table", "other.published"]),
        "table = \"other.published\"  # flag"
    );
    assert_eq!(
        table(&["--preset", "masstransit"]),
        "table = \"public.outbox\"  # default"
    );
}
