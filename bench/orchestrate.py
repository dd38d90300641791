#!/usr/bin/env python3
"""credproxy benchmark orchestration (called by bench/run; stdlib only).

Starts every party on loopback with OS-chosen ports, pins proxies to core 0 and the load
generator + upstream to core 1 (when `taskset` works and there are >= 2 cores), runs each
scenario against each target in alternation (A B C ... A B C ...), and writes
bench/results/<stamp>.json plus a regenerated BENCHMARKS.md.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "localhost"  # oha resolves the target name even through -x; localhost resolves everywhere
PLACEHOLDER = "agent-vault-11111111-2222-3333-4444-555555555555"
SECRET = "sk-live-BENCH-7f3a9c1e5b2d4068aa"
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

S4_CRED_SKIP = ("n/a: the credential is bound to the S1 host only; its placeholder sent to another "
                "host is refused (403 credential_not_bound), as it must be. See credproxy-nocred")
ALL_SCENARIOS = ["S1", "S2", "S3", "S4", "S6", "S7", "S8", "S9"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ process helpers

def can_pin():
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return False
    return subprocess.run(["taskset", "-c", "1", "true"], capture_output=True).returncode == 0


PIN = can_pin()


def pinned(core, argv):
    return (["taskset", "-c", str(core)] if PIN else []) + list(argv)


PROXY_CORE, LOAD_CORE = 0, 1
PROCS = []


def spawn(argv, core, env=None, stdout=None, stderr=None, stdin=None):
    p = subprocess.Popen(pinned(core, argv), env=env, stdout=stdout or subprocess.DEVNULL,
                         stderr=stderr or subprocess.DEVNULL, stdin=stdin or subprocess.DEVNULL,
                         start_new_session=True)
    PROCS.append(p)
    return p


def stop_all():
    for p in reversed(PROCS):
        if p.poll() is None:
            try:
                p.terminate()
                p.wait(timeout=5)
            except Exception:
                try:
                    p.kill()
                except Exception:
                    pass


def wait_file(path, timeout=30, proc=None):
    t = time.time()
    while time.time() - t < timeout:
        if Path(path).exists() and Path(path).stat().st_size > 0:
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before writing {path}")
        time.sleep(0.05)
    raise RuntimeError(f"timeout waiting for {path}")


def wait_port(addr, timeout=30, proc=None):
    host, port = addr.rsplit(":", 1)
    t = time.time()
    while time.time() - t < timeout:
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited ({proc.returncode}) before listening on {addr}")
            time.sleep(0.05)
    raise RuntimeError(f"timeout waiting for {addr}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_ticks(pid):
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])  # utime + stime (fields 14, 15)
    except Exception:
        return None


def status_kib(pid, key):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except Exception:
        return None
    return None


def reset_peak(pid):
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except Exception:
        return False


def child_pids(pid):
    """pid and (recursively) its children: a taskset'd process keeps its pid, but squid forks."""
    out = [pid]
    try:
        for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            out += child_pids(int(c))
    except Exception:
        pass
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


# ------------------------------------------------------------------ targets

class Target:
    def __init__(self, name, kind, proxy=None, pid=None, token=None, header=True, note=""):
        self.name, self.kind, self.proxy, self.pid = name, kind, proxy, pid
        self.token, self.header, self.note = token, header, note
        self.skip = {}  # scenario -> reason

    def pids(self):
        return child_pids(self.pid) if self.pid else []

    def cpu(self):
        ts = [cpu_ticks(p) for p in self.pids()]
        ts = [t for t in ts if t is not None]
        return sum(ts) if ts else None

    def rss(self, key="VmRSS"):
        vs = [status_kib(p, key) for p in self.pids()]
        vs = [v for v in vs if v is not None]
        return sum(vs) if vs else None


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.state = Path(tempfile.mkdtemp(prefix="credproxy-bench-"))
        self.tools = {}
        self.targets = []
        self.results = {}
        self.commands = {}
        self.notes = []

    # -------------------------------------------------------------- setup
    def setup(self):
        a = self.args
        self.benchkit = a.benchkit
        self.credproxy = a.credproxy
        self.oha = a.oha
        st = self.state
        up = spawn([self.benchkit, "upstream", "--state", st / "upstream.json"], LOAD_CORE)
        wait_file(st / "upstream.json", proc=up)
        u = json.loads((st / "upstream.json").read_text())
        self.up_addr, self.up_ca, self.up_pid = u["addr"], u["ca"], u["pid"]
        self.port = int(self.up_addr.rsplit(":", 1)[1])
        self.url_base = f"https://{HOST}:{self.port}"
        cas = [Path(self.up_ca).read_text()]
        self.targets.append(Target("direct", "direct", note="client to the TLS upstream"))

        # floors
        for kind in ("tcp-relay", "tls-relay"):
            argv = [self.benchkit, kind, "--state", st / f"{kind}.json", "--to", self.up_addr]
            if kind == "tls-relay":
                argv += ["--upstream-ca", self.up_ca]
            p = spawn(argv, PROXY_CORE)
            wait_file(st / f"{kind}.json", proc=p)
            s = json.loads((st / f"{kind}.json").read_text())
            if "ca" in s:
                cas.append(Path(s["ca"]).read_text())
            self.targets.append(Target(f"floor-{kind}", "floor", s["addr"], p.pid, header=True,
                                       note="CONNECT + byte copy" if kind == "tcp-relay" else
                                       "TLS in (minted leaf) / verified TLS out, no HTTP parsing"))

        # credproxy
        d = st / "credproxy"
        subprocess.run([self.benchkit, "cp-config", "--dir", d, "--to", self.up_addr, "--port",
                        str(self.port), "--upstream-ca", self.up_ca, "--max-conns", "20000"],
                       check=True)
        token = (d / "token").read_text().strip()
        cfg = (d / "config.yaml").read_text().replace("api.example.test", HOST)
        (d / "config.yaml").write_text(cfg)
        if "\nadmin:" not in cfg:
            # The admin listener gives S9 the spool's commit/fsync counters.
            cfg += "admin:\n  tcp: 127.0.0.1:0\n"
            (d / "config.yaml").write_text(cfg)
        if "\naudit:" not in cfg:
            # Credentials require the durable audit spool at this commit.
            (d / "config.yaml").write_text(cfg + f"audit:\n  path: {d / 'audit.db'}\n")
            self.notes.append("credproxy ran with `audit.path` set (required with credentials): every "
                              "credential-bearing request is recorded in the durable spool before it is sent.")
        env = dict(os.environ, BENCH_SECRET=SECRET)
        env.pop("CREDPROXY_LOG", None)
        logf = open(st / "credproxy.log", "w")
        if Path(self.credproxy).exists():
            argv = [self.credproxy, "serve", "--config", d / "config.yaml"]
        else:
            argv = [self.benchkit, "serve", "--config", d / "config.yaml"]
            self.notes.append("credproxy ran in-process in `benchkit serve` (the credproxy-proxy library, "
                              "same YAML config) because the `credproxy` CLI binary did not build at this "
                              "commit (workspace mid-edit).")
        p = spawn(argv, PROXY_CORE, env=env, stderr=logf)
        addr = None
        t0 = time.time()
        while addr is None and time.time() - t0 < 30:
            if p.poll() is not None:
                raise RuntimeError("credproxy exited: " + (st / "credproxy.log").read_text())
            for line in (st / "credproxy.log").read_text().splitlines():
                if "listening" in line:
                    m = re.search(r"(127\.0\.0\.1:\d+)", line)
                    if m and "admin" in line:
                        self.cp_admin = m.group(1)
                    elif m:
                        addr = m.group(1)
            time.sleep(0.05)
        if addr is None:
            raise RuntimeError("credproxy did not report its address")
        cas.append((d / "ca" / "ca.crt").read_text())
        self.targets.append(Target("credproxy", "credproxy", addr, p.pid, token, header=True,
                                   note="credential injected into x-api-key, response scrubbing on"))
        self.targets.append(Target("credproxy-nocred", "credproxy", addr, p.pid, token, header=False,
                                   note="same process, request without a placeholder"))

        # mitmproxy
        if not a.no_mitm:
            self.start_mitm(cas)
        if not a.no_squid:
            self.start_squid(cas)

        self.cacert = st / "all-ca.pem"
        self.cacert.write_text("".join(c if c.endswith("\n") else c + "\n" for c in cas))
        only = a.targets.split(",") if a.targets else None
        if only:
            self.targets = [t for t in self.targets if t.name in only]

    def start_mitm(self, cas):
        venv = Path(self.args.mitm_venv)
        mitmdump = venv / "bin" / "mitmdump"
        if not mitmdump.exists():
            self.notes.append(f"mitmproxy: not run ({mitmdump} missing)")
            return
        conf = self.state / "mitm"
        conf.mkdir()
        port = free_port()
        env = dict(os.environ, BENCH_PLACEHOLDER=PLACEHOLDER, BENCH_SECRET=SECRET)
        logf = open(self.state / "mitm.log", "w")
        p = spawn([mitmdump, "-q", "--listen-host", "127.0.0.1", "-p", str(port),
                   "--set", f"confdir={conf}", "--set", f"ssl_verify_upstream_trusted_ca={self.up_ca}",
                   "--set", "connection_strategy=lazy",
                   "-s", ROOT / "bench" / "peers" / "mitm_addon.py"], PROXY_CORE, env=env,
                  stderr=logf, stdout=logf)
        try:
            wait_port(f"127.0.0.1:{port}", timeout=60, proc=p)
            wait_file(conf / "mitmproxy-ca-cert.pem", timeout=30)
        except RuntimeError as e:
            self.notes.append(f"mitmproxy: not run ({e})")
            return
        cas.append((conf / "mitmproxy-ca-cert.pem").read_text())
        t = Target("mitmproxy", "peer", f"127.0.0.1:{port}", p.pid, header=True,
                   note="mitmproxy 11 + header-substitution/scrub addon (buffers bodies)")
        t.skip["S8"] = "not run: Python per-connection cost makes 1000s of TLS conns slow to set up in a bounded run" if self.quick else None
        if t.skip["S8"] is None:
            del t.skip["S8"]
        t.skip["S6big"] = "not run: mitmproxy buffers whole bodies (1 GiB would be held in memory)"
        self.targets.append(t)

    def start_squid(self, cas):
        squid = shutil.which("squid") or "/usr/sbin/squid"
        if not Path(squid).exists():
            self.notes.append("squid: not run (squid-openssl not installed)")
            return
        try:
            from squid_peer import start_squid  # bench/peers/squid_peer.py
        except Exception as e:  # pragma: no cover
            self.notes.append(f"squid: not run (no launcher: {e})")
            return
        try:
            addr, pid, ca, note = start_squid(self, squid)
        except Exception as e:
            self.notes.append(f"squid: not run ({e})")
            return
        cas.append(Path(ca).read_text())
        t = Target("squid", "peer", addr, pid, header=True, note=note)
        self.targets.append(t)

    # -------------------------------------------------------------- clients
    def oha_cmd(self, t, path, extra, url=None):
        url = url or f"{self.url_base}{path}"
        cmd = [self.oha, "--no-tui", "--output-format", "json", "--cacert", str(self.cacert)]
        if t.proxy:
            cmd += ["-x", f"http://{t.proxy}"]
            if t.token:
                cmd += ["--proxy-header", f"Proxy-Authorization: Bearer {t.token}"]
        else:
            cmd += ["--connect-to", f"{HOST}:{self.port}:127.0.0.1:{self.port}"]
        if t.header:
            cmd += ["-H", f"x-api-key: {PLACEHOLDER}"]
        return cmd + list(extra) + [url]

    def run_oha(self, t, scen, path, extra, url=None):
        cmd = self.oha_cmd(t, path, extra, url)
        self.commands.setdefault(scen, " ".join(
            str(c) if not str(c).startswith("Proxy-Authorization") else "Proxy-Authorization: Bearer $TOKEN"
            for c in self.oha_cmd(Target("credproxy", "credproxy", "127.0.0.1:PROXY", token="$TOKEN",
                                         header=scen != "S4"),
                                  path, extra, url)))
        c0 = t.cpu()
        r = subprocess.run(pinned(LOAD_CORE, cmd), capture_output=True, text=True, timeout=600)
        c1 = t.cpu()
        try:
            j = json.loads(r.stdout)
        except Exception:
            return {"error": (r.stderr or r.stdout)[-400:]}
        s = j.get("summary", {})
        codes = j.get("statusCodeDistribution", {}) or {}
        n_ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
        n_all = sum(codes.values())
        lat = j.get("latencyPercentiles", {}) or {}
        out = {
            "rps": s.get("requestsPerSec"),
            "ok_rps": n_ok / s["total"] if s.get("total") else None,
            "success": s.get("successRate"),
            "requests": n_all,
            "non2xx": n_all - n_ok,
            "errors": sum((j.get("errorDistribution") or {}).values()),
            "p50_ms": lat.get("p50") * 1e3 if lat.get("p50") is not None else None,
            "p99_ms": lat.get("p99") * 1e3 if lat.get("p99") is not None else None,
            "p999_ms": lat.get("p99.9") * 1e3 if lat.get("p99.9") is not None else None,
        }
        if c0 is not None and c1 is not None and n_all:
            out["cpu_us_per_req"] = (c1 - c0) / HZ / n_all * 1e6
        if out["errors"] and not n_ok:
            out["error"] = str(j.get("errorDistribution"))[:400]
        return out

    # -------------------------------------------------------------- scenarios
    def s1(self, t):
        d = self.args.duration
        return self.run_oha(t, "S1", "/fixed/1024", ["-z", f"{d}s", "-c", "16"])

    def s2(self, t):
        d = self.args.duration
        return self.run_oha(t, "S2", "/fixed/1024",
                            ["-z", f"{d}s", "-c", "16", "-q", str(self.args.rate), "--latency-correction"])

    def s3(self, t):
        d = self.args.duration
        return self.run_oha(t, "S3", "/fixed/1024", ["-z", f"{d}s", "-c", "8", "--disable-keepalive"])

    def s4(self, t):
        if t.kind == "direct" or t.name == "floor-tcp-relay":
            return {"skip": "n/a (no leaf minting)"}
        if t.kind == "peer":
            return {"skip": "not run: the peer resolves the S4 names itself (they exist only in "
                            "credproxy's `upstream.resolve` and the relays' fixed upstream)"}
        if t.kind == "credproxy" and t.header:
            return {"skip": S4_CRED_SKIP}
        d = self.args.duration
        # 100 names (s4-0 … s4-99, all allowlisted) against a leaf cache of 64 entries, so most
        # connections mint a leaf. oha's rand_regex treats '.' literally; --no-pre-lookup keeps
        # oha from resolving the (unresolvable) names itself: the proxy resolves them.
        url = f"https://s4-(0|[1-9][0-9]?).example.test:{self.port}/fixed/1024"
        return self.run_oha(t, "S4", "/fixed/1024",
                            ["-z", f"{d}s", "-c", "8", "--disable-keepalive", "--rand-regex-url",
                             "--no-pre-lookup"],
                            url=url)

    def curl_cmd(self, t, path):
        cmd = ["curl", "-sS", "-o", "/dev/null", "--max-time", "300", "--cacert", str(self.cacert),
               "-w", "%{http_code} %{size_download} %{time_total} %{time_starttransfer}"]
        if t.proxy:
            cmd += ["--proxy", f"http://{t.proxy}"]
            if t.token:
                cmd += ["--proxy-header", f"Proxy-Authorization: Bearer {t.token}"]
        else:
            cmd += ["--resolve", f"{HOST}:{self.port}:127.0.0.1"]
        if t.header:
            cmd += ["-H", f"x-api-key: {PLACEHOLDER}"]
        return cmd + [f"{self.url_base}{path}"]

    def s6(self, t, size):
        if size > 64 << 20 and "S6big" in t.skip:
            return {"skip": t.skip["S6big"]}
        path = f"/fixed/{size}"
        self.commands.setdefault(f"S6-{size}", " ".join(self.curl_cmd(
            Target("credproxy", "credproxy", "127.0.0.1:PROXY", token="$TOKEN"), path)))
        for p in t.pids():
            reset_peak(p)
        rss0 = t.rss("VmRSS")
        c0 = t.cpu()
        r = subprocess.run(pinned(LOAD_CORE, self.curl_cmd(t, path)), capture_output=True, text=True,
                           timeout=600, env=dict(os.environ, no_proxy="", NO_PROXY=""))
        c1 = t.cpu()
        try:
            code, n, total, _ = r.stdout.split()
        except ValueError:
            return {"error": r.stderr[-300:]}
        if code != "200" or int(n) != size:
            return {"error": f"status {code}, {n} bytes: {r.stderr[-200:]}"}
        out = {"gbps": size / float(total) / 1e9, "secs": float(total)}
        hwm = t.rss("VmHWM")
        if hwm is not None:
            out["peak_rss_mib"] = hwm / 1024
            out["rss_before_mib"] = (rss0 or 0) / 1024
        if c0 is not None:
            out["cpu_s_per_gib"] = (c1 - c0) / HZ / (size / (1 << 30))
        return out

    def s7(self, t):
        cmd = [self.benchkit, "sse", "--host", HOST, "--port", str(self.port), "--cacert", str(self.cacert),
               "--events", str(self.args.sse_events), "--interval-ms", "20"]
        if t.proxy:
            cmd += ["--proxy", t.proxy]
            if t.token:
                cmd += ["--token", t.token]
        if t.header:
            cmd += ["--header", f"x-api-key: {PLACEHOLDER}"]
        self.commands.setdefault("S7", " ".join(str(c) for c in cmd[:1]) + " sse --proxy PROXY --port PORT "
                                 f"--cacert CA --token $TOKEN --events {self.args.sse_events} --interval-ms 20 "
                                 f"--header 'x-api-key: {PLACEHOLDER}'")
        r = subprocess.run(pinned(LOAD_CORE, cmd), capture_output=True, text=True, timeout=120)
        try:
            j = json.loads(r.stdout)
        except Exception:
            return {"error": r.stderr[-300:]}
        gaps = j["gaps_ms"]
        return {"first_ms": j["first_ms"], "gap_p50_ms": pct(gaps, 50), "gap_p99_ms": pct(gaps, 99),
                "gap_max_ms": max(gaps) if gaps else None, "events": j["events"]}

    def s8(self, t):
        if not t.proxy:
            return {"skip": "n/a (no proxy process)"}
        if t.name == "credproxy-nocred":
            return {"skip": "same process as credproxy"}
        n = self.args.idle_conns
        cmd = [self.benchkit, "idle", "--host", HOST, "--n", str(n), "--port", str(self.port), "--cacert",
               str(self.cacert), "--proxy", t.proxy, "--concurrency", "32"]
        if t.token:
            cmd += ["--token", t.token]
        self.commands.setdefault("S8", f"benchkit idle --n {n} --proxy PROXY --port PORT --cacert CA --token $TOKEN")
        time.sleep(0.5)
        before = t.rss("VmRSS")
        p = subprocess.Popen(pinned(LOAD_CORE, cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        t0 = time.time()
        line = p.stdout.readline()
        setup_s = time.time() - t0
        time.sleep(0.5)
        after = t.rss("VmRSS")
        p.stdin.close()
        p.wait(timeout=60)
        time.sleep(1.0)  # let the proxy notice the closes before the next run
        m = re.match(r"READY (\d+)", line or "")
        if not m or before is None or after is None:
            return {"error": f"idle client: {line!r}"}
        ok = int(m.group(1))
        if ok == 0:
            return {"error": "no connection established"}
        return {"kib_per_conn": (after - before) / ok, "conns": ok, "setup_s": setup_s,
                "rss_before_mib": before / 1024, "rss_after_mib": after / 1024}

    def audit_counters(self):
        admin = getattr(self, "cp_admin", None)
        if not admin:
            return None
        import urllib.request
        try:
            text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=10).read().decode()
        except OSError:
            return None
        out = {}
        for line in text.splitlines():
            m = re.match(r"credproxy_audit_(records|fsyncs|commits)_total (\d+)", line)
            if m:
                out[m.group(1)] = int(m.group(2))
        return out

    def s9(self, t):
        # The spool is on in every credproxy row; S9 is the credential path at higher
        # concurrency (group commit shares one fsync among the requests waiting on it), with
        # the spool's own counters.
        if t.name != "credproxy":
            return {"skip": "n/a (credproxy's audit spool)" if t.kind != "peer" else "n/a (no durable audit)"}
        d = self.args.duration
        before = self.audit_counters()
        r = self.run_oha(t, "S9", "/fixed/1024", ["-z", f"{d}s", "-c", "64"])
        after = self.audit_counters()
        if before and after and after.get("fsyncs", 0) > before.get("fsyncs", 0):
            r["fsyncs_per_s"] = (after["fsyncs"] - before["fsyncs"]) / d
            r["records_per_fsync"] = (after["records"] - before["records"]) / (after["fsyncs"] - before["fsyncs"])
        return r

    # -------------------------------------------------------------- driver
    def scenario_list(self):
        want = [s.upper() for s in self.args.scenarios] or (
            ["S1", "S2", "S3", "S6", "S7", "S8"] if self.quick else ALL_SCENARIOS)
        jobs = []
        for s in want:
            if s == "S6":
                jobs.append(("S6-16MiB", lambda t: self.s6(t, 16 << 20)))
                if not self.quick:
                    jobs.append(("S6-1GiB", lambda t: self.s6(t, 1 << 30)))
            else:
                jobs.append((s, getattr(self, s.lower())))
        return jobs

    def run(self):
        runs = self.args.runs
        for name, fn in self.scenario_list():
            reps = 1 if name in ("S8", "S6-1GiB") and self.quick else runs
            if name == "S8":
                reps = min(reps, 2)
            log(f"== {name} ({reps} rounds x {len(self.targets)} targets)")
            res = {t.name: [] for t in self.targets}
            for i in range(reps):
                for t in self.targets:
                    if name in t.skip:
                        res[t.name] = [{"skip": t.skip[name]}]
                        continue
                    try:
                        r = fn(t)
                    except Exception as e:
                        r = {"error": repr(e)[:300]}
                    log(f"   {name} {t.name:18s} {json.dumps(r)}")
                    res[t.name].append(r)
            self.results[name] = res

    def summarize(self):
        return summarize(self.results)


def summarize(results):
    summ = {}
    for scen, per in results.items():
        summ[scen] = {}
        for tname, runs in per.items():
            good = [r for r in runs if "error" not in r and "skip" not in r]
            if not good:
                bad = next((r for r in runs), {})
                summ[scen][tname] = {"note": bad.get("skip") or ("error: " + str(bad.get("error")))}
                continue
            keys = sorted({k for r in good for k in r if isinstance(r[k], (int, float))})
            summ[scen][tname] = {k: med([r.get(k) for r in good]) for k in keys}
            summ[scen][tname]["runs"] = len(good)
    return summ




# ------------------------------------------------------------------ report

def machine_line():
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except Exception:
        pass
    mem = status = "?"
    try:
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) // 1024} MiB"
    except Exception:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {mem} RAM, {platform.system()} {platform.release()}"


def versions(b):
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except Exception:
            return "?"
    v = {
        "credproxy": out([b.credproxy, "--version"]),
        "oha": out([b.oha, "--version"]),
        "rustc": out(["rustc", "--version"]),
        "curl": out(["curl", "--version"]),
    }
    mitm = Path(b.args.mitm_venv) / "bin" / "mitmdump"
    if mitm.exists():
        v["mitmproxy"] = out([mitm, "--version"])
    sq = shutil.which("squid") or "/usr/sbin/squid"
    if Path(sq).exists():
        v["squid"] = out([sq, "-v"])
    try:
        v["git"] = out(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    except Exception:
        pass
    return v


def fmt(x, nd=1):
    if x is None:
        return "—"
    if isinstance(x, float):
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.{nd}f}"
    return str(x)


def ratio(a, b):
    if a is None or b in (None, 0):
        return "—"
    return f"{a / b:.2f}x"


def report(b, summ, meta):
    order = [t.name for t in b.targets]
    L = []
    L.append("# credproxy benchmarks\n")
    L.append("Generated by `bench/run` — do not edit by hand; see `bench/README.md`.\n")
    L.append(f"- Machine: {meta['machine']}")
    L.append(f"- Date: {meta['date']}; mode: {'quick' if b.quick else 'full'}; rounds per scenario: {b.args.runs} "
             f"(targets alternated A B C … per round; medians reported)")
    L.append(f"- Load average before / after: {meta['load_before']} / {meta['load_after']}")
    L.append(f"- Pinning: {'proxy/relays on core 0, load generator + upstream on core 1 (taskset)' if PIN else 'none (taskset unavailable or 1 core)'}")
    L.append("- Versions: " + "; ".join(f"{k}: `{v}`" for k, v in meta["versions"].items()))
    L.append("")
    L.append("**Read ratios, not absolute numbers.** The machine is shared (other builds run on the "
             "same 2 cores; see the load average), so absolute figures move by tens of percent "
             "between runs. Targets are measured alternately within one run, so the ratios between "
             "them are what this file is for.\n")
    L.append("Targets: " + "; ".join(f"**{t.name}** ({t.note})" for t in b.targets) + ".")
    for n in b.notes:
        L.append(f"\n- {n}")
    L.append("")

    def table(scen, title, cols, ratio_key=None, higher_better=True):
        if scen not in summ:
            return
        L.append(f"## {title}\n")
        head = ["target"] + [c[1] for c in cols]
        if ratio_key:
            head += ["vs direct", "vs TLS floor", "vs TCP floor"]
        L.append("| " + " | ".join(head) + " |")
        L.append("|" + "---|" * len(head))
        base = summ[scen]
        for tn in order:
            r = base.get(tn, {})
            if "note" in r:
                L.append(f"| {tn} | " + r["note"] + " |" + " |" * (len(head) - 2))
                continue
            row = [tn] + [fmt(r.get(col[0]), col[2] if len(col) > 2 else 1) for col in cols]
            if ratio_key:
                v = r.get(ratio_key)
                row += [ratio(v, base.get("direct", {}).get(ratio_key)),
                        ratio(v, base.get("floor-tls-relay", {}).get(ratio_key)),
                        ratio(v, base.get("floor-tcp-relay", {}).get(ratio_key))]
            L.append("| " + " | ".join(row) + " |")
        if scen in b.commands:
            L.append(f"\nCommand (credproxy row): `{b.commands[scen]}`\n")
        else:
            L.append("")

    table("S1", "S1 — keep-alive throughput, 1 KiB, c=16",
          [("ok_rps", "req/s"), ("p50_ms", "p50 ms", 2), ("p99_ms", "p99 ms", 2),
           ("cpu_us_per_req", "proxy CPU µs/req"), ("non2xx", "non-2xx", 0)], "ok_rps")
    if "S2" in summ:
        L.append(f"## S2 — open loop {b.args.rate} req/s, latency-corrected\n")
        L.append("| target | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | proxy CPU µs/req |")
        L.append("|---|---|---|---|---|---|---|")
        d = summ["S2"].get("direct", {})
        for tn in order:
            r = summ["S2"].get(tn, {})
            if "note" in r:
                L.append(f"| {tn} | {r['note']} | | | | | |")
                continue
            add50 = r["p50_ms"] - d["p50_ms"] if r.get("p50_ms") is not None and d.get("p50_ms") is not None else None
            add99 = r["p99_ms"] - d["p99_ms"] if r.get("p99_ms") is not None and d.get("p99_ms") is not None else None
            L.append(f"| {tn} | {fmt(r.get('p50_ms'), 3)} | {fmt(r.get('p99_ms'), 3)} | {fmt(r.get('p999_ms'), 3)} | "
                     f"{fmt(add50, 3)} | {fmt(add99, 3)} | {fmt(r.get('cpu_us_per_req'))} |")
        L.append(f"\nCommand (credproxy row): `{b.commands.get('S2', '')}`\n")
    table("S3", "S3 — new TLS connection per request (CONNECT + handshake + 1 KiB GET), c=8",
          [("ok_rps", "conn/s"), ("p50_ms", "p50 ms", 2), ("p99_ms", "p99 ms", 2),
           ("cpu_us_per_req", "proxy CPU µs/conn"), ("non2xx", "non-2xx", 0)], "ok_rps")
    table("S4", "S4 — cold leaf cache: new connection per request to one of 100 allowlisted names (leaf cache 64)",
          [("ok_rps", "conn/s"), ("p50_ms", "p50 ms", 2), ("p99_ms", "p99 ms", 2),
           ("cpu_us_per_req", "proxy CPU µs/conn")], "ok_rps")
    for key, title in (("S6-16MiB", "S6 — bulk 16 MiB body, scrubbing on (curl, one stream)"),
                       ("S6-1GiB", "S6 — bulk 1 GiB body, scrubbing on (curl, one stream)")):
        table(key, title, [("gbps", "GB/s", 2), ("peak_rss_mib", "peak RSS MiB"),
                           ("cpu_s_per_gib", "proxy CPU s/GiB", 2)], "gbps")
    if "S7" in summ:
        L.append(f"## S7 — SSE, {b.args.sse_events} events 20 ms apart (warm connection)\n")
        L.append("| target | first event ms | +vs direct ms | gap p50 ms | gap p99 ms | +gap p99 vs direct ms |")
        L.append("|---|---|---|---|---|---|")
        d = summ["S7"].get("direct", {})
        for tn in order:
            r = summ["S7"].get(tn, {})
            if "note" in r:
                L.append(f"| {tn} | {r['note']} | | | | |")
                continue
            f_add = r["first_ms"] - d["first_ms"] if r.get("first_ms") is not None and d.get("first_ms") is not None else None
            g_add = r["gap_p99_ms"] - d["gap_p99_ms"] if r.get("gap_p99_ms") is not None and d.get("gap_p99_ms") is not None else None
            L.append(f"| {tn} | {fmt(r.get('first_ms'), 2)} | {fmt(f_add, 2)} | {fmt(r.get('gap_p50_ms'), 2)} | "
                     f"{fmt(r.get('gap_p99_ms'), 2)} | {fmt(g_add, 2)} |")
        L.append(f"\nCommand: `{b.commands.get('S7', '')}`\n")
    table("S8", f"S8 — RSS per idle TLS connection ({b.args.idle_conns} connections, one request each, then idle)",
          [("kib_per_conn", "KiB/conn"), ("conns", "conns", 0), ("rss_after_mib", "RSS after MiB"),
           ("setup_s", "setup s", 1)])
    table("S9", "S9 — credential-bearing requests with the durable audit spool (fsync'd group commit), c=64",
          [("ok_rps", "req/s"), ("p99_ms", "p99 ms", 2), ("cpu_us_per_req", "proxy CPU µs/req", 0),
           ("fsyncs_per_s", "fsyncs/s", 0), ("records_per_fsync", "records per fsync", 1)])
    L.append("## Against the goals (docs: shared/reference/performance.md)\n")
    L.extend(goal_lines(summ))
    L.append("")
    L.append("## How to reproduce\n")
    L.append("```\nbench/run            # full run (tens of minutes)\nbench/run --quick    # ~2 min subset\n"
             "bench/run S1 S7      # chosen scenarios (report in bench/results/<stamp>.md)\n"
             "bench/callgrind --check   # instructions per request vs bench/callgrind-baseline.json\n```\n")
    L.append(f"Raw results of this run: `{meta['json_rel']}`.\n")
    extra = ROOT / "bench" / "NOTES.md"
    if extra.exists():
        L.append(extra.read_text())
    return "\n".join(L) + "\n"


def g(summ, scen, t, k):
    return summ.get(scen, {}).get(t, {}).get(k)


def goal_lines(summ):
    out = []

    def line(txt, ok):
        mark = "—" if ok is None else ("met" if ok else "**not met**")
        out.append(f"- {txt}: {mark}")

    cp, tls, mitm, sq = (g(summ, "S1", "credproxy", "ok_rps"), g(summ, "S1", "floor-tls-relay", "ok_rps"),
                         g(summ, "S1", "mitmproxy", "ok_rps"), g(summ, "S1", "squid", "ok_rps"))
    if cp and tls:
        line(f"S1 credproxy >= 70% of the TLS floor: {cp / tls:.0%}", cp / tls >= 0.7)
    if cp and mitm:
        line(f"S1 credproxy >= 20x mitmproxy: {cp / mitm:.1f}x", cp / mitm >= 20)
    if cp and sq:
        line(f"S1 credproxy above squid ssl-bump: {cp / sq:.2f}x", cp > sq)
    d50, d99 = g(summ, "S2", "direct", "p50_ms"), g(summ, "S2", "direct", "p99_ms")
    c50, c99 = g(summ, "S2", "credproxy", "p50_ms"), g(summ, "S2", "credproxy", "p99_ms")
    if None not in (d50, c50):
        line(f"S2 added p50 <= 0.15 ms: {c50 - d50:.3f} ms", c50 - d50 <= 0.15)
    if None not in (d99, c99):
        line(f"S2 added p99 <= 0.5 ms: {c99 - d99:.3f} ms", c99 - d99 <= 0.5)
    s3 = g(summ, "S3", "credproxy", "ok_rps")
    if s3:
        line(f"S3 >= 1,500 new TLS connections/s: {s3:,.0f}/s", s3 >= 1500)
    # S4 sends no placeholder (the credential is bound to one host), so it compares with S3
    # without one.
    s3n, s4n = g(summ, "S3", "credproxy-nocred", "ok_rps"), g(summ, "S4", "credproxy-nocred", "ok_rps")
    if s3n and s4n:
        line(f"S4 cold leaf cache no more than 2x slower than S3 (no credential in either): "
             f"{s3n / s4n:.2f}x slower", s3n / s4n <= 2)
    for key in ("S6-16MiB", "S6-1GiB"):
        gb, rss = g(summ, key, "credproxy", "gbps"), g(summ, key, "credproxy", "peak_rss_mib")
        if gb is not None:
            line(f"{key} >= 1 GB/s: {gb:.2f} GB/s", gb >= 1)
        if rss is not None:
            line(f"{key} peak RSS <= 64 MiB: {rss:.0f} MiB", rss <= 64)
    f, fd = g(summ, "S7", "credproxy", "first_ms"), g(summ, "S7", "direct", "first_ms")
    gp, gd = g(summ, "S7", "credproxy", "gap_p99_ms"), g(summ, "S7", "direct", "gap_p99_ms")
    if None not in (f, fd):
        line(f"S7 first event within +1 ms of direct: {f - fd:+.2f} ms", f - fd <= 1)
    if None not in (gp, gd):
        line(f"S7 inter-event gap p99 within +1 ms of direct: {gp - gd:+.2f} ms", gp - gd <= 1)
    k = g(summ, "S8", "credproxy", "kib_per_conn")
    if k is not None:
        line(f"S8 <= 48 KiB RSS per idle TLS connection: {k:.1f} KiB", k <= 48)
    r9 = g(summ, "S9", "credproxy", "ok_rps")
    if r9 is not None:
        line(f"S9 >= 5,000 credential-bearing req/s with fsync'd group commit: {r9:,.0f}/s", r9 >= 5000)
    return out


# Target notes for results files written before the notes were stored in them.
KNOWN_TARGETS = [
    ("direct", "direct", "client to the TLS upstream"),
    ("floor-tcp-relay", "floor", "CONNECT + byte copy"),
    ("floor-tls-relay", "floor", "TLS in (minted leaf) / verified TLS out, no HTTP parsing"),
    ("credproxy", "credproxy", "credential injected into x-api-key, response scrubbing on"),
    ("credproxy-nocred", "credproxy", "same process, request without a placeholder"),
    ("mitmproxy", "peer", "mitmproxy 11 + header-substitution/scrub addon (buffers bodies)"),
    ("squid", "peer", "squid 5 ssl-bump, header replaced via request_header_access/add; no body "
                      "scrubbing (needs ICAP/eCAP)"),
]


PUBLISHED_JSON = ROOT / "bench" / "BENCHMARKS.json"


def publish_json(path, meta):
    """bench/results/ is not tracked; the run behind BENCHMARKS.md is kept beside it."""
    if path.resolve() != PUBLISHED_JSON.resolve():
        shutil.copyfile(path, PUBLISHED_JSON)
    meta["json_rel"] = str(PUBLISHED_JSON.relative_to(ROOT))


def report_from(path, publish):
    """Rebuilds the report of a finished run from its JSON: the same tables, no measuring."""
    from types import SimpleNamespace
    j = json.loads(path.read_text())
    meta, runs = j["meta"], j["runs"]
    # Runs made before S4 skipped the credential row recorded its (correct) 403s as errors.
    if "credproxy" in runs.get("S4", {}):
        runs["S4"]["credproxy"] = [{"skip": S4_CRED_SKIP}]
        cmd = j.get("commands", {}).get("S4")
        if cmd:
            j["commands"]["S4"] = cmd.replace(f"-H x-api-key: {PLACEHOLDER} ", "")
    present = {t for per in runs.values() for t in per}
    targets = [SimpleNamespace(**t) for t in meta.get("targets", [])] or [
        SimpleNamespace(name=n, kind=k, note=note) for n, k, note in KNOWN_TARGETS if n in present]
    args = SimpleNamespace(**meta["args"])
    b = SimpleNamespace(args=args, quick=args.quick, targets=targets, commands=j.get("commands", {}),
                        notes=j.get("notes", []), results=runs)
    partial = bool(args.scenarios or args.targets or args.no_mitm or args.no_squid)
    out = path.with_suffix(".md") if partial and not publish else ROOT / "BENCHMARKS.md"
    if out.name == "BENCHMARKS.md":
        publish_json(path, meta)
    out.write_text(report(b, summarize(runs), meta))
    log(f"wrote {out} from {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenarios", nargs="*")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--rate", type=int)
    ap.add_argument("--idle-conns", type=int)
    ap.add_argument("--sse-events", type=int)
    ap.add_argument("--targets", help="comma-separated subset of target names")
    ap.add_argument("--no-mitm", action="store_true")
    ap.add_argument("--no-squid", action="store_true")
    ap.add_argument("--no-report", action="store_true", help="write no Markdown report")
    ap.add_argument("--publish", action="store_true",
                    help="write BENCHMARKS.md even for a subset of scenarios/targets")
    ap.add_argument("--benchkit")
    ap.add_argument("--credproxy")
    ap.add_argument("--oha")
    ap.add_argument("--mitm-venv", default=str(ROOT / ".cache" / "mitm-venv"))
    ap.add_argument("--report-from", metavar="JSON",
                    help="regenerate the Markdown report from a results file (no measuring)")
    a = ap.parse_args()
    if a.report_from:
        return report_from(Path(a.report_from), a.publish)
    q = a.quick
    a.runs = a.runs or (2 if q else 5)
    a.duration = a.duration or (1.5 if q else 5)
    a.rate = a.rate or 1000
    a.idle_conns = a.idle_conns or (1000 if q else 5000)
    # A gap p99 over 50 events is nearly the maximum; the full run takes 200 per stream.
    a.sse_events = a.sse_events or (50 if q else 200)
    sys.path.insert(0, str(ROOT / "bench" / "peers"))
    b = Bench(a)
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    t0 = time.time()
    try:
        b.setup()
        log("targets: " + ", ".join(f"{t.name}={t.proxy or '-'}" for t in b.targets))
        b.run()
    finally:
        stop_all()
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    summ = b.summarize()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    resdir = ROOT / "bench" / "results"
    resdir.mkdir(exist_ok=True)
    jpath = resdir / f"{stamp}{'-quick' if q else ''}.json"
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_line(), "load_before": load_before, "load_after": load_after,
        "versions": versions(b), "json_rel": str(jpath.relative_to(ROOT)),
        "wall_s": round(time.time() - t0, 1), "pinned": PIN,
        "args": {k: v for k, v in vars(a).items()},
    }
    meta["targets"] = [{"name": t.name, "kind": t.kind, "note": t.note} for t in b.targets]
    jpath.write_text(json.dumps({"meta": meta, "summary": summ, "runs": b.results,
                                 "commands": b.commands, "notes": b.notes}, indent=1, default=str))
    (resdir / "latest.json").write_text(jpath.read_text())
    log(f"results: {jpath} ({meta['wall_s']} s)")
    if not a.no_report:
        # Only a run of every scenario against every target regenerates BENCHMARKS.md; a
        # subset writes its report next to its JSON so the published tables stay whole.
        partial = bool(a.scenarios or a.targets or a.no_mitm or a.no_squid)
        out = resdir / f"{stamp}.md" if partial and not a.publish else ROOT / "BENCHMARKS.md"
        if out.name == "BENCHMARKS.md":
            publish_json(jpath, meta)
        text = report(b, summ, meta)
        if out.name == "BENCHMARKS.md" and out.exists():
            # Keep the section bench/soak writes (a separate, 30-minute run).
            old = out.read_text()
            begin, end = "<!-- soak:begin -->", "<!-- soak:end -->"
            if begin in old and end in old:
                soak = begin + old.split(begin, 1)[1].split(end, 1)[0] + end
                text = text.rstrip("\n") + "\n\n" + soak + "\n"
        out.write_text(text)
        log(f"wrote {out}")
    shutil.rmtree(b.state, ignore_errors=True)


if __name__ == "__main__":
    main()
