"""Loggers: the flow run's, where there is one, so lines reach the run's page in the UI."""

from __future__ import annotations

import logging

from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger

RunLogger = logging.Logger | logging.LoggerAdapter[logging.Logger]


def run_logger(fallback: str) -> RunLogger:
    """The run's logger inside a flow or task run, else the logger named ``fallback``."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger(fallback)
