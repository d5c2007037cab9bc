//! Hosts for multi-host tests: each host is a network namespace this test
//! creates, with one address on a bridge of the test's own. The bridge lives
//! in a "switch" namespace too, so the machine's own namespace gains no
//! link, address or route, and the test's addresses exist only inside.
//!
//! Names carry the test process's pid (`wh<pid>s`, `wh<pid>h<i>`). Drop
//! kills every process started in the hosts and deletes the namespaces
//! (their links go with them), also when the test panics. A killed test's
//! leftovers are swept by the next run: namespaces whose pid is dead, with
//! any process still inside.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PREFIX: &str = "wh";
/// The test subnet: only inside this test's namespaces.
const SUBNET: &str = "10.77.0";

pub struct Host {
    pub netns: String,
    pub ip: String,
}

pub struct Hosts {
    switch: String,
    set: u32,
    pub hosts: Vec<Host>,
    children: Vec<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the namespaces of test processes that no longer run.
fn sweep() {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split(['s', 'h']).next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            delete_netns(name);
        }
    }
}

/// Kills what still runs inside `name`, then deletes it.
fn delete_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

impl Hosts {
    /// `n` hosts at 10.77.0.1..n on one bridge.
    pub fn create(n: usize) -> Hosts {
        super::containers::require_root("multi-host tests (network namespaces)");
        sweep();
        let pid = std::process::id();
        // One set per test process; a second set in the same process gets a new switch.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let set = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let switch = format!("{PREFIX}{pid}s{set}");
        let mut hosts = Hosts {
            switch: switch.clone(),
            set,
            hosts: Vec::new(),
            children: Vec::new(),
        };
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for _ in 0..n {
            hosts.add();
        }
        hosts
    }

    /// One more host on the switch, at the next address; returns its index.
    pub fn add(&mut self) -> usize {
        let i = self.hosts.len() + 1;
        let (pid, set, switch) = (std::process::id(), self.set, self.switch.clone());
        let netns = format!("{PREFIX}{pid}h{set}x{i}");
        ip(&["netns", "add", &netns]);
        // Created in the switch; the peer end goes straight into the host.
        let port = format!("p{i}");
        ip(&[
            "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &netns,
        ]);
        ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
        let addr = format!("{SUBNET}.{i}");
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        self.hosts.push(Host { netns, ip: addr });
        i - 1
    }

    /// `program` to run on host `i` (0-based). It enters only the host's
    /// network namespace: `ip netns exec` would also give it a mount
    /// namespace of its own, and the pod namespaces an agent makes there
    /// (`ip netns add`) would be invisible to containerd, which runs outside.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.hosts[i].netns))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `f` on a thread inside host `i`'s network namespace (threads it
    /// spawns, such as a tokio runtime's, start there too).
    pub fn run_in<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.hosts[i].netns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("entering {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Starts `cmd` (from [`Hosts::command`]); it is killed when the hosts go.
    pub fn spawn(&mut self, mut cmd: Command) -> usize {
        let child = cmd.spawn().expect("spawn on a host");
        self.children.push(child);
        self.children.len() - 1
    }

    /// Whether the process [`Hosts::spawn`] numbered `n` has exited.
    pub fn exited(&mut self, n: usize) -> bool {
        matches!(self.children[n].try_wait(), Ok(Some(_)))
    }

    /// SIGKILLs the process [`Hosts::spawn`] numbered `n`.
    pub fn kill(&mut self, n: usize) {
        let _ = self.children[n].kill();
        let _ = self.children[n].wait();
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process numbered `n`. Drop's
    /// SIGKILL ends a stopped process too.
    pub fn signal(&self, n: usize, signal: &str) {
        let pid = self.children[n].id().to_string();
        let ok = Command::new("kill").args(["-s", signal, &pid]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -s {signal} {pid}");
    }

    /// Cuts host `i` off the bridge (its link goes down): a partition of
    /// that host from all others. [`Hosts::reconnect`] ends it.
    pub fn disconnect(&self, i: usize) {
        self.port(i, "down");
    }

    pub fn reconnect(&self, i: usize) {
        self.port(i, "up");
    }

    /// Sets host `i`'s port on the bridge `up` or `down`.
    fn port(&self, i: usize, state: &str) {
        let port = format!("p{}", i + 1);
        ip(&["-n", &self.switch, "link", "set", &port, state]);
    }

    /// Makes host `i`'s link slow and lossy: 1 Mbit/s through a token
    /// bucket (packets queue, so delay grows with load) and 5% of packets
    /// dropped each way. The kernels this runs on may lack `sch_netem`, so
    /// delay comes from the rate limit and loss from nftables. Both live in
    /// the host's namespace; [`Hosts::unslow`] removes them.
    pub fn slow(&self, i: usize) {
        let ns = &self.hosts[i].netns;
        let tc = Command::new("tc")
            .args(["-n", ns, "qdisc", "replace", "dev", "eth0", "root", "tbf"])
            .args(["rate", "1mbit", "burst", "16kb", "latency", "400ms"])
            .status();
        assert!(tc.is_ok_and(|s| s.success()), "tc tbf on {ns}");
        let rules = "table inet weft_fault {\n\
             chain in { type filter hook input priority 0; numgen random mod 100 < 5 drop; }\n\
             chain out { type filter hook output priority 0; numgen random mod 100 < 5 drop; }\n}\n";
        let mut nft = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes()).unwrap();
        assert!(
            nft.wait().is_ok_and(|s| s.success()),
            "nft loss rules on {ns}"
        );
    }

    pub fn unslow(&self, i: usize) {
        let ns = &self.hosts[i].netns;
        ip(&[
            "netns",
            "exec",
            ns,
            "nft",
            "delete",
            "table",
            "inet",
            "weft_fault",
        ]);
        let _ = Command::new("tc")
            .args(["-n", ns, "qdisc", "del", "dev", "eth0", "root"])
            .status();
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in &self.hosts {
            delete_netns(&h.netns);
        }
        delete_netns(&self.switch);
    }
}

/// A `weft control-plane` member on each host, formed as one Raft cluster
/// over TLS: the first starts it (`--cluster-init`), the others join it with
/// its token, which pins the cluster CA (docs/ha.md).
pub struct Members {
    pub hosts: Hosts,
    pub dirs: Vec<PathBuf>,
    _tmp: tempfile::TempDir,
    cache: tempfile::TempDir,
    /// Each member's process (a [`Hosts::spawn`] number), if running.
    procs: Vec<Option<usize>>,
    /// Flags every member starts with.
    flags: Vec<String>,
}

impl Members {
    /// `n` hosts, each with a member of one cluster.
    pub fn start(n: usize) -> Members {
        Self::start_of(n, n)
    }

    /// `n` hosts; the first `formed` run members of one cluster, the others
    /// are free for [`Members::join`].
    pub fn start_of(n: usize, formed: usize) -> Members {
        Self::start_with(n, formed, &[])
    }

    /// [`Members::start_of`], every member started with `flags`.
    pub fn start_with(n: usize, formed: usize, flags: &[&str]) -> Members {
        let hosts = Hosts::create(n);
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs = (0..n)
            .map(|i| tmp.path().join(format!("member-{}", i + 1)))
            .collect();
        let mut m = Members {
            hosts,
            dirs,
            _tmp: tmp,
            cache: tempfile::tempdir().expect("cache dir"),
            procs: vec![None; n],
            flags: flags.iter().map(|f| f.to_string()).collect(),
        };
        m.spawn_member(0, &["--cluster-init"]);
        if let Err(log) = m.wait_serving(0) {
            panic!("member 1 exited; log:\n{log}");
        }
        for i in 1..formed {
            m.join(i);
        }
        m
    }

    /// The cluster's join token, as the first member wrote it.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dirs[0].join("token")).expect("the first member's token")
    }

    /// Member `i` on its host joins the running cluster through member 1.
    pub fn join(&mut self, i: usize) {
        let token = self.token();
        if let Err(log) = self.try_join(i, &token) {
            panic!("member {} did not join; log:\n{log}", i + 1);
        }
    }

    /// Member `i` tries to join with `token`: Ok once it serves, or its log
    /// if it exits first.
    pub fn try_join(&mut self, i: usize, token: &str) -> Result<(), String> {
        self.try_join_via(i, 0, token)
    }

    /// Member `i` tries to join through member `via`.
    pub fn try_join_via(&mut self, i: usize, via: usize, token: &str) -> Result<(), String> {
        let server = self.url(via);
        self.spawn_member(i, &["--server", &server, "--token", token]);
        self.wait_serving(i)
    }

    /// Deletes member `i`'s data directory (it must not run).
    pub fn wipe(&mut self, i: usize) {
        assert!(self.procs[i].is_none(), "member {} still runs", i + 1);
        let _ = std::fs::remove_dir_all(&self.dirs[i]);
    }

    /// Waits until member `i` answers `/readyz` (a leader known, the store caught up).
    pub fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.kubectl(i, &["get", "--raw", "/readyz"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member {} not ready in 60 s: {}\nlog:\n{}",
                i + 1,
                String::from_utf8_lossy(&out.stderr),
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(p) = self.procs[i].take() {
            self.hosts.kill(p);
        }
    }

    /// Starts member `i` again on its data (after [`Members::kill`]).
    pub fn restart(&mut self, i: usize) {
        assert!(self.procs[i].is_none(), "member {} still runs", i + 1);
        self.spawn_member(i, &[]);
    }

    /// SIGSTOPs member `i`: it holds its sockets but answers nothing.
    pub fn pause(&self, i: usize) {
        self.hosts
            .signal(self.procs[i].expect("member runs"), "STOP");
    }

    pub fn resume(&self, i: usize) {
        self.hosts
            .signal(self.procs[i].expect("member runs"), "CONT");
    }

    /// The member (0-based) that `weft member list` on member `via` names
    /// the Raft leader, if any.
    pub fn leader(&self, via: usize) -> Option<usize> {
        self.weft(via, &["member", "list"])
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some("leader"))
            .and_then(|l| l.split_whitespace().next()?.parse::<usize>().ok())
            .map(|id| id - 1)
    }

    pub fn url(&self, i: usize) -> String {
        format!("https://{}:6443", self.hosts.hosts[i].ip)
    }

    /// Starts `weft control-plane ARGS` as member `i` on its host.
    pub fn spawn_member(&mut self, i: usize, args: &[&str]) {
        let dir = &self.dirs[i];
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.join("weft.log")).unwrap();
        let mut cmd = self.hosts.command(i, env!("CARGO_BIN_EXE_weft"));
        cmd.args(["control-plane", "--data-dir"])
            .arg(dir)
            .args(["--listen", &format!("{}:6443", self.hosts.hosts[i].ip)])
            .args(["--node-id", &(i + 1).to_string()])
            .args(&self.flags)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.procs[i] = Some(self.hosts.spawn(cmd));
    }

    /// Each member writes its kubeconfig once it serves with a leader known:
    /// Ok then, or the member's log if it exits first.
    fn wait_serving(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.dirs[i].join("kubeconfig").exists() {
            if self.procs[i].is_some_and(|p| self.hosts.exited(p)) {
                self.procs[i] = None;
                return Err(self.log(i));
            }
            assert!(
                Instant::now() < deadline,
                "member {} neither served nor exited; log:\n{}",
                i + 1,
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// A `weft node` agent named `name` on host `i`, given the members
    /// `servers` (in that order) and its Lease renewed every second.
    pub fn spawn_agent(&mut self, i: usize, name: &str, servers: &[usize]) {
        self.spawn_agent_with(i, name, servers, &[]);
    }

    /// [`Members::spawn_agent`] with extra `weft node` flags.
    /// Returns the agent's [`Hosts::spawn`] number.
    pub fn spawn_agent_with(
        &mut self,
        i: usize,
        name: &str,
        servers: &[usize],
        flags: &[&str],
    ) -> usize {
        let urls: Vec<String> = servers.iter().map(|&s| self.url(s)).collect();
        let dir = self.dirs[i].join(format!("agent-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let token = std::fs::read_to_string(self.dirs[0].join("tokens/admin")).unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let mut cmd = self.hosts.command(i, env!("CARGO_BIN_EXE_weft"));
        cmd.args(["node", "--server", &urls.join(","), "--name", name])
            .arg("--certificate-authority")
            .arg(self.dirs[0].join("pki/ca.crt"))
            .arg("--data-dir")
            .arg(&dir)
            .args(["--node-status-update-frequency", "1s"])
            // Containers only when the test gives the agent a containerd.
            .args(
                (!flags.contains(&"--containerd-socket"))
                    .then_some(["--containerd-socket", ""])
                    .into_iter()
                    .flatten(),
            )
            .args(flags)
            .env("WEFT_TOKEN", token.trim())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.hosts.spawn(cmd)
    }

    /// One more host, for agents only (no member); returns its index.
    pub fn add_host(&mut self) -> usize {
        let i = self.hosts.add();
        self.dirs
            .push(self._tmp.path().join(format!("member-{}", i + 1)));
        self.procs.push(None);
        i
    }

    /// `weft ARGS` on host `i` against member `i`.
    pub fn weft(&self, i: usize, args: &[&str]) -> String {
        let out = self
            .hosts
            .command(i, env!("CARGO_BIN_EXE_weft"))
            .env("KUBECONFIG", self.dirs[i].join("kubeconfig"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run weft");
        assert!(
            out.status.success(),
            "weft {} on member {}: {}",
            args.join(" "),
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl on host `i`, against member `i`'s own address.
    pub fn kubectl_cmd(&self, i: usize, args: &[&str]) -> Command {
        let mut cmd = self.hosts.command(i, super::kubectl_path());
        cmd.env("KUBECONFIG", self.dirs[i].join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.cache.path().join(i.to_string()))
            .args(args);
        cmd
    }

    pub fn kubectl(&self, i: usize, args: &[&str]) -> std::process::Output {
        self.kubectl_cmd(i, args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    }

    pub fn kubectl_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.kubectl(i, args);
        assert!(
            out.status.success(),
            "kubectl {} on member {}: {}\nlog:\n{}",
            args.join(" "),
            i + 1,
            String::from_utf8_lossy(&out.stderr),
            self.log(i)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl with `stdin` (for `apply -f -`).
    pub fn kubectl_stdin(&self, i: usize, args: &[&str], stdin: &str) -> String {
        use std::io::Write;
        let mut child = self
            .kubectl_cmd(i, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dirs[i].join("weft.log")).unwrap_or_default()
    }
}
