#!/usr/bin/env python3
"""How fast kproxy answers /livez while it syncs a large cluster and clients
that never read hold /rules and /graph.

Generates SERVICES synthetic Services (kproxy-bench gen), runs the daemon
with the file source in a network namespace, changes an endpoint every few
seconds (so that syncs keep running), keeps 16 /rules and 4 /graph clients
that send their request and never read (topped up as the write timeout
drops them), and times GET /livez every 200 ms (10 s timeout: a hang is
counted as 10 s). Prints the /livez latency median, min, max and the
daemon's peak RSS.

Usage (root; release binaries):
  cargo build --release -p kproxy-daemon -p kproxy-bench
  scripts/health-under-load.py [--backend iptables-nft] [--services 50000] [--seconds 60]
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="iptables-nft")
    ap.add_argument("--services", type=int, default=50000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--kproxy", default=os.path.join(ROOT, "target/release/kproxy"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "target/release/kproxy-bench"))
    a = ap.parse_args()

    inner = os.environ.get("KPH_INNER")
    if not inner:
        # Everything runs inside a network namespace of its own.
        ns = f"kph-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            r = subprocess.run(["ip", "netns", "exec", ns, "env", f"KPH_INNER={ns}",
                                sys.executable] + sys.argv)
        finally:
            subprocess.run(["ip", "netns", "del", ns])
        sys.exit(r.returncode)

    tmp = tempfile.mkdtemp(prefix="kproxy-health-")
    src = os.path.join(tmp, "src")
    os.mkdir(src)
    yaml_path = os.path.join(src, "cluster.yaml")
    subprocess.run([a.bench, "gen", "--services", str(a.services), "-o", yaml_path],
                   check=True)
    text = open(yaml_path).read()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    log = open(os.path.join(tmp, "kproxy.log"), "w")
    daemon = subprocess.Popen(
        ["env", f"XTABLES_LOCKFILE={tmp}/xtables.lock",
         a.kproxy, "run", "--backend", a.backend, "--source", src,
         "--node-name", "bench-node", "--cluster-cidr", "10.0.0.0/8",
         "--service-cidr", "172.16.0.0/12", "--ip-families", "ipv4",
         "--healthz-bind-address", "127.0.0.1:10256",
         "--metrics-bind-address", "127.0.0.1:10249",
         "--sync-period", "10s", "--min-sync-period", "1s",
         "--no-conntrack-cleanup", "--no-cleanup-other-modes"],
        stdout=subprocess.DEVNULL, stderr=log)
    try:
        run(a, daemon, yaml_path, text)
    finally:
        daemon.terminate()
        daemon.wait()
        print(f"log: {tmp}/kproxy.log", file=sys.stderr)


def get(port, path, timeout):
    t = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.settimeout(timeout)
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        head = s.recv(64)
        while s.recv(1 << 20):
            pass
        s.close()
        code = int(head.split()[1]) if head else 0
    except (OSError, IndexError, ValueError):
        code = 0
    return code, time.monotonic() - t


def run(a, daemon, yaml_path, text):
    t0 = time.monotonic()
    while get(10249, "/status", 5)[0] != 200 or b'"syncs":0' in status():
        if daemon.poll() is not None or time.monotonic() - t0 > 900:
            sys.exit("the daemon never synced")
        time.sleep(1)
    print(f"first sync after {time.monotonic() - t0:.1f} s", file=sys.stderr)
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set():
            i += 1
            # One endpoint moves: a partial sync (the file is re-read whole).
            new = text.replace("- 10.1.0.1\n", f"- 10.255.{i // 250}.{i % 250 + 1}\n", 1)
            tmp = yaml_path + ".tmp"
            with open(tmp, "w") as f:
                f.write(new)
            os.rename(tmp, yaml_path)
            stop.wait(3)

    def sinks():
        held = []
        while not stop.is_set():
            # Closed after 35 s (past the 30 s write timeout) and asked
            # again, as a client polling /rules would.
            for s in held:
                if time.monotonic() - s.opened > 35:
                    s.sock.close()
            held = [s for s in held if time.monotonic() - s.opened <= 35]
            for path, n in (("/rules", 16), ("/graph", 4)):
                have = sum(1 for s in held if s.path == path)
                for _ in range(n - have):
                    try:
                        s = socket.create_connection(("127.0.0.1", 10249), timeout=5)
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                        s.sendall(f"GET {path} HTTP/1.1\r\n\r\n".encode())
                        held.append(Sink(s, path))
                    except OSError:
                        pass
            stop.wait(2)
        for s in held:
            s.sock.close()

    threads = [threading.Thread(target=churn), threading.Thread(target=sinks)]
    for t in threads:
        t.start()
    lat, codes, peak = [], {}, 0
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        code, d = get(10256, "/livez", 10)
        lat.append(d * 1000)
        codes[code] = codes.get(code, 0) + 1
        peak = max(peak, rss_kib(daemon.pid))
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    st = status().decode(errors="replace")
    print(f"backend {a.backend}, {a.services} Services, {a.seconds:.0f} s: "
          f"/livez n={len(lat)} median {statistics.median(lat):.1f} ms, "
          f"min {min(lat):.1f} ms, p99 {sorted(lat)[int(len(lat) * 0.99)]:.1f} ms, "
          f"max {max(lat):.1f} ms, over 100 ms {sum(1 for x in lat if x > 100)}, "
          f"codes {codes}; load average {open('/proc/loadavg').read().split()[0]}; "
          f"daemon peak RSS {peak_rss_kib(daemon.pid) / 1024:.0f} MiB")
    print(st[:400], file=sys.stderr)


class Sink:
    def __init__(self, sock, path):
        self.sock, self.path, self.opened = sock, path, time.monotonic()


def status():
    try:
        s = socket.create_connection(("127.0.0.1", 10249), timeout=5)
        s.sendall(b"GET /status HTTP/1.0\r\n\r\n")
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                return out
            out += b
    except OSError:
        return b""


def rss_kib(pid):
    return field(pid, "VmRSS")


def peak_rss_kib(pid):
    return field(pid, "VmHWM")


def field(pid, name):
    # `env` execs kproxy: same pid.
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    main()
