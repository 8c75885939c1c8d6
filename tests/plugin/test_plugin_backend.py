"""A backend of another distribution passes the exported contract suite (SPEC 5).

tests/plugin_backend/ is that distribution: the ``extjson`` backend, declared in its
pyproject.toml under the entry-point group ``ccr_registry.backends``, and its pytest plugin
answering ``pytest_ccr_backends``. It is made visible to a child interpreter as an installed
distribution is: a ``.dist-info`` directory with the entry points of its pyproject.toml, on a
PYTHONPATH next to its source (no .pth file, nothing installed into the shared environment, no
build tools or network needed). The child runs pytest as the third party would.
"""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from xml.etree import ElementTree

import registry.testing.contract

DISTRIBUTION = Path(__file__).resolve().parent.parent / "plugin_backend"
# The contract suite runs each of its backend tests once on the one backend (710 when written);
# fewer passed than this means the suite did not run (an empty or a partial collection).
MIN_TESTS = 700


def _site(tmp_path: Path) -> dict[str, str]:
    """An environment in which the distribution of tests/plugin_backend/ is installed."""
    project = tomllib.loads((DISTRIBUTION / "pyproject.toml").read_text())["project"]
    name = project["name"].replace("-", "_")
    dist_info = tmp_path / "site" / f"{name}-{project['version']}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines.extend(f"{key} = {value}" for key, value in entries.items())
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), str(DISTRIBUTION)])
    return env


def _python(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=1800
    )


def test_an_installed_backend_is_opened_by_name_and_listed_when_a_name_is_unknown(
    tmp_path: Path,
) -> None:
    script = """
import sys
from registry import ConfigError, open_store
store = open_store({"backend": "extjson", "data_dir": sys.argv[1]})
store.sessions.register("s1", ppid=4242)
print(type(store).__module__, type(store).__name__, store.backend)
store.close()
try:
    open_store({"backend": "nosuch", "data_dir": sys.argv[1]})
except ConfigError as exc:
    print(exc)
"""
    done = _python(_site(tmp_path), tmp_path, "-c", script, str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    opened, refused = done.stdout.splitlines()
    assert opened == "ccr_extjson ExtJsonStore extjson"
    assert "'nosuch'" in refused
    choices = refused.rpartition("choose one of: ")[2].split(", ")
    assert {"json", "sqlite", "dual", "postgres", "extjson"} <= set(choices)
    # The store it opened is a real one: the json backend's file, with the session in it.
    assert "s1" in (tmp_path / "data" / "claude-sessions.json").read_text()


def test_an_installed_backend_reads_its_own_table_of_a_config_file(tmp_path: Path) -> None:
    # The plugin keeps its files in data_dir/<subdir> when [store.extjson] sets subdir, and
    # refuses a key or a value of its table it does not know, naming the file.
    script = """
import sys
from pathlib import Path
from registry import ConfigError, open_store
file = Path(sys.argv[1])
head = '[store]\\nbackend = "extjson"\\ndata_dir = "data"\\n'
file.write_text(head + '[store.extjson]\\nsubdir = "inner"\\n')
with open_store(file) as store:
    store.sessions.register("s1", ppid=4242)
    print(store.backend)
# A built-in backend with the plugin's table beside it: the table is accepted and unused.
file.write_text('[store]\\nbackend = "json"\\ndata_dir = "json-data"\\n[store.extjson]\\nx = 1\\n')
with open_store(file) as store:
    print(store.backend)
for table in ('[store.extjson]\\nsubdr = "inner"', '[store.extjson]\\nsubdir = "../up"',
              '[store.extjsn]\\nsubdir = "inner"'):
    file.write_text(head + table + "\\n")
    try:
        open_store(file)
    except ConfigError as exc:
        print(exc)
"""
    config = tmp_path / "conf" / "ccr-registry.toml"
    config.parent.mkdir()
    done = _python(_site(tmp_path), tmp_path, "-c", script, str(config))
    assert done.returncode == 0, done.stderr
    opened, opened_json, unknown_key, bad_value, unknown_table = done.stdout.splitlines()
    assert (opened, opened_json) == ("extjson", "json")
    # data_dir is relative to the file's directory; subdir is the plugin's, under it.
    assert "s1" in (tmp_path / "conf" / "data" / "inner" / "claude-sessions.json").read_text()
    assert not (tmp_path / "conf" / "data" / "claude-sessions.json").exists()
    assert unknown_key == (f"{config}: unknown key 'subdr' in [store.extjson]; valid keys: subdir")
    assert bad_value.startswith(f"{config}: store.extjson.subdir = '../up' is not valid")
    assert unknown_table.startswith(f"{config}: [store.extjsn] is not valid")
    choices = unknown_table.rpartition("choose one of: ")[2].split(", ")
    assert choices[:2] == ["dual", "postgres"]
    assert "extjson" in choices


def test_the_exported_contract_suite_passes_on_a_backend_of_another_distribution(
    tmp_path: Path,
) -> None:
    modules = sorted(
        f"registry.testing.contract.{info.name}"
        for info in pkgutil.iter_modules(registry.testing.contract.__path__)
    )
    assert len(modules) >= 5
    # A pytest configuration of the third party's own, so none of this project's applies.
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    done = _python(
        _site(tmp_path),
        tmp_path,
        "-m",
        "pytest",
        "-c",
        str(tmp_path / "pytest.ini"),
        "--rootdir",
        str(tmp_path),
        "-p",
        "no:cacheprovider",
        "-p",
        "registry.testing.plugin",
        "-p",
        "ccr_extjson.pytest_plugin",
        "-q",
        "-rfEs",
        "--junitxml",
        str(tmp_path / "results.xml"),
        "--pyargs",
        *modules,
    )
    tail = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, tail
    summary = done.stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    assert set(counts) <= {"passed", "warnings", "warning"}, summary
    assert counts["passed"] >= MIN_TESTS, summary
    # The tests ran on the plugin's backend, and on no other.
    names = [
        case.get("name", "")
        for case in ElementTree.parse(tmp_path / "results.xml").iter("testcase")
    ]
    assert len(names) == counts["passed"]
    on_backend = [name for name in names if "[extjson" in name]
    assert len(on_backend) >= MIN_TESTS, len(on_backend)
    others = [name for name in names if re.search(r"[\[-](json|sqlite|dual|postgres)[\]-]", name)]
    assert others == []
