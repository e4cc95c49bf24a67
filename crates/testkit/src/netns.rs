//! Network namespaces for kernel tests: [`NetNs`] (deleted on drop) and
//! [`in_netns`] (code on a thread that joined a namespace).

use std::process::Command;

use nix::sched::{CloneFlags, setns};

/// Run `cmd` and return its standard output; panic, naming it `what`, if
/// it cannot start or fails (with its standard output and error).
pub fn run_ok(cmd: &mut Command, what: std::fmt::Arguments<'_>) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `f` on a new thread that has joined namespace `ns` (a name or a
/// [`NetNs`]); sockets it makes stay in that namespace.
pub fn in_netns<T: Send + 'static>(
    ns: impl AsRef<str>,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{}", ns.as_ref());
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

/// A network namespace, deleted on drop (with its xtables lock file, see
/// [`NetNs::xtables_lock`]). Names are made unique per process and call so
/// parallel tests do not collide.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl AsRef<str> for NetNs {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl NetNs {
    /// Create `kp-<prefix>-<pid>-<n>`. Panics (failing the test, never
    /// skipping it) when namespaces cannot be made (not root, no `ip`).
    pub fn new(prefix: &str) -> NetNs {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        NetNs::named(&format!(
            "kp-{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ))
    }

    /// Create the namespace `name` exactly, for callers with their own
    /// naming scheme; they keep names unique. Panics like [`NetNs::new`].
    pub fn named(name: &str) -> NetNs {
        let name = name.to_string();
        let out = Command::new("ip").args(["netns", "add", &name]).output().unwrap_or_else(|e| {
            panic!("cannot run `ip netns add` ({e}): kernel tests need iproute2 and root; run `make test` as root")
        });
        assert!(
            out.status.success(),
            "`ip netns add {name}` failed: {} (kernel tests need root)",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An xtables lock file of this namespace's own. iptables-legacy
    /// serialises every user on the host-wide /run/xtables.lock although a
    /// namespace's tables are its own; tests that run iptables with
    /// `XTABLES_LOCKFILE` set to this path are not timed out by other
    /// tests' long restores. Removed on drop.
    pub fn xtables_lock(&self) -> String {
        std::env::temp_dir()
            .join(format!("kproxy-xtables-{}.lock", self.name))
            .display()
            .to_string()
    }

    /// `exec`, with the namespace's own xtables lock.
    pub fn exec_locked(&self, argv: &[&str]) -> String {
        let lock = format!("XTABLES_LOCKFILE={}", self.xtables_lock());
        let mut full = vec!["env", lock.as_str()];
        full.extend_from_slice(argv);
        self.exec(&full)
    }

    /// Connect `self`'s interface `here` to `other`'s interface `there`
    /// with a veth pair (both down; addresses and `up` are the caller's).
    pub fn veth(&self, here: &str, other: &NetNs, there: &str) {
        self.exec(&[
            "ip",
            "link",
            "add",
            here,
            "type",
            "veth",
            "peer",
            "name",
            there,
            "netns",
            &other.name,
        ]);
    }

    /// Run each command (split at spaces) inside the namespace.
    pub fn exec_all(&self, commands: &[&str]) {
        for c in commands {
            self.exec(&c.split(' ').collect::<Vec<_>>());
        }
    }

    /// A command that runs inside the namespace (`ip netns exec NAME ...`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Run a command inside the namespace; panic with its output if it fails.
    pub fn exec(&self, argv: &[&str]) -> String {
        run_ok(
            self.command(argv[0]).args(&argv[1..]),
            format_args!("{argv:?} in {}", self.name),
        )
    }

    /// Run a command inside the namespace with `stdin`; return (success, stdout, stderr).
    pub fn run_with_input(&self, argv: &[&str], stdin: &str) -> (bool, String, String) {
        use std::io::Write as _;
        use std::process::Stdio;
        let mut child = self
            .command(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let mut sin = child.stdin.take().expect("stdin");
        let input = stdin.to_string();
        let writer = std::thread::spawn(move || {
            let _ = sin.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().expect("wait");
        let _ = writer.join();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.xtables_lock());
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}
