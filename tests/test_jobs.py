"""Jobs side by side: dependencies, priority, failures that do not stop the others."""

from __future__ import annotations

import math

import pytest

from ccua.jobs import Job, run_jobs, threads_per_job


def _graph() -> list[Job]:
    return [Job("root", math.sqrt, (16.0,)),
            Job("broken", int, ("not a number",)),
            Job("child", math.pow, (2.0, 3.0), after=("root",)),
            Job("orphan", math.sqrt, (9.0,), after=("broken",)),
            Job("grandchild", abs, (-5,), after=("child", "root"))]


@pytest.mark.parametrize("workers", [1, 2])
def test_dependants_of_a_failed_job_are_skipped_and_the_rest_run(workers):
    results = {r.name: r for r in run_jobs(_graph(), workers)}
    assert results["root"].value == 4.0 and results["child"].value == 8.0 and results["grandchild"].value == 5
    assert results["broken"].error.startswith("ValueError")
    assert results["orphan"].error == "skipped: broken failed" and results["orphan"].value is None


def test_results_come_in_job_order():
    jobs = [Job(f"j{i}", math.sqrt, (float(i * i),)) for i in range(5)]
    assert [r.value for r in run_jobs(jobs, workers=2)] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_dependencies_must_come_first_and_names_be_unique():
    with pytest.raises(ValueError, match="not earlier in the list"):
        run_jobs([Job("a", abs, (1,), after=("b",)), Job("b", abs, (2,))])
    with pytest.raises(ValueError, match="unique"):
        run_jobs([Job("a", abs, (1,)), Job("a", abs, (2,))])


def test_threads_are_shared_out_evenly():
    assert threads_per_job(2, cores=2) == 1
    assert threads_per_job(3, cores=8) == 2
    assert threads_per_job(4, cores=2) == 1
