"""Every example DAG imports cleanly, and every operator's template fields are real attributes."""

from __future__ import annotations

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
            # A mapped task holds its arguments in expand_input and partial_kwargs, not as attributes.
            expanded = set(getattr(getattr(task, "expand_input", None), "value", None) or ())
            expanded |= set(getattr(task, "partial_kwargs", None) or ())
            for field in getattr(task, "template_fields", ()):
                assert field in expanded or hasattr(task, field), (
                    f"{dag.dag_id}.{task.task_id}: template field {field!r} missing"
                )
