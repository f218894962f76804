"""Every example DAG imports cleanly, and every operator's template fields are real attributes."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "example_dags"
DAG_FILES = sorted(p for p in EXAMPLES.glob("example_*.py"))


def test_there_are_example_dags():
    assert DAG_FILES


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_example_dag_imports_without_errors(dag_file):
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow < 3.2
        from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=str(dag_file))
    assert not bag.import_errors, bag.import_errors
    assert bag.dags, f"{dag_file.name} defines no DAG"
    for dag in bag.dags.values():
        for task in dag.tasks:
            operator_class = getattr(task, "operator_class", None)
            if hasattr(task, "expand_input") and isinstance(
                operator_class, type
            ):  # mapped: no attributes yet
                accepted = inspect.signature(operator_class.__init__).parameters
                for field in task.template_fields:
                    assert field in accepted, f"{dag.dag_id}.{task.task_id}: template field {field!r} unknown"
                continue
            for field in getattr(task, "template_fields", ()):
                assert hasattr(task, field), f"{dag.dag_id}.{task.task_id}: template field {field!r} missing"
