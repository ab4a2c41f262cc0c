"""An idle agent's resident memory per configuration, and which big optional modules it loaded.

```sh
.venv/bin/python bench/agent_rss.py                 # none, none + keyring, kernel (root: in a netns it creates)
.venv/bin/python bench/agent_rss.py --settle 5 --json /tmp/rss.json
```

Starts one ``meshnet-agent run`` at a time on loopback (``--profile local``, no peers), waits until its
API answers, lets it idle ``--settle`` seconds, then reads ``VmRSS`` from ``/proc/PID/status`` and the
``debug.optional_modules_loaded`` field of ``GET /v1/agent`` (cryptography, dns.message, pyroute2,
netaddr), and stops it with SIGTERM. Configurations: ``--dataplane none`` without and with a keyring, and
``--dataplane kernel`` in a network namespace this script creates and deletes (root only, else n/a).
Reference, in the same run with the same interpreter: a process that imports only trio, and a bare one.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
AGENT = str(BIN / "meshnet-agent")


def vmrss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def api_get(sock_path: Path, path: str) -> dict | None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(sock_path))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n".encode())
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
    except OSError:
        return None
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return None
    return json.loads(body)


def reference(code: str) -> int:
    """VmRSS (KiB) of this interpreter after running ``code``."""
    prog = (
        code
        + "\nimport sys\nprint([l for l in open('/proc/self/status') if l.startswith('VmRSS:')][0].split()[1])"
    )
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout.strip())


def run_agent(
    work: Path, label: str, argv_extra: list[str], bind: str, settle: float, prefix: list[str]
) -> dict:
    api = work / f"{label}.sock"
    log = work / f"{label}.log"
    argv = [*prefix, AGENT, "run", "--name", label, "--bind", bind, "--api", str(api)]
    argv += ["--state-dir", str(work / f"{label}.state"), "--profile", "local", *argv_extra]
    with log.open("wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        info = None
        while time.monotonic() < deadline and proc.poll() is None:
            info = api_get(api, "/v1/agent")
            if info is not None:
                break
            time.sleep(0.1)
        if info is None:
            raise RuntimeError(
                f"agent {label} did not answer (rc {proc.poll()}):\n{log.read_text(errors='replace')}"
            )
        time.sleep(settle)
        rss = vmrss_kib(proc.pid)
        info = api_get(api, "/v1/agent") or info
        return {"rss_kib": rss, "modules": info.get("debug", {}).get("optional_modules_loaded", "n/a")}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settle", type=float, default=3.0, help="idle seconds before reading VmRSS (3)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    results: dict[str, dict] = {}
    base = reference("pass")
    trio_ref = reference("import trio")
    print(f"reference  bare interpreter          {base / 1024:6.1f} MiB")
    print(f"reference  import trio               {trio_ref / 1024:6.1f} MiB")
    results["ref_bare"] = {"rss_kib": base}
    results["ref_trio"] = {"rss_kib": trio_ref}

    with tempfile.TemporaryDirectory(prefix="agent-rss-") as tmp:
        work = Path(tmp)
        keyring = work / "keyring.json"
        keyring.write_text(json.dumps([base64.b64encode(os.urandom(32)).decode()]))
        configs = [
            ("none", ["--dataplane", "none"], "127.0.3.1:0", []),
            ("none+keyring", ["--dataplane", "none", "--keyring", str(keyring)], "127.0.3.2:0", []),
        ]
        netns = f"mn-rss-{os.getpid()}"
        if os.geteuid() == 0:
            subprocess.run(["ip", "netns", "add", netns], check=True)
            subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
            configs.append(
                (
                    "kernel",
                    ["--dataplane", "kernel", "--netns-prefix", "rss-"],
                    "127.0.0.1:0",
                    ["ip", "netns", "exec", netns],
                )
            )
        try:
            for label, extra, bind, prefix in configs:
                r = run_agent(work, label, extra, bind, args.settle, prefix)
                results[label] = r
                print(
                    f"agent      {label:<24} {r['rss_kib'] / 1024:6.1f} MiB  "
                    f"({r['rss_kib'] / trio_ref:.2f}x trio-only)  optional modules: {', '.join(r['modules']) or '-'}"
                )
        finally:
            if os.geteuid() == 0:
                subprocess.run(["ip", "netns", "del", netns], check=False)
        if os.geteuid() != 0:
            print("agent      kernel                      n/a (needs root for a network namespace)")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
