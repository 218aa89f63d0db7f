"""The Kubernetes sidecar example validates against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields are errors), wires the agent and the
application to one in-memory volume, gates readiness on `dbha-agent status`, and
carries a configuration the agent accepts (`dbha-agent check`)."""

import copy
import json
import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("DBHA_TARGET_DIR", ROOT / "target" / "debug"))


def documents():
    with open(ROOT / "packaging" / "kubernetes" / "sidecar.yaml") as f:
        return {d["kind"]: d for d in yaml.safe_load_all(f)}


# The oldest Kubernetes release the example is checked against, and the newest
# whose schemas kubernetes-validate carries.
VERSIONS = ["1.25", kubernetes_validate.latest_version()]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_validates_against_the_kubernetes_schemas(version):
    docs = documents()
    assert set(docs) == {"ConfigMap", "Deployment"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_rejects_a_misspelt_field_and_a_wrong_type():
    deployment = documents()["Deployment"]
    misspelt = copy.deepcopy(deployment)
    agent = misspelt["spec"]["template"]["spec"]["containers"][0]
    agent["readinessProbe"]["exec"]["comand"] = agent["readinessProbe"]["exec"].pop("command")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, VERSIONS[-1], strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, VERSIONS[-1], strict=True)


def test_the_agent_and_the_app_share_an_in_memory_state_volume():
    pod = documents()["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dbha-state"]["emptyDir"]["medium"] == "Memory"
    containers = {c["name"]: c for c in pod["containers"]}
    agent, app = containers["dbha-agent"], containers["app"]
    mounts = lambda c: {m["name"]: m for m in c["volumeMounts"]}  # noqa: E731
    assert mounts(agent)["dbha-state"]["mountPath"] == "/run/dbha"
    assert mounts(app)["dbha-state"] == {"name": "dbha-state", "mountPath": "/run/dbha", "readOnly": True}
    assert {"name": "DBHA_STATE", "value": "/run/dbha/state"} in app["env"]
    probe = agent["readinessProbe"]["exec"]["command"]
    # Ready through a failover window too: the app serves its reads meanwhile.
    assert probe[1:] == ["status", "--read-only-ok", "--state", "/run/dbha/state"]


def test_the_configmap_holds_a_valid_agent_configuration(tmp_path):
    text = documents()["ConfigMap"]["data"]["dbha.toml"]
    cfg = tmp_path / "dbha.toml"
    cfg.write_text(text)
    out = subprocess.run([str(TARGET / "dbha-agent"), "check", "--config", str(cfg)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'state_file = "/run/dbha/state"' in out.stdout


def test_the_dockerfile_builds_the_image_the_manifest_runs():
    text = (ROOT / "packaging" / "kubernetes" / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM "))]
    assert "distroless" in final
    assert "RUN cargo build --release --locked -p dbha-agent --no-default-features" in lines
    agent = documents()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    # The probe runs the binary the image installs; the container's args are its CMD.
    assert 'ENTRYPOINT ["/usr/bin/dbha-agent"]' in lines
    assert agent["readinessProbe"]["exec"]["command"][0] == "/usr/bin/dbha-agent"
    assert f"CMD {json.dumps(agent['args'])}" in lines
    assert "USER nonroot" in lines
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "target/" in ignored and ".venv/" in ignored
