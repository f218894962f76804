"""The emulator's training-job search: filters, sorting, paging by page index, jobs created over time."""

from __future__ import annotations

import json

import pytest

from airflow_provider_modelarts.emulator.scenario import build_job
from airflow_provider_modelarts.emulator.searches import SearchRejected, search_training_jobs, visible

BASE = 1_700_000_000.0


def _jobs():
    jobs = []
    for i in range(12):
        phase = ("Completed", "Failed", "Running")[i % 3]
        timeline = [{"phase": "Running", "at": 0}]
        if phase != "Running":
            timeline.append({"phase": phase, "at": 5})
        jobs.append(
            build_job(
                {"id": f"job-{i:02d}", "name": f"{'bert' if i < 6 else 'gpt'}-{i}", "timeline": timeline},
                base_time=BASE,
                index=i,
            )
        )
    jobs.append(
        build_job(
            {"id": "late", "created_at": 100, "timeline": [{"phase": "Running", "at": 100}]}, base_time=BASE
        )
    )
    return jobs


def _body(job, now):
    return {
        "metadata": {"id": job.id, "name": job.name, "create_time": job.create_time_ms},
        "status": {"phase": job.phase_at(now), "duration": 0},
    }


def search(now=BASE + 10, **doc):
    return search_training_jobs(json.dumps(doc).encode(), _jobs(), now=now, job_body=_body)


def ids(answer):
    return [item["metadata"]["id"] for item in answer["items"]]


def test_offset_is_the_page_index_and_order_is_honoured():
    first = search(limit=5, offset=0, order="asc")
    second = search(limit=5, offset=1, order="asc")
    third = search(limit=5, offset=2, order="asc")
    assert ids(first) + ids(second) + ids(third) == [f"job-{i:02d}" for i in range(12)]
    assert (first["total"], third["count"]) == (12, 2)
    assert ids(search(limit=3))[0] == "job-11"  # desc by create_time is the default


def test_filters_phase_in_name_like_and_create_time_between():
    jobs = _jobs()
    low, high = jobs[2].create_time_ms, jobs[7].create_time_ms
    answer = search(
        limit=50,
        order="asc",
        filters=[
            {"key": "phase", "operator": "in", "value": ["Completed", "Failed"]},
            {"key": "name", "operator": "like", "value": ["BERT"]},
            {"key": "create_time", "operator": "between", "value": [str(low), str(high)]},
        ],
    )
    assert ids(answer) == ["job-03", "job-04"]
    assert (
        ids(
            search(
                limit=50,
                filters=[{"key": "phase", "operator": "not", "value": ["Running", "Completed", "Failed"]}],
            )
        )
        == []
    )


def test_ties_are_ordered_by_id_and_other_sort_keys_work():
    jobs = [
        build_job(
            {"id": f"t-{c}", "create_time": 5, "timeline": [{"phase": "Running", "at": 0}]}, base_time=BASE
        )
        for c in "cab"
    ]
    answer = search_training_jobs(b'{"limit": 50, "order": "asc"}', jobs, now=BASE, job_body=_body)
    assert ids(answer) == ["t-a", "t-b", "t-c"]
    assert ids(search(limit=2, sort_by="name", order="asc")) == ["job-00", "job-01"]


def test_a_job_created_later_is_neither_listed_nor_visible_before_then():
    late = next(j for j in _jobs() if j.id == "late")
    assert not visible(late, BASE + 99) and visible(late, BASE + 100)
    assert "late" not in ids(search(limit=50))
    assert "late" in ids(search(now=BASE + 101, limit=50))


@pytest.mark.parametrize(
    "doc",
    [
        {"limit": 0},
        {"limit": 51},
        {"offset": -1},
        {"offset": True},
        {"order": "sideways"},
        {"sort_by": "secret"},
        {"filters": {"key": "phase"}},
        {"filters": [{"key": "phase", "operator": "regex", "value": ["x"]}]},
        {"filters": [{"key": "password", "operator": "in", "value": ["x"]}]},
        {"filters": [{"key": "phase", "operator": "in", "value": "Completed"}]},
        {"filters": [{"key": "create_time", "operator": "between", "value": ["1"]}]},
    ],
)
def test_bad_search_bodies_are_400(doc):
    with pytest.raises(SearchRejected) as err:
        search(**doc)
    assert err.value.status == 400 and err.value.error_code == "ModelArts.2788"


def test_a_body_that_is_not_json_is_2787():
    with pytest.raises(SearchRejected) as err:
        search_training_jobs(b"{nope", _jobs(), now=BASE, job_body=_body)
    assert err.value.error_code == "ModelArts.2787"
