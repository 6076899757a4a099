"""ECS tests: moto's server on 127.0.0.1 over HTTP, with the answers proxy in front
(tests/support/ecs_answers.py: what moto does not model, hand-written from the AWS docs)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer
from prefect_aws import AwsCredentials

from gpuflow.compute.ecs.aws import API_CALLS, OPTIONAL_API_CALLS
from gpuflow.compute.ecs.target import EcsTask
from gpuflow.compute.ecs.taskdef import EfsNas
from tests.support.ecs_answers import HARNESS_AGENT, AnswersProxy

REGION = "us-east-1"
ACCOUNT = "123456789012"
RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> dict[str, Any]:
    """An AWS answer written by hand from the AWS docs, not captured from AWS (see
    recorded/README.md for the page each follows)."""
    answer: dict[str, Any] = json.loads((RECORDED / f"{name}.json").read_text())
    return answer


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def answers(moto_url: str) -> Iterator[AnswersProxy]:
    proxy = AnswersProxy(moto_url)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.fixture(scope="session")
def aws(answers: AnswersProxy) -> AwsCredentials:
    return AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name=REGION,
        aws_client_parameters={"endpoint_url": answers.url},
    )


def client(aws: AwsCredentials, service: str) -> Any:
    """A client for the tests' own calls (setup, playing ECS's or a container's part):
    marked, so that the check below counts only the code's calls."""
    return aws.get_boto3_session().client(
        service,
        region_name=REGION,
        endpoint_url=aws.aws_client_parameters.endpoint_url,
        config=Config(user_agent_extra=HARNESS_AGENT),
    )


@pytest.fixture(autouse=True)
def only_calls_the_iam_policy_grants(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each AWS operation the code calls in a test is one gpuflow declares (API_CALLS, which
    Terraform's task role grants): a new call without its permission fails here."""
    if "answers" not in request.fixturenames:
        yield
        return
    proxy: AnswersProxy = request.getfixturevalue("answers")
    before = len(proxy.code_calls)
    yield
    undeclared = set(proxy.code_calls[before:]) - set(API_CALLS) - set(OPTIONAL_API_CALLS)
    assert not undeclared, f"AWS calls not in gpuflow.compute.ecs.aws.API_CALLS: {undeclared}"


@dataclass(frozen=True)
class Network:
    subnet: str
    security_group: str


@pytest.fixture(scope="session")
def network(aws: AwsCredentials) -> Network:
    ec2 = client(aws, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    # EFS mounts resolve the file system's DNS name: the VPC needs DNS hostnames.
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="gpuflow-jobs", Description="jobs", VpcId=vpc)
    return Network(subnet=subnet, security_group=group["GroupId"])


@dataclass(frozen=True)
class Roles:
    execution: str
    job: str


@pytest.fixture(scope="session")
def roles(aws: AwsCredentials) -> Roles:
    """The task execution role and the job's task role, created in moto's IAM."""
    iam = client(aws, "iam")
    trust = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )
    arns = {}
    for name in ("gpuflow-execution", "gpuflow-job"):
        arns[name] = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    # What ECS needs to start the task: pull the image, write logs, read the job's secrets.
    execution = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "ecr:GetAuthorizationToken",
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                ],
                "Resource": "*",
            },
            {
                "Effect": "Allow",
                "Action": ["secretsmanager:GetSecretValue", "ssm:GetParameters"],
                "Resource": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:hf-token-*",
            },
        ],
    }
    iam.put_role_policy(
        RoleName="gpuflow-execution",
        PolicyName="gpuflow-task-execution",
        PolicyDocument=json.dumps(execution),
    )
    return Roles(execution=arns["gpuflow-execution"], job=arns["gpuflow-job"])


@pytest.fixture
def cluster(aws: AwsCredentials) -> str:
    name = f"gpuflow-{uuid.uuid4().hex[:8]}"
    client(aws, "ecs").create_cluster(clusterName=name)
    return name


@pytest.fixture
def task_transitions(moto_url: str) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Configure how moto moves ``ecs::task`` through its states (moto's state manager).

    moto ticks a task on every DescribeTasks; ``{"progression": "manual", "times": n}``
    advances it one state (RUNNING → DEACTIVATING → STOPPING → DEPROVISIONING → STOPPED)
    every n descriptions.
    """

    def post(path: str, payload: dict[str, Any]) -> None:
        request = urllib.request.Request(  # noqa: S310 - an http:// URL on loopback
            f"{moto_url}{path}", data=json.dumps(payload).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - loopback moto
            pass

    def set_transition(transition: dict[str, Any]) -> None:
        post(
            "/moto-api/state-manager/set-transition",
            {"model_name": "ecs::task", "transition": transition},
        )

    yield set_transition
    post("/moto-api/state-manager/unset-transition", {"model_name": "ecs::task"})


NAS = EfsNas(
    file_system_id="fs-0123456789abcdef0",
    access_point_id="fsap-0fedcba9876543210",
    mount_path="/mnt/gpuflow-nas",
)


@pytest.fixture
def make_target(
    aws: AwsCredentials, network: Network, roles: Roles, cluster: str
) -> Callable[..., EcsTask]:
    def make(**overrides: Any) -> EcsTask:
        fields: dict[str, Any] = {
            "aws_credentials": aws,
            "cluster": cluster,
            "family": f"job-{uuid.uuid4().hex[:8]}",
            "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/gpuflow-i2v:1",
            "nas": NAS,
            "execution_role_arn": roles.execution,
            "task_role_arn": roles.job,
            "log_group": f"/gpuflow/test-{uuid.uuid4().hex[:8]}",
            "subnets": [network.subnet],
            "security_groups": [network.security_group],
            "secrets": {
                "HF_TOKEN": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:hf-token-AbCdEf"
            },
            "tags": {"team": "video"},
            "poll_interval_s": 0.05,
            "poll_max_interval_s": 0.2,
            "log_drain_s": 0.5,
        }
        fields.update(overrides)
        target = EcsTask(**fields)
        if not target.create_log_group:  # the group Terraform's ecs module creates
            logs = client(aws, "logs")
            with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
                logs.create_log_group(logGroupName=target.log_group)
        return target

    return make


def container_log_writer(
    aws: AwsCredentials, group: str, stream: str
) -> Callable[[list[str]], None]:
    """Writes log events as the awslogs driver would for the task's container.

    moto runs no containers, so the test plays the container's part in CloudWatch Logs.
    """
    logs = client(aws, "logs")
    clock = iter(range(10**9))

    def write(lines: list[str]) -> None:
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
        base = int(time.time() * 1000)  # CloudWatch refuses events older than 14 days
        logs.put_log_events(
            logGroupName=group,
            logStreamName=stream,
            logEvents=[{"timestamp": base + next(clock), "message": line} for line in lines],
        )

    return write


def ecs_client(aws: AwsCredentials) -> Any:
    return client(aws, "ecs")


def all_tasks(aws: AwsCredentials, cluster: str) -> list[dict[str, Any]]:
    ecs = ecs_client(aws)
    arns = ecs.list_tasks(cluster=cluster)["taskArns"]
    if not arns:
        return []
    return list(ecs.describe_tasks(cluster=cluster, tasks=arns, include=["TAGS"])["tasks"])
