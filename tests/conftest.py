"""Shared fixtures (helpers, which are not fixtures, live in tests/helpers.py): the toy tokenizer, the scripted
toy policy's generator, one finished toy run (read it; copy it with toy_run_copy to change it), and the tiny
Llama the train tests fine-tune."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers import BAD, GOOD, PROBLEMS, build_tokenizer, prompt_text, run_chain, toy_policy, write_run

# The one finished run most tests read: sample -> estimate -> locate -> branch (with the baseline and
# random-reset arms) on the scripted toy policy; these settings are what its tests assert.
TOY_RUN = dict(n_problems=6, n=4, k=16, m=8, baseline=True)

# The files that take longest (seconds in one serial run on 2 cores, 2026-12-03: 245, 116, 105, 71, 60, 38, 36,
# 34, the first without the SmolLM2 conversion a worker does once), run first, so that with one worker per core
# (scripts/test.sh) none of them is left running alone at the end; the other files keep their order.
LONGEST_FIRST = ("test_smollm2_e2e.py", "test_faults.py", "test_slurm.py", "test_demo.py", "test_smollm2.py",
                 "test_train_toy.py", "test_models.py", "test_hostile.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: a file's tests stay together and in order


@pytest.fixture(scope="module", autouse=True)
def one_vllm_file_at_a_time(request, tmp_path_factory):
    """A file with vLLM tests holds a lock shared by the workers (their temp folders' parent) for as long as
    it runs, its module fixtures' engines included: one vLLM engine on the machine at a time, as serially.
    After it, vLLM's process-wide distributed state is cleared: in a worker whose earlier file had left it,
    torch's default process group had gone meanwhile and the next engine failed ("Process group ... is not
    initialized in the world group map"); each file's engines now start from a state like a new process's."""
    if not any(item.path == request.path and item.get_closest_marker("vllm") for item in request.session.items):
        yield
        return
    from filelock import FileLock  # torch's dependency

    with FileLock(tmp_path_factory.getbasetemp().parent / "gpo-tests-vllm.lock"):
        yield
        state = sys.modules.get("vllm.distributed.parallel_state")  # absent: no engine ran, or no vLLM installed
        if state is not None:
            state.cleanup_dist_env_and_memory()


@pytest.fixture(scope="session")
def toy_tokenizer():
    from stages.tools.toy_build import build_toy_tokenizer

    return build_toy_tokenizer()


@pytest.fixture
def fake_generator(toy_tokenizer):
    from stages.core.generation.backends import FakeGenerator

    def make(**kwargs):
        return FakeGenerator(toy_tokenizer, toy_policy(toy_tokenizer, **kwargs))
    return make


class RunPath(type(Path())):  # type: ignore[misc]
    """A run folder that also carries a generator of its policy and its problems, to run stages again."""
    gen: object
    problems: object


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory, toy_tokenizer) -> Path:
    """The finished toy run: read it, never change it (toy_run_copy is the one to change)."""
    from stages.core.generation.backends import FakeGenerator

    path = tmp_path_factory.mktemp("toy_run") / "run"
    run_chain(path, lambda: FakeGenerator(toy_tokenizer, toy_policy(toy_tokenizer)), **TOY_RUN)
    return path


@pytest.fixture
def toy_run_copy(toy_run, tmp_path, fake_generator) -> RunPath:
    """A private copy of the finished toy run, to rerun, overwrite or damage, with a fresh generator of the
    same policy (a generator counts what it generated) and its problems."""
    from stages.core.sources.problems import load_problems

    path = RunPath(tmp_path / "run")
    shutil.copytree(toy_run, path)
    path.gen = fake_generator()
    path.problems = load_problems(f"toy:arith?n={TOY_RUN['n_problems']}&seed=0&split=train").table
    return path


@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> Path:
    """A tiny Llama taught, by one second of SFT, to answer 7 or 9 about half the time each."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("model")
    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=64,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    texts = [prompt_text(a, b) + answer for a, b in PROBLEMS for answer in (GOOD, BAD)]
    ids = [tok(t).input_ids + [tok.eos_token_id] for t in texts]
    batch = torch.tensor(ids)  # all the same length
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, base_model) -> Path:
    from transformers import AutoTokenizer

    return write_run(tmp_path_factory.mktemp("run"), AutoTokenizer.from_pretrained(base_model))


@pytest.fixture
def model_dir(tmp_path):
    """Looks like a model folder (config and tokenizer files) without being loaded by these tests."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    return d


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> tuple[Path, str]:
    """SmolLM2-135M-Instruct converted once for the session by `gpo smollm2`, run as a logged job runs it
    (stderr a pipe, tqdm not silenced): the model folder and what the conversion wrote to stderr."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    model = tmp_path_factory.mktemp("smollm2") / "model"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TQDM_DISABLE", None)
    out = subprocess.run([sys.executable, "-m", "gpo_cli.main", "smollm2", "--out", str(model)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr
    return model, out.stderr
