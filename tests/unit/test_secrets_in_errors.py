"""Known secrets fed through every error path that sees them: the output, the logs and the
whole exception chain must not hold them, nor a piece of them."""

from __future__ import annotations

import asyncio
import logging
import traceback
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gpuflow.cli.main import app
from gpuflow.core.request import Priority
from gpuflow.gpu.admission.base import AdmissionConfigError, AdmissionError
from gpuflow.gpu.admission.policy import Ticket
from gpuflow.gpu.admission.queues import admission_queue

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DB_PASSWORD = "s3cr3t-Pa55"
REPOSITORY = Path(__file__).resolve().parents[2]


def _pieces(secret: str, length: int = 6) -> list[str]:
    """Every run of ``length`` characters of ``secret``: a truncated echo is a leak too."""
    return [secret[i : i + length] for i in range(len(secret) - length + 1)]


def _assert_absent(secret: str, *texts: str) -> None:
    for text in texts:
        leaked = [piece for piece in _pieces(secret) if piece in text]
        assert not leaked, f"{leaked[0]!r} of the secret appears in: {text[:500]}"


def _ecs_stack() -> dict[str, Any]:
    stack: dict[str, Any] = yaml.safe_load((REPOSITORY / "blocks" / "ecs.yaml").read_text())
    stack["object_store"]["credentials"] = {
        "aws_access_key_id": "AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key": AWS_SECRET,
    }
    return stack


@pytest.mark.parametrize(
    "document",
    [
        # A bad field beside the secret, the secret where a path goes, the secret field of
        # the wrong type, and documents that are not YAML at the secret's line.
        lambda s: yaml.safe_dump({**s, "nas_root": 12}),
        lambda s: yaml.safe_dump({**s, "nas_root": [AWS_SECRET]}),
        lambda s: yaml.safe_dump(
            {
                **s,
                "object_store": {
                    **s["object_store"],
                    "credentials": {"aws_secret_access_key": [AWS_SECRET]},
                },
            }
        ),
        lambda s: yaml.safe_dump(s) + f"broken: [{AWS_SECRET}\n",
        lambda s: f"object_store: {{credentials: {{aws_secret_access_key: '{AWS_SECRET}\n",
    ],
)
def test_a_bad_stack_file_never_echoes_its_secrets(
    tmp_path: Path, document: object, caplog: pytest.LogCaptureFixture
) -> None:
    stack_file = tmp_path / "stack.yaml"
    stack_file.write_text(document(_ecs_stack()))  # type: ignore[operator]
    caplog.set_level(logging.DEBUG)
    result = CliRunner().invoke(
        app, ["bootstrap", "--stack-file", str(stack_file), "--state-dir", str(tmp_path / "s")]
    )
    assert result.exit_code != 0
    assert str(stack_file) in result.output  # the error still names the file
    _assert_absent(AWS_SECRET, result.output, caplog.text)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://gpuflow:{DB_PASSWORD}@127.0.0.1:1/queue",
        f"postgresql://127.0.0.1:1/queue?user=gpuflow&password={DB_PASSWORD}",
        f"postgresql://gpuflow:{DB_PASSWORD[:4]}/{DB_PASSWORD[4:]}@127.0.0.1:1/queue",
        f"postgresql://gpuflow:{DB_PASSWORD[:4]}?{DB_PASSWORD[4:]}@127.0.0.1:1/queue",
        f"postgresql+asyncpg://gpuflow:{DB_PASSWORD}@127.0.0.1:99999/queue",
    ],
)
def test_an_admission_url_never_shows_its_password(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    queue = admission_queue(url)
    with pytest.raises((AdmissionError, AdmissionConfigError)) as failure:
        asyncio.run(queue.enqueue(Ticket(("gpu",), 1, Priority.NORMAL, "x"), {"gpu": 1}, 10))
    chain = "".join(traceback.format_exception(failure.value))
    password_pieces = DB_PASSWORD[:4], DB_PASSWORD[4:]
    for text in (str(failure.value), queue.location, chain, caplog.text):
        assert not any(piece in text for piece in password_pieces), text[:800]
