"""The Helm chart, rendered by Helm's own engine, checked against the Kubernetes schemas,
and its rendered Job run for real under Docker against a real PostgreSQL."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from conftest import (
    IMAGE_TAG,
    PASSWORD,
    PYTHON_IMAGE,
    ROLE,
    ROOT,
    Database,
    assert_no_password,
    docker_build,
    run_migrator,
)

import migrator
from migrator import errors

CHART = ROOT / "helm" / "migrator"
# Every minor release the chart supports (Chart.yaml kubeVersion), each validated strictly:
# the schemas differ (1.33 and 1.34 require onPodConditions[].status, which 1.37 defaults).
KUBERNETES = [f"1.{minor}.0" for minor in range(29, 38)]
# A stand-in for a database proxy sidecar (Cloud SQL Auth Proxy and the like): a TCP
# forwarder from 127.0.0.1:LISTEN in the pod to HOST:PORT.
FORWARDER = """
import socket, sys, threading
listen, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def pipe(source, sink):
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    for end in (source, sink):
        try:
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
server = socket.create_server(("127.0.0.1", listen))
print("proxy: listening on", listen, flush=True)
while True:
    client, _ = server.accept()
    upstream = socket.create_connection((host, port))
    for ends in ((client, upstream), (upstream, client)):
        threading.Thread(target=pipe, args=ends, daemon=True).start()
"""


def proxy_sidecar(host: str, port: int) -> dict[str, Any]:
    """A native sidecar: an init container that keeps running (restartPolicy: Always)."""
    return {
        "name": "db-proxy",
        "image": PYTHON_IMAGE,
        "restartPolicy": "Always",
        "command": ["python3", "-c", FORWARDER],
        "args": ["5432", host, str(port)],
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True},
    }


PARTS = {"database": {"host": "db.internal", "name": "app", "user": "app", "password": PASSWORD}}
URL = {"database": {"url": f"postgresql://app:{PASSWORD}@db.internal:5432/app"}}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults, database parts": PARTS,
    "database url": URL,
    "existing secret, password key": {
        "database": {
            "host": "db",
            "name": "app",
            "user": "app",
            "existingSecret": {"name": "shop-db", "passwordKey": "pg-password"},
        }
    },
    "existing secret, url key": {
        "database": {"existingSecret": {"name": "shop-db", "urlKey": "database-url"}}
    },
    "plain job for Argo CD": {**PARTS, "job": {"hook": False, "argocd": True}},
    "plain job": {**PARTS, "job": {"hook": False}},
    "downgrade": {
        **PARTS,
        "migrator": {"command": "downgrade", "target": "base", "allowDowngrade": True},
    },
    "own migrations in a volume": {
        **PARTS,
        "migrator": {"config": "/project/alembic.ini", "statementTimeout": 30, "ddlLockTimeout": 2},
        "extraVolumes": [{"name": "project", "configMap": {"name": "shop-migrations"}}],
        "extraVolumeMounts": [{"name": "project", "mountPath": "/project", "readOnly": True}],
        "extraEnv": [{"name": "MY_SETTING", "value": "1"}],
    },
    "subchart: enabled and global": {**PARTS, "enabled": True, "global": {"imageRegistry": "x"}},
    "proxy sidecar and extension points": {
        "database": {
            "host": "127.0.0.1",
            "name": "app",
            "user": "app",
            "existingSecret": {"name": "{{ .Release.Name }}-db"},
        },
        "initContainers": [proxy_sidecar("10.0.0.5", 5432)],
        "extraEnvFrom": [{"configMapRef": {"name": "shop-settings"}}],
        "priorityClassName": "migrations",
        "image": {"digest": "sha256:" + "ab" * 32},
        "podLabels": {"team": "shop"},
        "commonLabels": {"cost-centre": "42"},
    },
    "OpenShift: runAsUser and fsGroup left to the platform": {
        **PARTS,
        "podSecurityContext": {"runAsUser": None, "fsGroup": None},
    },
    "service account and scheduling": {
        **PARTS,
        "serviceAccount": {"create": True, "annotations": {"iam.example/role": "migrator"}},
        "nodeSelector": {"pool": "jobs"},
        "tolerations": [{"key": "jobs", "operator": "Exists", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "regcred"}],
        "podAnnotations": {"team": "shop"},
        "job": {"ttlSecondsAfterFinished": 3600},
    },
}


def render(values: dict[str, Any], revision: int = 1) -> dict[str, dict[str, Any]]:
    """Manifests by kind, as Helm renders them for release `shop` in namespace `prod`."""
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(
        values, name="shop", namespace="prod", revision=revision, is_install=True
    )
    manifests = {}
    for path, text in rendered.items():
        if path.endswith(".yaml"):
            for document in yaml.safe_load_all(text):
                if document:
                    manifests[document["kind"]] = document
    return manifests


def render_documents(values: dict[str, Any], revision: int = 1) -> list[dict[str, Any]]:
    """Every manifest, in the order rendered, for release `shop` in namespace `prod`."""
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(
        values, name="shop", namespace="prod", revision=revision, is_install=True
    )
    return [
        document
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]


def render_all(values: dict[str, Any]) -> dict[str, Any]:
    """Every manifest, by name (a hook Job and its Secret share one: the Secret's wins)."""
    manifests = {}
    for document in render_documents(values):
        if document["metadata"]["name"] not in manifests or document["kind"] == "Secret":
            manifests[document["metadata"]["name"]] = document
    return manifests


def container(job: dict[str, Any]) -> dict[str, Any]:
    (migrator,) = job["spec"]["template"]["spec"]["containers"]
    return migrator


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=list(VALUE_SETS))
def test_every_rendering_is_valid_kubernetes_and_keeps_what_matters(
    values: dict[str, Any],
) -> None:
    manifests = render(values)
    job = manifests["Job"]
    pod = job["spec"]["template"]["spec"]
    migrator = container(job)
    env = {item["name"]: item.get("value") for item in migrator["env"]}

    for version in KUBERNETES:
        for manifest in manifests.values():
            kubernetes_validate.validate(manifest, version, strict=True)
    # What a retry cannot fix fails the Job at once; evictions do not count.
    assert job["spec"]["podFailurePolicy"]["rules"] == [
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": "migrator",
                "operator": "In",
                "values": errors.permanent_exit_statuses(),
            },
        },
        {
            "action": "Ignore",
            "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
        },
    ]
    assert pod["restartPolicy"] == "Never"
    assert migrator["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert migrator["command"] == ["migrator"] and "args" not in migrator
    # Hardened pod and container.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 10001) == 10001  # unset for OpenShift
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert migrator["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in migrator["volumeMounts"]
    assert job["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert job["spec"]["template"]["metadata"]["annotations"]["linkerd.io/inject"] == "disabled"
    # The secret arrives as a file, never as an env value.
    secret_volume = next(v for v in pod["volumes"] if v["name"] == "database-secret")
    (item,) = secret_volume["secret"]["items"]
    file_variable = "DATABASE_URL_FILE" if "DATABASE_URL_FILE" in env else "DB_PASSWORD_FILE"
    assert env[file_variable] == f"/var/run/secrets/migrator/{item['path']}"
    assert "DB_PASSWORD" not in env and "DATABASE_URL" not in env
    assert_no_password(yaml.safe_dump(job))


def test_a_hook_job_comes_after_its_secret() -> None:
    manifests = render(PARTS)
    job_annotations = manifests["Job"]["metadata"]["annotations"]
    secret_annotations = manifests["Secret"]["metadata"]["annotations"]

    assert job_annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job_annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert secret_annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(secret_annotations["helm.sh/hook-weight"]) < int(
        job_annotations["helm.sh/hook-weight"]
    )
    assert manifests["Secret"]["stringData"] == {"password": PASSWORD}
    assert manifests["Job"]["metadata"]["name"] == "shop-migrator"


def test_a_plain_job_for_argo_cd_has_argo_hooks_only() -> None:
    manifests = render({**PARTS, "job": {"hook": False, "argocd": True}})
    annotations = manifests["Job"]["metadata"]["annotations"]

    assert annotations["argocd.argoproj.io/hook"] == "PreSync"
    assert not any(key.startswith("helm.sh/") for key in annotations)
    assert manifests["Secret"]["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"


def test_a_plain_job_is_named_after_what_it_runs_not_the_revision() -> None:
    """`helm template` (Argo CD) renders every release as revision 1: a name per revision
    would make the next change patch an immutable Job. A hash of the spec gives a new Job
    exactly when what runs changes."""
    plain = {**PARTS, "job": {"hook": False}}
    first = render(plain, revision=1)["Job"]["metadata"]["name"]
    same_again = render(plain, revision=1)["Job"]["metadata"]["name"]
    next_revision = render(plain, revision=7)["Job"]["metadata"]["name"]
    new_image = render({**plain, "image": {"tag": "0.2.0"}})["Job"]["metadata"]["name"]
    new_target = render({**plain, "migrator": {"target": "c3f9b7d21a58"}})["Job"]["metadata"][
        "name"
    ]
    long_release = helm_python.Chart.load(str(CHART)).render(
        plain, name="a-release-name-of-fifty-characters-for-the-shop-app", namespace="prod"
    )
    long_name = yaml.safe_load(long_release["migrator/templates/job.yaml"])["metadata"]["name"]

    assert first.startswith("shop-migrator-") and len(first) == len("shop-migrator-") + 8
    assert first == same_again == next_revision
    assert len({first, new_image, new_target}) == 3
    assert len(long_name) <= 63 and not long_name.startswith("-")


def test_the_hook_secret_goes_once_the_hooks_succeed_and_notes_give_the_timeout() -> None:
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(PARTS, name="shop", namespace="prod")
    secret = yaml.safe_load(rendered["migrator/templates/secret.yaml"])
    notes = rendered["migrator/templates/NOTES.txt"]

    policy = secret["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    assert policy.split(",") == ["before-hook-creation", "hook-succeeded"]
    # Helm's own hook timeout (5 minutes) is shorter than the Job's deadline (900 s).
    assert "--timeout 16m" in notes


def test_extension_points_reach_the_pod() -> None:
    manifests = render(VALUE_SETS["proxy sidecar and extension points"])
    job = manifests["Job"]
    pod = job["spec"]["template"]["spec"]
    migrator = container(job)
    volume = next(v for v in pod["volumes"] if v["name"] == "database-secret")

    (sidecar,) = pod["initContainers"]
    assert sidecar["name"] == "db-proxy" and sidecar["restartPolicy"] == "Always"
    assert migrator["envFrom"] == [{"configMapRef": {"name": "shop-settings"}}]
    assert pod["priorityClassName"] == "migrations"
    assert migrator["image"] == "ghcr.io/migrator/migrator@sha256:" + "ab" * 32
    assert volume["secret"]["secretName"] == "shop-db"  # the template, rendered
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "shop"
    assert job["metadata"]["labels"]["cost-centre"] == "42"
    assert job["spec"]["template"]["metadata"]["labels"]["cost-centre"] == "42"
    created = render({**PARTS, "commonLabels": {"cost-centre": "42"}})
    assert created["Secret"]["metadata"]["labels"]["cost-centre"] == "42"


def test_openshift_may_assign_the_user_and_fs_group() -> None:
    """OpenShift's restricted profile assigns its own UID and fsGroup: the chart sets neither
    when they are null, and keeps the rest of the hardening."""
    manifests = render(VALUE_SETS["OpenShift: runAsUser and fsGroup left to the platform"])
    security = manifests["Job"]["spec"]["template"]["spec"]["securityContext"]

    assert "runAsUser" not in security and "fsGroup" not in security
    assert security["runAsNonRoot"] is True
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_chart_works_as_a_subchart_behind_a_condition(tmp_path: Path) -> None:
    """A parent chart with `condition: migrator.enabled` and `global` values."""
    parent = tmp_path / "shop"
    shutil.copytree(CHART, parent / "charts" / "migrator")
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: shop\nversion: 1.0.0\nkubeVersion: '>=1.29.0-0'\n"
        "dependencies:\n  - name: migrator\n    version: 0.1.0\n"
        "    condition: migrator.enabled\n"
    )
    chart = helm_python.Chart.load(str(parent))
    values = {"global": {"imageRegistry": "registry.example"}, "migrator": {**PARTS}}

    enabled = chart.render(
        {**values, "migrator": {**PARTS, "enabled": True}}, name="shop", namespace="prod"
    )
    disabled = chart.render(
        {**values, "migrator": {**PARTS, "enabled": False}}, name="shop", namespace="prod"
    )

    job = yaml.safe_load(enabled["shop/charts/migrator/templates/job.yaml"])
    assert job["metadata"]["name"] == "shop-migrator"
    for version in KUBERNETES:
        kubernetes_validate.validate(job, version, strict=True)
    assert not any(text.strip() for text in disabled.values())


def test_an_existing_secret_is_used_and_none_is_created() -> None:
    manifests = render(VALUE_SETS["existing secret, url key"])
    volume = next(
        v
        for v in manifests["Job"]["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "database-secret"
    )

    assert "Secret" not in manifests
    assert volume["secret"]["secretName"] == "shop-db"
    assert volume["secret"]["items"] == [{"key": "database-url", "path": "url"}]


def test_lint_is_clean_and_app_version_follows_the_package() -> None:
    report = helm_python.lint(str(CHART), PARTS, strict=True)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())

    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    assert chart["appVersion"] == migrator.__version__


# Where the chart and the docs say, in words, which exit statuses fail at once.
PERMANENT_IN_WORDS = [
    CHART / "values.yaml",
    CHART / "templates" / "NOTES.txt",
    CHART / "README.md",
    ROOT / "README.md",
    ROOT / "docs" / "kubernetes.md",
    ROOT / "docs" / "fleets.md",
]


def test_the_chart_and_the_docs_fail_at_once_on_the_statuses_errors_py_calls_permanent() -> None:
    """The statuses are errors.py's (each exception type says whether it is permanent); the
    podFailurePolicy above lists them, and every sentence that names them names the same."""
    permanent = errors.permanent_exit_statuses()
    in_words = ", ".join(map(str, permanent[:-1])) + f" and {permanent[-1]}"
    listed = r"(\d+(?:, \d+)* and \d+)"
    for path in PERMANENT_IN_WORDS:
        prose = " ".join(path.read_text().replace("#", " ").split())
        named = re.findall(rf"{listed} fail\b", prose) + re.findall(
            rf"at once on (?:exit )?{listed}", prose
        )
        assert named, f"{path} does not say which exit statuses fail at once"
        assert set(named) == {in_words}, path
    # The README's exit-status table has a row for each status an exception type ends in.
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Exit status", 1)[1].strip().split("\n\n", 1)[0]
    rows = {
        int(status)
        for row in re.findall(r"^\| ([\d, ]+) \|", table, re.M)
        for status in row.split(",")
    }
    statuses = {kind.exit_status for kind in _exception_types() if "exit_status" in vars(kind)}
    assert statuses - {0} <= rows and set(permanent) <= rows


def _exception_types() -> list[type[errors.MigratorError]]:
    found: list[type[errors.MigratorError]] = [errors.MigratorError]
    for kind in found:
        found += kind.__subclasses__()
    return found


BAD_VALUES = {
    "unknown top-level key": {**PARTS, "databse": {"host": "x"}},
    "command not known": {**PARTS, "migrator": {"command": "migrate"}},
    "port out of range": {"database": {**PARTS["database"], "port": 70000}},
    "port as text": {"database": {**PARTS["database"], "port": "5432"}},
    "negative backoff": {**PARTS, "job": {"backoffLimit": -1}},
    "log format": {**PARTS, "migrator": {"logFormat": "xml"}},
    "safety mode": {**PARTS, "migrator": {"safety": "strict"}},
    "timeout as text": {**PARTS, "migrator": {"waitTimeout": "soon"}},
    "hook is not a boolean": {**PARTS, "job": {"hook": "yes"}},
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=list(BAD_VALUES))
def test_the_schema_rejects_bad_values_with_helms_own_error(values: dict[str, Any]) -> None:
    chart = helm_python.Chart.load(str(CHART))
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(helm_python.HelmError):
        chart.render(values, name="shop", namespace="prod")


def test_values_are_all_documented() -> None:
    """Every value in values.yaml has a comment line just above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    inside_block = False  # security contexts and resources: Kubernetes' own fields
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not line.startswith(" "):
            inside_block = stripped.startswith(
                ("podSecurityContext:", "securityContext:", "resources:")
            )
        elif inside_block:
            continue
        if stripped and not stripped.startswith(("#", "-")) and ":" in stripped:
            above = lines[number - 1].strip()
            opens_section = stripped.endswith(":") and not inside_block
            assert above.startswith("#") or opens_section, f"undocumented value: {stripped}"


OPENSHIFT_ID = 1000680000  # what OpenShift assigns when the chart leaves the ids unset


def docker_memory(quantity: str) -> str:
    """A Kubernetes quantity of bytes (256Mi, 1Gi) as Docker takes it (256m, 1g)."""
    for suffix, unit in (("Ki", "k"), ("Mi", "m"), ("Gi", "g")):
        if quantity.endswith(suffix):
            return quantity.removesuffix(suffix) + unit
    return quantity


def pod_command(
    image: str,
    job: dict[str, Any],
    secrets: dict[str, dict[str, str]],
    directory: Path,
    options: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """`docker run` for the Job's pod as the kubelet would run it, and the environment the
    command's `-e NAME` flags read: same image, command, args, env, Secret volumes (each
    one's data, by key, in `secrets` under the Secret's name), user, read-only root, dropped
    capabilities, emptyDir volumes as tmpfs of their size limit, memory limit. `extra_env` is
    what Kubernetes adds itself."""
    pod = job["spec"]["template"]["spec"]
    migrator = container(job)
    security = {"runAsUser": OPENSHIFT_ID, "fsGroup": OPENSHIFT_ID, **pod["securityContext"]}
    mounts = []
    for volume in pod["volumes"]:
        mount = next(m for m in migrator["volumeMounts"] if m["name"] == volume["name"])
        if "emptyDir" in volume:
            size = docker_memory(volume["emptyDir"]["sizeLimit"])
            mounts += ["--tmpfs", f"{mount['mountPath']}:size={size}"]
        if "secret" not in volume:
            continue
        folder = directory / volume["name"]
        folder.mkdir(parents=True)
        data = secrets[volume["secret"]["secretName"]]
        for item in volume["secret"]["items"]:
            path = folder / item["path"]
            path.write_text(data[item["key"]])
            os.chown(path, 0, security["fsGroup"])
            path.chmod(volume["secret"]["defaultMode"])
        mounts += ["-v", f"{folder}:{mount['mountPath']}:ro"]
    env = {item["name"]: item["value"] for item in migrator["env"]} | (extra_env or {})
    command = [
        "docker",
        "run",
        "--rm",
        "--user",
        f"{security['runAsUser']}:{security['runAsGroup']}",
        "--group-add",
        str(security["fsGroup"]),
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--memory",
        docker_memory(migrator["resources"]["limits"]["memory"]),
        *mounts,
        *options,
        *[item for key in env for item in ("-e", key)],
        "--entrypoint",
        migrator["command"][0],
        image,
        *migrator["command"][1:],
        *migrator.get("args", []),
    ]
    return command, env


def run_rendered_job(
    image: str,
    manifests: dict[str, Any],
    secret_data: dict[str, str],
    directory: Path,
    options: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the rendered Job's pod under Docker (pod_command) with its database Secret."""
    job = manifests["Job"]
    secret_name = next(
        v["secret"]["secretName"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "database-secret"
    )
    command, env = pod_command(image, job, {secret_name: secret_data}, directory, options)
    result = subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert_no_password(result.stdout + result.stderr)
    return result


def test_the_rendered_job_runs(example_image: str, database: Database, tmp_path: Path) -> None:
    server = database.server
    values = {
        "database": {
            "host": server.host,
            "port": server.port,
            "name": database.name,
            "user": ROLE,
            "password": PASSWORD,
        }
    }
    manifests = render(values)
    secret = manifests["Secret"]["stringData"]
    wrong = {**values, "database": {**values["database"], "password": "wrong"}}
    wrong_manifests = render(wrong)

    ran = run_rendered_job(example_image, manifests, secret, tmp_path / "right")
    refused = run_rendered_job(
        example_image, wrong_manifests, wrong_manifests["Secret"]["stringData"], tmp_path / "wrong"
    )
    fail_job = wrong_manifests["Job"]["spec"]["podFailurePolicy"]["rules"][0]

    assert ran.returncode == 0, ran.stderr
    assert database.revision() == "c3f9b7d21a58"
    assert '"event": "summary"' in ran.stderr.splitlines()[-1]  # JSON logs by default
    # MIGRATOR_SAFETY=warn, weighed from the image's manifest: no scratch database.
    assert "safety: 4 of 4 pending revision(s) weighed with the live table sizes" in ran.stderr
    assert "scratch database migrator_" not in ran.stderr and "not weighed" not in ran.stderr
    assert refused.returncode == 6, refused.stderr
    assert fail_job["action"] == "FailJob" and 6 in fail_job["onExitCodes"]["values"]


def test_the_released_image_with_config_unset_applies_nothing(
    migrator_image: str, database: Database, tmp_path: Path
) -> None:
    """`migrator.config: ""` (the default) on the released image, which has no project: the
    Job fails at once (exit 2, which the podFailurePolicy does not retry) and the database is
    left alone."""
    server = database.server
    values = {
        "database": {
            "host": server.host,
            "port": server.port,
            "name": database.name,
            "user": ROLE,
            "password": PASSWORD,
        }
    }
    manifests = render(values)

    result = run_rendered_job(
        migrator_image, manifests, manifests["Secret"]["stringData"], tmp_path
    )

    assert result.returncode == 2, result.stderr
    assert "/project/alembic.ini" in result.stderr
    assert database.tables() == set()


def test_the_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
        found = []
        for key, value in tree.items():
            if (
                isinstance(value, dict)
                and value
                and key not in ("podSecurityContext", "securityContext", "resources")
            ):
                found += keys(value, f"{prefix}{key}.")
            else:
                found.append(f"{prefix}{key}")
        return found

    missing = [key for key in keys(values) if f"`{key}`" not in readme]
    assert missing == []


def database_values(database: Database, **database_parts: Any) -> dict[str, Any]:
    server = database.server
    parts = {
        "host": server.host,
        "port": server.port,
        "name": database.name,
        "user": ROLE,
        "password": PASSWORD,
    }
    return {"database": {**parts, **database_parts}}


def test_a_pod_with_a_proxy_sidecar_runs_and_completes(
    example_image: str, database: Database, tmp_path: Path
) -> None:
    """The migrator reaches PostgreSQL only through a native sidecar in its pod (a TCP
    forwarder standing in for a database proxy), as the kubelet runs it: the sidecar first,
    then the migrator in the same network namespace; the Job completes on the migrator's
    exit while the sidecar still runs (the kubelet then stops it)."""
    server = database.server
    values = {
        **database_values(database, host="127.0.0.1", port=5432),
        "initContainers": [proxy_sidecar(server.host, server.port)],
    }
    manifests = render(values)
    pod = manifests["Job"]["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    security = pod["securityContext"]
    name = f"migrator-proxy-{uuid.uuid4().hex[:8]}"
    for version in KUBERNETES:
        kubernetes_validate.validate(manifests["Job"], version, strict=True)

    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--user",
            f"{security['runAsUser']}:{security['runAsGroup']}",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--entrypoint",
            sidecar["command"][0],
            sidecar["image"],
            *sidecar["command"][1:],
            *sidecar["args"],
        ],
        check=True,
        capture_output=True,
    )
    try:
        logs = ""
        for _ in range(100):  # the kubelet starts the migrator once the sidecar has started
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stdout
            if "proxy: listening" in logs:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        ran = run_rendered_job(
            example_image,
            manifests,
            manifests["Secret"]["stringData"],
            tmp_path,
            options=("--network", f"container:{name}"),
        )
        sidecar_state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)

    assert "proxy: listening" in logs
    assert ran.returncode == 0, ran.stderr
    assert database.revision() == "c3f9b7d21a58"
    assert sidecar_state == "true"


def test_the_rendered_job_runs_under_ids_openshift_assigns(
    example_image: str, database: Database, tmp_path: Path
) -> None:
    values = {
        **database_values(database),
        "podSecurityContext": {"runAsUser": None, "fsGroup": None},
    }
    manifests = render(values)

    ran = run_rendered_job(example_image, manifests, manifests["Secret"]["stringData"], tmp_path)

    assert ran.returncode == 0, ran.stderr
    assert database.revision() == "c3f9b7d21a58"


def test_the_job_names_its_deploy_for_the_ledger() -> None:
    """MIGRATOR_DEPLOY_ID: the release, its revision (a hook Job's; a plain Job is named
    after its spec, which must not change with the revision) and the image; or the value."""

    def deploy_id(values: dict[str, Any], revision: int = 1) -> str:
        env = container(render(values, revision=revision)["Job"])["env"]
        return next(item["value"] for item in env if item["name"] == "MIGRATOR_DEPLOY_ID")

    image = "ghcr.io/migrator/migrator:0.1.0"
    assert deploy_id(PARTS, revision=3) == f"helm shop revision 3 image {image}"
    assert deploy_id({**PARTS, "job": {"hook": False}}, revision=3) == f"helm shop image {image}"
    assert deploy_id({**PARTS, "migrator": {"deployId": "shop 2026.12.06"}}) == "shop 2026.12.06"


# Deploy phases (migrator.phases): the project's revisions in two Alembic branches, pre and
# post (examples/phases); the pre phase's Job before the rollout, the post phase's after it.
PHASES = {**PARTS, "migrator": {"phases": True}}
PHASE_VALUE_SETS: dict[str, dict[str, Any]] = {
    "Helm hooks, database parts": PHASES,
    "database url": {**URL, "migrator": {"phases": True}},
    "existing secret": {
        **VALUE_SETS["existing secret, url key"],
        "migrator": {"phases": True, "target": "heads"},
    },
    "Argo CD": {**PHASES, "job": {"hook": False, "argocd": True}},
    "service account and scheduling": {
        **VALUE_SETS["service account and scheduling"],
        "migrator": {"phases": True},
    },
}


def jobs_of(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == "Job"]


def one(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [m for m in manifests if m["kind"] == kind]
    return found


def without_phase(job: dict[str, Any]) -> dict[str, Any]:
    """The Job's pod template with MIGRATOR_PHASE taken out of its environment."""
    template = yaml.safe_load(yaml.safe_dump(job["spec"]["template"]))
    migrator = template["spec"]["containers"][0]
    migrator["env"] = [item for item in migrator["env"] if item["name"] != "MIGRATOR_PHASE"]
    return dict(template)


def phase_env(job: dict[str, Any]) -> str | None:
    env = {item["name"]: item.get("value") for item in container(job)["env"]}
    return env.get("MIGRATOR_PHASE")


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=list(VALUE_SETS))
def test_without_phases_the_chart_renders_one_job_and_no_post_hook(
    values: dict[str, Any],
) -> None:
    """migrator.phases is off by default: the single Job, no MIGRATOR_PHASE, nothing after
    the rollout, the Secret a pre-install/pre-upgrade hook only (as before the value)."""
    explicit = {**values, "migrator": {**values.get("migrator", {}), "phases": False}}
    manifests = render_documents(values)
    text = yaml.safe_dump_all(manifests)

    assert render_documents(explicit) == manifests
    (job,) = jobs_of(manifests)
    assert phase_env(job) is None
    assert not re.search(r"MIGRATOR_PHASE|--phase|post-install|post-upgrade|PostSync", text)
    assert "-post" not in job["metadata"]["name"]
    for manifest in manifests:
        hook = manifest["metadata"].get("annotations", {}).get("helm.sh/hook")
        assert hook in (None, "pre-install,pre-upgrade")


@pytest.mark.parametrize("values", PHASE_VALUE_SETS.values(), ids=list(PHASE_VALUE_SETS))
def test_with_phases_two_jobs_valid_from_1_29_to_1_37_differ_only_in_their_phase(
    values: dict[str, Any],
) -> None:
    manifests = render_documents(values)
    pre, post = jobs_of(manifests)
    single = render({**values, "migrator": {**values["migrator"], "phases": False}})["Job"]

    for version in KUBERNETES:
        for manifest in manifests:
            kubernetes_validate.validate(manifest, version, strict=True)
    assert (phase_env(pre), phase_env(post)) == ("pre", "post")
    # The pod of each is the single Job's (its hardening, Secret, resources), but the phase.
    assert without_phase(pre) == without_phase(post) == without_phase(single)
    assert pre["spec"]["podFailurePolicy"] == post["spec"]["podFailurePolicy"]
    assert pre["spec"]["podFailurePolicy"] == single["spec"]["podFailurePolicy"]
    assert post["metadata"]["name"].startswith("shop-migrator-post")
    assert pre["metadata"]["name"].startswith("shop-migrator")
    assert not pre["metadata"]["name"].startswith("shop-migrator-post")
    for job in (pre, post):
        assert container(job)["command"] == ["migrator"] and "args" not in container(job)
        assert_no_password(yaml.safe_dump(job))


def annotations(manifest: dict[str, Any]) -> dict[str, str]:
    return dict(manifest["metadata"]["annotations"])


def test_with_phases_pre_is_a_pre_hook_post_a_post_hook_and_the_secret_is_there_for_both() -> None:
    """Helm deletes a hook-succeeded resource once every hook of the event has succeeded: the
    Secret, deleted after the pre hooks, is a post hook too, so Helm creates it again before
    the post phase's Job (and deletes it again after). The ServiceAccount is never deleted on
    success: it is still there for the post Job."""
    values = {**PHASES, "serviceAccount": {"create": True}, "job": {"hookWeight": 10}}
    manifests = render_documents(values)
    pre, post = jobs_of(manifests)
    secret, account = one(manifests, "Secret"), one(manifests, "ServiceAccount")

    assert [pre["metadata"]["name"], post["metadata"]["name"]] == [
        "shop-migrator",
        "shop-migrator-post",
    ]
    assert annotations(pre) == {
        "helm.sh/hook": "pre-install,pre-upgrade",
        "helm.sh/hook-weight": "10",
        "helm.sh/hook-delete-policy": "before-hook-creation",
    }
    assert annotations(post) == {
        "helm.sh/hook": "post-install,post-upgrade",
        "helm.sh/hook-weight": "10",
        "helm.sh/hook-delete-policy": "before-hook-creation",
    }
    assert annotations(secret)["helm.sh/hook"].split(",") == [
        "pre-install",
        "pre-upgrade",
        "post-install",
        "post-upgrade",
    ]
    assert annotations(secret)["helm.sh/hook-weight"] == "5"  # before the Job in each event
    assert annotations(secret)["helm.sh/hook-delete-policy"].split(",") == [
        "before-hook-creation",
        "hook-succeeded",
    ]
    assert "hook-succeeded" not in annotations(account)["helm.sh/hook-delete-policy"]
    assert annotations(account)["helm.sh/hook-weight"] == "5"
    for job in (pre, post):
        pod = job["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        volume = next(v for v in pod["volumes"] if v["name"] == "database-secret")
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]


def test_with_phases_under_argo_cd_pre_is_presync_and_post_postsync() -> None:
    """Argo CD runs PostSync hooks once the sync's resources are healthy. Its hooks stay until
    the next sync replaces them (BeforeHookCreation): the PreSync Secret is there for the
    PostSync Job. Each Job is named after what it runs, the post phase's with -post."""
    manifests = render_documents({**PHASES, "job": {"hook": False, "argocd": True}})
    pre, post = jobs_of(manifests)
    secret = one(manifests, "Secret")

    assert annotations(pre)["argocd.argoproj.io/hook"] == "PreSync"
    assert annotations(post)["argocd.argoproj.io/hook"] == "PostSync"
    assert annotations(pre)["argocd.argoproj.io/sync-wave"] == "0"
    assert annotations(post)["argocd.argoproj.io/sync-wave"] == "0"
    assert annotations(secret) == {
        "argocd.argoproj.io/hook": "PreSync",
        "argocd.argoproj.io/sync-wave": "-5",
        "argocd.argoproj.io/hook-delete-policy": "BeforeHookCreation",
    }
    for manifest in (pre, post, secret):
        assert not any(key.startswith("helm.sh/") for key in annotations(manifest))
    assert re.fullmatch(r"shop-migrator-[0-9a-f]{8}", pre["metadata"]["name"])
    assert re.fullmatch(r"shop-migrator-post-[0-9a-f]{8}", post["metadata"]["name"])
    long = render_documents(
        {**PHASES, "job": {"hook": False, "argocd": True}, "fullnameOverride": "x" * 80}
    )
    assert all(len(m["metadata"]["name"]) <= 63 for m in long)


def test_with_phases_notes_say_both_jobs_and_that_post_waits_only_under_wait() -> None:
    chart = helm_python.Chart.load(str(CHART))
    notes = chart.render(PHASES, name="shop", namespace="prod")["migrator/templates/NOTES.txt"]
    prose = " ".join(notes.split())

    assert "shop-migrator-post" in prose and "--phase pre" in prose
    assert "only under `--wait`" in prose


PHASE_BAD_COMBINATIONS = {
    "a downgrade": (
        {**PHASES, "migrator": {"phases": True, "command": "downgrade", "target": "base"}},
        "only an upgrade runs in phases, migrator.command must be upgrade",
    ),
    "a revision as the target": (
        {**PHASES, "migrator": {"phases": True, "target": "c3f9b7d21a58"}},
        "migrator.target must be head",
    ),
    "a plain Job, which nothing runs after the rollout": (
        {**PHASES, "job": {"hook": False}},
        "migrator.phases needs job.hook",
    ),
}


@pytest.mark.parametrize("case", PHASE_BAD_COMBINATIONS.values(), ids=list(PHASE_BAD_COMBINATIONS))
def test_phases_with_values_that_cannot_work_fail_the_render_saying_why(
    case: tuple[dict[str, Any], str],
) -> None:
    values, message = case
    chart = helm_python.Chart.load(str(CHART))
    with pytest.raises(helm_python.HelmError, match=re.escape(message)):
        chart.render(values, name="shop", namespace="prod")


def test_a_release_of_its_own_runs_one_phase_through_extra_env() -> None:
    """The chart README's pipeline without --wait: phases off, each phase a run of the chart
    of its own, MIGRATOR_PHASE set through extraEnv, once, on the single pre-upgrade Job."""
    for phase in ("pre", "post"):
        values = {**PARTS, "extraEnv": [{"name": "MIGRATOR_PHASE", "value": phase}]}
        (job,) = jobs_of(render_documents(values))
        names = [item["name"] for item in container(job)["env"]]
        assert names.count("MIGRATOR_PHASE") == 1 and phase_env(job) == phase
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"


# examples/phases: the example application's rename of cars.colour to cars.color, its pre
# revision adding color (and copying colour), its post revision copying the rest and dropping
# colour; both on the application's head, c3f9b7d21a58.
PHASES_IMAGE = f"migrator-phases-example:{IMAGE_TAG}"
BEFORE, PRE, POST = "c3f9b7d21a58", "5e1f0a2b7c39", "9a4d6c8e2f15"


@pytest.fixture(scope="session")
def phases_image(example_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The example application's image with examples/phases added, built FROM it as a team
    builds its own: its alembic.ini (/project/examples/phases) reaches the application's
    revisions and models at /project (version_locations, prepend_sys_path)."""
    context = tmp_path_factory.mktemp("phases-image")
    shutil.copytree(
        ROOT / "examples" / "phases",
        context / "phases",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (context / "Dockerfile").write_text(
        f"FROM {example_image}\n"
        "USER 0\n"
        "COPY phases/ /project/examples/phases/\n"
        "RUN python3 -m compileall -q /project/examples\n"
        "USER 10001:0\n"
    )
    docker_build(PHASES_IMAGE, context)
    return PHASES_IMAGE


def car_columns(database: Database) -> set[str]:
    rows = database.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'cars'"
    )
    return {row[0] for row in rows}


def test_the_two_phase_jobs_run_for_real_pre_then_post_against_one_database(
    phases_image: str, database: Database, tmp_path: Path
) -> None:
    """The chart rendered with migrator.phases, its two hook Jobs run under Docker as the
    kubelet runs them, against one database at the release before (c3f9b7d21a58, a car in
    it): the post Job first is refused (exit 2, one line naming the post revision and the
    pre one it depends on; nothing ran); the pre Job adds cars.color beside colour; the old
    release, still serving, writes colour alone; the post Job copies it and drops colour."""
    values = {
        **database_values(database),
        "migrator": {"phases": True, "config": "/project/examples/phases/alembic.ini"},
    }
    manifests = render_documents(values)
    pre_job, post_job = jobs_of(manifests)
    secret = one(manifests, "Secret")["stringData"]
    for version in KUBERNETES:
        for manifest in manifests:
            kubernetes_validate.validate(manifest, version, strict=True)

    def run(job: dict[str, Any], name: str) -> subprocess.CompletedProcess[str]:
        return run_rendered_job(phases_image, {"Job": job}, secret, tmp_path / name)

    before = run_migrator("upgrade", BEFORE, env=database.env)
    assert before.status == 0, before.output
    database.query("INSERT INTO cars (make, model, colour) VALUES ('Saab', '900', 'green')")

    post_first = run(post_job, "post-first")
    after_refusal = (database.revision(), car_columns(database))
    pre = run(pre_job, "pre")
    after_pre = (database.revision(), car_columns(database))
    copied = database.query("SELECT model, color, colour FROM cars")
    # The old release, still serving during the rollout, writes colour alone.
    database.query("INSERT INTO cars (make, model, colour) VALUES ('Volvo', '240', 'red')")
    post = run(post_job, "post")
    after_post = (database.revision(), car_columns(database))
    colors = dict(database.query("SELECT model, color FROM cars"))

    assert post_first.returncode == 2, post_first.stderr
    assert [line for line in post_first.stderr.splitlines() if PRE in line and POST in line]
    assert after_refusal == (BEFORE, {"id", "make", "model", "colour", "fuel_type"})
    assert pre.returncode == 0, pre.stderr
    assert after_pre == (PRE, {"id", "make", "model", "colour", "color", "fuel_type"})
    assert [tuple(row) for row in copied] == [("900", "green", "green")]
    assert post.returncode == 0, post.stderr
    assert after_post == (POST, {"id", "make", "model", "color", "fuel_type"})
    assert colors == {"900": "green", "240": "red"}
