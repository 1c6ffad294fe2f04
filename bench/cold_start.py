"""Benchmark: a newcomer's first `make run`, from a fresh clone to the first healthy answer.

    python3 bench/cold_start.py [--ref HEAD] [--runs 1] [--warm] [--port 0]

For each run: clones this repository at --ref into a temporary directory, then
1. times `make install` alone in that clone;
2. in a second fresh clone, times `make run` (embedded PostgreSQL, DATABASE_URL and REDIS_URL
   unset) until `GET /healthz` answers 200, then stops the server (SIGINT to its process
   group) and waits for it and its embedded PostgreSQL to exit.
Cold (the default) means empty pip, uv and pip-audit caches (fresh directories under the
temporary one), as on a new machine; --warm uses this user's caches. Needs only Python (the
standard library) and git, so it can measure a ref whose Makefile differs from this one:
`python3 bench/cold_start.py --ref main` and `--ref HEAD` on the same machine compare them.
Prints wall-clock and CPU seconds (of the processes make waited for) per measurement, and a
summary; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEALTH_DEADLINE_S = 900.0


def clone(ref: str, into: Path) -> Path:
    checkout = into / "atlas"
    subprocess.run(["git", "clone", "--quiet", "--no-local", str(ROOT), str(checkout)], check=True)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", ref], check=True, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(["git", "-C", str(checkout), "checkout", "--quiet", commit], check=True)
    return checkout


def child_env(scratch: Path, *, warm: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.pop("VIRTUAL_ENV", None)
    if not warm:
        env["PIP_CACHE_DIR"] = str(scratch / "cache" / "pip")
        env["UV_CACHE_DIR"] = str(scratch / "cache" / "uv")
        env["XDG_CACHE_HOME"] = str(scratch / "cache" / "xdg")
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop_embedded_postgres(checkout: Path) -> None:
    """Stop the embedded PostgreSQL the run started if it outlived the server (by its pid)."""
    pid_file = checkout / ".atlas" / "pgdata" / "postmaster.pid"
    if not pid_file.exists():
        return
    with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)


def children_cpu() -> float:
    """CPU seconds of the waited-for descendants so far: less sensitive to a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_install(ref: str, *, warm: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="atlas-cold-") as scratch:
        checkout = clone(ref, Path(scratch))
        cpu, started = children_cpu(), time.perf_counter()
        subprocess.run(
            ["make", "install"],
            cwd=checkout,
            env=child_env(Path(scratch), warm=warm),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return time.perf_counter() - started, children_cpu() - cpu


def time_run(ref: str, *, warm: bool, port: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="atlas-cold-") as scratch:
        checkout = clone(ref, Path(scratch))
        port = port or free_port()
        log = (Path(scratch) / "make-run.log").open("wb")
        cpu, started = children_cpu(), time.perf_counter()
        server = subprocess.Popen(
            ["make", "run", f"ARGS=--port {port}"],
            cwd=checkout,
            env=child_env(Path(scratch), warm=warm),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while not healthy(port):
                if server.poll() is not None:
                    log.close()
                    tail = (Path(scratch) / "make-run.log").read_text(errors="replace")[-2000:]
                    raise SystemExit(f"make run exited with {server.returncode}:\n{tail}")
                if time.perf_counter() - started > HEALTH_DEADLINE_S:
                    raise SystemExit(f"no healthy answer within {HEALTH_DEADLINE_S:.0f} s")
                time.sleep(0.1)  # polling the endpoint is the measurement itself
            elapsed = time.perf_counter() - started
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            stop_embedded_postgres(checkout)
            log.close()
        # The CPU figure includes the server's shutdown (make waits for it), not PostgreSQL's.
        return elapsed, children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD", help="git ref of this repository to measure")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--warm", action="store_true", help="keep this user's package caches")
    parser.add_argument("--port", type=int, default=0, help="port for make run (0: any free)")
    parser.add_argument("--skip-install", action="store_true", help="only time make run")
    args = parser.parse_args()

    label = f"{args.ref} ({'warm' if args.warm else 'cold'} caches)"
    installs: list[tuple[float, float]] = []
    runs: list[tuple[float, float]] = []
    for attempt in range(1, args.runs + 1):
        load = os.getloadavg()[0]
        if not args.skip_install:
            installs.append(time_install(args.ref, warm=args.warm))
            wall, cpu = installs[-1]
            print(f"{label} run {attempt}: make install {wall:.1f} s (CPU {cpu:.1f} s)", flush=True)
        runs.append(time_run(args.ref, warm=args.warm, port=args.port))
        wall, cpu = runs[-1]
        print(
            f"{label} run {attempt}: make run -> /healthz 200 {wall:.1f} s (CPU {cpu:.1f} s; "
            f"load average {load:.1f} at the start)",
            flush=True,
        )
    if installs:
        print(
            f"{label}: make install median {statistics.median(w for w, _ in installs):.1f} s "
            f"(CPU {statistics.median(c for _, c in installs):.1f} s)"
        )
    print(
        f"{label}: make run to first healthy answer median "
        f"{statistics.median(w for w, _ in runs):.1f} s "
        f"(CPU {statistics.median(c for _, c in runs):.1f} s)"
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
