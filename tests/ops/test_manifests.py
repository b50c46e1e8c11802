"""The deployment files agree with the image and with each other: ports, drain time, scrape target."""

from __future__ import annotations

import inspect
import re

import pytest

from .image_entrypoint import DOCKER_DIR, ServeStage, parse_serve_stage

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the dev extra (kubernetes-validate)")

CUDA_ONLY_ENV = {"SEQSERVE_SERVE_DEVICE", "PATH", "DEBIAN_FRONTEND"}
DRAIN_MARGIN_S = 5


@pytest.fixture(scope="module")
def image() -> ServeStage:
    return parse_serve_stage(DOCKER_DIR / "Dockerfile")


def k8s(name: str) -> dict:
    return yaml.safe_load((DOCKER_DIR / "k8s" / name).read_text())


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)s", duration)
    assert match, f"expected a duration like '20s', got {duration!r}"
    return float(match[1])


def test_images_share_entrypoint_ports_and_healthcheck(image: ServeStage) -> None:
    cuda = parse_serve_stage(DOCKER_DIR / "Dockerfile.cuda")
    assert cuda.command == image.command == ["seqserve", "serve"]
    assert cuda.healthcheck == image.healthcheck
    assert cuda.exposed == image.exposed
    shared = {key: value for key, value in cuda.env.items() if key not in CUDA_ONLY_ENV}
    assert shared == {key: value for key, value in image.env.items() if key != "SEQSERVE_SERVE_DEVICE"}
    assert (image.env["SEQSERVE_SERVE_DEVICE"], cuda.env["SEQSERVE_SERVE_DEVICE"]) == ("cpu", "cuda")
    ports = {int(image.env["SEQSERVE_SERVE_PORT"]), int(image.env["SEQSERVE_SERVE_METRICS_PORT"])}
    assert set(image.exposed) == ports


def test_deployment_matches_image_and_covers_drain(image: ServeStage) -> None:
    pod = k8s("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {
        "grpc": int(image.env["SEQSERVE_SERVE_PORT"]),
        "metrics": int(image.env["SEQSERVE_SERVE_METRICS_PORT"]),
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert (mount["mountPath"], mount["readOnly"]) == (image.env["SEQSERVE_SERVE_REPOSITORY"], True)

    limits = k8s("configmap.yaml")["data"]
    assert container["envFrom"] == [{"configMapRef": {"name": k8s("configmap.yaml")["metadata"]["name"]}}]
    grace_s = float(limits["SEQSERVE_SERVE_GRACE_S"])
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + grace_s + DRAIN_MARGIN_S
    # A draining pod is NOT_SERVING for grace_s: liveness must not kill it meanwhile.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace_s


def test_every_replica_reads_the_checkpoint_key_from_one_secret() -> None:
    from seqserve.service.engine.checkpoints import KEYS_ENV

    (container,) = k8s("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    env = {variable["name"]: variable for variable in container["env"]}
    secret = env[KEYS_ENV]["valueFrom"]["secretKeyRef"]
    assert (secret["name"], secret["key"], secret["optional"]) == ("seqserve-state-keys", "keys", True)


def test_configmap_keys_are_serve_flags() -> None:
    from seqserve.cli import serve

    flags = {f"SEQSERVE_SERVE_{name.upper()}" for name in inspect.signature(serve).parameters}
    assert set(k8s("configmap.yaml")["data"]) <= flags


def test_compose_drains_and_prometheus_scrapes_the_metrics_port(image: ServeStage) -> None:
    compose = yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())
    seqserve = compose["services"]["seqserve"]
    grace_s = float(seqserve["environment"]["SEQSERVE_SERVE_GRACE_S"])
    assert seconds(seqserve["stop_grace_period"]) >= grace_s + DRAIN_MARGIN_S
    assert compose["services"]["seqserve"]["depends_on"]["models"]["condition"] == (
        "service_completed_successfully"
    )
    scrape = yaml.safe_load((DOCKER_DIR / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == [f"seqserve:{image.env['SEQSERVE_SERVE_METRICS_PORT']}"]


def test_readiness_fails_inside_the_prestop_sleep() -> None:
    """A draining pod reads NOT_SERVING at once; readiness must drop it before the preStop sleep ends."""
    (container,) = k8s("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    readiness = container["readinessProbe"]
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < pre_stop_s


def test_hpa_scales_on_the_metric_the_adapter_rule_serves() -> None:
    from seqserve.service.engine.metrics import ServiceMetrics

    hpa = k8s("hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == k8s("deployment.yaml")["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    rules = yaml.safe_load(k8s("prometheus-adapter.yaml")["data"]["config.yaml"])["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == name]
    assert re.match(r"(\w+)\{", rule["seriesQuery"])[1] == name
    exported = {s.name for family in ServiceMetrics().registry.collect() for s in family.samples}
    exported |= {family.name for family in ServiceMetrics().registry.collect()}
    assert name in exported


def test_kserve_manifests_validate_against_the_vendored_crds() -> None:
    import subprocess
    import sys

    script = DOCKER_DIR.parent / "scripts" / "validate_kserve.py"
    manifests = sorted(str(p) for p in (DOCKER_DIR / "kserve").glob("*.yaml"))
    assert len(manifests) == 2
    done = subprocess.run([sys.executable, str(script), *manifests], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    runtime, service = (yaml.safe_load((DOCKER_DIR / "kserve" / n).read_text()) for n in
                        ("servingruntime.yaml", "inferenceservice.yaml"))  # fmt: skip
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]


def test_kserve_validation_refuses_an_unknown_field(tmp_path) -> None:  # noqa: ANN001
    import subprocess
    import sys

    script = DOCKER_DIR.parent / "scripts" / "validate_kserve.py"
    bad = tmp_path / "bad.yaml"
    text = (DOCKER_DIR / "kserve" / "inferenceservice.yaml").read_text()
    bad.write_text(text.replace("protocolVersion:", "protocolVersoin:"))
    done = subprocess.run([sys.executable, str(script), str(bad)], capture_output=True, text=True)
    assert done.returncode == 1 and "'protocolVersoin' was unexpected" in done.stderr


def test_haproxy_config_health_check_is_a_grpc_health_check() -> None:
    from bench.haproxy_server import CONFIG, health_check_bytes

    text = CONFIG.read_text()
    sent = re.findall(r"tcp-check send-binary (\w+)", text)
    assert sent and set(sent) == {health_check_bytes().hex()}
    assert "hash-type consistent" in text and "balance hdr(seqserve-sequence)" in text
    assert re.search(r"retry-on conn-failure empty-response", text)
