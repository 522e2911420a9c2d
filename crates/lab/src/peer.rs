//! A `punchgate` process in a device's namespace: started with JSON logs, waited on through its
//! log (never by sleeping), stopped with SIGTERM or killed with SIGKILL, by its own PID only.

use std::{
    fs,
    io::BufRead as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use patchbay::Device;
use serde_json::Value;

/// How often logs are polled while waiting.
const POLL: Duration = Duration::from_millis(25);

/// A running (or stopped) node.
#[derive(Debug)]
pub struct Peer {
    /// Short name (relay, peer-a, peer-b), used for file names.
    pub name: String,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Its listen addresses as printed, `/p2p/<id>` included.
    pub listen: Vec<String>,
    /// Its `--tunnel` listeners.
    pub tunnel_addrs: Vec<SocketAddr>,
    /// Its `--tunnel-udp` sockets.
    pub udp_tunnel_addrs: Vec<SocketAddr>,
    /// JSON log (stderr), appended across restarts.
    pub log: PathBuf,
    /// stdout, appended across restarts.
    pub out: PathBuf,
    device: Device,
    bin: PathBuf,
    /// Arguments before the node's own (`node`, or `kaspa server`, ...).
    program: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Log lines already present before the current run started.
    log_offset: usize,
}

impl Peer {
    /// Starts `bin node <args>` in `device`'s namespace with identity `dir/<name>.key`.
    pub async fn start(
        device: &Device,
        bin: &Path,
        name: &str,
        dir: &Path,
        args: Vec<String>,
    ) -> Result<Peer> {
        Self::start_program(device, bin, &["node"], Vec::new(), name, dir, args).await
    }

    /// Starts `bin <program...> --identity dir/<name>.key --log-format json <args>` with `env`
    /// in `device`'s namespace. The program must print `peer id:` and `listening on` lines.
    pub async fn start_program(
        device: &Device,
        bin: &Path,
        program: &[&str],
        env: Vec<(String, String)>,
        name: &str,
        dir: &Path,
        args: Vec<String>,
    ) -> Result<Peer> {
        let mut peer = Peer {
            name: name.to_owned(),
            peer_id: String::new(),
            listen: Vec::new(),
            tunnel_addrs: Vec::new(),
            udp_tunnel_addrs: Vec::new(),
            log: dir.join(format!("{name}.log")),
            out: dir.join(format!("{name}.out")),
            device: device.clone(),
            bin: bin.to_owned(),
            program: program.iter().map(|s| (*s).to_owned()).collect(),
            args,
            env,
            child: None,
            log_offset: 0,
        };
        peer.spawn(dir).await?;
        Ok(peer)
    }

    async fn spawn(&mut self, dir: &Path) -> Result<()> {
        let open = |path: &Path| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("open {}", path.display()))
        };
        let out_offset = count_lines(&self.out);
        self.log_offset = count_lines(&self.log);
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.program)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--identity")
            .arg(dir.join(format!("{}.key", self.name)))
            .args(["--log-format", "json"])
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("PUNCHGATE_LAB_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(open(&self.out)?)
            .stderr(open(&self.log)?);
        let child = self
            .device
            .spawn_command_sync(cmd)
            .with_context(|| format!("start {}", self.name))?;
        self.child = Some(child);

        let wanted = |flag: &str| self.args.iter().filter(|a| *a == flag).count();
        let (wants_tunnels, wants_udp) = (wanted("--tunnel"), wanted("--tunnel-udp"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines: Vec<String> = read_lines(&self.out).into_iter().skip(out_offset).collect();
            let peer_id = lines.iter().find_map(|l| l.strip_prefix("peer id: "));
            let listen: Vec<String> = lines
                .iter()
                .filter_map(|l| l.strip_prefix("listening on ").map(str::to_owned))
                .collect();
            let tunnels: Vec<SocketAddr> = lines
                .iter()
                .filter_map(|l| l.strip_prefix("tunnel listening on "))
                .filter_map(|a| a.parse().ok())
                .collect();
            let udp_tunnels: Vec<SocketAddr> = lines
                .iter()
                .filter_map(|l| l.strip_prefix("udp tunnel listening on "))
                .filter_map(|a| a.parse().ok())
                .collect();
            if let Some(peer_id) = peer_id
                && !listen.is_empty()
                && tunnels.len() >= wants_tunnels
                && udp_tunnels.len() >= wants_udp
            {
                self.peer_id = peer_id.to_owned();
                self.listen = listen;
                self.tunnel_addrs = tunnels;
                self.udp_tunnel_addrs = udp_tunnels;
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited with {status} while starting: {}",
                    self.name,
                    tail(&self.log, 5)
                );
            }
            if Instant::now() > deadline {
                bail!("{} did not print its addresses within 30 s", self.name);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every JSON log event of the current run.
    pub fn events(&self) -> Vec<Value> {
        read_lines(&self.log)
            .into_iter()
            .skip(self.log_offset)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    /// Waits (bounded) for the first event of the current run matching `pred`.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(event) = self.events().into_iter().find(|e| pred(e)) {
                return Ok(event);
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: no '{what}' within {within:?} (log: {})",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for an event with this message whose fields match `fields` (string comparison).
    pub async fn wait_for_message(
        &self,
        within: Duration,
        message: &str,
        fields: &[(&str, &str)],
    ) -> Result<Value> {
        self.wait_for(within, message, |e| matches(e, message, fields))
            .await
    }

    /// Waits (bounded) for the process to exit on its own.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let Some(child) = self.child.as_mut() else {
                bail!("{} is not running", self.name);
            };
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not exit within {within:?} (log: {})",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM, then wait (10 s at most) for a clean exit; SIGKILL if it does not come.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.name);
        };
        signal(&child, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("{} ignored SIGTERM for 10 s; killed ({status})", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process dies without closing anything (a crash, a pulled plug).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the process again with the same identity and flags.
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.terminate()?;
        }
        let dir = self.log.parent().map(Path::to_owned).unwrap_or_default();
        self.spawn(&dir).await
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `event` has `message` and every `(field, value)` (compared as strings).
pub fn matches(event: &Value, message: &str, fields: &[(&str, &str)]) -> bool {
    event.get("message").and_then(Value::as_str) == Some(message)
        && fields
            .iter()
            .all(|(k, v)| field(event, k).as_deref() == Some(*v))
}

/// A field of a log event as a string (numbers and booleans included).
pub fn field(event: &Value, key: &str) -> Option<String> {
    match event.get(key)? {
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    fs::File::open(path)
        .map(|f| {
            std::io::BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .collect()
        })
        .unwrap_or_default()
}

fn count_lines(path: &Path) -> usize {
    read_lines(path).len()
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let lines = read_lines(path);
    lines[lines.len().saturating_sub(n)..].join("\n")
}
