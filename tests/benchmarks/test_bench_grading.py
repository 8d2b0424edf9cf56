"""The grading benchmark judges its figures against its targets, as printed."""


def test_costs_and_both_speedups_are_judged_against_their_targets(bench_grading):
    results = {"local x2": {"cost": 0.29},
               "celery x1": {"cost": 0.5, "wall": 0.22, "judging": 0.16},
               "celery x2": {"cost": 0.51, "wall": 0.17, "judging": 0.08}}
    assert bench_grading.verdict_lines(results) == [
        "local x2: 0.29 core-s per submission averaged over the assignments (target <= 0.5: met)",
        "celery x1: 0.50 core-s per submission averaged over the assignments (target <= 0.5: met)",
        "celery x2: 0.51 core-s per submission averaged over the assignments "
        "(target <= 0.5: not met)",
        "two workers over one, grading the class, the coordinator beside them: 1.29x "
        "(target >= 1.8x: not met)",
        "two workers over one, judging alone: 2.00x (target >= 1.8x: met)",
    ]


def test_no_speedup_is_claimed_without_both_celery_runs(bench_grading):
    lines = bench_grading.verdict_lines({"celery x1": {"cost": 0.3, "wall": 1, "judging": 1}})
    assert len(lines) == 1 and lines[0].startswith("celery x1: 0.30 core-s")
