"""The chart's tenant fleet (fleet.enabled): an Indexed Job whose pods share the targets by
JOB_COMPLETION_INDEX, an optional canary Job before it, the targets Secret; rendered by
Helm's own engine, checked against the Kubernetes schemas of every supported minor release,
and its pods run for real under Docker, one container per index, against PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import sqlalchemy as sa
import yaml
from conftest import ROLE, Database, Server, assert_no_password
from test_helm_chart import (
    CHART,
    KUBERNETES,
    PARTS,
    URL,
    container,
    database_values,
    pod_command,
    render,
    render_all,
)

TENANTS = ["tenant_acme", "tenant_globex", "tenant_initech", "tenant_umbrella", "schema=trial"]
FLEET = {**PARTS, "fleet": {"enabled": True, "pods": 3, "targets": {"list": TENANTS}}}
HEAD = "c3f9b7d21a58"  # the example application's head


def with_fleet(values: dict[str, Any], **fleet: Any) -> dict[str, Any]:
    return {**values, "fleet": {**values["fleet"], **fleet}}


def env_of(job: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(job)["env"]}


def hook_weight(manifest: dict[str, Any]) -> int:
    return int(manifest["metadata"]["annotations"]["helm.sh/hook-weight"])


def test_a_fleet_renders_an_indexed_job_in_place_of_the_single_job() -> None:
    manifests = render_all(FLEET)
    fleet = manifests["shop-migrator-fleet"]
    spec = fleet["spec"]
    single = render(PARTS)["Job"]
    env = env_of(fleet)
    migrator = container(fleet)
    mount = next(m for m in migrator["volumeMounts"] if m["name"] == "fleet-targets")
    volume = next(v for v in spec["template"]["spec"]["volumes"] if v["name"] == "fleet-targets")

    assert sorted(manifests) == [
        "shop-migrator",
        "shop-migrator-fleet",
        "shop-migrator-fleet-targets",
    ]
    assert manifests["shop-migrator"]["kind"] == "Secret"  # the database's; no single Job
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimitPerIndex"] == 1 and spec["maxFailedIndexes"] == 0
    assert "backoffLimit" not in spec  # per index instead
    # The single Job's rules, a retry-proof exit failing its index rather than the Job.
    single_rules = single["spec"]["podFailurePolicy"]["rules"]
    assert spec["podFailurePolicy"]["rules"] == [
        {**single_rules[0], "action": "FailIndex"},
        single_rules[1],
    ]
    assert single_rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"
    assert migrator["command"] == ["migrator"]
    assert migrator["args"] == ["fleet", "upgrade", "head"]
    assert env["MIGRATOR_FLEET_FILE"] == f"{mount['mountPath']}/targets"
    assert env["MIGRATOR_FLEET_FILE"] == "/etc/migrator/fleet/targets"
    assert volume["secret"]["secretName"] == "shop-migrator-fleet-targets"
    assert volume["secret"]["items"] == [{"key": "targets", "path": "targets"}]
    assert env["MIGRATOR_FLEET_SHARDS"] == "3"
    assert env["MIGRATOR_FLEET_PARALLELISM"] == "4" and env["MIGRATOR_FLEET_MAX_FAILURES"] == "1"
    # No canary, and nothing that would disagree with the arguments.
    assert not {"MIGRATOR_FLEET_CANARY", "MIGRATOR_COMMAND", "MIGRATOR_TARGET"} & set(env)
    # The rest of the pod is the single Job's: its connection, hardening and resources.
    single_env = env_of(single)
    assert {k: v for k, v in env.items() if not k.startswith("MIGRATOR_FLEET_")} == {
        k: v for k, v in single_env.items() if k not in ("MIGRATOR_COMMAND", "MIGRATOR_TARGET")
    }
    for key in ("securityContext", "resources", "terminationMessagePolicy", "image"):
        assert migrator[key] == container(single)[key]
    pod, single_pod = spec["template"]["spec"], single["spec"]["template"]["spec"]
    assert pod["securityContext"] == single_pod["securityContext"]
    # A read-only root: `migrator fleet` writes only its temporary directory, an emptyDir.
    assert migrator["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in migrator["volumeMounts"]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert (
        spec["template"]["metadata"]["labels"] == single["spec"]["template"]["metadata"]["labels"]
    )
    assert fleet["metadata"]["labels"] == single["metadata"]["labels"]
    assert hook_weight(manifests["shop-migrator-fleet-targets"]) < hook_weight(fleet)
    assert manifests["shop-migrator-fleet-targets"]["stringData"] == {
        "targets": "\n".join(TENANTS) + "\n"
    }


def test_pods_at_once_and_the_failure_budget_are_values() -> None:
    values = with_fleet(
        FLEET, pods=6, podParallelism=2, backoffLimitPerIndex=0, maxFailedIndexes=None
    )
    spec = render_all(values)["shop-migrator-fleet"]["spec"]

    assert spec["completions"] == 6 and spec["parallelism"] == 2
    assert spec["backoffLimitPerIndex"] == 0
    assert "maxFailedIndexes" not in spec  # every index runs to its end


def test_a_canary_job_runs_first_on_the_first_targets_alone() -> None:
    manifests = render_all(with_fleet(FLEET, canary=2))
    canary, fleet = manifests["shop-migrator-canary"], manifests["shop-migrator-fleet"]
    canary_env, fleet_env = env_of(canary), env_of(fleet)

    # A plain Job, failing at once on what a retry cannot fix.
    assert "completionMode" not in canary["spec"] and "completions" not in canary["spec"]
    assert canary["spec"]["backoffLimit"] == 2
    assert canary["spec"]["podFailurePolicy"] == render(PARTS)["Job"]["spec"]["podFailurePolicy"]
    assert container(canary)["args"] == ["fleet", "upgrade", "head", "--canary-only"]
    assert canary_env["MIGRATOR_FLEET_CANARY"] == "2"
    assert "MIGRATOR_FLEET_SHARDS" not in canary_env  # every target of the file, unsharded
    assert canary_env["MIGRATOR_FLEET_FILE"] == fleet_env["MIGRATOR_FLEET_FILE"]
    # The Indexed Job runs every target (the canaries then cost a query each).
    assert "MIGRATOR_FLEET_CANARY" not in fleet_env
    assert container(fleet)["args"] == ["fleet", "upgrade", "head"]
    # Secrets, then the canary, then the fleet: the same hook events, lower weights first.
    for manifest in (canary, fleet, manifests["shop-migrator-fleet-targets"]):
        assert manifest["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert canary["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == (
        "before-hook-creation"
    )
    assert (
        hook_weight(manifests["shop-migrator"])
        == hook_weight(manifests["shop-migrator-fleet-targets"])
        < hook_weight(canary)
        < hook_weight(fleet)
        == 0
    )
    moved = render_all(with_fleet({**FLEET, "job": {"hookWeight": 10}}, canary=1))
    assert hook_weight(moved["shop-migrator-canary"]) == 9
    assert hook_weight(moved["shop-migrator-fleet"]) == 10


def test_under_argo_cd_the_canary_is_an_earlier_sync_wave() -> None:
    values = with_fleet({**FLEET, "job": {"hook": False, "argocd": True}}, canary=1)
    manifests = render_all(values)

    def wave(manifest: dict[str, Any]) -> int:
        return int(manifest["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])

    secrets = [m for m in manifests.values() if m["kind"] == "Secret"]
    canary = next(m for n, m in manifests.items() if n.startswith("shop-migrator-canary-"))
    fleet = next(
        m
        for n, m in manifests.items()
        if n.startswith("shop-migrator-fleet-") and m["kind"] == "Job"
    )

    assert canary["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    assert fleet["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    assert not any(key.startswith("helm.sh/") for key in fleet["metadata"]["annotations"])
    assert [wave(secret) for secret in secrets] == [-5, -5]
    assert wave(canary) == -1 and wave(fleet) == 0


def test_a_plain_fleet_job_is_named_after_what_it_runs() -> None:
    """With job.hook=false the name is a hash of the spec, which carries a checksum of the
    targets list: a new list (or shard count) brings a new Job, the same one leaves it."""
    plain = {**FLEET, "job": {"hook": False}}

    def name(values: dict[str, Any]) -> str:
        (found,) = [
            n
            for n in render_all(values)
            if n.startswith("shop-migrator-fleet-") and n != "shop-migrator-fleet-targets"
        ]
        return found

    first = name(plain)
    assert first == name(plain)
    assert len(first) == len("shop-migrator-fleet-") + 8
    assert name(with_fleet(plain, targets={"list": [*TENANTS, "tenant_hooli"]})) != first
    assert name(with_fleet(plain, pods=4)) != first
    long_release = helm_python.Chart.load(str(CHART)).render(
        {**FLEET, "fullnameOverride": "x" * 80}, name="shop", namespace="prod"
    )
    for document in yaml.safe_load_all(long_release["migrator/templates/fleet-job.yaml"]):
        assert len(document["metadata"]["name"]) <= 63


def test_an_existing_targets_secret_is_mounted_and_none_is_created() -> None:
    values = with_fleet(
        FLEET, targets={"existingSecret": {"name": "{{ .Release.Name }}-tenants", "key": "list"}}
    )
    manifests = render_all(values)
    pod = manifests["shop-migrator-fleet"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "fleet-targets")

    assert "shop-migrator-fleet-targets" not in manifests
    assert volume["secret"]["secretName"] == "shop-tenants"
    assert volume["secret"]["items"] == [{"key": "list", "path": "targets"}]
    annotations = manifests["shop-migrator-fleet"]["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/fleet-targets" not in annotations


FLEET_VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults, database parts": FLEET,
    "database url, canary": with_fleet({**URL, "fleet": FLEET["fleet"]}, canary=1),
    "existing secrets": {
        "database": {"existingSecret": {"name": "shop-db", "urlKey": "database-url"}},
        "fleet": {"enabled": True, "pods": 20, "targets": {"existingSecret": {"name": "t"}}},
    },
    "plain job": {**FLEET, "job": {"hook": False, "ttlSecondsAfterFinished": 600}},
    "Argo CD, canary": with_fleet({**FLEET, "job": {"hook": False, "argocd": True}}, canary=2),
    "all the fleet's values": with_fleet(
        {**FLEET, "migrator": {"target": HEAD}},
        pods=10,
        podParallelism=2,
        parallelism=8,
        maxFailures=3,
        backoffLimitPerIndex=0,
        maxFailedIndexes=None,
        canary=3,
    ),
    "OpenShift ids, extension points": {
        **FLEET,
        "podSecurityContext": {"runAsUser": None, "fsGroup": None},
        "extraEnv": [{"name": "MIGRATOR_SAFETY", "value": "off"}],
        "serviceAccount": {"create": True},
    },
}


@pytest.mark.parametrize("values", FLEET_VALUE_SETS.values(), ids=list(FLEET_VALUE_SETS))
def test_every_fleet_rendering_is_valid_kubernetes_from_1_29_to_1_37(
    values: dict[str, Any],
) -> None:
    manifests = render_all(values)
    jobs = [m for m in manifests.values() if m["kind"] == "Job"]

    for version in KUBERNETES:
        for manifest in manifests.values():
            kubernetes_validate.validate(manifest, version, strict=True)
    assert [j["spec"].get("completionMode") for j in jobs][-1] == "Indexed"
    assert len(jobs) == (2 if values["fleet"].get("canary") else 1)
    for job in jobs:
        assert_no_password(yaml.safe_dump(job))
        assert container(job)["securityContext"]["readOnlyRootFilesystem"] is True


def test_lint_is_clean_with_a_fleet() -> None:
    report = helm_python.lint(str(CHART), with_fleet(FLEET, canary=1), strict=True)

    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


BAD_SCHEMA = {
    "no pods": with_fleet(FLEET, pods=0),
    "pods as text": with_fleet(FLEET, pods="3"),
    "negative canary": with_fleet(FLEET, canary=-1),
    "a target with a line break": with_fleet(FLEET, targets={"list": ["a\nb"]}),
    "unknown fleet key": with_fleet(FLEET, shards=3),
    "no parallelism": with_fleet(FLEET, parallelism=0),
}


@pytest.mark.parametrize("values", BAD_SCHEMA.values(), ids=list(BAD_SCHEMA))
def test_the_schema_rejects_bad_fleet_values(values: dict[str, Any]) -> None:
    chart = helm_python.Chart.load(str(CHART))
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(chart.merge_values(values))


BAD_COMBINATIONS = {
    "no targets": ({**PARTS, "fleet": {"enabled": True}}, "targets.list"),
    "a downgrade": (
        {**FLEET, "migrator": {"command": "downgrade", "allowDowngrade": True}},
        "migrator.command must be upgrade",
    ),
    "more failed indexes than pods": (
        with_fleet(FLEET, maxFailedIndexes=4),
        "fleet.maxFailedIndexes must not exceed fleet.pods",
    ),
    "a canary nothing waits for": (
        with_fleet({**FLEET, "job": {"hook": False}}, canary=1),
        "fleet.canary needs job.hook",
    ),
    "phases that nothing orders": (
        {**FLEET, "migrator": {"phases": True}, "job": {"hook": False}},
        "migrator.phases needs job.hook",
    ),
}


@pytest.mark.parametrize("case", BAD_COMBINATIONS.values(), ids=list(BAD_COMBINATIONS))
def test_values_that_cannot_work_fail_the_render_saying_why(
    case: tuple[dict[str, Any], str],
) -> None:
    values, message = case
    chart = helm_python.Chart.load(str(CHART))
    with pytest.raises(helm_python.HelmError, match=message):
        chart.render(values, name="shop", namespace="prod")


PHASED_FLEET = with_fleet({**FLEET, "migrator": {"phases": True}}, canary=1)


@pytest.mark.parametrize(
    "values",
    [PHASED_FLEET, {**PHASED_FLEET, "fleet": {**FLEET["fleet"], "canary": 0}}],
    ids=["canary", "no canary"],
)
def test_with_phases_each_phase_runs_over_every_target_before_the_next_starts(
    values: dict[str, Any],
) -> None:
    """The fleet's Jobs twice: `--phase pre` as pre-install/pre-upgrade hooks, `--phase
    post` (named -post) as post-install/post-upgrade hooks, so Helm starts the post phase on
    any target only once every pre hook (every target's pre phase) has succeeded, and the
    release's resources are applied between. The canary goes first in each phase; the
    Secrets (database and targets) are hooks of both phases, made again for the post one."""
    manifests = render_all(values)
    jobs = {name: m for name, m in manifests.items() if m["kind"] == "Job"}
    canary = bool(values["fleet"]["canary"])
    pre = ["shop-migrator-canary", "shop-migrator-fleet"][0 if canary else 1 :]
    post = [f"{name}-post" for name in pre]

    for version in KUBERNETES:
        for manifest in manifests.values():
            kubernetes_validate.validate(manifest, version, strict=True)
    assert sorted(jobs) == sorted(pre + post)
    for names, phase, events in (
        (pre, "pre", "pre-install,pre-upgrade"),
        (post, "post", "post-install,post-upgrade"),
    ):
        for name in names:
            job = jobs[name]
            args = container(job)["args"]
            assert args[:3] == ["fleet", "upgrade", "head"] and args[-2:] == ["--phase", phase]
            assert ("--canary-only" in args) == ("canary" in name)
            assert job["metadata"]["annotations"]["helm.sh/hook"] == events
            assert "MIGRATOR_PHASE" not in env_of(job)  # the arguments say it
        weights = [hook_weight(jobs[name]) for name in names]
        assert weights == sorted(weights) and weights[-1] == 0
    for name in pre:  # the same pods, but the phase
        pre_spec, post_spec = jobs[name]["spec"], jobs[f"{name}-post"]["spec"]
        assert container(jobs[f"{name}-post"])["args"][:-1] == container(jobs[name])["args"][:-1]
        assert {k: v for k, v in pre_spec.items() if k != "template"} == {
            k: v for k, v in post_spec.items() if k != "template"
        }
        assert env_of(jobs[name]) == env_of(jobs[f"{name}-post"])
    for secret in ("shop-migrator", "shop-migrator-fleet-targets"):
        annotations = manifests[secret]["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == ("pre-install,pre-upgrade,post-install,post-upgrade")
        assert hook_weight(manifests[secret]) < min(hook_weight(job) for job in jobs.values())


def test_with_phases_under_argo_cd_the_fleet_is_presync_then_postsync() -> None:
    manifests = render_all({**PHASED_FLEET, "job": {"hook": False, "argocd": True}})
    jobs = {name: m for name, m in manifests.items() if m["kind"] == "Job"}

    def hook(prefix: str) -> tuple[str, str]:
        (job,) = [m for n, m in jobs.items() if re.fullmatch(rf"{prefix}-[0-9a-f]{{8}}", n)]
        found = job["metadata"]["annotations"]
        return found["argocd.argoproj.io/hook"], found["argocd.argoproj.io/sync-wave"]

    assert len(jobs) == 4
    assert hook("shop-migrator-canary") == ("PreSync", "-1")
    assert hook("shop-migrator-fleet") == ("PreSync", "0")
    assert hook("shop-migrator-canary-post") == ("PostSync", "-1")
    assert hook("shop-migrator-fleet-post") == ("PostSync", "0")


@pytest.fixture
def tenants(server: Server) -> Iterator[list[str]]:
    """Nine empty tenant databases owned by ROLE."""
    prefix = f"fleet_{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}_{letter}" for letter in "abcdefghi"]
    with server.admin.connect() as connection:
        for name in names:
            connection.execute(sa.text(f"CREATE DATABASE {name} OWNER {ROLE}"))
    yield names
    with server.admin.connect() as connection:
        for name in names:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def named(output: str, names: list[str]) -> set[str]:
    return {name for name in names if name in output}


# The fleet's line for each target on stdout: `NAME: ok (FROM -> TO, N applied, S s)`.
OUTCOME = re.compile(r"^(\S+): ok \((\S+) -> (\S+), (\d+) applied", re.MULTILINE)


def applied(stdout: str) -> dict[str, int]:
    """Revisions applied by this pod, by target, for each target it reports at its target."""
    return {match[1]: int(match[4]) for match in OUTCOME.finditer(stdout)}


def test_the_rendered_fleet_runs_one_pod_per_index(
    example_image: str, database: Database, tenants: list[str], tmp_path: Path
) -> None:
    """The canary Job's pod, then the Indexed Job's three pods at once, each as the kubelet
    runs it (its env, args, JOB_COMPLETION_INDEX and the hostname Kubernetes gives an
    indexed pod, the targets file where the rendered volume mounts it, the memory limit):
    the canary migrates the first two tenants alone; then every tenant is at head, each pod
    names its share (every third tenant from its index) and no other, and each tenant was
    migrated by exactly one pod (the canaries by the canary, and found at head after)."""
    values = {
        **database_values(database),
        "fleet": {"enabled": True, "pods": 3, "canary": 2, "targets": {"list": tenants}},
    }
    manifests = render_all(values)
    secrets = {name: m["stringData"] for name, m in manifests.items() if m["kind"] == "Secret"}
    canary_job, fleet_job = manifests["shop-migrator-canary"], manifests["shop-migrator-fleet"]
    server = database.server

    def revision(name: str) -> str | None:
        return Database(server, name).revision()

    command, env = pod_command(example_image, canary_job, secrets, tmp_path / "canary")
    canary = subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    after_canary = {name: revision(name) for name in tenants}
    pods = []
    for index in range(fleet_job["spec"]["completions"]):
        command, env = pod_command(
            example_image,
            fleet_job,
            secrets,
            tmp_path / f"index-{index}",
            options=("--hostname", f"{fleet_job['metadata']['name']}-{index}"),
            extra_env={"JOB_COMPLETION_INDEX": str(index)},  # what Kubernetes sets
        )
        pods.append(
            subprocess.Popen(
                command,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [pod.communicate(timeout=300) for pod in pods]

    assert canary.returncode == 0, canary.stdout + canary.stderr
    assert named(canary.stdout + canary.stderr, tenants) == set(tenants[:2])
    assert after_canary == {name: (HEAD if name in tenants[:2] else None) for name in tenants}
    migrated_by: dict[str, list[str]] = {name: [] for name in tenants}
    for name, count in applied(canary.stdout).items():
        migrated_by[name] += ["canary"] if count else []
    for index, (pod, (stdout, stderr)) in enumerate(zip(pods, outputs, strict=True)):
        share = tenants[index::3]
        assert pod.returncode == 0, stdout + stderr
        assert named(stdout + stderr, tenants) == set(share), stdout + stderr
        assert sorted(applied(stdout)) == sorted(share), stdout
        for name, count in applied(stdout).items():
            migrated_by[name] += [f"index {index}"] if count else []
        assert_no_password(stdout + stderr)
    assert migrated_by == {
        name: ["canary" if name in tenants[:2] else f"index {position % 3}"]
        for position, name in enumerate(tenants)
    }
    assert {name: revision(name) for name in tenants} == dict.fromkeys(tenants, HEAD)
    assert_no_password(canary.stdout + canary.stderr)
