"""The locked dependency set: write the lock files, check them against pyproject.toml, audit them.

    python3 scripts/deps.py lock [UV_COMPILE_ARGS...]     # `make lock` (UV names the uv binary)
    python3 scripts/deps.py check                        # `make check-lock`, before any install
    .venv/bin/python scripts/deps.py audit [PIP_AUDIT_ARGS...]   # `make audit`

requirements-dev.lock pins the whole tested set (the package, every extra, the `env` group);
requirements.lock pins the server alone, taken from the same resolution, so its pins are the
dev lock's. Both carry a fingerprint of the pyproject.toml tables they were made from; `check`
refuses a lock whose fingerprint differs (frozen installs never re-resolve). Standard library
only: `check` runs before any environment exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The bare interpreter runs this before any environment exists: say what is wrong with it.
if sys.version_info < (3, 11):  # noqa: UP036
    sys.exit(f"ATLAS needs Python >= 3.11; {sys.executable} is {sys.version.split()[0]}")

import tomllib

ROOT = Path(__file__).resolve().parents[1]
RUN_LOCK = "requirements.lock"
DEV_LOCK = "requirements-dev.lock"
FINGERPRINT_PREFIX = "# pyproject-sha256: "
STALE_HINT = "run `make lock` and commit requirements.lock and requirements-dev.lock"
# Only releases at least this old are locked: a release gets a week to be yanked or flagged
# before it lands here, and package mirrors have caught up with it by then.
COOLDOWN = "7 days"
MIN_PYTHON = "3.11"

# Statuses of `audit`: 1 is pip-audit's own "vulnerabilities found".
AUDIT_CLEAN = 0
AUDIT_VULNERABLE = 1
AUDIT_NOT_DONE = 3
NETWORK_ERROR = re.compile(
    r"ConnectionError|ProxyError|ConnectTimeout|ReadTimeout|NameResolutionError|"
    r"Max retries exceeded|Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|Connection refused|SSLError",
)


def lock_inputs(pyproject: Path) -> dict[str, Any]:
    """The parts of pyproject.toml a lock is made from, order-insensitive."""
    data = tomllib.loads(pyproject.read_text())
    project = data.get("project", {})
    return {
        "requires-python": project.get("requires-python"),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {
            extra: sorted(requirements)
            for extra, requirements in sorted(project.get("optional-dependencies", {}).items())
        },
        "dependency-groups": {
            group: sorted(map(str, requirements))
            for group, requirements in sorted(data.get("dependency-groups", {}).items())
        },
    }


def fingerprint(pyproject: Path) -> str:
    canonical = json.dumps(lock_inputs(pyproject), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def recorded_fingerprint(lock: Path) -> str | None:
    for line in lock.read_text().splitlines():
        if line.startswith(FINGERPRINT_PREFIX):
            return line.removeprefix(FINGERPRINT_PREFIX).strip()
    return None


def stale_locks(root: Path) -> list[str]:
    """The lock files that are missing or were not made from this pyproject.toml."""
    expected = fingerprint(root / "pyproject.toml")
    return [
        name
        for name in (RUN_LOCK, DEV_LOCK)
        if not (root / name).exists() or recorded_fingerprint(root / name) != expected
    ]


def check(root: Path = ROOT) -> int:
    stale = stale_locks(root)
    if not stale:
        return 0
    missing = [name for name in stale if not (root / name).exists()]
    names = " and ".join(stale)
    problem = (
        f"{' and '.join(missing)} missing"
        if missing
        else f"{names} do{'es' if len(stale) == 1 else ''} not match the dependencies in "
        "pyproject.toml"
    )
    print(f"{problem}: {STALE_HINT}", file=sys.stderr)
    return 1


def compile_lock(uv: str, root: Path, output: str, selection: list[str], extra: list[str]) -> None:
    command = [
        uv,
        "pip",
        "compile",
        "pyproject.toml",
        *selection,
        "--group",
        "env",
        "--universal",
        "--python-version",
        MIN_PYTHON,
        "--generate-hashes",
        "--exclude-newer",
        COOLDOWN,
        "--custom-compile-command",
        "make lock",
        "--quiet",
        "--output-file",
        output,
        *extra,
    ]
    if subprocess.run(command, cwd=root).returncode != 0:
        # uv has said why; the lock files are left as they were.
        sys.exit(f"`make lock` could not resolve {output}: see uv's message above")
    lock = root / output
    header = f"{FINGERPRINT_PREFIX}{fingerprint(root / 'pyproject.toml')}\n"
    lock.write_text(header + lock.read_text())


def write_locks(uv: str, root: Path, extra: list[str]) -> int:
    """Resolve the dev set, then take the server's pins from it (the dev lock constrains it)."""
    compile_lock(uv, root, DEV_LOCK, ["--all-extras"], extra)
    compile_lock(uv, root, RUN_LOCK, ["--constraints", DEV_LOCK], extra)
    print(f"wrote {RUN_LOCK} and {DEV_LOCK}: commit them with pyproject.toml")
    return 0


@dataclass(frozen=True)
class AuditVerdict:
    status: int
    message: str


def judge_audit(report: dict[str, Any] | None, stderr: str, lock: str) -> AuditVerdict:
    """Turn pip-audit's JSON report (None when it wrote none) into a verdict nobody can misread:
    a package that could not be checked is never counted as clean."""
    if report is None:
        errors = [line for line in stderr.splitlines() if line.strip()]
        reason = errors[-1].strip() if errors else "no output"
        if NETWORK_ERROR.search(stderr):
            return AuditVerdict(
                AUDIT_NOT_DONE,
                "AUDIT NOT DONE: the vulnerability database is unreachable from this machine, "
                f"so no package of {lock} was checked. This is not a clean result.\n"
                f"  cause: {reason}",
            )
        return AuditVerdict(
            AUDIT_NOT_DONE,
            f"AUDIT NOT DONE: pip-audit failed before checking {lock}. "
            f"This is not a clean result.\n  cause: {reason}",
        )
    dependencies = report.get("dependencies", [])
    skipped = [d for d in dependencies if d.get("skip_reason")]
    vulnerable = [d for d in dependencies if d.get("vulns")]
    checked = len(dependencies) - len(skipped)
    lines: list[str] = []
    for dependency in vulnerable:
        for vuln in dependency["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
            lines.append(f"  {dependency['name']} {dependency['version']}: {vuln['id']} ({fixed})")
    if skipped and not checked:
        lines.append(
            f"AUDIT NOT DONE: the vulnerability database answered for none of the "
            f"{len(dependencies)} packages of {lock} (unreachable or blocked from this "
            "machine); nothing is known about them. This is not a clean result."
        )
    elif skipped:
        lines.append(
            f"AUDIT INCOMPLETE: {len(skipped)} of {len(dependencies)} packages of {lock} could "
            "not be checked (the vulnerability database did not answer for them); nothing is "
            "known about those. This is not a clean result."
        )
    if skipped:
        lines.append(f"  first: {skipped[0]['skip_reason']}")
    if vulnerable:
        count = sum(len(d["vulns"]) for d in vulnerable)
        lines.insert(0, f"{count} known vulnerabilities in {len(vulnerable)} packages of {lock}:")
        return AuditVerdict(AUDIT_VULNERABLE, "\n".join(lines))
    if skipped:
        return AuditVerdict(AUDIT_NOT_DONE, "\n".join(lines))
    return AuditVerdict(
        AUDIT_CLEAN, f"No known vulnerabilities in the {checked} packages of {lock}."
    )


def audit(root: Path, extra: list[str]) -> int:
    lock = DEV_LOCK  # the superset: every package any environment installs
    with tempfile.TemporaryDirectory() as scratch:
        report_path = Path(scratch) / "report.json"
        command = [
            sys.executable,
            "-m",
            "pip_audit",
            "--requirement",
            lock,
            "--require-hashes",
            "--disable-pip",
            "--progress-spinner",
            "off",
            "--format",
            "json",
            "--output",
            str(report_path),
            *extra,
        ]
        completed = subprocess.run(command, cwd=root, capture_output=True, text=True)
        report = json.loads(report_path.read_text()) if report_path.exists() else None
    verdict = judge_audit(report, completed.stderr, lock)
    print(verdict.message, file=sys.stdout if verdict.status == AUDIT_CLEAN else sys.stderr)
    return verdict.status


def main(argv: list[str]) -> int:
    command, extra = (argv[0], argv[1:]) if argv else ("", [])
    if command == "check":
        return check()
    if command == "lock":
        return write_locks(os.environ.get("UV", "uv"), ROOT, extra)
    if command == "audit":
        return audit(ROOT, extra)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
