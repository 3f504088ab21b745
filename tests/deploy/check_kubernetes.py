"""Checks deploy/kubernetes/*.yaml beyond the Kubernetes schemas (which kubernetes-validate
checks): the drain fits the grace period, the probes are the right ones, and the
ServiceMonitor (a CRD, absent from those schemas) has the shape the Prometheus operator takes.
Run by tests/api/deploy.rs with kubernetes-validate's venv (PyYAML and jsonschema)."""

import json
import sys

import jsonschema
import yaml

# The part of the Prometheus operator's ServiceMonitor CRD (monitoring.coreos.com/v1) the
# manifest uses, with its types: enough to catch a misspelt or misplaced field.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scheme": {"enum": ["http", "https"]},
                        },
                    },
                },
            },
        },
    },
}


def seconds(setting: str) -> int:
    return int(setting)


def documented_settings(protocol: str) -> set[str]:
    """The setting names of docs/PROTOCOL.md's configuration table."""
    with open(protocol) as f:
        return {line.split("`")[1] for line in f if line.startswith("| `") and line.split("`")[1].isupper()}


def main(path: str, protocol: str, env_out: str, toml_out: str) -> None:
    with open(path) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {d["kind"]: d for d in documents}
    missing = {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "ServiceMonitor"} - set(by_kind)
    assert not missing, f"missing: {missing}"

    jsonschema.validate(by_kind["ServiceMonitor"], SERVICE_MONITOR)
    labels = by_kind["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("ServiceMonitor", "Service", "PodDisruptionBudget"):
        spec = by_kind[kind]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), f"the {kind} selects the pods"

    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert "resources" in container and "requests" in container["resources"]
    config = by_kind["ConfigMap"]["data"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = seconds(config["SHUTDOWN_GRACE_SECS"])
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > pre_stop + drain, f"the drain ({pre_stop} s + {drain} s) ends within {grace} s"
    secrets = by_kind["Secret"]["stringData"]
    for secret in ("JWT_SECRET", "API_KEY", "MONGODB_URI"):
        assert secret in secrets and secret not in config, f"{secret} lives in the Secret"
    # Every setting the ConfigMap sets is one the gateway has; the gateway itself then checks
    # their values (`ticketgate config --check`, with the files written here).
    settings = {key: value for key, value in config.items() if key.isupper()}
    unknown = set(settings) - documented_settings(protocol)
    assert not unknown, f"not settings of the gateway: {unknown}"
    with open(env_out, "w") as f:
        json.dump({**settings, **secrets}, f)
    with open(toml_out, "w") as f:
        f.write(config["ticketgate.toml"])
    print(f"{path}: {len(documents)} resources consistent")


if __name__ == "__main__":
    main(*sys.argv[1:5])
