"""The cluster files (ray_cluster.yaml, cluster/**) pass Ray's own validation and agree with configs/*.yaml.

Pure parsing: Ray's launcher schema and defaults, Ray Serve's pydantic schema, the project's config loader.
Nothing is started, so the whole module runs in seconds.
"""

from __future__ import annotations

import ast
import copy
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from pydantic import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema, ServeApplicationSchema, ServeDeploySchema

from def_ray.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER = REPO / "ray_cluster.yaml"
SERVE_CONFIG = CLUSTER / "serve_config.yaml"
OPERATING = REPO / "docs" / "operating.md"
RAY_IMAGE = re.compile(r"rayproject/ray:(?P<version>[\w.]+)-py311-(?P<flavour>cpu|gpu)$")
GPU = "nvidia.com/gpu"
SERVE_APP = "def_ray.serve.app:build_app"
DEPLOYMENTS = {"ForecastIngress", "EnsembleSampler"}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _pins() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def _configs() -> list[Path]:
    """configs/*.yaml as they are now: the lead adds and edits them, the checks follow."""
    found = sorted((REPO / "configs").glob("*.yaml"))
    assert found, "no configs/*.yaml to check the cluster files against"
    return found


def _export_path(cfg: Config) -> str:
    return cfg.train.export_path or f"{cfg.train.storage_path}/{cfg.train.run_name}/best.pt"


def _launcher() -> dict[str, Any]:
    return prepare_config(_yaml(LAUNCHER))


# -- ray_cluster.yaml (AWS, `ray up`) -------------------------------------------------------------------------------


def test_launcher_config_passes_ray_validation():
    # the same two steps `ray up` runs before it calls AWS: fill defaults, then the JSON schema and cross-field checks
    validate_config(_launcher())


def test_launcher_validation_rejects_a_broken_copy():
    # proves the check above can fail: Ray's schema wants integer resources and knows its top-level keys
    broken = copy.deepcopy(_yaml(LAUNCHER))
    broken["available_node_types"]["gpu_1x"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
    typo = copy.deepcopy(_yaml(LAUNCHER))
    typo["setup_comands"] = typo.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(typo))


def test_launcher_head_schedules_no_work_and_exposes_dashboard_and_metrics():
    cfg = _launcher()
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must advertise CPU: 0 so no training work lands on it"
    assert head["resources"].get("GPU", 0) == 0
    start = " ".join(cfg["head_start_ray_commands"])
    assert "--head" in start and "--dashboard-port=8265" in start and "--metrics-export-port=8080" in start
    assert "--metrics-export-port=8080" in " ".join(cfg["worker_start_ray_commands"])


def test_launcher_autoscaling_bounds():
    cfg = _launcher()
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert workers, "no worker node types"
    for name, node in workers.items():
        assert 0 <= node["min_workers"] <= node["max_workers"], name
        assert "IamInstanceProfile" in node["node_config"], f"{name}: S3 access must come from an instance profile"
    assert sum(n["max_workers"] for n in workers.values()) <= cfg["max_workers"], "global max_workers caps the types"
    assert "IamInstanceProfile" in cfg["available_node_types"][cfg["head_node_type"]]["node_config"]


def test_launcher_installs_torch_first_then_the_package_with_the_same_pins():
    cfg = _launcher()
    torch_pin = next(p for p in _pins() if p.startswith("torch=="))
    for key in ("head_setup_commands", "worker_setup_commands"):  # prepare_config merged setup_commands into both
        cmds = cfg[key]
        torch_at = next(i for i, c in enumerate(cmds) if "pip install" in c and torch_pin in c)
        pkg_at = next(i for i, c in enumerate(cmds) if re.search(r"pip install .*-e ~/def_ray", c))
        assert torch_at < pkg_at, f"{key}: torch must be installed before the package"
    assert "~/def_ray" in cfg["file_mounts"]
    images = [cfg["docker"]["head_image"], cfg["docker"]["worker_image"]]
    images += [n["docker"]["worker_image"] for n in cfg["available_node_types"].values() if "docker" in n]
    for image in images:
        m = RAY_IMAGE.match(image)
        assert m and m["version"] == ray.__version__, image


def _launcher_nodes() -> dict[str, tuple[int, int, int]]:
    """worker node type -> (CPUs, GPUs, max nodes)"""
    cfg = _launcher()
    return {k: (v["resources"].get("CPU", 0), v["resources"].get("GPU", 0), v["max_workers"])
            for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def _check_fits(nodes: dict[str, tuple[int, int, int]], cfg: Config, where: str) -> None:
    """Training workers fit on one node with CPUs left for Ray Data; all sampler replicas fit the cluster."""
    t = cfg.train
    gpus = t.num_workers if t.use_gpu else 0
    cpus = t.num_workers * t.cpus_per_worker
    fits = [k for k, (c, g, n) in nodes.items() if n >= 1 and g >= gpus and c > cpus]
    assert fits, (f"{where}: no node type holds {cfg.name}'s {t.num_workers} training workers "
                  f"({gpus} GPUs, {cpus:g} CPUs plus one for Ray Data); node types {nodes}")
    serve_gpus = cfg.serve.sampler_replicas * cfg.serve.gpus_per_replica
    total_gpus = sum(g * n for _, g, n in nodes.values())
    assert total_gpus >= serve_gpus, f"{where}: {cfg.name} serves on {serve_gpus:g} GPUs, the cluster has {total_gpus}"


@pytest.mark.parametrize("config_path", _configs(), ids=lambda p: p.name)
def test_launcher_node_types_fit_every_config(config_path):
    _check_fits(_launcher_nodes(), load_config(config_path), "ray_cluster.yaml")


def test_fit_check_catches_a_config_too_big_for_the_cluster():
    cfg = load_config(REPO / "configs" / "diffusion_production.yaml", {"train.num_workers": 16})
    with pytest.raises(AssertionError, match="no node type holds"):
        _check_fits(_launcher_nodes(), cfg, "ray_cluster.yaml")


# -- cluster/serve_config.yaml ----------------------------------------------------------------------------------------


def _unknown_keys(raw: dict, model) -> set[str]:
    # Serve's schemas accept and drop unknown keys (forward compatibility); a typo would silently fall back
    return set(raw) - set(model.model_fields)


def _check_serve_config(raw: dict) -> ServeDeploySchema:
    schema = ServeDeploySchema.model_validate(raw)
    assert len(raw["applications"]) == 1
    app = raw["applications"][0]
    assert not _unknown_keys(app, ServeApplicationSchema), _unknown_keys(app, ServeApplicationSchema)
    for dep in app["deployments"]:
        assert not _unknown_keys(dep, DeploymentSchema), (dep["name"], _unknown_keys(dep, DeploymentSchema))
        opts = dep.get("ray_actor_options", {})
        assert not _unknown_keys(opts, RayActorOptionsSchema), (dep["name"], opts)
    return schema


def _serve_args_config(app: dict) -> Config:
    return load_config(REPO / app["args"]["config"])


def test_serve_config_passes_ray_serve_schema():
    schema = _check_serve_config(_yaml(SERVE_CONFIG))
    app = schema.applications[0]
    assert (app.name, app.route_prefix, app.import_path) == ("def-ray", "/", SERVE_APP)
    assert {d.name for d in app.deployments} == DEPLOYMENTS


def test_serve_config_check_rejects_typos_and_bad_values():
    raw = _yaml(SERVE_CONFIG)
    typo = copy.deepcopy(raw)
    typo["applications"][0]["deployments"][1]["max_queued_request"] = 8
    with pytest.raises(AssertionError):
        _check_serve_config(typo)
    bad = copy.deepcopy(raw)
    bad["applications"][0]["deployments"][1]["ray_actor_options"]["num_gpus"] = -1
    with pytest.raises(ValidationError):
        _check_serve_config(bad)


def test_serve_config_matches_its_project_config():
    raw = _yaml(SERVE_CONFIG)
    app = raw["applications"][0]
    cfg = _serve_args_config(app)
    deps = {d["name"]: d for d in app["deployments"]}
    sampler, ingress = deps["EnsembleSampler"], deps["ForecastIngress"]
    # autoscaled in production: Serve takes initial_replicas instead of a fixed num_replicas
    assert sampler.get("num_replicas", sampler.get("autoscaling_config", {}).get("initial_replicas")) == \
        cfg.serve.sampler_replicas
    assert sampler["ray_actor_options"]["num_gpus"] == cfg.serve.gpus_per_replica
    assert sampler["max_ongoing_requests"] == cfg.serve.max_ongoing_requests
    assert sampler["max_queued_requests"] == cfg.serve.max_queued_requests
    # the ingress must never be the bottleneck: it admits at least what all sampler replicas can hold, and has Serve
    # slots above that to answer the rest 503 itself (def_ray.serve.app.ingress_limits)
    from def_ray.serve.app import ingress_limits, proxy_timeout_s

    _, slots, queue = ingress_limits(cfg.serve)
    assert ingress["max_ongoing_requests"] >= slots and ingress["max_queued_requests"] <= queue
    assert ingress["ray_actor_options"].get("num_gpus", 0) == 0
    assert raw["http_options"]["port"] == cfg.serve.port
    # the proxy's limit above the app's: clients get the app's JSON 504, not the proxy's 408
    assert raw["http_options"]["request_timeout_s"] == proxy_timeout_s(cfg.serve) > cfg.serve.request_timeout_s
    assert app["args"]["model"] == _export_path(cfg), "serve the checkpoint that training exports"


def test_serve_and_job_runtime_envs_install_the_pyproject_pins_torch_first():
    envs = {"serve_config": _yaml(SERVE_CONFIG)["applications"][0]["runtime_env"],
            "rayjob": yaml.safe_load(_yaml(KUBERAY / "rayjob_train.yaml")["spec"]["runtimeEnvYAML"])}
    for where, env in envs.items():
        assert env["pip"]["packages"] == _pins(), f"{where}: runtime_env pins differ from pyproject.toml"
        assert env["pip"]["packages"][0].startswith("torch==")
        assert env["working_dir"] == envs["serve_config"]["working_dir"], where


def test_serve_app_module_provides_the_configured_names():
    module, func = SERVE_APP.split(":")
    path = REPO / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"cluster/serve_config.yaml imports {SERVE_APP} but {path.relative_to(REPO)} is missing"
    tree = ast.parse(path.read_text())
    assert func in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, f"no top-level {func}() in {path}"
    names: set[str] = set()
    for p in path.parent.glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)
    assert DEPLOYMENTS <= names, f"deployments {DEPLOYMENTS - names} not defined under def_ray/serve"


# -- cluster/kuberay --------------------------------------------------------------------------------------------------


def _manifest(name: str, kind: str) -> dict:
    doc = _yaml(KUBERAY / name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind, name
    assert doc["metadata"]["name"] and isinstance(doc["spec"], dict), name
    return doc


def _cluster_specs() -> dict[str, dict]:
    return {"raycluster.yaml": _manifest("raycluster.yaml", "RayCluster")["spec"],
            "rayjob_train.yaml": _manifest("rayjob_train.yaml", "RayJob")["spec"]["rayClusterSpec"],
            "rayservice.yaml": _manifest("rayservice.yaml", "RayService")["spec"]["rayClusterConfig"]}


def _pods(spec: dict) -> list[tuple[str, dict, dict]]:
    """(group, rayStartParams, pod spec) for the head and each worker group"""
    out = [("head", spec["headGroupSpec"].get("rayStartParams", {}), spec["headGroupSpec"]["template"]["spec"])]
    out += [(g["groupName"], g.get("rayStartParams", {}), g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return out


def _cpus(q: str | int) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _kuberay_nodes(spec: dict, max_key: str = "maxReplicas") -> dict[str, tuple[int, int, int]]:
    nodes = {}
    for g in spec["workerGroupSpecs"]:
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        nodes[g["groupName"]] = (_cpus(limits["cpu"]), int(limits.get(GPU, 0)), g[max_key])
    return nodes


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob_train.yaml", "rayservice.yaml"])
def test_kuberay_cluster_structure(name):
    spec = _cluster_specs()[name]
    assert spec["rayVersion"] == ray.__version__
    assert spec.get("authOptions", {}).get("mode") == "token", f"{name}: token authentication must be on"
    sa = _yaml(KUBERAY / "serviceaccount.yaml")
    assert sa["kind"] == "ServiceAccount" and "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    head_params = spec["headGroupSpec"]["rayStartParams"]
    assert head_params.get("num-cpus") == "0", f"{name}: the head must run no work"
    groups = [g["groupName"] for g in spec["workerGroupSpecs"]]
    assert len(groups) == len(set(groups)), f"{name}: duplicate groupName"
    for g in spec["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], (name, g["groupName"])
    for group, params, pod in _pods(spec):
        # KubeRay's rayStartParams is map[string]string: an unquoted number is rejected by the API server
        assert all(isinstance(v, str) for v in params.values()), (name, group, params)
        assert pod["serviceAccountName"] == sa["metadata"]["name"], (name, group)
        (container,) = pod["containers"]
        res = container["resources"]
        assert res["limits"] == res["requests"], f"{name}/{group}: Ray sizes itself from limits; keep them equal"
        m = RAY_IMAGE.match(container["image"])
        assert m and m["version"] == ray.__version__, (name, group, container["image"])
        wants_gpu = int(res["limits"].get(GPU, 0)) > 0
        assert (m["flavour"] == "gpu") == wants_gpu, f"{name}/{group}: GPU image iff {GPU} is requested"
        for env in container.get("env", []):
            if re.search(r"KEY|TOKEN|SECRET|PASSWORD", env["name"]):
                assert "valueFrom" in env and "value" not in env, f"{name}/{group}: {env['name']} must come from a Secret"
    assert any(g for _, g, _ in _kuberay_nodes(spec).values()), f"{name}: no GPU worker group"


@pytest.mark.parametrize("config_path", _configs(), ids=lambda p: p.name)
def test_raycluster_groups_fit_every_config(config_path):
    _check_fits(_kuberay_nodes(_cluster_specs()["raycluster.yaml"]), load_config(config_path), "raycluster.yaml")


def test_rayjob_trains_production_on_a_cluster_that_fits():
    spec = _manifest("rayjob_train.yaml", "RayJob")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/train_diffusion.py"]
    cfg_path = argv[argv.index("--config") + 1]
    assert cfg_path == "configs/diffusion_production.yaml"
    cfg = load_config(REPO / cfg_path)
    t = cfg.train
    # the job's cluster has exactly its minimum: everything must fit without autoscaling
    nodes = _kuberay_nodes(spec["rayClusterSpec"], max_key="minReplicas")
    assert sum(g * n for _, g, n in nodes.values()) >= t.num_workers
    assert any(n >= 1 and g >= t.num_workers and c > t.num_workers * t.cpus_per_worker
               for c, g, n in nodes.values()), f"{cfg.name}: workers do not fit one pod of the RayJob cluster"
    assert spec["shutdownAfterJobFinishes"] is True
    assert (REPO / argv[1]).is_file(), f"RayJob entrypoint {argv[1]} is missing"


def test_rayservice_serves_exactly_serve_config_with_enough_gpus():
    spec = _manifest("rayservice.yaml", "RayService")["spec"]
    raw = yaml.safe_load(spec["serveConfigV2"])
    _check_serve_config(raw)
    assert raw == _yaml(SERVE_CONFIG), "serveConfigV2 and cluster/serve_config.yaml differ"
    cfg = _serve_args_config(raw["applications"][0])
    need = cfg.serve.sampler_replicas * cfg.serve.gpus_per_replica
    start = _kuberay_nodes(spec["rayClusterConfig"], max_key="replicas")
    assert sum(g * n for _, g, n in start.values()) >= need, "the initial pods cannot hold every sampler replica"


# -- scripts, docs and the files they name ------------------------------------------------------------------------


def _texts() -> dict[str, str]:
    files = [LAUNCHER, SERVE_CONFIG, OPERATING, *CLUSTER.glob("*.md"), *CLUSTER.glob("*.sh"), *KUBERAY.glob("*.yaml")]
    return {str(p.relative_to(REPO)): p.read_text() for p in files}


def _referenced(pattern: str) -> dict[str, set[str]]:
    return {name: set(re.findall(pattern, text)) for name, text in _texts().items()}


def test_referenced_configs_exist_and_load():
    refs = _referenced(r"\bconfigs/[\w.-]+\.yaml")
    assert any(refs.values())
    for name, paths in refs.items():
        for p in paths:
            assert (REPO / p).is_file(), f"{name} names {p}, which does not exist"
            load_config(REPO / p)


def test_referenced_job_scripts_exist():
    refs = _referenced(r"\bjobs/\w+\.py")
    assert any(refs.values())
    missing = {f"{name}: {p}" for name, paths in refs.items() for p in paths if not (REPO / p).is_file()}
    assert not missing, "job scripts named but missing:\n" + "\n".join(sorted(missing))


def test_local_script_is_valid_bash_and_starts_a_one_gpu_loopback_head():
    script = CLUSTER / "local_4090.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "--num-gpus=1" in text and "--dashboard-host=127.0.0.1" in text and "--head" in text
    # an unknown sub-command exits before touching Ray, with a usage line
    out = subprocess.run(["bash", str(script), "bogus"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "usage:" in out.stderr


def test_operating_doc_covers_start_watch_resume_stop():
    text = OPERATING.read_text()
    for needle in ["# Operating def_ray", "ray job submit", "ray job logs", "ray job stop", "serve shutdown",
                   "ray stop", "ray down", "ray status", ":8265", ":8080/metrics", "## Config keys"]:
        assert needle in text, f"docs/operating.md lacks {needle!r}"


def test_no_secrets_in_cluster_files():
    patterns = [r"AKIA[0-9A-Z]{16}", r"(?i)aws_secret_access_key", r"(?i)aws_session_token", r"-----BEGIN [A-Z ]*KEY",
                r"(?i)RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[0-9a-f]{16,}"]
    for name, text in _texts().items():
        for pat in patterns:
            assert not re.search(pat, text), f"{name} matches {pat}"
