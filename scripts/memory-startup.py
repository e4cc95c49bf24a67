#!/usr/bin/env python3
"""Memory and start-up of the daemon, measured (docs/performance.md).

    cargo build --release -p kproxy-daemon -p kproxy-bench -p kproxy-apiserver-emulator
    target/release/kproxy-bench gen --services 50000 -o /tmp/c50k.yaml
    sudo scripts/memory-startup.py once /tmp/c50k.yaml once50k
    sudo scripts/memory-startup.py kube /tmp/c50k.yaml kube50k
    sudo scripts/memory-startup.py startup /tmp/c50k.yaml start50k 3

`once`: `kproxy run --once --backend nftables` in a fresh network namespace
under `/usr/bin/time` (peak RSS of the largest process), with every `nft`
child wrapped in `/usr/bin/time` too (each child's peak), the kproxy
process's own VmHWM and the whole process tree's RSS sampled every 10 ms.
`kube`: the API server emulator serving the file and `kproxy run --source
kube` in one namespace; the time from starting the daemon to its first
`synced` log line (and to the last list's completion), then its RSS 20 s
later.
`startup`: `kube` with streaming lists and with paged lists (the emulator's
`--no-watch-list`, as an API server with its WatchList gate off) in turns,
REPS times each (default 3), then the medians with min and max.
"""
import os, subprocess, sys, time, signal, re, threading, tempfile
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# KPROXY_BIN: another kproxy binary (an allocator variant, for example).
KP = os.environ.get("KPROXY_BIN") or os.path.join(ROOT, "target/release/kproxy")
EMU = os.path.join(ROOT, "target/release/kproxy-apiserver-emulator")
WORK = tempfile.mkdtemp(prefix="kproxy-mem-")
os.makedirs(f"{WORK}/bin")
with open(f"{WORK}/bin/nft", "w") as f:
    f.write(f'#!/bin/sh\nexec /usr/bin/time -f "%M" -a -o {WORK}/nft-rss.txt /usr/sbin/nft "$@"\n')
os.chmod(f"{WORK}/bin/nft", 0o755)
COMMON = ["--node-name", "bench-node", "--cluster-cidr", "10.0.0.0/8", "--service-cidr", "172.16.0.0/12",
          "--ip-families", "ipv4", "--healthz-bind-address", "", "--metrics-bind-address", "",
          "--no-cleanup-other-modes", "--no-conntrack-cleanup", "--no-health-check-node-ports"]

HWM = {}
def tree_rss_kib(pid):
    total = 0
    pids = [pid]
    seen = set()
    while pids:
        p = pids.pop()
        if p in seen: continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                st = f.read()
            name = st.split("\n", 1)[0].split()[1]
            for l in st.split("\n"):
                if l.startswith("VmRSS:"): total += int(l.split()[1])
                if l.startswith("VmHWM:"): HWM[name] = max(HWM.get(name, 0), int(l.split()[1]))
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    pids += [int(x) for x in f.read().split()]
        except (FileNotFoundError, ProcessLookupError): pass
    return total

def netns(name):
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)

def once(yaml, tag):
    ns = f"kpmem-{os.getpid()}-{tag}"
    netns(ns)
    try:
        open(f"{WORK}/nft-rss.txt", "w").close()
        env = dict(os.environ, PATH=f"{WORK}/bin:" + os.environ["PATH"])
        t0 = time.monotonic()
        p = subprocess.Popen(["ip", "netns", "exec", ns, "/usr/bin/time", "-f", "%M %e", "-o", f"{WORK}/time-{tag}.txt",
                              KP, "run", "--once", "--backend", "nftables", "--source", yaml] + COMMON,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = 0
        while p.poll() is None:
            peak = max(peak, tree_rss_kib(p.pid))
            time.sleep(0.01)
        wall = time.monotonic() - t0
        maxrss, _ = open(f"{WORK}/time-{tag}.txt").read().split()[-2:]
        nft = [int(x) for x in open(f"{WORK}/nft-rss.txt").read().split() if x.isdigit()]
        print(f"{tag}: rc={p.returncode} wall={wall:.2f}s maxrss(largest process)={int(maxrss)/1024:.0f}MiB "
              f"nft peaks={[round(x/1024) for x in nft]}MiB sampled tree peak={peak/1024:.0f}MiB kproxy VmHWM={HWM.get('kproxy',0)/1024:.0f}MiB", flush=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns])

def kube(yaml, tag, settle=20, emu_args=()):
    ns = f"kpmem-{os.getpid()}-{tag}"
    netns(ns)
    kc = f"{WORK}/kc-{tag}"
    if os.path.exists(kc): os.remove(kc)
    emu = subprocess.Popen(["ip", "netns", "exec", ns, EMU, "--listen", "127.0.0.1:0", "--kubeconfig", kc, "--reload-ms", "3600000", *emu_args, yaml],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(kc): time.sleep(0.1)
        time.sleep(0.5)
        t0 = time.monotonic()
        # The source's debug lines say when each kind's list completed.
        env = dict(os.environ, KPROXY_LOG="info,kproxy_daemon::source::kube=debug")
        d = subprocess.Popen(["ip", "netns", "exec", ns, KP, "run", "--backend", "nftables", "--source", "kube", "--kubeconfig", kc] + COMMON,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0
        synced = None
        stop = threading.Event()
        def sample():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, tree_rss_kib(d.pid)); time.sleep(0.01)
        th = threading.Thread(target=sample); th.start()
        listed = None
        for line in d.stderr:
            if "list complete" in line:
                listed = time.monotonic() - t0
            if "synced" in line and synced is None:
                synced = time.monotonic() - t0
                break
        time.sleep(settle)
        st = open(f"/proc/{d.pid}/status").read()
        rss = int(re.search(r"VmRSS:\s+(\d+)", st).group(1)); hwm = int(re.search(r"VmHWM:\s+(\d+)", st).group(1))
        stop.set(); th.join()
        print(f"{tag}: start-to-first-sync={synced:.2f}s lists complete={listed or 0:.2f}s steady RSS (after {settle}s)={rss/1024:.0f}MiB daemon VmHWM={hwm/1024:.0f}MiB sampled tree peak={peak/1024:.0f}MiB", flush=True)
        result = (synced, rss / 1024, hwm / 1024, listed or 0)
        d.send_signal(signal.SIGTERM); 
        try: d.wait(20)
        except subprocess.TimeoutExpired: d.kill(); d.wait()
    finally:
        emu.send_signal(signal.SIGTERM)
        try: emu.wait(10)
        except subprocess.TimeoutExpired: emu.kill(); emu.wait()
        subprocess.run(["ip", "netns", "del", ns])
    return result

def startup(yaml, tag, reps=3):
    runs = {"streaming": [], "paged": []}
    for i in range(reps):
        runs["streaming"].append(kube(yaml, f"{tag}-streaming-{i}"))
        runs["paged"].append(kube(yaml, f"{tag}-paged-{i}", emu_args=["--no-watch-list"]))
    def med(xs):
        xs = sorted(xs)
        return f"{xs[len(xs) // 2]:.1f} ({xs[0]:.1f}, {xs[-1]:.1f})"
    for mode, rs in runs.items():
        print(f"{tag} {mode}, median (min, max) of {reps}: start-to-first-sync s {med([r[0] for r in rs])}, "
              f"lists complete s {med([r[3] for r in rs])}, "
              f"steady RSS MiB {med([r[1] for r in rs])}, VmHWM MiB {med([r[2] for r in rs])}", flush=True)

if __name__ == "__main__":
    what, yaml, tag = sys.argv[1:4]
    if what == "startup":
        startup(yaml, tag, int(sys.argv[4]) if len(sys.argv) > 4 else 3)
    else:
        (once if what == "once" else kube)(yaml, tag)
