//! Managed Redis: `rediss://` verified against `store.redis_ca_file` (a real redis-server
//! with `--tls-port`, and a CA and certificate the test makes with `openssl`), an ACL user
//! in the URL, and passwords that never show in logs, `/readyz` or `config check`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A redis-server of this test's own, killed when dropped.
struct Server(Child);

impl Server {
    fn start(port: u16, dir: &Path, args: &[&str]) -> Server {
        let dir = dir.to_str().unwrap();
        let mut all = vec!["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir];
        all.extend(args);
        Server::run(port, dir, &all)
    }

    /// `redis-server ARGS` in `dir`, as given (a config file must come first).
    fn run(port: u16, dir: &str, args: &[&str]) -> Server {
        Server(redis_server(port, Some(std::path::Path::new(dir)), args))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `imgate serve` with its log kept, to look for secrets in it.
struct Node {
    child: tokio::process::Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Node {
    async fn start(data_dir: &Path, env: &[(&str, &str)]) -> Node {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgate"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "imgate=debug")
            .env_remove("IMGATE_LISTEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let addr = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.split("addr=").nth(1) {
                    return rest.split_whitespace().next().unwrap().parse::<SocketAddr>().unwrap();
                }
            }
            panic!("imgate exited before listening: {}", log.lock().unwrap());
        })
        .await
        .expect("imgate listens");
        let keep = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut l = keep.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Node { child, addr, log }
    }

    fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn readyz(&self) -> (u16, String) {
        let r = reqwest::get(self.http("/readyz")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn ready(&self) {
        eventually("the node never became ready", || async { (self.readyz().await.0 == 200).then_some(()) })
            .await
    }

    /// Sends one message to a connected user and sees it delivered.
    async fn round_trip(&self) {
        let mut c = Client::connect(&format!("ws://{}/?userid=u", self.addr)).await;
        let (status, v) = post(&self.http("/send?userid=p"), "application/json", text_to("u", "hi")).await;
        assert_eq!(status, 200, "{v}");
        let f = c.frame().await;
        assert_eq!((seq(&f), content(&f)), (1, "hi"));
    }

    /// `/readyz` stays 503 for a while (3 s of the node's retries); its last reason.
    async fn never_ready(&self) -> String {
        let mut last = String::new();
        for _ in 0..30 {
            let (status, body) = self.readyz().await;
            assert_eq!(status, 503, "{body}");
            last = body;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }

    async fn stop(mut self) -> String {
        let _ = self.child.kill().await;
        // Let the reader take the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.log.lock().unwrap().clone()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, and a certificate for 127.0.0.1 that it signed, in `dir`.
fn make_certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=imgate test CA", "-keyout", "ca.key"];
    ca.extend(ec);
    ca.extend(["-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE"]);
    ca.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"];
    csr.extend(ec);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
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
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
}

#[tokio::test]
async fn rediss_with_the_ca_file_delivers_and_without_it_the_node_is_never_ready() {
    common::tls();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let port = free_port();
    let tls_port = port.to_string();
    let _redis = Server::start(
        port,
        dir.path(),
        &[
            "--port",
            "0",
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.pem",
            "--tls-auth-clients",
            "no",
        ],
    );
    let url = format!("rediss://127.0.0.1:{port}");
    let ca = dir.path().join("ca.pem");

    let data = tempfile::tempdir().unwrap();
    let env = [
        ("IMGATE_STORE__ENGINE", "redis"),
        ("IMGATE_STORE__REDIS_URL", url.as_str()),
        ("IMGATE_STORE__REDIS_CA_FILE", ca.to_str().unwrap()),
    ];
    let node = Node::start(data.path(), &env).await;
    node.ready().await;
    node.round_trip().await;
    node.stop().await;

    // The same server, verified against the system's roots only: refused, and said why.
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path(), &env[..2]).await;
    let reason = node.never_ready().await;
    assert!(reason.contains("certificate"), "{reason}");
    let log = node.stop().await;
    assert!(log.contains("UnknownIssuer"), "the log says why: {log}");
}

#[tokio::test]
async fn an_acl_user_works_and_a_wrong_password_is_refused_without_showing_it() {
    common::tls();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _redis = Server::start(port, dir.path(), &["--port", &port.to_string()]);
    for rule in [
        vec!["acl", "setuser", "imgate", "on", ">s3cret-pw", "~*", "&*", "+@all"],
        vec!["acl", "setuser", "default", "off"],
    ] {
        let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(&rule).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    }

    let data = tempfile::tempdir().unwrap();
    let url = format!("redis://imgate:s3cret-pw@127.0.0.1:{port}");
    let node =
        Node::start(data.path(), &[("IMGATE_STORE__ENGINE", "redis"), ("IMGATE_STORE__REDIS_URL", &url)])
            .await;
    node.ready().await;
    node.round_trip().await;
    let log = node.stop().await;
    assert!(!log.contains("s3cret-pw"), "the password is not logged: {log}");

    let data = tempfile::tempdir().unwrap();
    let url = format!("redis://imgate:wr0ng-pw@127.0.0.1:{port}");
    let node =
        Node::start(data.path(), &[("IMGATE_STORE__ENGINE", "redis"), ("IMGATE_STORE__REDIS_URL", &url)])
            .await;
    let reason = node.never_ready().await;
    assert!(reason.contains("authentication failed"), "{reason}");
    assert!(!reason.contains("wr0ng-pw"), "{reason}");
    let log = node.stop().await;
    assert!(log.contains("authentication failed"), "the log says why: {log}");
    assert!(!log.contains("wr0ng-pw"), "the password is not logged: {log}");
}

fn config_check(env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgate"));
    cmd.args(["config", "check"]).current_dir(dir.path());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("IMGATE_")) {
        cmd.env_remove(k);
    }
    cmd.env("IMGATE_STORE__ENGINE", "redis");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_masks_every_redis_password_and_refuses_what_cannot_work() {
    let (code, out, err) = config_check(&[
        ("IMGATE_STORE__REDIS_MODE", "sentinel"),
        (
            "IMGATE_STORE__REDIS_URLS",
            r#"["redis://:sentinel-pw@10.0.0.1:26379", "redis://:sentinel-pw@10.0.0.2:26379"]"#,
        ),
        ("IMGATE_STORE__REDIS_SENTINEL_MASTER", "rediss://imgate:master-pw@mymaster"),
        ("IMGATE_STORE__REDIS_URL", "redis://:single-pw@10.0.0.3"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    for secret in ["sentinel-pw", "master-pw", "single-pw"] {
        assert!(!out.contains(secret) && !err.contains(secret), "{secret} shown: {out}");
    }
    assert!(out.contains("mymaster") && out.contains("10.0.0.2:26379"), "{out}");

    // Each: the settings, the key the refusal names, and a word of its reason.
    for (env, key, why) in [
        (vec![("IMGATE_STORE__REDIS_MODE", "cluster")], "store.redis_urls", "nodes of the cluster"),
        (
            vec![("IMGATE_STORE__REDIS_MODE", "sentinel"), ("IMGATE_STORE__REDIS_SENTINEL_MASTER", "m")],
            "store.redis_urls",
            "sentinels",
        ),
        (
            vec![
                ("IMGATE_STORE__REDIS_MODE", "sentinel"),
                ("IMGATE_STORE__REDIS_URLS", r#"["redis://10.0.0.1:26379"]"#),
            ],
            "store.redis_sentinel_master",
            "name the master",
        ),
        (
            vec![
                ("IMGATE_STORE__REDIS_MODE", "sentinel"),
                ("IMGATE_STORE__REDIS_SENTINEL_MASTER", "m"),
                (
                    "IMGATE_STORE__REDIS_URLS",
                    r#"["redis://:one-pw@10.0.0.1:26379", "redis://:two-pw@10.0.0.2:26379"]"#,
                ),
            ],
            "store.redis_urls",
            "same user and password",
        ),
        (vec![("IMGATE_STORE__REDIS_URL", "redis://:bad-pw@10.0.0.3:notaport")], "store.redis_url", ""),
        (vec![("IMGATE_STORE__REDIS_CA_FILE", "/nonexistent/ca.pem")], "store.redis_ca_file", "cannot read"),
    ] {
        let (code, out, err) = config_check(&env);
        assert_eq!(code, Some(64), "{env:?}: {out}{err}");
        assert!(err.contains(key) && err.contains(why), "{env:?}: {err}");
        for secret in ["one-pw", "two-pw", "bad-pw"] {
            assert!(!err.contains(secret), "{secret} shown: {err}");
        }
    }
}

/// `redis-cli` over TLS, verifying against the test's CA.
fn tls_cli(dir: &Path, port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .current_dir(dir)
        .args(["--tls", "--cacert", "ca.pem", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn sentinels_and_master_over_tls_verified_against_the_ca_file() {
    common::tls();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let (m, r, s) = (free_port(), free_port(), free_port());
    let tls = [
        "--port",
        "0",
        "--tls-cert-file",
        "server.pem",
        "--tls-key-file",
        "server.key",
        "--tls-ca-cert-file",
        "ca.pem",
        "--tls-auth-clients",
        "no",
        "--tls-replication",
        "yes",
    ];
    let (ms, rs) = (m.to_string(), r.to_string());
    let mut args = tls.to_vec();
    args.extend(["--tls-port", &ms]);
    let _master = Server::start(m, dir.path(), &args);
    let mut args = tls.to_vec();
    args.extend(["--tls-port", &rs, "--replicaof", "127.0.0.1", &ms]);
    let _replica = Server::start(r, dir.path(), &args);
    wait_for("the replica never synced", || {
        tls_cli(dir.path(), r, &["info", "replication"]).contains("master_link_status:up")
    });
    std::fs::write(
        dir.path().join("sentinel.conf"),
        format!(
            "port 0\ntls-port {s}\nbind 127.0.0.1\ntls-cert-file server.pem\ntls-key-file server.key\n\
             tls-ca-cert-file ca.pem\ntls-auth-clients no\ntls-replication yes\n\
             sentinel monitor mymaster 127.0.0.1 {m} 1\n"
        ),
    )
    .unwrap();
    let _sentinel = Server::run(s, dir.path().to_str().unwrap(), &["sentinel.conf", "--sentinel"]);
    wait_for("the sentinel never saw the master", || {
        tls_cli(dir.path(), s, &["sentinel", "get-master-addr-by-name", "mymaster"]).contains(&ms)
    });

    let data = tempfile::tempdir().unwrap();
    let sentinels = format!("[\"rediss://127.0.0.1:{s}\"]");
    let ca = dir.path().join("ca.pem");
    let node = Node::start(
        data.path(),
        &[
            ("IMGATE_STORE__ENGINE", "redis"),
            ("IMGATE_STORE__REDIS_MODE", "sentinel"),
            ("IMGATE_STORE__REDIS_URLS", &sentinels),
            ("IMGATE_STORE__REDIS_SENTINEL_MASTER", "rediss://mymaster"),
            ("IMGATE_STORE__REDIS_CA_FILE", ca.to_str().unwrap()),
        ],
    )
    .await;
    node.ready().await;
    node.round_trip().await;
    node.stop().await;
}

/// `store.redis_mode = "cluster"` with an ACL user (the default user off): every node of
/// the cluster reached with the seeds' credentials, and the password in no log line.
#[tokio::test]
async fn a_cluster_with_an_acl_user() {
    common::tls();
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let mut servers = Vec::new();
    for p in ports {
        let own = dir.path().join(p.to_string());
        std::fs::create_dir_all(&own).unwrap();
        // The bus port given: the default (port + 10000) may be past 65535 or taken.
        let (ps, bus) = (p.to_string(), free_port().to_string());
        let args = [
            "--port",
            &ps,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &bus,
            "--user",
            "imgate",
            "on",
            ">clu5ter-pw",
            "~*",
            "&*",
            "+@all",
            "--user",
            "default",
            "off",
        ];
        servers.push(Server::start(p, &own, &args));
    }
    let auth = ["--user", "imgate", "--pass", "clu5ter-pw", "--no-auth-warning"];
    // Bounded: it waits for the nodes to join for as long as that takes.
    let mut create = Command::new("timeout");
    create.args(["60", "redis-cli"]).args(auth).args(["--cluster", "create"]);
    for p in ports {
        create.arg(format!("127.0.0.1:{p}"));
    }
    let out = create.args(["--cluster-yes"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    for p in ports {
        wait_for("the cluster never became ok", || {
            let out = Command::new("redis-cli")
                .args(["-p", &p.to_string()])
                .args(auth)
                .args(["cluster", "info"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok")
        });
    }

    let data = tempfile::tempdir().unwrap();
    let urls: Vec<String> =
        ports.iter().map(|p| format!("redis://imgate:clu5ter-pw@127.0.0.1:{p}")).collect();
    let urls = serde_json::to_string(&urls).unwrap();
    let node = Node::start(
        data.path(),
        &[
            ("IMGATE_STORE__ENGINE", "redis"),
            ("IMGATE_STORE__REDIS_MODE", "cluster"),
            ("IMGATE_STORE__REDIS_URLS", &urls),
        ],
    )
    .await;
    node.ready().await;
    node.round_trip().await;
    let log = node.stop().await;
    assert!(!log.contains("clu5ter-pw"), "the password is not logged: {log}");
    drop(servers);
}
