//! Harness for the end-to-end tests and the benchmark: starts the real
//! `mcplexer-vaultd` on a temporary socket and state directory, waits for its
//! `READY=1` on a private notify socket (no sleeps), and runs the real
//! `mcplexerctl` against it, as root or as another uid through `setpriv`.
//!
//! Trust: test code only; it runs as root so that it can act as other uids.
//! A failed set-up step must abort the test, hence `expect` throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bench;
pub mod oauth;
pub mod oauth_vault;
pub mod peers;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tonic::transport::Channel;

/// How long a daemon may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The packaged vault unit's `LimitNOFILE=`, which a system-mode test
/// vault runs under.
fn unit_nofile() -> libc::rlim_t {
    include_str!("../../packaging/systemd/mcplexer-vaultd.service")
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .and_then(|n| n.trim().parse().ok())
        .expect("the vault unit sets LimitNOFILE= to a number")
}

/// The directory holding the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MCPLEXER_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> or target/<profile>/<bench>
    for dir in exe.ancestors().skip(1) {
        if dir.join("mcplexer-vaultd").exists() {
            return dir.to_owned();
        }
    }
    panic!(
        "mcplexer-vaultd not found next to {}; build the workspace first (cargo build --workspace)",
        exe.display()
    );
}

/// The path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing; build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// Options of a daemon start.
#[derive(Clone, Debug, Default)]
pub struct VaultOptions {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--client-group GID`; also makes the socket reachable by that group.
    pub client_group: Option<u32>,
    /// `--admin-group GID`.
    pub admin_group: Option<u32>,
    /// System mode as the packaged unit runs it: started as root with
    /// `--system --run-as UID:GID`, where GID is the client group (the
    /// unit's `Group=`, which owns the socket), under the unit's
    /// `LimitNOFILE`. The state and socket directories are this uid's.
    /// Without an admin group, root's group is the admin group.
    pub run_as: Option<u32>,
    /// Extra flags.
    pub extra: Vec<String>,
}

impl VaultOptions {
    /// The uid and gid a system-mode vault drops to (see `run_as`).
    fn service_ids(&self) -> Option<(u32, u32)> {
        self.run_as
            .map(|uid| (uid, self.client_group.unwrap_or(uid)))
    }
}

/// A running vault daemon on temporary paths. Killed when dropped.
pub struct Vault {
    /// The root of the temporary tree.
    pub root: TempDir,
    /// The socket path.
    pub socket: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The options it was started with.
    pub options: VaultOptions,
    child: Option<Child>,
}

/// A finished command: status and both outputs as text.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics unless the command succeeded; returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "command failed: {self:#?}");
        &self.stdout
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }
}

impl Vault {
    /// Starts a daemon with default options.
    pub fn start() -> Self {
        Self::start_with(VaultOptions::default())
    }

    /// Starts a daemon and waits until it is ready.
    pub fn start_with(options: VaultOptions) -> Self {
        let root = tempfile::Builder::new()
            .prefix("mcplexer-test-")
            .tempdir()
            .expect("tempdir");
        // Other test uids must reach the socket: the tree is traversable,
        // the state directory stays private.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        let run = root.path().join("run");
        std::fs::create_dir(&run).expect("mkdir run");
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        let mut vault = Self {
            socket: run.join("vault.sock"),
            state_dir: root.path().join("state"),
            root,
            options,
            child: None,
        };
        if let Some((uid, gid)) = vault.options.service_ids() {
            // What the unit's StateDirectory= and RuntimeDirectory= make.
            std::fs::create_dir(&vault.state_dir).expect("mkdir state");
            std::fs::set_permissions(&vault.state_dir, std::fs::Permissions::from_mode(0o700))
                .expect("chmod");
            for dir in [&vault.state_dir, &run] {
                nix::unistd::chown(
                    dir,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )
                .expect("chown");
            }
        }
        vault.spawn().unwrap_or_else(|e| panic!("{e}"));
        vault
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("vaultd.log")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The command line the daemon is started with.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin("mcplexer-vaultd"));
        match self.options.service_ids() {
            None => {
                cmd.arg("--user");
            }
            Some((uid, gid)) => {
                cmd.args(["--system", "--run-as", &format!("{uid}:{gid}")]);
                if self.options.admin_group.is_none() {
                    cmd.args(["--admin-group", "0"]);
                }
                let nofile = unit_nofile();
                // SAFETY: setrlimit(2) is async-signal-safe; nothing else
                // runs between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        let limit = libc::rlimit {
                            rlim_cur: nofile,
                            rlim_max: nofile,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    });
                }
            }
        }
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir);
        if let Some(config) = &self.options.config {
            cmd.arg("--config").arg(config);
        }
        if let Some(gid) = self.options.client_group {
            cmd.arg("--client-group").arg(gid.to_string());
        }
        if let Some(gid) = self.options.admin_group {
            cmd.arg("--admin-group").arg(gid.to_string());
        }
        cmd.args(&self.options.extra);
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("LISTEN_FDS");
        cmd
    }

    /// Spawns the daemon and waits for READY=1; on failure returns its log.
    pub fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = self.command();
        cmd.stdout(log.try_clone().expect("log")).stderr(log);
        let notify = self.root.path().join("notify.sock");
        let child = spawn_ready(cmd, &notify).map_err(|why| format!("{why}:\n{}", self.log()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the daemon with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon with SIGTERM; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().ok().and_then(|s| s.code())
    }

    /// Restarts a stopped or killed daemon on the same paths.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs mcplexerctl as root with `args`.
    pub fn ctl<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ctl_with(None, args, None)
    }

    /// Runs mcplexerctl with `stdin` as input.
    pub fn ctl_input<I, S>(&self, args: I, stdin: &[u8]) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ctl_with(None, args, Some(stdin))
    }

    /// Runs mcplexerctl as `uid`:`gid` (no supplementary groups) via setpriv.
    pub fn ctl_as<I, S>(&self, uid: u32, gid: u32, args: I, stdin: Option<&[u8]>) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ctl_with(Some((uid, gid)), args, stdin)
    }

    /// `mcplexerctl --socket SOCKET`, as `user` (uid, gid; through
    /// `setpriv`, no supplementary groups) or as this process; arguments to
    /// be added.
    pub fn ctl_command(&self, user: Option<(u32, u32)>) -> Command {
        let mut cmd = match user {
            None => Command::new(bin("mcplexerctl")),
            Some((uid, gid)) => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(bin("mcplexerctl"));
                cmd
            }
        };
        cmd.arg("--socket").arg(&self.socket);
        cmd
    }

    fn ctl_with<I, S>(&self, user: Option<(u32, u32)>, args: I, stdin: Option<&[u8]>) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.ctl_command(user);
        cmd.args(args);
        cmd.env_remove("MCPLEXER_VAULT_SOCKET");
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mcplexerctl");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(input).expect("write stdin");
        }
        Run::from(child.wait_with_output().expect("wait mcplexerctl"))
    }

    /// A gRPC channel to the daemon (as the test's own uid).
    pub async fn channel(&self) -> Channel {
        mcplexer_proto::connect(&self.socket)
            .await
            .expect("connect")
    }

    /// Creates downstream server `id` (named `name`), on stdio, whose
    /// command is `/bin/true`: for tests of credential release and routing
    /// that never start it.
    pub fn create_stdio_server(&self, id: &str, name: &str) {
        self.ctl([
            "server",
            "create",
            "--id",
            id,
            "--name",
            name,
            "--transport",
            "stdio",
            "--command",
            "/bin/true",
        ])
        .ok();
    }

    /// As `(uid, gid)`: applies an env scope `id` owned by that user and
    /// stores `value` under `key` in it.
    pub fn env_scope_as(&self, (uid, gid): (u32, u32), id: &str, key: &str, value: &str) {
        let doc = format!("auth_scopes:\n  - {{id: {id}, name: {id}, type: env}}\n");
        self.ctl_as(uid, gid, ["apply", "-f", "-"], Some(doc.as_bytes()))
            .ok();
        self.ctl_as(
            uid,
            gid,
            ["secret", "set", id, key],
            Some(format!("{value}\n").as_bytes()),
        )
        .ok();
    }

    /// Writes `text` to a file in the temporary tree; returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.root.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A YAML fragment of half a megabyte whose aliases expand to gigabytes:
/// each of three levels repeats the previous one a hundred times.
pub fn alias_bomb() -> String {
    let item = format!("\"{}\"", "x".repeat(500));
    let base = vec![item.as_str(); 1000].join(", ");
    let mut doc = format!("x0: &a0 [{base}]\n");
    for level in 1..4 {
        let refs = vec![format!("*a{}", level - 1); 100].join(", ");
        doc.push_str(&format!("x{level}: &a{level} [{refs}]\n"));
    }
    doc
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Base64 (standard or url-safe, no padding) of the whole 3-byte groups of
/// `bytes`: what a test searches for to prove a value is not stored in an
/// encoded form (at each of the three alignments, by the caller).
pub fn base64(bytes: &[u8], url_safe: bool) -> Vec<u8> {
    let table: &[u8] = if url_safe {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    bytes
        .chunks_exact(3)
        .flat_map(|c| {
            let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
            [18, 12, 6, 0].map(|s| table[((n >> s) & 63) as usize])
        })
        .collect()
}

/// Sends `request` to the loopback TCP `authority` (`127.0.0.1:PORT`) as
/// uid:gid `user`, with bash's /dev/tcp through `setpriv`, and says whether
/// any answer came back. Servers that serve only their own uid must close
/// the connection unanswered (possibly before the request is written:
/// SIGPIPE is ignored, the write fails, nothing is read).
pub fn answered_as(user: (u32, u32), authority: &str, request: &str) -> bool {
    let (host, port) = authority.rsplit_once(':').expect("host:port");
    let script = format!(
        "trap '' PIPE; exec 3<>/dev/tcp/{host}/{port} && printf '%s' \"$REQUEST\" >&3; answer=$(timeout 10 cat <&3); [ -z \"$answer\" ] && echo closed || echo answered"
    );
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", user.0))
        .arg(format!("--regid={}", user.1))
        .args(["--clear-groups", "/bin/bash", "-c", &script])
        .env("REQUEST", request)
        .output()
        .expect("run setpriv");
    match String::from_utf8_lossy(&out.stdout).trim() {
        "closed" => false,
        "answered" => true,
        _ => panic!("the raw request as {user:?} failed: {out:?}"),
    }
}

/// Spawns `cmd` (a `mcplexer-vaultd`) with `NOTIFY_SOCKET` at `notify`
/// (made here; its directory must be reachable by the daemon's uid) and
/// waits, at most [`READY_TIMEOUT`], for READY=1. Fails, killing it, if it
/// exits or stays silent first.
pub fn spawn_ready(mut cmd: Command, notify: &Path) -> Result<Child, String> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(notify);
    let socket = UnixDatagram::bind(notify).expect("bind notify socket");
    // A daemon that dropped privileges must still reach it.
    std::fs::set_permissions(notify, std::fs::Permissions::from_mode(0o777))
        .expect("chmod notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut child = cmd
        .env("NOTIFY_SOCKET", notify)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn mcplexer-vaultd");
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Err(format!(
                "mcplexer-vaultd exited ({status}) before it was ready"
            ));
        }
        match socket.recv(&mut buf) {
            Ok(n)
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1") =>
            {
                return Ok(child);
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("notify socket: {e}"),
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "mcplexer-vaultd was not ready within {READY_TIMEOUT:?}"
            ));
        }
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The path of a fixture file in `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}
