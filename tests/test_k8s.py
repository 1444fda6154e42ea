"""deploy/k8s: the Kubernetes manifests validate against the Kubernetes schemas (kubernetes-validate, strict)
and agree with each other and with ance's config. Validated only: no cluster runs them here."""

from pathlib import Path

import pytest
import yaml

from ance.run.config import load_config

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
VERSION = "1.34.0"


def docs() -> list[dict]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs() if d["kind"] == kind}


def pod_specs() -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"]["template"] for d in docs()
            if d["kind"] in ("Deployment", "StatefulSet", "Job")}


def test_every_manifest_validates_strictly():
    kinds = sorted(d["kind"] for d in docs())
    assert kinds == ["Deployment", "Job", "PersistentVolumeClaim", "PersistentVolumeClaim", "Service", "Service",
                     "Service", "StatefulSet"]
    for d in docs():
        kv.validate(d, VERSION, strict=True)   # raises ValidationError naming the field


def test_the_validator_catches_a_typo():
    job = by_kind("Job")["ance-trainer"]
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicee"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(job, VERSION, strict=True)


def test_services_volumes_and_addresses_agree():
    pods = pod_specs()
    services = by_kind("Service")
    for name, svc in services.items():   # every Service selects some pods
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= t["metadata"]["labels"].items() for t in pods.values()), name
    claims = set(by_kind("PersistentVolumeClaim"))
    for name, tpl in pods.items():
        for vol in tpl["spec"]["volumes"]:
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in claims, (name, vol)
            if "secret" in vol:
                assert vol["secret"]["secretName"] == "ance-keys"
        args = tpl["spec"]["containers"][0]["args"]
        assert "broker.address=tcp://ance-broker:5555" in args and "broker.curve_keys=/keys" in args, name
    assert {"port": 5555} .items() <= services["ance-broker"]["spec"]["ports"][0].items()
    job = by_kind("Job")["ance-trainer"]
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "ance-trainer-0.ance-trainer:29400"
    assert job["spec"]["template"]["spec"]["subdomain"] == "ance-trainer" and "ance-trainer" in services
    assert cmd[cmd.index("--nnodes") + 1] == str(job["spec"]["completions"])
    assert by_kind("StatefulSet")["ance-inferencer"]["spec"]["serviceName"] in services


def test_every_ance_command_has_a_valid_config():
    for name, tpl in pod_specs().items():
        args = tpl["spec"]["containers"][0]["args"]
        config = next(a for a in args if a.endswith(".yaml"))
        overrides = [a for a in args if "=" in a and not a.startswith("-")]
        cfg = load_config(ROOT / config, overrides)
        assert cfg.broker.curve_keys == "/keys", name
