//! The integration harness: a real server on 127.0.0.1:0 (in-process through `run`, or
//! the real binary as a child process), real WebSocket and HTTP clients.
#![allow(dead_code)]

pub mod jwt;
pub mod store;
pub mod wechat;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use imgate::config::Config;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen before it calls it a failure.
/// Not a performance bound: a hung test must end.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// reqwest here has rustls without a provider of its own (imgate uses ring's): every
/// helper that starts a server or makes a request installs it first, so that a test's
/// own `reqwest::Client::new()` after them finds it.
pub fn tls() {
    imgate_wechat::install_tls_provider();
}

/// Ask `check` every 20 ms until it answers `Some`; fail, saying `what` did not happen,
/// after [`PATIENCE`].
pub async fn eventually<T, F>(what: &str, mut check: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub const SEED_XML: &str = "<xml>
  <ToUserName>1</ToUserName>
  <FromUserName>魏秀兰</FromUserName>
  <CreateTime>1976-04-10 12:21:47</CreateTime>
  <MsgType>enim</MsgType>
  <Content>occaecat ut in fugiat dolor</Content>
  <MsgId>19</MsgId>
  <MsgDataId>27</MsgDataId>
  <Idx>74</Idx>
</xml>";

pub fn test_config(dir: &Path) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.to_owned(),
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    }
}

/// A server running `imgate::run` in this process.
pub struct Server {
    pub addr: SocketAddr,
    pub dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), imgate::RunError>>>,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tune(&mut config);
        Server::start_in(dir, config).await
    }

    pub async fn start_in(dir: TempDir, config: Config) -> Server {
        tls();
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(imgate::run(listener, config, async move {
            let _ = rx.await;
        }));
        Server { addr, dir, stop: Some(tx), task: Some(task) }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub async fn connect(&self, path: &str) -> Client {
        Client::connect(&self.ws(path)).await
    }

    pub async fn post(&self, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        post(&self.http(path), content_type, body).await
    }

    /// Wait until `/readyz` answers 200 (a node on Redis is ready once subscribed).
    pub async fn ready(&self) {
        eventually("the server never became ready", || async {
            (self.get("/readyz").await.0 == 200).then_some(())
        })
        .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        tls();
        let r = reqwest::get(self.http(path)).await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Stop as SIGTERM would, and return what `run` returned.
    pub async fn stop(mut self) -> Result<(), imgate::RunError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, self.task.take().unwrap()).await.expect("server stops").unwrap()
    }
}

pub async fn post(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    tls();
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

/// A JSON send request (seed §2.1).
pub fn text_to(contact: &str, content: &str) -> String {
    serde_json::json!({"data": {"msg_type": "text", "contact_id": contact, "msg": {"content": content}},
        "result": {"code": 1001, "message": "common"}})
    .to_string()
}

/// The real `imgate` binary as a child process.
pub struct Binary {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl Binary {
    /// Start `imgate serve` on 127.0.0.1:0 over `data_dir` and wait until it listens.
    pub async fn start(data_dir: &Path, env: &[(&str, &str)]) -> Binary {
        tls();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgate"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "imgate=info")
            .env_remove("IMGATE_LISTEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("imgate binary starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("addr=").nth(1) {
                    return rest.split_whitespace().next().unwrap().parse::<SocketAddr>().unwrap();
                }
            }
            panic!("imgate exited before listening");
        })
        .await
        .expect("imgate listens");
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Binary { child, addr }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub async fn kill9(mut self) {
        self.child.kill().await.unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }
}

/// A WebSocket client, as a test uses one.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub protocol: Option<String>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Client::try_connect(url, None).await.unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    pub async fn try_connect(url: &str, protocol: Option<&str>) -> Result<Client, tungstenite::Error> {
        let mut req = url.into_client_request()?;
        if let Some(p) = protocol {
            req.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
        let protocol = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_owned());
        Ok(Client { ws, protocol })
    }

    /// The next frame that is not a heartbeat, as JSON, within [`PATIENCE`] (heartbeats do
    /// not extend the wait).
    pub async fn frame(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let f = self.text_frame_by(deadline).await;
            if f["result"]["code"] != 101 {
                return f;
            }
        }
    }

    /// The next text frame, heartbeats included.
    pub async fn any_frame(&mut self) -> Value {
        self.text_frame_by(tokio::time::Instant::now() + PATIENCE).await
    }

    async fn text_frame_by(&mut self, deadline: tokio::time::Instant) -> Value {
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a frame arrives")
                .expect("the connection is open")
                .expect("the connection is healthy");
            match m {
                Message::Text(t) => return serde_json::from_str(&t).expect("frames are JSON"),
                Message::Close(c) => panic!("closed while waiting for a frame: {c:?}"),
                _ => {}
            }
        }
    }

    /// Frames until `n` non-heartbeat frames have arrived.
    pub async fn frames(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.frame().await);
        }
        out
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Read until the server closes; its close frame, if it sent one.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        // One deadline for the whole wait: heartbeats keep arriving, so a timeout per frame
        // would never fire.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await.expect("the server closes") {
                Some(Ok(Message::Close(c))) => return c,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Nothing but heartbeats arrives before the `n`-th heartbeat.
    pub async fn quiet_for_beats(&mut self, n: usize) {
        let mut beats = 0;
        while beats < n {
            let f = self.any_frame().await;
            assert_eq!(f["result"]["code"], 101, "expected silence, got {f}");
            beats += 1;
        }
    }
}

pub fn seq(frame: &Value) -> u64 {
    frame["data"]["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {frame}"))
}

pub fn content(frame: &Value) -> &str {
    frame["data"]["msg"]["content"].as_str().unwrap_or_else(|| panic!("no content in {frame}"))
}

/// A real `redis-server` of this test's own, on a free loopback port, with an
/// append-only file (so that a restart keeps what was committed). Stopped when dropped.
pub struct Redis {
    pub port: u16,
    pub dir: TempDir,
    child: Option<std::process::Child>,
}

/// `redis-server ARGS` (run in `dir` when given: a config file then comes first), once it
/// accepts connections on `port`; fails the test after [`PATIENCE`].
pub fn redis_server(port: u16, dir: Option<&Path>, args: &[&str]) -> std::process::Child {
    let mut cmd = std::process::Command::new("redis-server");
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let child = cmd
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "redis-server on {port} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Redis {
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis { port, dir, child: None };
        r.run();
        r
    }

    fn run(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "no",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it: apt-get install redis-server)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stop it (SIGTERM: it finishes writing its append-only file).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and files.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Redis Cluster of this test's own on loopback: `masters` masters (each with
/// `replicas` replicas), slots split evenly by `redis-cli --cluster create`, no
/// persistence. Every server is killed when this is dropped.
pub struct RedisCluster {
    /// The masters' ports, in slot order: the first holds the lowest slots.
    pub masters: Vec<u16>,
    /// Every server's port, masters first.
    pub ports: Vec<u16>,
    pub dir: TempDir,
    children: Vec<Option<std::process::Child>>,
}

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let n = masters * (1 + replicas);
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut children = Vec::new();
        for p in &ports {
            let d = dir.path().join(p.to_string());
            std::fs::create_dir_all(&d).unwrap();
            // The bus port given: the default (port + 10000) may be past 65535 or taken.
            let bus = free_port().to_string();
            let p = p.to_string();
            children.push(Some(redis_server(
                p.parse().unwrap(),
                Some(&d),
                &[
                    "--port",
                    &p,
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "1000",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
            )));
        }
        // Bounded: it waits for the nodes to join for as long as that takes.
        let mut create = std::process::Command::new("timeout");
        create.args(["60", "redis-cli", "--cluster", "create"]);
        for p in &ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is installed");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { masters: ports[..masters].to_vec(), ports, dir, children };
        let deadline = std::time::Instant::now() + PATIENCE;
        for p in &cluster.ports {
            while !cluster.cli(*p, &["cluster", "info"]).contains("cluster_state:ok") {
                assert!(std::time::Instant::now() < deadline, "the cluster never became ok on {p}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// The seed nodes, as `store.redis_urls` takes them.
    pub fn urls(&self) -> Vec<String> {
        self.masters.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }

    /// `store.redis_urls` as the environment gives it (`IMGATE_STORE__REDIS_URLS`).
    pub fn urls_env(&self) -> String {
        serde_json::to_string(&self.urls()).unwrap()
    }

    /// `redis-cli -p PORT ARGS`, its output (empty if it failed).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The index (in [`RedisCluster::masters`]) of the master whose slots hold `key`.
    pub fn master_of(&self, key: &str) -> usize {
        let slot: usize = self.cli(self.masters[0], &["cluster", "keyslot", key]).trim().parse().unwrap();
        // CLUSTER NODES: `<id> <ip:port@bus> <flags> ... <first-last> ...` per node.
        for line in self.cli(self.masters[0], &["cluster", "nodes"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") {
                continue;
            }
            let held = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse().unwrap_or(usize::MAX)..=b.parse().unwrap_or(0)).contains(&slot),
                None => r.parse() == Ok(slot),
            });
            let port: u16 = f[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            if held && let Some(i) = self.masters.iter().position(|m| *m == port) {
                return i;
            }
        }
        panic!("no master holds slot {slot}")
    }

    /// kill -9 the server on `port`.
    pub fn kill9(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).expect("a port of this cluster");
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Wait until `check` holds, failing with `what` after `patience`.
pub async fn until(what: &str, patience: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + patience;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a node's `/readyz` answers 200.
pub async fn is_ready(bin: &Binary) -> bool {
    reqwest::get(bin.http("/readyz")).await.map(|r| r.status() == 200).unwrap_or(false)
}

/// The messages a node heard from the broker (`imgate_broker_messages_received_total`).
pub async fn heard(bin: &Binary) -> f64 {
    let text = reqwest::get(bin.http("/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("imgate_broker_messages_received_total "))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Two nodes on one Redis (any mode): posts keep going to `b` while a client on `a`
/// reads; `a` dies (kill -9) and the client reconnects to `b` with `since`. Every
/// acknowledged seq arrives, none twice.
pub async fn a_killed_node_loses_nothing_acknowledged(a: Binary, b: Binary) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut c = Client::connect(&a.ws("/?userid=victim")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = {
        let url = b.http("/send?userid=p");
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (status, v) = post(&url, "application/json", text_to("victim", &format!("m{i}"))).await;
                assert_eq!(status, 200, "{v}");
                acked.push(v["data"]["seq"].as_u64().unwrap());
                i += 1;
            }
            acked
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    for f in c.frames(50).await {
        assert!(seen.insert(seq(&f)), "no duplicates");
    }
    a.kill9().await;
    // The client's connection drops; it reconnects to B with since = the last it saw.
    let last = *seen.last().unwrap();
    let mut c = Client::connect(&b.ws(&format!("/?userid=victim&since={last}"))).await;
    for f in c.frames(50).await {
        assert!(seen.insert(seq(&f)), "nothing twice after reconnecting");
    }
    stop.store(true, Ordering::Relaxed);
    let acked = acked.await.unwrap();
    let top = *acked.last().unwrap();
    while *seen.last().unwrap() < top {
        let f = c.frame().await;
        assert!(seen.insert(seq(&f)), "nothing twice");
    }
    for s in &acked {
        assert!(seen.contains(s), "acknowledged seq {s} was lost");
    }
}
