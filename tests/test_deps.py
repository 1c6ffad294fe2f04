"""The locked dependency set: the lock files, their freshness check and `make audit`."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "deps.py"
PIN = re.compile(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", re.MULTILINE)


def load_deps() -> ModuleType:
    spec = importlib.util.spec_from_file_location("atlas_deps_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


deps = load_deps()


def pins(lock: Path) -> dict[str, str]:
    return dict(PIN.findall(lock.read_text()))


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "deps.py"), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """pyproject.toml, both lock files and the script, as a clone has them."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "deps.py")
    for name in ("pyproject.toml", "requirements.lock", "requirements-dev.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


class TestLockFiles:
    def test_the_server_lock_is_the_dev_lock_minus_the_dev_tools(self) -> None:
        server, dev = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-dev.lock")
        assert {"strawberry-graphql", "sqlalchemy", "pip"} <= server.keys()
        assert {"pytest", "mypy", "ruff", "pip-audit"}.isdisjoint(server)
        assert {name: dev.get(name) for name in server} == server

    @pytest.mark.parametrize("name", ["requirements.lock", "requirements-dev.lock"])
    def test_every_pin_is_hashed_and_no_download_address_is_recorded(self, name: str) -> None:
        text = (ROOT / name).read_text()
        entries = re.split(r"\n(?=[a-z0-9])", text.split("\n", 3)[3])
        assert len(entries) == len(pins(ROOT / name)) > 10
        assert all("--hash=sha256:" in entry for entry in entries)
        # Installs follow whatever index the machine is configured for.
        assert "://" not in text
        assert "--index-url" not in text

    @pytest.mark.parametrize("name", ["requirements.lock", "requirements-dev.lock"])
    def test_the_environment_gets_a_current_pip_and_no_old_setuptools(self, name: str) -> None:
        locked = pins(ROOT / name)
        assert tuple(map(int, locked["pip"].split(".")[:2])) >= (25, 3)
        # Nothing needs setuptools (the package builds with uv_build); if a dependency ever
        # brings it, it must be past 78.1.1, the last release with a published advisory.
        if "setuptools" in locked:
            assert tuple(map(int, locked["setuptools"].split(".")[:3])) >= (78, 1, 1)


class TestCheck:
    def test_the_committed_locks_match_pyproject(self, project_copy: Path) -> None:
        result = run_check(project_copy)
        assert (result.returncode, result.stderr) == (0, "")

    def test_a_dependency_added_without_relocking_says_run_make_lock(
        self, project_copy: Path
    ) -> None:
        pyproject = project_copy / "pyproject.toml"
        pyproject.write_text(
            pyproject.read_text().replace(
                "dependencies = [\n", 'dependencies = [\n    "prometheus-client>=0.20",\n', 1
            )
        )
        result = run_check(project_copy)
        assert result.returncode == 1
        assert "do not match the dependencies in pyproject.toml" in result.stderr
        assert "run `make lock`" in result.stderr

    def test_a_dev_extra_or_group_change_is_caught_too(self, project_copy: Path) -> None:
        pyproject = project_copy / "pyproject.toml"
        pyproject.write_text(
            pyproject.read_text().replace(
                '"pip-audit>=2.9",', '"pip-audit>=2.9",\n    "hypothesis",'
            )
        )
        assert run_check(project_copy).returncode == 1

    def test_other_tables_and_the_order_of_dependencies_do_not_matter(
        self, project_copy: Path
    ) -> None:
        pyproject = project_copy / "pyproject.toml"
        text = pyproject.read_text().replace("line-length = 100", "line-length = 99")
        text = text.replace(
            '    "starlette>=0.40",\n    "uvicorn[standard]>=0.30",\n',
            '    "uvicorn[standard]>=0.30",\n    "starlette>=0.40",\n',
        )
        assert text != pyproject.read_text()
        pyproject.write_text(text)
        assert run_check(project_copy).returncode == 0

    def test_a_missing_lock_is_named(self, project_copy: Path) -> None:
        (project_copy / "requirements.lock").unlink()
        result = run_check(project_copy)
        assert result.returncode == 1
        assert result.stderr.startswith("requirements.lock missing: run `make lock`")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestAudit:
    def test_an_unreachable_database_is_reported_as_no_result(self, tmp_path: Path) -> None:
        # Every request goes through a proxy that refuses connections: the network is down.
        proxy = f"http://127.0.0.1:{closed_port()}"
        env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
        env |= {"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "https_proxy": proxy}
        env["http_proxy"] = proxy
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "audit", "--cache-dir", str(tmp_path / "cache")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        output = result.stdout + result.stderr
        assert result.returncode == deps.AUDIT_NOT_DONE == 3
        assert "AUDIT NOT DONE: the vulnerability database is unreachable" in output
        assert "not a clean result" in output
        assert "No known vulnerabilities" not in output

    def test_packages_the_database_did_not_answer_for_are_not_clean(self) -> None:
        report = {
            "dependencies": [
                {"name": "alembic", "skip_reason": "Dependency not found on PyPI: alembic"},
                {"name": "anyio", "version": "4.16.0", "vulns": []},
            ]
        }
        verdict = deps.judge_audit(report, "", "requirements-dev.lock")
        assert verdict.status == deps.AUDIT_NOT_DONE
        assert "AUDIT INCOMPLETE: 1 of 2 packages" in verdict.message
        assert "No known vulnerabilities" not in verdict.message

    def test_a_database_that_answers_for_nothing_is_no_result(self) -> None:
        # What this machine sees: the registry's per-release API answers 404 for everything.
        report = {
            "dependencies": [
                {"name": name, "skip_reason": f"Dependency not found on PyPI: {name}"}
                for name in ("alembic", "anyio")
            ]
        }
        verdict = deps.judge_audit(report, "", "requirements-dev.lock")
        assert verdict.status == deps.AUDIT_NOT_DONE
        assert verdict.message.startswith(
            "AUDIT NOT DONE: the vulnerability database answered for none of the 2 packages"
        )
        assert "No known vulnerabilities" not in verdict.message

    def test_vulnerabilities_are_listed_with_their_fixes(self) -> None:
        report = {
            "dependencies": [
                {
                    "name": "setuptools",
                    "version": "65.5.0",
                    "vulns": [{"id": "PYSEC-2022-43012", "fix_versions": ["65.5.1"]}],
                },
                {"name": "pip", "skip_reason": "not found"},
            ]
        }
        verdict = deps.judge_audit(report, "", "requirements-dev.lock")
        assert verdict.status == deps.AUDIT_VULNERABLE
        assert "setuptools 65.5.0: PYSEC-2022-43012 (65.5.1)" in verdict.message
        assert "AUDIT INCOMPLETE: 1 of 2" in verdict.message

    def test_a_full_answer_without_findings_is_clean(self) -> None:
        report = {"dependencies": [{"name": "anyio", "version": "4.16.0", "vulns": []}]}
        verdict = deps.judge_audit(report, "", "requirements-dev.lock")
        assert verdict.status == deps.AUDIT_CLEAN
        assert (
            verdict.message
            == "No known vulnerabilities in the 1 packages of requirements-dev.lock."
        )

    def test_a_tool_failure_is_not_mistaken_for_a_network_outage(self) -> None:
        verdict = deps.judge_audit(None, "Traceback ...\nValueError: bad requirement", "x.lock")
        assert verdict.status == deps.AUDIT_NOT_DONE
        assert "pip-audit failed" in verdict.message
        assert "ValueError: bad requirement" in verdict.message
