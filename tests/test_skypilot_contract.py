"""The SkyPilot backend against the installed `skypilot` package, offline.

(a) Every SDK function and keyword the backend uses (`SDK_CALLS`) exists in the installed package,
    and the fake's signatures match the real ones; every JobStatus/ClusterStatus has a mapping.
(b) The real `sky.Task`/`sky.Resources` are built from experiment.yaml and the tasks the backend
    generates from it, and validated with a seeded accelerator catalog in a temporary HOME, with
    the network blocked, so nothing is fetched.

`sky` is imported only in a subprocess: it reads HOME at import, takes seconds, and other tests
check that commands which only read the ledger never import it.
"""
from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_skypilot_backend import FIXTURE_TASK

from fleet.backends import sky_clusters, sky_sdk, skypilot
from fleet.backends.skypilot import (
    CLUSTER_STATES,
    JOB_STATES,
    SDK_CALLS,
    SDK_EXCEPTIONS,
)
from fleet.testing import fake_sky

REPO = Path(__file__).resolve().parents[1]

# Where SkyPilot looks for catalogs (skylet.constants.CATALOG_SCHEMA_VERSION) and what it reads
# offline: accelerator names are canonicalized against `common/accelerators.csv` (Kubernetes has
# no instance catalog: its GPUs come live from node labels), and the Kubernetes image catalog.
CATALOG_FILES = {
    "common/accelerators.csv": "AcceleratorName,Clouds\nH100,\"['Kubernetes']\"\nH200,\"['Kubernetes']\"\n",
    "kubernetes/images.csv": "Tag,Region,ImageId\n",
}

PROBE = r'''
import inspect, json, socket, sys

def _offline(*args, **kwargs):
    raise OSError("network access is blocked in the offline validation")

_connect = socket.socket.connect
def _connect_local_only(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _offline()
    return _connect(self, address)
socket.socket.connect = _connect_local_only
socket.create_connection = _offline
socket.getaddrinfo = _offline

import yaml
import sky
from sky.skylet import constants
from fleet.backends.skypilot import SDK_CALLS, SDK_EXCEPTIONS, SDK_ATTRIBUTES, build_launch_config, build_task_config

request = json.load(sys.stdin)

def resolve(root, dotted):
    for part in dotted.split("."):
        root = getattr(root, part)
    return root

def describe(fn):
    out = []
    for p in inspect.signature(fn).parameters.values():
        default = None if p.default is inspect.Parameter.empty else repr(p.default)
        out.append([p.name, p.kind.name, default])
    return out

result = {"version": sky.__version__, "catalog_schema": constants.CATALOG_SCHEMA_VERSION, "signatures": {},
          "missing": [], "exceptions": {}, "attributes": {}, "validated": {}, "errors": {}}
for name in SDK_CALLS:
    try:
        result["signatures"][name] = describe(resolve(sky, name))
    except AttributeError:
        result["missing"].append(name)
for name in SDK_EXCEPTIONS:
    cls = getattr(sky.exceptions, name, None)
    result["exceptions"][name] = isinstance(cls, type) and issubclass(cls, Exception)
for name in SDK_ATTRIBUTES:
    try:
        result["attributes"][name] = str(resolve(sky, name))
    except AttributeError:
        result["attributes"][name] = None
result["job_statuses"] = [s.value for s in sky.JobStatus]
result["cluster_statuses"] = [s.value for s in sky.ClusterStatus]

def summarize(task):
    return {"name": task.name, "run": task.run, "setup": task.setup, "envs": dict(task.envs),
            "resources": sorted([{"cloud": str(r.cloud), "accelerators": r.accelerators,
                                  "image_id": {str(k): v for k, v in (r.image_id or {}).items()}}
                                 for r in task.resources], key=lambda r: json.dumps(r, sort_keys=True))}

for label, text in request["tasks"].items():
    raw = yaml.safe_load(text)
    configs = {"as-written": raw}
    for acc in ("H100", "H200"):
        configs[f"job-{acc}"] = build_task_config(
            raw, name="exp-0001.a1", envs={"FLEET_SNAPSHOT": "0123456789abcdef", "EXPERIMENT_ID": "exp-0001"},
            workdir=request["workdir"], accelerator=acc, infra="k8s")
        configs[f"launch-{acc}"] = build_launch_config(raw, name="fleet-setup", workdir=request["workdir"],
                                                       accelerator=acc, infra="k8s")
    for kind, config in configs.items():
        key = f"{label}:{kind}"
        try:
            task = sky.Task.from_yaml_config(config)
            task.validate(skip_file_mounts=True, skip_workdir=(kind == "as-written"))
            result["validated"][key] = summarize(task)
        except Exception as exc:
            result["errors"][key] = f"{type(exc).__name__}: {exc}"
print("PROBE-RESULT " + json.dumps(result))
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict:
    """Run the probe once in a subprocess with a fresh HOME holding only the seeded catalog."""
    home = tmp_path_factory.mktemp("sky-home")
    workdir = tmp_path_factory.mktemp("workdir")
    schema = _catalog_schema_version()
    for rel, text in CATALOG_FILES.items():
        path = home / ".sky" / "catalogs" / schema / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    tasks = {"fixture": FIXTURE_TASK}
    if (REPO / "experiment.yaml").exists():
        tasks["repo"] = (REPO / "experiment.yaml").read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "FLEET_SKY_SDK"))}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), SKYPILOT_DISABLE_USAGE_COLLECTION="1",
               NO_PROXY="*", KUBECONFIG=str(home / "no-kubeconfig"))
    proc = subprocess.run([sys.executable, "-c", PROBE], input=json.dumps({"tasks": tasks, "workdir": str(workdir)}),
                          env=env, cwd=str(workdir), capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE-RESULT ")]
    assert proc.returncode == 0 and lines, f"probe failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(lines[-1].removeprefix("PROBE-RESULT "))
    result["home"] = str(home)
    return result


def _catalog_schema_version() -> str:
    """Read from the installed package's source, so this process does not import sky."""
    import importlib.util

    spec = importlib.util.find_spec("sky")
    assert spec and spec.origin, "skypilot is not installed: pip install 'skyfleet[sky]'"
    constants = Path(spec.origin).parent / "skylet" / "constants.py"
    for node in ast.parse(constants.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "CATALOG_SCHEMA_VERSION" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"CATALOG_SCHEMA_VERSION not found in {constants}")


# --- (a) the SDK surface ---------------------------------------------------------------------
def test_installed_skypilot_is_the_pinned_version(probe):
    pinned = (REPO / "pyproject.toml").read_text().split("skypilot[kubernetes]==")[1].split('"')[0]
    assert probe["version"] == pinned


def test_every_sdk_call_and_keyword_exists(probe):
    assert probe["missing"] == []
    for name, keywords in SDK_CALLS.items():
        params = {p[0]: p[1] for p in probe["signatures"][name]}
        absent = [k for k in keywords if k not in params]
        assert not absent, f"sky.{name} has no keyword(s) {absent}; it takes {sorted(params)}"
        positional_only = [k for k in keywords if params[k] == "POSITIONAL_ONLY"]
        assert not positional_only, f"sky.{name}: {positional_only} cannot be passed by keyword"


def test_every_sdk_exception_and_attribute_exists(probe):
    assert probe["exceptions"] and all(probe["exceptions"].values()), probe["exceptions"]
    assert all(probe["attributes"].values()), probe["attributes"]


def test_every_skypilot_status_has_a_fleet_state(probe):
    assert sorted(JOB_STATES) == sorted(probe["job_statuses"])
    assert sorted(CLUSTER_STATES) == sorted(probe["cluster_statuses"])
    assert sorted(s.value for s in fake_sky.JobStatus) == sorted(probe["job_statuses"])
    assert sorted(s.value for s in fake_sky.ClusterStatus) == sorted(probe["cluster_statuses"])


def _fake_signature(name: str) -> list[list]:
    target = fake_sky
    for part in name.split("."):
        target = getattr(target, part)
    return [[p.name, p.kind.name, None if p.default is inspect.Parameter.empty else repr(p.default)]
            for p in inspect.signature(target).parameters.values() if not p.name.startswith("_")
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


@pytest.mark.parametrize("name", sorted(SDK_CALLS))
def test_fake_signature_matches_the_real_one(probe, name):
    real = [p for p in probe["signatures"][name] if not p[0].startswith("_")]
    fake = _fake_signature(name)
    assert [p[0] for p in fake] == [p[0] for p in real], f"fake_sky.{name} parameters differ from sky.{name}"
    used = set(SDK_CALLS[name])
    for (pname, kind, default), (_, real_kind, real_default) in zip(fake, real):
        assert kind == real_kind, f"{name}({pname}): {kind} in the fake, {real_kind} in sky"
        if pname in used and real_default is not None and "<" not in real_default:
            assert default == real_default, f"{name}({pname}) defaults to {default} in the fake, {real_default} in sky"


def test_fake_exceptions_mirror_the_real_names(probe):
    for name in SDK_EXCEPTIONS:
        assert isinstance(getattr(fake_sky.exceptions, name), type)


def test_the_backend_calls_only_listed_functions_and_keywords():
    """Every `….call("fn", ..., kw=...)` in skypilot.py, sky_clusters.py and sky_sdk.py is covered by SDK_CALLS (so by the tests above)."""
    seen = set()
    for module in (skypilot, sky_clusters, sky_sdk):
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "call"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                continue
            fn = node.args[0].value
            seen.add(fn)
            assert fn in SDK_CALLS, f"call({fn!r}) is not listed in SDK_CALLS"
            extra = {k.arg for k in node.keywords} - set(SDK_CALLS[fn])
            assert not extra, f"call({fn!r}) passes {extra}, not listed in SDK_CALLS[{fn!r}]"
    assert seen == set(SDK_CALLS), set(SDK_CALLS) ^ seen


# --- (b) offline validation of the real Task / Resources -------------------------------------
def test_tasks_validate_offline_with_the_real_package(probe):
    assert probe["errors"] == {}
    labels = {key.split(":")[0] for key in probe["validated"]}
    assert "fixture" in labels
    for label in labels:
        for acc in ("H100", "H200"):
            job = probe["validated"][f"{label}:job-{acc}"]
            assert job["name"] == "exp-0001.a1" and job["run"]
            assert job["envs"]["FLEET_SNAPSHOT"] == "0123456789abcdef" and job["envs"]["EXPERIMENT_ID"] == "exp-0001"
            assert [(r["cloud"], r["accelerators"]) for r in job["resources"]] == [("Kubernetes", {acc: 1})]
            launch = probe["validated"][f"{label}:launch-{acc}"]
            assert launch["run"] is None
            assert [r["accelerators"] for r in launch["resources"]] == [{acc: 1}]


def test_fixture_task_keeps_its_image_and_both_gpus(probe):
    written = probe["validated"]["fixture:as-written"]
    assert sorted(next(iter(r["accelerators"])) for r in written["resources"]) == ["H100", "H200"]
    for r in written["resources"]:
        assert r["image_id"] == {"None": "docker:nvcr.io/nvidia/pytorch:25.01-py3"}
    job = probe["validated"]["fixture:job-H200"]
    assert job["resources"][0]["image_id"] == {"None": "docker:nvcr.io/nvidia/pytorch:25.01-py3"}


def test_nothing_was_fetched(probe):
    """The seeded catalog was used as it is: no download, no metadata of a download."""
    catalogs = Path(probe["home"]) / ".sky" / "catalogs" / probe["catalog_schema"]
    for rel, text in CATALOG_FILES.items():
        assert (catalogs / rel).read_text() == text
    assert not list(catalogs.glob(".meta/**/*.md5"))
