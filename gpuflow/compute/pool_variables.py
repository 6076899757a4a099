"""Work-pool template defaults that read Prefect variables.

A template variable whose default is ``{{ prefect.variables.<name> }}`` takes its value from
the Prefect variable ``<name>`` when the worker renders a run, so deployments name no
cluster, role, file system or namespace: ``gpuflow bootstrap`` sets the variables from
the stack, Terraform's prefect module from its outputs. A variable missing at render time
becomes an empty string (Prefect's rule), so bootstrap reports the ones it could not set.
"""

from __future__ import annotations

from typing import Any

# A reference to a Prefect variable, as Prefect's templating finds it.
VARIABLE_REFERENCE_PATTERN = r"\{\{ *prefect\.variables\.[A-Za-z0-9_]+ *\}\}"


def variable_reference(name: str) -> str:
    return "{{ prefect.variables." + name + " }}"


def id_or_reference(id_pattern: str) -> str:
    """A pattern for an ID or a variable reference: the server checks a template's
    defaults against their patterns before any variable is resolved."""
    return f"^({id_pattern}|{VARIABLE_REFERENCE_PATTERN})$"


def default_to_variables(properties: dict[str, Any], variables: dict[str, str]) -> None:
    """Make each template variable of ``variables`` default to its Prefect variable."""
    for template_variable, prefect_variable in variables.items():
        properties[template_variable]["default"] = variable_reference(prefect_variable)
