//! A private `redis-server` for tests (Debian's `redis-server`; `.ci/run` installs it): a free loopback port, its
//! own folder, the append-only file on and synced on every write, stopped and removed on drop. Shared by the core's
//! cluster tests and vgen-server's (`#[path]`-included), and it speaks just enough of the protocol itself.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Extra arguments of every launch (a cluster node's).
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, &[])
    }

    fn start_with(tag: &str, extra: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("vgen-redis-{tag}-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Self { port, dir, child: None, extra: extra.iter().map(|a| a.to_string()).collect() };
        r.launch();
        r
    }

    /// Starts redis-server (again) on the same port and folder, and waits until it answers.
    pub fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .args(&self.extra)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt install redis-server): these tests need a real one");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while self.try_call(&["PING"]) != Some(Reply::Text("PONG".into())) {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops Redis cleanly (it writes its append-only file first) and waits for the process to end.
    pub fn shutdown(&mut self) {
        let _ = self.try_call(&["SHUTDOWN"]);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// A clean restart from the append-only file.
    pub fn restart(&mut self) {
        self.shutdown();
        self.launch();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Sends one command and reads its whole reply; panics when Redis does not answer.
    pub fn call(&self, args: &[&str]) -> Reply {
        self.try_call(args).unwrap_or_else(|| panic!("redis-server did not answer {args:?}"))
    }

    /// Sends one command and reads its whole reply, or None when Redis does not answer (not up yet, or gone).
    fn try_call(&self, args: &[&str]) -> Option<Reply> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        Reply::read(&mut BufReader::new(stream))
    }
}

/// A Redis Cluster of three primaries (no replicas) on loopback, made by `redis-cli --cluster create`: real
/// `redis-server` processes, each with its own port, folder and cluster config, stopped and removed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(tag: &str) -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                RedisServer::start_with(
                    &format!("{tag}-node{i}"),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let made = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli must be installed (apt install redis-tools): the cluster test needs it");
        assert!(made.success(), "redis-cli --cluster create failed");
        let until = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = node.call(&["CLUSTER", "INFO"]);
                if info.text().contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < until, "the cluster did not come up: {info:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes }
    }

    /// The seed URLs of every node, as `backend.redis.url` takes them with `cluster`.
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| n.url().replace("/0", "")).collect::<Vec<_>>().join(",")
    }

    /// The node that holds the namespace's slot (its keys' hash tag): `CLUSTER KEYSLOT`, then `CLUSTER NODES`.
    pub fn holder(&self, namespace: &str) -> &RedisServer {
        let slot: i64 = match self.nodes[0].call(&["CLUSTER", "KEYSLOT", &format!("{{{namespace}}}")]) {
            Reply::Int(n) => n,
            other => panic!("CLUSTER KEYSLOT: {other:?}"),
        };
        let table = self.nodes[0].call(&["CLUSTER", "NODES"]);
        for line in table.text().lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            let holds = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => (a.parse::<i64>().unwrap()..=b.parse::<i64>().unwrap()).contains(&slot),
                None => range.parse::<i64>().ok() == Some(slot),
            });
            if holds {
                return self.nodes.iter().find(|n| n.port == port).unwrap();
            }
        }
        panic!("no node holds slot {slot}: {table:?}")
    }
}

/// A RESP reply, as far as the tests read them.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Nil,
    Int(i64),
    Text(String),
    Error(String),
    Array(Vec<Reply>),
}

impl Reply {
    /// One reply from the stream, or None when it ends or times out first; a malformed reply panics.
    fn read(r: &mut impl BufRead) -> Option<Self> {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let (kind, rest) = line.trim_end().split_at(1);
        Some(match kind {
            "+" => Reply::Text(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(rest.parse().unwrap()),
            "$" | "*" if rest.starts_with('-') => Reply::Nil,
            "$" => {
                let mut bytes = vec![0; rest.parse::<usize>().unwrap() + 2];
                r.read_exact(&mut bytes).ok()?;
                Reply::Text(String::from_utf8_lossy(&bytes[..bytes.len() - 2]).into_owned())
            }
            "*" => Reply::Array((0..rest.parse::<usize>().unwrap()).map(|_| Reply::read(r)).collect::<Option<_>>()?),
            _ => panic!("not a RESP reply: {line:?}"),
        })
    }

    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(items) => items,
            Reply::Nil => &[],
            other => panic!("not an array: {other:?}"),
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Reply::Text(t) => t,
            other => panic!("not a string: {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
