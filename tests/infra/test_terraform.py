"""Static checks of infra/terraform.

`terraform validate` needs the providers, which are downloaded from the Terraform
registry: that runs upstream in .github/workflows/terraform.yml. Here, without a
network, the checks are: `terraform fmt`, the structure of every module (parsed
with python-hcl2), no hard-coded account ids, regions, ARNs or secrets, tags on
every taggable resource, and checkov with zero failed checks.

Every checker is a plain function returning a list of problems, and each one is
also fed a bad snippet to show that it can fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2 import SerializationOptions

from tests.support.services import service_missing

REPO = Path(__file__).resolve().parents[2]
TF_ROOT = REPO / "infra" / "terraform"
MODULES_DIR = TF_ROOT / "modules"
EXAMPLES_DIR = TF_ROOT / "examples"
CHECKS_PROJECT = TF_ROOT / "checks"

EXPECTED_MODULES = {"nas", "nas-alicloud", "kubernetes", "ecs", "prefect"}
REQUIRED_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md")

HclDoc = dict[str, Any]
Checker = Callable[[HclDoc, str], list[str]]

_OPTIONS = SerializationOptions(
    with_comments=False, strip_string_quotes=True, explicit_blocks=False
)


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def parse_hcl(text: str) -> HclDoc:
    return dict(hcl2.loads(text, serialization_options=_OPTIONS))


def parse_file(path: Path) -> HclDoc:
    return parse_hcl(path.read_text(encoding="utf-8"))


def tf_files() -> list[Path]:
    """Every .tf file under infra/terraform, leaving out hidden folders (.terraform, .venv)."""
    return sorted(
        path
        for path in TF_ROOT.rglob("*.tf")
        if not any(part.startswith(".") for part in path.relative_to(TF_ROOT).parts)
    )


def module_dirs() -> list[Path]:
    return sorted(path for path in MODULES_DIR.iterdir() if path.is_dir())


def example_dirs() -> list[Path]:
    return sorted(path for path in EXAMPLES_DIR.iterdir() if path.is_dir())


def labelled(doc: HclDoc, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Blocks with one label: variable, output, module, provider."""
    for entry in doc.get(kind, []):
        yield from entry.items()


def resources(doc: HclDoc, kind: str = "resource") -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Blocks with two labels: resource and data, as (type, name, body)."""
    for entry in doc.get(kind, []):
        for type_, named in entry.items():
            for name, body in named.items():
                yield type_, name, body


def rel(path: Path) -> str:
    """A path as the repository names it (absolute for paths outside, e.g. tmp_path)."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------
# Checkers
# ---------------------------------------------------------------------------

_SECRET_NAME = re.compile(
    r"(?:^|_)(?:password|passwd|secret|token|api_?key|private_key|access_key|auth_key)(?:_|$)",
    re.IGNORECASE,
)
# Names of things that point at a secret without being one.
_SECRET_REFERENCE = re.compile(r"(_arns?|_names?|_ids?|_path|_secret_name)$", re.IGNORECASE)


def looks_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not _SECRET_REFERENCE.search(name)


def variable_problems(doc: HclDoc, where: str) -> list[str]:
    """Every variable is typed and described; secret-looking ones are sensitive, no default."""
    problems: list[str] = []
    for name, body in labelled(doc, "variable"):
        if "type" not in body:
            problems.append(f"{where}: variable {name!r} has no type")
        description = body.get("description")
        if not isinstance(description, str) or not description.strip():
            problems.append(f"{where}: variable {name!r} has no description")
        if looks_secret(name):
            if body.get("sensitive") is not True:
                problems.append(f"{where}: variable {name!r} looks secret but is not sensitive")
            if body.get("default") is not None:
                problems.append(f"{where}: secret variable {name!r} has a default value")
    return problems


_ACCOUNT_ID = re.compile(r"(?<![0-9])[0-9]{12}(?![0-9])")
_AWS_REGION = re.compile(
    r"\b(?:us|eu|ap|sa|ca|me|af|il|mx)(?:-gov|-iso[a-z]?)?"
    r"-(?:north|south|east|west|central)(?:east|west)?-[0-9]\b"
)
_ALICLOUD_REGION = re.compile(
    r"\bcn-(?:hangzhou|shanghai|beijing|shenzhen|qingdao|zhangjiakou|huhehaote|wulanchabu"
    r"|chengdu|guangzhou|heyuan|hongkong|nanjing|fuzhou)\b"
)
_ARN = re.compile(r"\barn:aws(?:-[a-z-]+)?:")
_SECRET_VALUES = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "Prefect API key": re.compile(r"\bpnu_[A-Za-z0-9]{20,}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def _strings(node: Any, path: str) -> Iterator[tuple[str, str, str]]:
    """(path, attribute name, string) for every string in a parsed document."""
    if isinstance(node, str):
        yield path, path.rsplit(".", 1)[-1], node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value, path)


def _without_validations(doc: HclDoc) -> HclDoc:
    """The document less the validation blocks of its variables (they may name examples)."""
    copy = dict(doc)
    copy["variable"] = [
        {
            name: {key: value for key, value in body.items() if key != "validation"}
            for name, body in entry.items()
        }
        for entry in doc.get("variable", [])
    ]
    return copy


def hardcoded_problems(doc: HclDoc, where: str) -> list[str]:
    """No account ids, regions, ARNs or secrets written into the configuration."""
    problems: list[str] = []
    for path, attribute, value in _strings(_without_validations(doc), ""):
        at = f"{where}: {path.lstrip('.')}"
        if _ACCOUNT_ID.search(value):
            problems.append(f"{at}: hard-coded 12-digit number (account id?) in {value!r}")
        if _AWS_REGION.search(value) or _ALICLOUD_REGION.search(value):
            problems.append(f"{at}: hard-coded region in {value!r}")
        if _ARN.search(value):
            problems.append(f"{at}: hard-coded ARN in {value!r}; build it with data.aws_partition")
        for kind, pattern in _SECRET_VALUES.items():
            if pattern.search(value):
                problems.append(f"{at}: {kind} written in the configuration")
        if looks_secret(attribute) and value and "${" not in value:
            problems.append(f"{at}: secret-looking attribute set to a literal")
    return problems


# Resources of the AWS and Alibaba Cloud providers that take no tags.
UNTAGGABLE = frozenset(
    {
        "aws_autoscaling_attachment",
        "aws_ecr_lifecycle_policy",
        "aws_ecr_repository_policy",
        "aws_ecs_cluster_capacity_providers",
        "aws_efs_backup_policy",
        "aws_efs_file_system_policy",
        "aws_efs_mount_target",
        "aws_iam_role_policy",
        "aws_iam_role_policy_attachment",
        "aws_kms_alias",
        "alicloud_nas_access_group",
        "alicloud_nas_access_rule",
        "alicloud_nas_mount_target",
    }
)
# Resources that tag through repeated blocks instead of a tags map.
TAG_BLOCKS = {"aws_autoscaling_group": "tag"}


def tag_problems(doc: HclDoc, where: str) -> list[str]:
    """Every taggable AWS / Alibaba Cloud resource sets tags derived from the module's tags."""
    problems: list[str] = []
    for type_, name, body in resources(doc):
        if not type_.startswith(("aws_", "alicloud_")) or type_ in UNTAGGABLE:
            continue
        address = f"{where}: {type_}.{name}"
        block = TAG_BLOCKS.get(type_)
        if block is not None:
            dynamic = [d for d in body.get("dynamic", []) if block in d]
            if block not in body and not dynamic:
                problems.append(f"{address} sets no {block} blocks")
            continue
        tags = body.get("tags")
        if tags is None:
            problems.append(f"{address} sets no tags")
        elif not isinstance(tags, str) or not re.search(r"\b(local|var)\.tags\b", tags):
            problems.append(f"{address} sets tags without the module's tags (local.tags/var.tags)")
    return problems


def versions_problems(doc: HclDoc, where: str) -> list[str]:
    """required_version, and every provider pinned with source and a bounded version."""
    problems: list[str] = []
    terraform_blocks = doc.get("terraform", [])
    if not terraform_blocks:
        return [f"{where}: no terraform block"]
    if not any(isinstance(b.get("required_version"), str) for b in terraform_blocks):
        problems.append(f"{where}: no required_version")
    providers: dict[str, Any] = {}
    for block in terraform_blocks:
        for entry in block.get("required_providers", []):
            providers.update(entry)
    if not providers:
        problems.append(f"{where}: no required_providers")
    for local_name, spec in providers.items():
        if not isinstance(spec, dict) or not spec.get("source"):
            problems.append(f"{where}: provider {local_name!r} has no source")
            continue
        version = spec.get("version")
        if not isinstance(version, str) or not re.search(r"(~>|<|^\s*=?\s*\d)", version):
            problems.append(
                f"{where}: provider {local_name!r} is not pinned (want ~> or an upper bound, "
                f"got {version!r})"
            )
    return problems


def module_problems(directory: Path) -> list[str]:
    """Layout of a module or example root: files, outputs, pinned providers it uses."""
    where = rel(directory)
    problems = [
        f"{where}: missing {name}" for name in REQUIRED_FILES if not (directory / name).is_file()
    ]
    docs = {path.name: parse_file(path) for path in sorted(directory.glob("*.tf"))}
    if not any(True for doc in docs.values() for _ in labelled(doc, "output")):
        problems.append(f"{where}: declares no output")
    versions = docs.get("versions.tf")
    if versions is None:
        return problems
    problems += versions_problems(versions, f"{where}/versions.tf")
    required = {
        name
        for block in versions.get("terraform", [])
        for entry in block.get("required_providers", [])
        for name in entry
    }
    for doc in docs.values():
        for kind in ("resource", "data"):
            for type_, name, _ in resources(doc, kind):
                provider = type_.split("_", 1)[0]
                if provider != "terraform" and provider not in required:
                    problems.append(
                        f"{where}: {type_}.{name} uses provider {provider!r} "
                        "that required_providers does not pin"
                    )
    return problems


def module_call_problems(doc: HclDoc, where: Path) -> list[str]:
    """A module call passes tags (or labels) whenever the called module takes them."""
    problems: list[str] = []
    for name, body in labelled(doc, "module"):
        source = body.get("source")
        if not isinstance(source, str) or not source.startswith("."):
            continue
        target = (where.parent / source).resolve()
        variables = {
            var for path in target.glob("*.tf") for var, _ in labelled(parse_file(path), "variable")
        }
        for key in ("tags", "labels"):
            if key in variables and key not in body:
                problems.append(f"{rel(where)}: module {name!r} does not pass {key}")
    return problems


def tags_variable_problems(directory: Path) -> list[str]:
    """A module with AWS or Alibaba Cloud resources takes a tags map(string)."""
    docs = [parse_file(path) for path in sorted(directory.glob("*.tf"))]
    has_cloud_resources = any(
        type_.startswith(("aws_", "alicloud_")) for doc in docs for type_, _, _ in resources(doc)
    )
    if not has_cloud_resources:
        return []
    types = [
        body.get("type")
        for doc in docs
        for name, body in labelled(doc, "variable")
        if name == "tags"
    ]
    if not types:
        return [f"{rel(directory)}: has cloud resources but no tags variable"]
    if types[0] not in ("${map(string)}", "map(string)"):
        return [f"{rel(directory)}: tags variable is {types[0]!r}, not map(string)"]
    return []


# ---------------------------------------------------------------------------
# The checks over infra/terraform
# ---------------------------------------------------------------------------


def test_every_expected_module_exists() -> None:
    assert {path.name for path in module_dirs()} >= EXPECTED_MODULES
    assert (EXAMPLES_DIR / "complete").is_dir()
    assert (TF_ROOT / "README.md").is_file()


@pytest.mark.parametrize(
    "directory",
    [*module_dirs(), *example_dirs()],
    ids=lambda path: rel(path),
)
def test_module_layout(directory: Path) -> None:
    assert module_problems(directory) == []
    assert tags_variable_problems(directory) == []


def test_example_root_has_tfvars_example() -> None:
    for directory in example_dirs():
        assert (directory / "terraform.tfvars.example").is_file(), rel(directory)


@pytest.mark.parametrize(
    "checker",
    [variable_problems, hardcoded_problems, tag_problems],
    ids=lambda checker: checker.__name__,
)
def test_every_tf_file(checker: Checker) -> None:
    files = tf_files()
    assert files, "no .tf files found under infra/terraform"
    problems = [problem for path in files for problem in checker(parse_file(path), rel(path))]
    assert problems == []


def test_module_calls_pass_tags() -> None:
    problems = [
        problem
        for directory in example_dirs()
        for path in sorted(directory.glob("*.tf"))
        for problem in module_call_problems(parse_file(path), path)
    ]
    assert problems == []


def _terraform() -> str:
    binary = shutil.which("terraform")
    if binary is None:
        service_missing("terraform binary not on PATH: `terraform fmt -check` cannot run here")
    return binary


def _run_terraform(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}
    return subprocess.run(
        [_terraform(), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_terraform_fmt() -> None:
    result = _run_terraform("fmt", "-check", "-recursive", "-diff", rel(TF_ROOT), cwd=REPO)
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


# ---------------------------------------------------------------------------
# Each checker can fail
# ---------------------------------------------------------------------------

BAD_SNIPPETS: list[tuple[Checker, str, str]] = [
    (variable_problems, 'variable "x" {\n  description = "d"\n}\n', "has no type"),
    (variable_problems, 'variable "x" {\n  type = string\n}\n', "has no description"),
    (
        variable_problems,
        'variable "api_key" {\n  type = string\n  description = "d"\n}\n',
        "not sensitive",
    ),
    (
        variable_problems,
        'variable "db_password" {\n  type = string\n  description = "d"\n'
        '  sensitive = true\n  default = "hunter2"\n}\n',
        "has a default",
    ),
    (
        hardcoded_problems,
        'resource "aws_iam_role" "r" {\n  name = "r-123456789012"\n  tags = local.tags\n}\n',
        "12-digit",
    ),
    (
        hardcoded_problems,
        'provider "aws" {\n  region = "us-east-1"\n}\n',
        "hard-coded region",
    ),
    (
        hardcoded_problems,
        'locals {\n  zone = "cn-hangzhou"\n}\n',
        "hard-coded region",
    ),
    (
        hardcoded_problems,
        'variable "r" {\n  type = string\n  description = "d"\n  default = "eu-west-1"\n}\n',
        "hard-coded region",
    ),
    (
        hardcoded_problems,
        'resource "aws_iam_role_policy_attachment" "a" {\n'
        '  policy_arn = "arn:aws:iam::aws:policy/AdministratorAccess"\n}\n',
        "hard-coded ARN",
    ),
    (
        hardcoded_problems,
        'provider "prefect" {\n  api_key = "pnu_abcdefghijklmnopqrstuvwxyz0123"\n}\n',
        "Prefect API key",
    ),
    (
        hardcoded_problems,
        'resource "x_y" "z" {\n  password = "hunter2"\n}\n',
        "secret-looking attribute",
    ),
    (
        tag_problems,
        'resource "aws_s3_bucket" "b" {\n  bucket = var.name\n}\n',
        "sets no tags",
    ),
    (
        tag_problems,
        'resource "aws_s3_bucket" "b" {\n  bucket = var.name\n  tags = { a = "b" }\n}\n',
        "without the module's tags",
    ),
    (
        tag_problems,
        'resource "aws_autoscaling_group" "g" {\n  max_size = 1\n}\n',
        "sets no tag blocks",
    ),
    (
        versions_problems,
        'terraform {\n  required_providers {\n    aws = { source = "hashicorp/aws" }\n  }\n}\n',
        "not pinned",
    ),
    (
        versions_problems,
        'terraform {\n  required_version = ">= 1.9"\n  required_providers {\n'
        '    aws = { source = "hashicorp/aws", version = ">= 5.0" }\n  }\n}\n',
        "not pinned",
    ),
    (
        versions_problems,
        "terraform {\n  required_providers {\n"
        '    aws = { source = "hashicorp/aws", version = "~> 6.0" }\n  }\n}\n',
        "no required_version",
    ),
]

GOOD_SNIPPETS: list[tuple[Checker, str]] = [
    (
        variable_problems,
        'variable "secret_arns" {\n  type = list(string)\n  description = "d"\n  default = []\n}\n',
    ),
    (
        hardcoded_problems,
        'variable "region" {\n  type = string\n  description = "d"\n  validation {\n'
        '    condition = can(regex("^[a-z]+", var.region))\n'
        '    error_message = "region must be a region such as eu-west-1."\n  }\n}\n',
    ),
    (
        hardcoded_problems,
        'resource "aws_iam_role_policy_attachment" "a" {\n'
        '  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/X"\n}\n',
    ),
    (
        tag_problems,
        'resource "aws_s3_bucket" "b" {\n  tags = merge(local.tags, { Name = "b" })\n}\n'
        'resource "aws_kms_alias" "a" {\n  name = "alias/x"\n}\n',
    ),
]


@pytest.mark.parametrize(
    ("checker", "snippet", "expected"),
    BAD_SNIPPETS,
    ids=[f"{checker.__name__}-{expected}" for checker, _, expected in BAD_SNIPPETS],
)
def test_checker_flags_bad_snippet(checker: Checker, snippet: str, expected: str) -> None:
    problems = checker(parse_hcl(snippet), "snippet.tf")
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("checker", "snippet"),
    GOOD_SNIPPETS,
    ids=[f"{checker.__name__}-{index}" for index, (checker, _) in enumerate(GOOD_SNIPPETS)],
)
def test_checker_accepts_good_snippet(checker: Checker, snippet: str) -> None:
    assert checker(parse_hcl(snippet), "snippet.tf") == []


def test_module_problems_flags_incomplete_module(tmp_path: Path) -> None:
    module = tmp_path / "broken"
    module.mkdir()
    (module / "main.tf").write_text('resource "helm_release" "r" {\n  name = "x"\n}\n')
    (module / "versions.tf").write_text(
        'terraform {\n  required_version = ">= 1.9"\n  required_providers {\n'
        '    aws = { source = "hashicorp/aws", version = "~> 6.0" }\n  }\n}\n'
    )
    problems = module_problems(module)
    assert any("missing variables.tf" in p for p in problems), problems
    assert any("missing README.md" in p for p in problems), problems
    assert any("declares no output" in p for p in problems), problems
    assert any("provider 'helm'" in p for p in problems), problems


def test_module_call_problems_flags_missing_tags(tmp_path: Path) -> None:
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "variables.tf").write_text(
        'variable "tags" {\n  type = map(string)\n  description = "d"\n}\n'
    )
    root = tmp_path / "root" / "main.tf"
    root.parent.mkdir()
    root.write_text('module "m" {\n  source = "../mod"\n}\n')
    problems = module_call_problems(parse_file(root), root)
    assert any("does not pass tags" in p for p in problems), problems


def test_terraform_fmt_flags_bad_formatting(tmp_path: Path) -> None:
    (tmp_path / "bad.tf").write_text('variable "x" {\ntype=string\n}\n')
    result = _run_terraform("fmt", "-check", "-recursive", str(tmp_path), cwd=tmp_path)
    assert result.returncode != 0
    assert "bad.tf" in result.stdout


# ---------------------------------------------------------------------------
# checkov, from its own locked uv project (its pins conflict with prefect-aws)
# ---------------------------------------------------------------------------


def _uv() -> str:
    try:
        from uv import find_uv_bin
    except ImportError:
        found = shutil.which("uv")
    else:
        try:
            found = find_uv_bin()
        except FileNotFoundError:
            found = shutil.which("uv")
    if found is None:
        service_missing("uv not found: it installs checkov from infra/terraform/checks/uv.lock")
    return found


def run_checkov(directory: Path) -> dict[str, Any]:
    """checkov over a directory, installed from infra/terraform/checks (locked, frozen)."""
    env = {
        key: value
        for key, value in os.environ.items()
        # This must not point uv at the main project's environment.
        if key not in {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "UV_PROJECT"}
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [
        _uv(),
        "run",
        "--project",
        str(CHECKS_PROJECT),
        "--frozen",
        "--quiet",
        "checkov",
        "--directory",
        str(directory),
        "--framework",
        "terraform",
        "--skip-path",
        "checks",
        "--skip-download",  # no network: no guidelines from the vendor's platform
        "--quiet",
        "--compact",
        "--output",
        "json",
    ]
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=540, check=False
    )
    # checkov exits 1 when a check fails; anything else is a crash.
    assert result.returncode in (0, 1), f"checkov crashed:\n{result.stdout}\n{result.stderr}"
    report = json.loads(result.stdout)
    reports: list[dict[str, Any]] = report if isinstance(report, list) else [report]
    terraform = [r for r in reports if r.get("check_type") == "terraform"]
    assert terraform, f"no terraform report in checkov's output:\n{result.stdout[:2000]}"
    return terraform[0]


def _failures(report: dict[str, Any]) -> list[str]:
    return [
        f"{c['check_id']} {c['check_name']} — {c['resource']} ({c['file_path']})"
        for c in report.get("results", {}).get("failed_checks", [])
    ]


@pytest.mark.timeout(600)
@pytest.mark.integration
def test_checkov_passes() -> None:
    report = run_checkov(TF_ROOT)
    summary = report["summary"]
    print(
        f"checkov {summary['checkov_version']}: passed {summary['passed']}, "
        f"failed {summary['failed']}, skipped {summary['skipped']}, "
        f"resources {summary['resource_count']}"
    )
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] > 0
    assert summary["passed"] > 0
    assert _failures(report) == []
    assert summary["failed"] == 0


@pytest.mark.timeout(600)
@pytest.mark.integration
def test_checkov_flags_bad_configuration(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        'resource "aws_efs_file_system" "bad" {\n  encrypted = false\n}\n\n'
        'resource "aws_ecr_repository" "bad" {\n  name                 = "bad"\n'
        '  image_tag_mutability = "MUTABLE"\n}\n'
    )
    report = run_checkov(tmp_path)
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert {"CKV_AWS_42", "CKV_AWS_51"} <= failed, failed


# ---------------------------------------------------------------------------
# Defaults and inputs AWS would refuse at apply
# ---------------------------------------------------------------------------


def _variable(module: str, name: str) -> dict[str, Any]:
    variables = parse_file(MODULES_DIR / module / "variables.tf")["variable"]
    (found,) = [block[name] for block in variables if name in block]
    return dict(found)


def test_the_gpu_ami_is_amazon_linux_2023_and_an_amazon_linux_2_one_is_refused() -> None:
    # AWS's public parameter names, from the ECS-optimized AMI documentation.
    ami = _variable("ecs", "gpu_ami_ssm_parameter")
    assert ami["default"] == (
        "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
    )
    conditions = [rule["condition"] for rule in ami["validation"]]
    refused = (
        '!startswith(var.gpu_ami_ssm_parameter, "/aws/service/ecs/optimized-ami/amazon-linux-2/")'
    )
    assert any(refused in condition for condition in conditions)


def test_efs_mount_targets_require_subnets_in_distinct_availability_zones() -> None:
    main = parse_file(MODULES_DIR / "nas" / "main.tf")
    (subnets,) = [d["aws_subnet"]["mount"] for d in main["data"] if "aws_subnet" in d]
    (target,) = [
        r["aws_efs_mount_target"]["this"] for r in main["resource"] if "aws_efs_mount_target" in r
    ]
    assert subnets["for_each"] == target["for_each"] == "${local.subnets}"
    (zones,) = [block["subnet_zones"] for block in main["locals"] if "subnet_zones" in block]
    assert "subnet.availability_zone" in zones and "data.aws_subnet.mount" in zones
    (precondition,) = [p for lifecycle in target["lifecycle"] for p in lifecycle["precondition"]]
    assert precondition["condition"] == (
        "${length(distinct(values(local.subnet_zones))) == length(local.subnet_zones)}"
    )
    assert "distinct availability zones" in precondition["error_message"]


def _rbac_rules(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = {"api_groups": "apiGroups", "resource_names": "resourceNames"}
    return [{names.get(key, key): value for key, value in rule.items()} for rule in blocks]


def test_terraform_gives_the_flow_pod_the_codes_role_and_crd_reader() -> None:
    # One source of truth: the code's rules (also rendered to deployments/kubernetes/).
    from gpuflow.compute.kubernetes.pool import CRD_READER_RULES, FLOW_POD_RULES

    resources: dict[str, Any] = {}
    for block in parse_file(MODULES_DIR / "kubernetes" / "main.tf")["resource"]:
        for kind, named in block.items():
            resources.setdefault(kind, {}).update(named)
    role = resources["kubernetes_role_v1"]["flow"]
    assert _rbac_rules(role["rule"]) == FLOW_POD_RULES
    reader = resources["kubernetes_cluster_role_v1"]["flow_crd_reader"]
    assert _rbac_rules(reader["rule"]) == CRD_READER_RULES
    binding = resources["kubernetes_cluster_role_binding_v1"]["flow_crd_reader"]
    assert binding["subject"][0]["kind"] == "ServiceAccount"


def _policy_statements(path: Path, document: str) -> list[dict[str, Any]]:
    """The statements of data.aws_iam_policy_document.<document>, plain and dynamic."""
    for block in parse_file(path)["data"]:
        body = block.get("aws_iam_policy_document", {}).get(document)
        if body is not None:
            statements = list(body.get("statement", []))
            for dynamic in body.get("dynamic", []):
                statements += dynamic["statement"]["content"]
            return statements
    raise AssertionError(f"no aws_iam_policy_document {document} in {path}")


def test_the_ecs_task_role_grants_exactly_the_aws_calls_the_code_makes() -> None:
    # API_CALLS is held to the code by tests/ecs (each call the ECS test servers receive
    # from the code must be listed); here the task role is held to API_CALLS.
    from gpuflow.compute.ecs.aws import API_CALLS, OPTIONAL_API_CALLS

    statements = _policy_statements(MODULES_DIR / "ecs" / "iam.tf", "task")
    granted = {
        action
        for statement in statements
        for action in statement["actions"]
        if action.split(":")[0] in ("ecs", "logs", "iam")
    }
    needed = {action for actions in API_CALLS.values() for action in actions}
    assert granted == needed
    assert not granted & {a for actions in OPTIONAL_API_CALLS.values() for a in actions}
    (tagging,) = [s for s in statements if s["actions"] == ["ecs:TagResource"]]
    assert any("task-definition/" in resource for resource in tagging["resources"])
    (condition,) = tagging["condition"]
    assert (condition["variable"], set(condition["values"])) == (
        "ecs:CreateAction",
        {"RegisterTaskDefinition", "RunTask"},
    )


def test_the_ecs_modules_log_group_is_the_ecs_blocks_default() -> None:
    from gpuflow.compute.ecs.target import EcsTask

    variables: dict[str, Any] = {}
    for block in parse_file(MODULES_DIR / "ecs" / "variables.tf")["variable"]:
        variables.update(block)
    fields = EcsTask.model_fields
    assert variables["log_group_name"]["default"] == fields["log_group"].default
    assert fields["create_log_group"].default is False
    main = (MODULES_DIR / "ecs" / "main.tf").read_text()
    assert "log_group_name      = var.log_group_name" in main


def test_the_prefect_workers_role_grants_what_prefect_aws_ecs_worker_calls() -> None:
    """The worker's AWS calls, read from the installed prefect-aws's ecs_worker.py and the
    ECS observer it starts in-process (observers/ecs.py): their boto3 clients' ECS, EC2 and
    CloudWatch Logs operations, plus what those imply (tag-on-create, PassRole)."""
    import prefect_aws.observers.ecs as ecs_observer
    import prefect_aws.workers.ecs_worker as ecs_worker

    source = "".join(
        Path(module.__file__ or "").read_text(encoding="utf-8")
        for module in (ecs_worker, ecs_observer)
    )
    services = {"ecs_client": "ecs", "ec2_client": "ec2", "logs_client": "logs"}
    called = {
        f"{services[client]}:{''.join(part.title() for part in operation.split('_'))}"
        for client, operation in re.findall(
            r"\b(ecs_client|ec2_client|logs_client)\.([a-z_]+)\(", source
        )
        if not operation.startswith("_")
    }
    needed = called | {"ecs:TagResource", "iam:PassRole"}

    statements = _policy_statements(MODULES_DIR / "ecs" / "worker.tf", "worker")
    granted = {action for statement in statements for action in statement["actions"]}
    assert granted == needed


def test_the_prefect_worker_is_an_optional_ecs_service_polling_gpuflows_pool() -> None:
    resources: dict[str, Any] = {}
    for block in parse_file(MODULES_DIR / "ecs" / "worker.tf")["resource"]:
        for kind, named in block.items():
            resources.setdefault(kind, {}).update(named)
    service = resources["aws_ecs_service"]["worker"]
    assert service["count"] == "${local.worker_count}"
    assert service["launch_type"] == "FARGATE"
    assert service["network_configuration"][0]["assign_public_ip"] is False
    definition = resources["aws_ecs_task_definition"]["worker"]
    assert "var.prefect_work_pool_name" in definition["container_definitions"]
    variables: dict[str, Any] = {}
    for block in parse_file(MODULES_DIR / "ecs" / "variables.tf")["variable"]:
        variables.update(block)
    assert variables["enable_prefect_worker"]["default"] is False
    from gpuflow.ops.work_pools import pool_name

    assert variables["prefect_work_pool_name"]["default"] == pool_name("ecs")


def test_cluster_add_ons_are_optional_pinned_helm_releases() -> None:
    resources: dict[str, Any] = {}
    for block in parse_file(MODULES_DIR / "kubernetes" / "addons.tf")["resource"]:
        for kind, named in block.items():
            resources.setdefault(kind, {}).update(named)
    variables: dict[str, Any] = {}
    for block in parse_file(MODULES_DIR / "kubernetes" / "variables.tf")["variable"]:
        variables.update(block)
    releases = resources["helm_release"]
    assert set(releases) == {"efs_csi_driver", "nvidia_device_plugin"}
    for name, release in releases.items():
        switch = f"install_{name}"
        assert release["count"] == f"${{var.{switch} ? 1 : 0}}"
        assert variables[switch]["default"] is False  # clusters usually have them
        version = variables[f"{name}_chart_version"]["default"]
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}: pin an exact chart version"
        assert release["version"] == f"${{var.{name}_chart_version}}"
