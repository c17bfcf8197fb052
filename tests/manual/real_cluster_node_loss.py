"""A manual trial (not collected by pytest): a real two-node `ray start --block` cluster on this machine
(own port, temp dir and token), the embed stage run on it (RAY_ADDRESS, one MineCLIP actor per node);
node 2's raylet and everything under it killed (-9) at a chosen moment: mid (while an episode is being
embedded there), between (its actor idle after an episode) or closing (while the driver closes the
actors). Prints whether the node was lost and whether the embeds are the local engine's bytes.

    PYTHONPATH=$PWD .venv/bin/python tests/manual/real_cluster_node_loss.py $PWD mid

Every process it started is killed by PID at the end; workspaces go under /tmp/i26.
"""
import glob, os, secrets, shutil, signal, socket, subprocess, sys, tempfile, threading, time
from pathlib import Path
import yaml

REPO = Path(sys.argv[1]); MOMENT = sys.argv[2]        # mid | between | closing
PY = sys.executable
RAY = str(Path(PY).parent / "ray")
env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), PYTHONPATH=str(REPO))

def procs():
    out = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            title = Path(d, "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            ppid = int(Path(d, "stat").read_text().rsplit(")", 1)[1].split()[1])
            out[int(d[6:])] = (ppid, title)
        except (OSError, ValueError, IndexError):
            pass
    return out

def tree(root):
    p = procs(); found = {root}; grow = True
    while grow:
        grow = False
        for pid, (ppid, _) in p.items():
            if ppid in found and pid not in found:
                found.add(pid); grow = True
    return found

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

Path("/tmp/i26").mkdir(exist_ok=True)
work = Path(tempfile.mkdtemp(prefix="w", dir="/tmp/i26"))
tmp = tempfile.mkdtemp(prefix="r", dir="/tmp/i26")
port = free_port()
common = ["--block", "--num-cpus", "1", "--object-store-memory", "100000000", "--disable-usage-stats"]
head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", tmp, *common],
                        env=env, stdout=open(work / "head.log", "w"), stderr=subprocess.STDOUT)
node = None
try:
    # the workspace, made locally
    params = {"paths": {"source": str(work / "source"), "raw": str(work / "raw"), "episodes": str(work / "episodes"),
                        "embeds": str(work / "embeds")},
              "source": {"n_synthetic": 4, "synthetic_steps": 80, "include_real": False, "seed": 0},
              "download": {"index": str(work / "source" / "index.json")}, "embed": {"batch_size": 16, "device": "cpu"},
              "ray": {"max_retries": 2, "embed": {"num_cpus": 1, "num_gpus": 0, "workers": 2}}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    def stage(name, engine, extra_env=None, wait=True):
        p = dict(params, engine=engine); f = work / f"params-{engine}.yaml"; f.write_text(yaml.safe_dump(p))
        proc = subprocess.Popen([PY, "-m", f"stages.{name}", "--params", str(f)], cwd=REPO, env={**env, **(extra_env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if wait:
            out = proc.communicate()[0]; assert proc.returncode == 0, out[-3000:]; return out
        return proc
    for s in ("make_source", "download", "decode", "embed"):
        stage(s, "local")
    local = {p.name: p.read_bytes() for p in (work / "embeds").iterdir()}
    shutil.rmtree(work / "embeds")
    node = subprocess.Popen([RAY, "start", "--address", f"127.0.0.1:{port}", *common], env=env,
                            stdout=open(work / "node.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while True:      # node 2's raylet up
        raylets = [pid for pid in tree(node.pid) if "raylet" in procs().get(pid, (0, ""))[1]]
        if raylets: break
        assert time.time() < deadline and node.poll() is None, (work / "node.log").read_text()
        time.sleep(0.2)
    raylet = raylets[0]
    time.sleep(5)
    killed = []
    def lose_node():
        victims = tree(raylet)
        for pid in victims:
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass
        killed.append((time.time(), sorted(procs().get(v, (0, "?"))[1][:40] for v in victims)))
    def watch():
        want = {"mid": "ray::embed:", "between": "ray::_Holder", "closing": "ray::_Holder.close"}[MOMENT]
        seen_embed = False
        while not killed and time.time() < deadline + 600:
            for pid, (ppid, title) in procs().items():
                if ppid != raylet: continue
                if title.startswith("ray::embed:"): seen_embed = True
                if MOMENT == "between" and not seen_embed: continue
                if MOMENT == "between" and title.startswith("ray::_Holder") and not title.startswith("ray::_Holder.close"):
                    lose_node(); return
                if MOMENT != "between" and title.startswith(want):
                    lose_node(); return
            time.sleep(0.002)
    t = threading.Thread(target=watch, daemon=True); t.start()
    t0 = time.time()
    driver = stage("embed", "ray", {"RAY_ADDRESS": f"127.0.0.1:{port}"}, wait=False)
    out = driver.communicate()[0]
    got = {p.name: p.read_bytes() for p in (work / "embeds").iterdir()} if (work / "embeds").exists() else {}
    same = got == local
    temps = [p.name for p in (work / "embeds").rglob("*") if p.name.startswith(".tmp-")] if (work / "embeds").exists() else []
    print(f"MOMENT={MOMENT} killed={bool(killed)} rc={driver.returncode} same_bytes={same} temp_files={temps} "
          f"stage_s={time.time()-t0:.0f}")
    print("\n".join(l for l in out.splitlines() if "lost" in l or "retr" in l or "error" in l.lower())[-2000:])
    if not same: print(sorted(got), sorted(local)); print(out[-3000:])
finally:
    for p in (node, head):
        if p is None: continue
        for pid in sorted(tree(p.pid), reverse=True):
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass
    time.sleep(1)
    shutil.rmtree(tmp, ignore_errors=True)
