"""The experiment behind `gpo demo`: a controlled GPO experiment on a built-in toy task and its tiny model (CPU,
no network). The CLI (gpo_cli/main.py's `demo`, gpo_cli/demo_print.py) only starts it and prints its summary;
bench/select_hparams.py drives the same steps on the validation split.

It runs the commands a user would (each printed, copy-pasteable, resumable: a finished stage is a no-op on
rerun), then reads every number of its summary back from the run's tables. The arms are the rows of
arms.py (the paper's GPO, the other GPO estimators and rules, the oracle locator as an upper bound, random
reset, the same-sample baseline, the tokens-matched baseline); all are DPO from the same base, each with its
own learning rate and beta chosen on the validation split (`bench/select_hparams.py`), the same optimizer
steps and a full batch at every step.

Measured on the test split, problems drawn by the seed: greedy accuracy and the teacher-forced probe
(`gpo eval --probe`) on `greedy_problems`, sampled pass@1 on the first `test_problems` of them. The
primary comparison, named before any number: each GPO arm minus same-samples on greedy accuracy and on
the probe at the hard trap line, Holm-adjusted over that family (summary.py); each GPO arm minus random
reset and minus the paper's GPO are exploratory.

    plan.py     the plan table (problems, samples, steps per task and size), each arm's chosen lr and beta
    arms.py     the arms, one row each
    driver.py   the runner of gpo commands, data generation, training of every arm, evaluation, run_demo
    summary.py  every number of summary.json, read back from the run's tables
"""
