//! Security, end to end on real servers: PostgreSQL over TLS (verify-full, verify-ca, require)
//! with SCRAM-SHA-256, amqps with --amqp-ca-file, password files, secrets kept out of output,
//! quoted names, and the least-privilege role of sql/roles.sql.
//!
//! The TLS tests make a throwaway CA with the openssl CLI, a private PostgreSQL cluster (SSL on,
//! only `hostssl … scram-sha-256` for TCP) and a private RabbitMQ node with a TLS listener, and
//! remove all of it when the last test using them ends, also when one fails. The role test
//! uses the machine's own PostgreSQL and RabbitMQ through tests/common.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use common::{TestEnv, consume_bound, declare_topic_exchange, receive};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

const TLS_ROLE: &str = "walbox_tls";
const AMQP_USER: &str = "walbox_tls";

fn run(command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A CA, a server certificate it signed for localhost and 127.0.0.1, and an unrelated CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            run(Command::new("openssl").current_dir(dir).args(args));
        };
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=walbox test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ]);
        }
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        Pki {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A PostgreSQL cluster of the installed major version on a free port: ssl on with the test
/// CA's certificate, SCRAM-SHA-256 only over TLS, trust on the Unix socket for the test's own
/// administration. Dropped with `pg_dropcluster --stop`.
struct PrivatePostgres {
    version: String,
    cluster: String,
    port: u16,
}

impl PrivatePostgres {
    fn start(pki: &Pki, dir: &Path, cluster: &str) -> PrivatePostgres {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .max_by_key(|version| version.parse::<u32>().unwrap_or(0))
            .expect("a PostgreSQL version");
        let port = free_port();
        // Guard first: a failure half-way still removes the cluster.
        let postgres = PrivatePostgres {
            version: version.clone(),
            cluster: cluster.to_owned(),
            port,
        };
        run(Command::new("pg_createcluster").args([
            &version,
            cluster,
            "-p",
            &port.to_string(),
            "--",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ]));
        // The server reads its key only if postgres owns it and nobody else may read it.
        let keys = dir.join("pg");
        std::fs::create_dir_all(&keys).unwrap();
        for file in ["server.pem", "server.key"] {
            std::fs::copy(pki.dir.join(file), keys.join(file)).unwrap();
        }
        run(Command::new("chown").args(["-R", "postgres:postgres", keys.to_str().unwrap()]));
        run(Command::new("chmod").args(["0700", keys.to_str().unwrap()]));
        run(Command::new("chmod").args(["0600", keys.join("server.key").to_str().unwrap()]));
        // /tmp/... must be traversable by postgres up to the key directory.
        run(Command::new("chmod").args(["0755", dir.to_str().unwrap()]));
        // Debian's postgresql.conf includes conf.d/.
        std::fs::write(
            format!("/etc/postgresql/{version}/{cluster}/conf.d/walbox-security-test.conf"),
            format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nwal_level = logical\n\
                 password_encryption = 'scram-sha-256'\nlisten_addresses = '127.0.0.1,127.0.0.2'\n\
                 max_replication_slots = 16\nmax_wal_senders = 16\n",
                keys.join("server.pem").display(),
                keys.join("server.key").display()
            ),
        )
        .unwrap();
        // TCP only over TLS, only with SCRAM: a connection that works proves both.
        let hba = format!("/etc/postgresql/{version}/{cluster}/pg_hba.conf");
        std::fs::write(
            &hba,
            "local all all trust\n\
             hostssl all all 127.0.0.0/8 scram-sha-256\n\
             hostssl replication all 127.0.0.0/8 scram-sha-256\n",
        )
        .unwrap();
        run(Command::new("pg_ctlcluster").args([
            "--skip-systemctl-redirect",
            &version,
            cluster,
            "start",
        ]));
        postgres
    }

    /// An administrative connection over the Unix socket (trust).
    async fn admin(&self, database: &str) -> Client {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=/var/run/postgresql port={} user=postgres dbname={database}",
                self.port
            ),
            NoTls,
        )
        .await
        .expect("connect to the private cluster");
        tokio::spawn(connection);
        client
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster")
            .args(["--stop", &self.version, &self.cluster])
            .stdin(Stdio::null())
            .output();
        // pg_dropcluster leaves files it did not make: the test's conf.d file.
        let _ =
            std::fs::remove_dir_all(format!("/etc/postgresql/{}/{}", self.version, self.cluster));
    }
}

/// A RabbitMQ node with a plain listener (for the test's consumer) and a TLS listener (for
/// walbox), its files under the test's directory. Stopped and removed on drop.
struct PrivateRabbit {
    node: String,
    dir: PathBuf,
    tcp_port: u16,
    tls_port: u16,
}

impl PrivateRabbit {
    fn start(pki: &Pki, dir: &Path, node: &str) -> PrivateRabbit {
        let dir = dir.join("rabbit");
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["ca.pem", "server.pem", "server.key"] {
            std::fs::copy(pki.dir.join(file), dir.join(file)).unwrap();
        }
        let (tcp_port, tls_port) = (free_port(), free_port());
        let rabbit = PrivateRabbit {
            node: node.to_owned(),
            dir: dir.clone(),
            tcp_port,
            tls_port,
        };
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.1 = 127.0.0.1:{tcp_port}\n\
                 listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {0}/ca.pem\n\
                 ssl_options.certfile = {0}/server.pem\n\
                 ssl_options.keyfile = {0}/server.key\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                dir.display()
            ),
        )
        .unwrap();
        // rabbitmq-server started as root runs as the rabbitmq user, which must own its files.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:", dir.to_str().unwrap()])
            .output();
        run(Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", node)
            .env("RABBITMQ_NODE_PORT", tcp_port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid")));
        let deadline = Instant::now() + Duration::from_secs(90);
        while !Command::new("rabbitmqctl")
            .args(["-q", "-n", node, "await_startup", "--timeout", "10"])
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|output| output.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "private RabbitMQ node did not start"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        rabbit
    }

    fn ctl(&self, args: &[&str]) {
        run(Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node])
            .args(args));
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node, "stop"])
            .stdin(Stdio::null())
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A directory removed on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The private servers, shared by the tests running at the same time; the last one to finish
/// removes them. Fields drop in declaration order: the servers, then their directory.
struct Servers {
    postgres: PrivatePostgres,
    rabbit: PrivateRabbit,
    pki: Pki,
    pg_password: String,
    amqp_password: String,
    dir: PathBuf,
    _remove: RemoveDir,
}

static SERVERS: Mutex<Weak<Servers>> = Mutex::const_new(Weak::new());

async fn servers() -> Arc<Servers> {
    let mut shared = SERVERS.lock().await;
    if let Some(servers) = shared.upgrade() {
        return servers;
    }
    let tag = format!("{}_{}", std::process::id(), free_port());
    let dir = PathBuf::from(format!("/tmp/walbox-security-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    // Removes the directory even if a server below fails to start (the servers' own guards
    // are made before they start, and drop before this).
    let remove = RemoveDir(dir.clone());
    let pki = Pki::create(&dir.join("ca"));
    let postgres = PrivatePostgres::start(&pki, &dir, &format!("wbtls_{tag}"));
    let rabbit = PrivateRabbit::start(&pki, &dir, &format!("wbtls{tag}@localhost"));
    let pg_password = format!("pg-secret-{tag}");
    let amqp_password = format!("amqp-secret-{tag}");
    rabbit.ctl(&["add_user", AMQP_USER, &amqp_password]);
    rabbit.ctl(&["set_permissions", AMQP_USER, ".*", ".*", ".*"]);
    let admin = postgres.admin("postgres").await;
    // Not a superuser: it owns its test databases and tables, so it may create publications.
    admin
        .batch_execute(&format!(
            "CREATE ROLE {TLS_ROLE} LOGIN REPLICATION PASSWORD '{pg_password}'"
        ))
        .await
        .unwrap();
    let servers = Arc::new(Servers {
        postgres,
        rabbit,
        pki,
        pg_password,
        amqp_password,
        dir,
        _remove: remove,
    });
    *shared = Arc::downgrade(&servers);
    servers
}

/// One test's database (owned by the TLS role, with the outbox table), exchange and queue on
/// the private servers, and the walbox processes it started.
struct Scene {
    servers: Arc<Servers>,
    name: String,
    db: Client,
    _amqp: Connection,
    channel: Channel,
    children: Vec<Child>,
}

impl Scene {
    async fn new(test: &str) -> Scene {
        let servers = servers().await;
        let name = format!("{test}_{}", free_port());
        let admin = servers.postgres.admin("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {TLS_ROLE}"))
            .await
            .unwrap();
        let db = servers.postgres.admin(&name).await;
        db.batch_execute(&format!("SET ROLE {TLS_ROLE}; {}", common::OUTBOX_SQL))
            .await
            .unwrap();
        let amqp = Connection::connect(
            &format!(
                "amqp://{AMQP_USER}:{}@127.0.0.1:{}/%2f",
                servers.amqp_password, servers.rabbit.tcp_port
            ),
            ConnectionProperties::default(),
        )
        .await
        .expect("connect to the private RabbitMQ");
        let channel = amqp.create_channel().await.unwrap();
        declare_topic_exchange(&channel, &name).await;
        Scene {
            servers,
            name,
            db,
            _amqp: amqp,
            channel,
            children: Vec::new(),
        }
    }

    fn file(&self, name: &str, content: &str) -> String {
        let path = self.servers.dir.join(format!("{}-{name}", self.name));
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }

    /// `--postgres-url` for `host` with these TLS settings; the password in it is wrong, so a
    /// connection works only with the password file of [`Scene::args`].
    fn postgres_url(&self, host: &str, tls: &str) -> String {
        format!(
            "postgres://{TLS_ROLE}:not-this-one@{host}:{}/{}?{tls}",
            self.servers.postgres.port, self.name
        )
    }

    /// Flags for walbox: PostgreSQL at `postgres_url`, amqps with the test CA, both passwords
    /// from files, this scene's slot, publication and exchange.
    fn args(&self, postgres_url: &str) -> Vec<String> {
        let servers = &self.servers;
        vec![
            "--postgres-url".into(),
            postgres_url.into(),
            "--postgres-password-file".into(),
            self.file("pg-password", &format!("{}\n", servers.pg_password)),
            "--amqp-url".into(),
            format!(
                "amqps://{AMQP_USER}:not-this-one@localhost:{}/%2f",
                servers.rabbit.tls_port
            ),
            "--amqp-ca-file".into(),
            servers.pki.path("ca.pem"),
            "--amqp-password-file".into(),
            self.file("amqp-password", &format!("{}\n", servers.amqp_password)),
            "--slot".into(),
            self.name.clone(),
            "--publication".into(),
            self.name.clone(),
            "--exchange".into(),
            self.name.clone(),
        ]
    }

    fn walbox(&self, subcommand: &[&str], args: &[String]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_walbox"))
            .args(subcommand)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run walbox")
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.servers
            .dir
            .join(format!("{}-run-{index}.log", self.name))
    }

    fn spawn_run(&mut self, args: &[String]) -> usize {
        let index = self.children.len();
        let log = std::fs::File::create(self.log_path(index)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_walbox"))
            .arg("run")
            .args(args)
            .args(["--metrics-addr", "none", "--log-format", "json"])
            .args(["--max-retry-delay-ms", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn walbox run");
        self.children.push(child);
        index
    }

    fn run_log(&self, index: usize) -> String {
        std::fs::read_to_string(self.log_path(index)).unwrap_or_default()
    }

    async fn queue(&self, suffix: &str) -> Consumer {
        let queue = format!("{}_{suffix}", self.name);
        consume_bound(&self.channel, &self.name, &queue, "#", false).await
    }

    /// Start `walbox run` with `args`, insert one event once it streams, and return it as
    /// the queue received it (or panic with walbox's log).
    async fn relay_one(&mut self, args: &[String]) -> (usize, lapin::message::Delivery) {
        let mut consumer = self.queue(&format!("q{}", self.children.len())).await;
        let index = self.spawn_run(args);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self
            .db
            .query_opt(
                "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r \
                 ON r.pid = s.active_pid WHERE s.slot_name = $1",
                &[&self.name],
            )
            .await
            .unwrap()
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "walbox never started streaming:\n{}",
                self.run_log(index)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let id: String = self
            .db
            .query_one(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 VALUES ('order', 'o-1', 'created', '{\"secure\": true}') RETURNING id::text",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        // An earlier relay of this scene may send its last event again (at least once).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut got = receive(&mut consumer, 1, Duration::from_secs(1)).await;
            if let Some(delivery) = got.pop()
                && common::message_id(&delivery) == id
            {
                return (index, delivery);
            }
            assert!(
                Instant::now() < deadline,
                "the event did not arrive:\n{}",
                self.run_log(index)
            );
        }
    }

    /// Stop the relay so that the next one can take the slot.
    fn stop(&mut self, index: usize) {
        let child = &mut self.children[index];
        let _ = child.kill();
        let _ = child.wait();
    }

    fn secrets(&self) -> [&str; 2] {
        [&self.servers.pg_password, &self.servers.amqp_password]
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_scram_amqps_and_password_files_relays_an_event() {
    let mut scene = Scene::new("full").await;
    let ca = scene.servers.pki.path("ca.pem");
    // 127.0.0.1 is in the certificate as an IP address: verify-full checks it.
    let url = scene.postgres_url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let args = scene.args(&url);
    let (index, delivery) = scene.relay_one(&args).await;
    assert_eq!(delivery.data, br#"{"secure": true}"#);

    // Both of walbox's PostgreSQL connections are encrypted, and the password is stored as a
    // SCRAM verifier (the only method pg_hba allows over TCP).
    let admin = scene.servers.postgres.admin("postgres").await;
    let rows = admin
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.usename = $1 AND a.datname = $2",
            &[&TLS_ROLE, &scene.name],
        )
        .await
        .unwrap();
    assert!(
        rows.iter()
            .any(|row| row.get::<_, &str>(0) == "walsender" && row.get::<_, bool>(1)),
        "no TLS walsender"
    );
    assert!(rows.iter().all(|row| row.get::<_, bool>(1)));
    let verifier: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&TLS_ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert!(verifier.starts_with("SCRAM-SHA-256$"));

    // The host name is checked too: localhost is in the certificate.
    let localhost = scene.postgres_url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let status = scene.walbox(&["status"], &scene.args(&localhost));
    assert!(status.status.success(), "{}", text(&status));

    // No secret in status, config check, or the relay's log.
    let check = scene.walbox(&["config", "check"], &args);
    assert!(check.status.success(), "{}", text(&check));
    scene.stop(index);
    let log = scene.run_log(index);
    for secret in scene.secrets() {
        for (what, output) in [
            ("status", text(&status)),
            ("config check", text(&check)),
            ("run log", log.clone()),
        ] {
            assert!(
                !output.contains(secret),
                "{what} shows a password:\n{output}"
            );
        }
    }
    assert!(text(&check).contains("postgres-password-file = "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_ignores_the_host_name_verify_full_does_not_and_require_encrypts() {
    let mut scene = Scene::new("ca").await;
    let ca = scene.servers.pki.path("ca.pem");
    let url = |host: &str, mode: &str| {
        scene.postgres_url(host, &format!("sslmode={mode}&sslrootcert={ca}"))
    };
    let (verify_ca, verify_ca_other_name, verify_full_other_name) = (
        url("localhost", "verify-ca"),
        url("127.0.0.2", "verify-ca"),
        url("127.0.0.2", "verify-full"),
    );
    let (index, _) = scene.relay_one(&scene.args(&verify_ca)).await;
    scene.stop(index);

    // 127.0.0.2 reaches the same server but is not in its certificate: verify-ca accepts it
    // on both connections, verify-full refuses it.
    let (index, _) = scene.relay_one(&scene.args(&verify_ca_other_name)).await;
    scene.stop(index);
    let refused = scene.walbox(&["setup"], &scene.args(&verify_full_other_name));
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("certificate not valid for name"),
        "{}",
        text(&refused)
    );

    // require: encrypted, the certificate not checked (no CA given).
    let require = scene.postgres_url("127.0.0.2", "sslmode=require");
    let (index, _) = scene.relay_one(&scene.args(&require)).await;
    scene.stop(index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_a_definite_error_for_postgres_and_for_amqps() {
    let mut scene = Scene::new("wrongca").await;
    let other = scene.servers.pki.path("other-ca.pem");
    let wrong_pg = scene.postgres_url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    );
    // `run` must stop (exit 1), not retry forever.
    let index = scene.spawn_run(&scene.args(&wrong_pg));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = scene.children[index].try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "walbox kept retrying a wrong CA:\n{}",
            scene.run_log(index)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = scene.run_log(index);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("invalid peer certificate") && log.contains("sslrootcert"),
        "{log}"
    );

    // amqps: a CA that did not sign the broker's certificate.
    let ca = scene.servers.pki.path("ca.pem");
    let good_pg = scene.postgres_url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let mut args = scene.args(&good_pg);
    let at = args.iter().position(|arg| arg == "--amqp-ca-file").unwrap();
    args[at + 1] = other;
    let refused = scene.walbox(&["setup"], &args);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("--amqp-ca-file"),
        "{}",
        text(&refused)
    );
    scene.stop(index);
}

/// Cleanup for a role on the machine's own PostgreSQL: declared before the TestEnv, it drops
/// after it, once the database (and its grants) and the slot are gone.
struct RoleGuard(String);

impl Drop for RoleGuard {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", common::PG_HOST, "-p", &common::pg_port().to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"])
            .args(["-c", &format!("DROP ROLE IF EXISTS \"{}\"", self.0)])
            .stdin(Stdio::null())
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_privilege_role_of_roles_sql_relays_an_event() {
    let role = RoleGuard(format!("wbt_role_{}_{}", std::process::id(), free_port()));
    let mut env = TestEnv::new("roles").await;
    let roles_sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/roles.sql");
    let roles = |extra: &[&str]| {
        run(Command::new("psql")
            .args(["-h", common::PG_HOST, "-p", &common::pg_port().to_string()])
            .args(["-U", "postgres", "-d", &env.name, "-q"])
            .args(["-v", &format!("role={}", role.0)])
            .args(["-v", &format!("publication={}", env.name)])
            .args(extra)
            .arg("-f")
            .arg(&roles_sql))
    };
    roles(&[]);
    // It can be run again (nothing changes), and for a preset's table, whose name needs quotes
    // (eShop's and MASA's "IntegrationEventLog"), into the same publication.
    roles(&[]);
    env.db
        .batch_execute(r#"CREATE TABLE "IntegrationEventLog" ("EventId" uuid PRIMARY KEY)"#)
        .await
        .unwrap();
    roles(&["-v", "table=IntegrationEventLog"]);
    roles(&["-v", "table=IntegrationEventLog"]);
    let published: Vec<String> = env
        .db
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 \
             ORDER BY tablename",
            &[&env.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(published, ["IntegrationEventLog", "outbox"]);
    let is_superuser: bool = env
        .db
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
            &[&role.0],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!is_superuser);

    let url = format!(
        "postgres://{}@{}:{}/{}",
        role.0,
        common::PG_HOST,
        env.postgres_port,
        env.name
    );
    let args = env.args_with("--postgres-url", &url);
    let mut consumer = env.queue("q", "#").await;
    let index = env.spawn_run_with(args.clone(), &[]);
    env.wait_slot_active(Duration::from_secs(20)).await;
    let id = env
        .insert("order", "created", r#"{"least": "privilege"}"#)
        .await;
    let got = receive(&mut consumer, 1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1, "{}", env.run_log(index));
    assert_eq!(common::message_id(&got[0]), id);
    assert!(env.terminate(index).success());

    // A missing grant is a definite error that names it.
    env.db
        .batch_execute(&format!("REVOKE SELECT ON outbox FROM \"{}\"", role.0))
        .await
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_walbox"))
        .arg("setup")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("GRANT SELECT ON"),
        "{}",
        text(&output)
    );

    // Teardown as this role: the slot goes (the role may drop it), the publication stays with
    // a line saying who may drop it, and the command succeeds.
    let output = Command::new(env!("CARGO_BIN_EXE_walbox"))
        .arg("teardown")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("kept: only its owner (postgres)"),
        "{}",
        text(&output)
    );
    let slots = env
        .db
        .query(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&env.name],
        )
        .await
        .unwrap();
    assert!(slots.is_empty(), "teardown left the slot");
    let publications = env
        .db
        .query(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&env.name],
        )
        .await
        .unwrap();
    assert_eq!(publications.len(), 1, "the owner's publication was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_name_needing_quotes_is_relayed() {
    let mut env = TestEnv::new("quoted").await;
    // Upper case, a comma, a space and a double quote: the server would fold, split or
    // misread it if the name reached it unquoted.
    let publication = format!("Out, \"Box\" {}", env.name);
    let args = env.args_with("--publication", &publication);
    let mut consumer = env.queue("q", "#").await;
    let index = env.spawn_run_with(args, &[]);
    env.wait_slot_active(Duration::from_secs(20)).await;
    let id = env.insert("order", "created", "{}").await;
    let got = receive(&mut consumer, 1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1, "{}", env.run_log(index));
    assert_eq!(common::message_id(&got[0]), id);
}

/// `rabbitmqctl` on the broker the tests use (WALBOX_TEST_RABBIT_NODE names a private one).
fn broker_ctl(args: &[&str]) -> Output {
    let mut command = Command::new("rabbitmqctl");
    command.arg("-q");
    if let Ok(node) = std::env::var("WALBOX_TEST_RABBIT_NODE") {
        command.args(["-n", &node]);
    }
    run(command.args(args))
}

/// A broker user on the machine's RabbitMQ, deleted when the test ends.
struct BrokerUser(String);

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let mut command = Command::new("rabbitmqctl");
        command.arg("-q");
        if let Ok(node) = std::env::var("WALBOX_TEST_RABBIT_NODE") {
            command.args(["-n", &node]);
        }
        let _ = command
            .args(["delete_user", &self.0])
            .stdin(Stdio::null())
            .output();
    }
}

/// The RabbitMQ permissions docs/src/operations/security.md lists are enough, and each one is
/// needed: a user with exactly configure and write on walbox's exchanges (here the event
/// exchange and the dead-letter exchange) and no read relays every event; with passive
/// declares it needs no configure at all; without write it delivers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_user_with_only_the_documented_permissions_relays() {
    let user = BrokerUser(format!("wbt_amqp_{}_{}", std::process::id(), free_port()));
    let password = format!("pw{}", free_port());
    broker_ctl(&["add_user", &user.0, &password]);
    let mut env = TestEnv::new("amqpperm").await;
    let exchange = env.name.clone();
    let dead_letter = format!("{}.dlx", env.name);
    env.delete_exchange_at_cleanup(&dead_letter);
    let url = format!(
        "amqp://{}:{password}@127.0.0.1:{}/%2f",
        user.0, env.amqp_port
    );
    let args = env.args_with("--amqp-url", &url);
    let mut consumer = env.queue("q", "#").await;
    let both = format!(
        "^({}|{})$",
        regex_escape(&exchange),
        regex_escape(&dead_letter)
    );
    let set = |configure: &str, write: &str, read: &str| {
        broker_ctl(&[
            "set_permissions",
            "-p",
            "/",
            &user.0,
            configure,
            write,
            read,
        ]);
    };

    // Exactly the documented permissions: configure and write on the two exchanges, no read.
    set(&both, &both, "^$");
    let index = env.spawn_run_with(args.clone(), &["--dead-letter-exchange", &dead_letter]);
    env.wait_slot_active(Duration::from_secs(20)).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            env.insert("order", "created", &format!("{{\"n\": {n}}}"))
                .await,
        );
    }
    let got = receive(&mut consumer, 3, Duration::from_secs(15)).await;
    let got_ids: Vec<String> = got.iter().map(common::message_id).collect();
    assert_eq!(got_ids, ids, "{}", env.run_log(index));
    assert!(env.terminate(index).success());

    // Passive declares (the exchange exists, made by someone else): write alone is enough.
    set("^$", &both, "^$");
    let index = env.spawn_run_with(args.clone(), &["--exchange-declare", "passive"]);
    env.wait_slot_active(Duration::from_secs(20)).await;
    let id = env.insert("order", "paid", "{}").await;
    let log = env.run_log(index);
    receive_once(&mut consumer, &id, &mut ids, &log).await;
    assert!(env.terminate(index).success());

    // No write permission: the broker refuses the publish and nothing arrives; walbox says why
    // and keeps the event (not confirmed, so the slot holds it): once the permission is back,
    // a walbox delivers it.
    set(&both, "^$", "^$");
    let index = env.spawn_run_with(args.clone(), &[]);
    let id = env.insert("order", "shipped", "{}").await;
    let refused = Instant::now() + Duration::from_secs(20);
    while !env.run_log(index).contains("ACCESS_REFUSED") {
        assert!(
            Instant::now() < refused,
            "no refusal logged:\n{}",
            env.run_log(index)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        common::receive_any(&mut consumer, Duration::from_secs(1))
            .await
            .is_empty()
    );
    // A refusal stops walbox (exit 1, naming the permissions) or leaves it retrying.
    if env.try_wait(index).is_none() {
        env.terminate(index);
    }
    set(&both, &both, "^$");
    let index = env.spawn_run_with(args.clone(), &[]);
    env.wait_slot_active(Duration::from_secs(20)).await;
    let log = env.run_log(index);
    receive_once(&mut consumer, &id, &mut ids, &log).await;
    assert!(env.terminate(index).success());
}

/// Receive until `id` arrives: it must arrive exactly once, and anything else may only be an
/// event delivered before (`earlier`: at least once, after a restart); then `id` joins them.
async fn receive_once(consumer: &mut Consumer, id: &str, earlier: &mut Vec<String>, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    while Instant::now() < deadline && seen == 0 {
        for delivery in common::receive_any(consumer, Duration::from_millis(500)).await {
            let got = common::message_id(&delivery);
            match got == id {
                true => seen += 1,
                false => assert!(earlier.contains(&got), "{got} was never committed; {log}"),
            }
        }
    }
    for delivery in common::receive_any(consumer, Duration::from_secs(1)).await {
        let got = common::message_id(&delivery);
        seen += usize::from(got == id);
        assert!(
            got == id || earlier.contains(&got),
            "{got} was never committed"
        );
    }
    assert_eq!(seen, 1, "{id} delivered {seen} times; {log}");
    earlier.push(id.to_owned());
}

/// A name as a regular expression that matches only itself.
fn regex_escape(name: &str) -> String {
    name.chars()
        .flat_map(|c| match c.is_ascii_alphanumeric() || c == '_' {
            true => vec![c],
            false => vec!['\\', c],
        })
        .collect()
}
