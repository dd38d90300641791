"""Start squid (squid-openssl) in ssl-bump mode as a benchmark peer."""
import os
import shutil
import subprocess
import time
from pathlib import Path

CERTGEN_CANDIDATES = ["/usr/lib/squid/security_file_certgen", "/usr/lib64/squid/security_file_certgen"]


def start_squid(bench, squid):
    import sys
    o = sys.modules["__main__"]  # orchestrate.py: spawn/free_port/wait_port/SECRET

    certgen = next((c for c in CERTGEN_CANDIDATES if Path(c).exists()), None)
    if certgen is None:
        raise RuntimeError("security_file_certgen missing (needs squid-openssl)")
    d = bench.state / "squid"
    d.mkdir()
    os.chmod(bench.state, 0o755)
    subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-days", "30", "-nodes", "-x509",
                    "-subj", "/CN=credproxy-bench squid CA", "-keyout", d / "ca.key", "-out", d / "ca.pem"],
                   check=True, capture_output=True)
    subprocess.run([certgen, "-c", "-s", d / "ssldb", "-M", "16MB"], check=True, capture_output=True)
    (d / "hosts").write_text("127.0.0.1 api.example.test localhost\n" +
                             "".join(f"127.0.0.1 s4-{i}.example.test\n" for i in range(256)))
    up_ca = d / "upstream-ca.pem"
    shutil.copy(bench.up_ca, up_ca)
    port = o.free_port()
    conf = (Path(__file__).with_name("squid.conf.in").read_text()
            .replace("@PORT@", str(port)).replace("@DIR@", str(d)).replace("@CERTGEN@", certgen)
            .replace("@UPSTREAM_CA@", str(up_ca)).replace("@SECRET@", o.SECRET))
    (d / "squid.conf").write_text(conf)
    subprocess.run(["chown", "-R", "proxy:proxy", d], check=False)
    os.chmod(d, 0o755)
    chk = subprocess.run([squid, "-k", "parse", "-f", d / "squid.conf"], capture_output=True, text=True)
    if chk.returncode != 0:
        raise RuntimeError("config rejected: " + (chk.stderr or chk.stdout)[-300:])
    p = o.spawn([squid, "-N", "-f", d / "squid.conf"], o.PROXY_CORE,
                stderr=open(bench.state / "squid.stderr", "w"))
    o.wait_port(f"127.0.0.1:{port}", timeout=30, proc=p)
    time.sleep(0.5)
    return (f"127.0.0.1:{port}", p.pid, d / "ca.pem",
            "squid 5 ssl-bump, header replaced via request_header_access/add; no body scrubbing (needs ICAP/eCAP)")
