//! The `kproxy-apiserver-emulator` command: serves YAML files and follows
//! their changes.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kproxy_testkit::TempDir;
use serde_json::Value;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temp_dir(name: &str) -> TempDir {
    TempDir::new(&format!("emu-cli-{name}"))
}

fn get(addr: SocketAddr, path: &str) -> Value {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let body = text.split_once("\r\n\r\n").expect("headers end").1;
    serde_json::from_str(body).expect("JSON body")
}

fn ports(addr: SocketAddr) -> Vec<(String, i64)> {
    get(addr, "/api/v1/services")["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["metadata"]["name"].as_str().unwrap_or("").to_string(),
                i["spec"]["ports"][0]["port"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{clusterIP: 172.30.0.1, ports: [{{port: {port}}}]}}\n"
    )
}

#[test]
fn serves_files_and_follows_their_changes() {
    let dir = temp_dir("serve");
    let file = dir.join("objects.yaml");
    let kubeconfig = dir.join("kubeconfig");
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n";
    std::fs::write(
        &file,
        format!("{}---\n{}---\n{pod}", service("a", 80), service("b", 81)),
    )
    .expect("write");
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_kproxy-apiserver-emulator"))
            .args(["--reload-ms", "100", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the emulator"),
    );
    let mut first = String::new();
    BufReader::new(child.0.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    let url = first.trim().rsplit(' ').next().expect("url");
    assert_eq!(first.trim(), format!("serving 2 objects on {url}"));
    let addr: SocketAddr = url.trim_start_matches("http://").parse().expect("address");
    let kc = std::fs::read_to_string(&kubeconfig).expect("kubeconfig written");
    assert!(kc.contains(&format!("server: {url}")), "{kc}");
    assert_eq!(ports(addr), [("a".into(), 80), ("b".into(), 81)]);

    let wait = |want: Vec<(String, i64)>| {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let now = ports(addr);
            if now == want {
                return;
            }
            assert!(Instant::now() < end, "wanted {want:?}, serving {now:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    std::fs::write(
        &file,
        format!("{}---\n{}", service("a", 8080), service("b", 81)),
    )
    .expect("write");
    wait(vec![("a".into(), 8080), ("b".into(), 81)]);
    std::fs::write(&file, service("b", 81)).expect("write");
    wait(vec![("b".into(), 81)]);
    // A broken file keeps the last good objects.
    std::fs::write(&file, "kind: [").expect("write");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ports(addr), [("b".into(), 81)]);
    // Problems are reported once, not at every reload.
    let _ = child.0.kill();
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert_eq!(err.matches("skipped Pod p").count(), 1, "{err}");
    assert_eq!(
        err.matches("keeping the previous objects").count(),
        1,
        "{err}"
    );
}

#[test]
fn a_bad_file_at_start_is_a_clear_error() {
    let dir = temp_dir("bad");
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "kind: [").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_kproxy-apiserver-emulator"))
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml: document 1"), "{err}");
}
