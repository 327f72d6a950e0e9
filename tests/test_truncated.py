"""Responses cut at the length limit train as cut: the branch tables record each side's finish reason, and
DPO/KTO rows built by TRL carry no EOS after a cut response (or the pair is dropped, by option)."""

from __future__ import annotations

import pytest

from stages.core.pipeline import artifacts
from stages.core.pipeline.errors import GpoError
from tests.helpers import TOY_MODEL, rambling_policy, run_chain

MAX_NEW = 48


@pytest.fixture(scope="module")
def run(tmp_path_factory, toy_tokenizer):
    from stages.core.generation.backends import FakeGenerator

    run = tmp_path_factory.mktemp("truncated")
    run_chain(run, lambda: FakeGenerator(toy_tokenizer, rambling_policy(toy_tokenizer)), n_problems=8, k=8,
              m=8, baseline=True, rule=None, max_new_tokens=MAX_NEW, chunk_groups=16)
    return run


def test_branch_tables_record_where_a_response_was_cut(run):
    pairs = artifacts.read_table(run, "branch").to_pylist()
    samples = {(r["problem_id"], r["sample_idx"]): r for r in artifacts.read_table(run, "sample").to_pylist()}
    reasons = {(p["chosen_finish_reason"], p["rejected_finish_reason"]) for p in pairs}
    assert ("stop", "length") in reasons and ("stop", "stop") in reasons  # both kinds of pair exist
    for p in pairs:
        for side in ("chosen", "rejected"):
            # a cut response is exactly as long as its budget: max_new_tokens counted from the state
            cut = len(p[f"{side}_token_ids"]) == MAX_NEW
            assert (p[f"{side}_finish_reason"] == "length") == cut
        if p["data"] == "baseline":
            assert p["rejected_finish_reason"] == samples[(p["problem_id"], p["sample_idx"])]["finish_reason"]
    unpaired = artifacts.read_table(run, "unpaired").to_pylist()
    assert sum(r["completion_finish_reason"] == "length" for r in unpaired) == \
        sum(p["rejected_finish_reason"] == "length" for p in pairs)


def _trl_rows(run, tmp_path, method, truncated):
    """TRL's tokenized training rows (its own DPO/KTO preprocessing) for the run's gpo data."""
    from transformers import AutoTokenizer

    from stages.train.data import load_rows
    from stages.train.settings import TrainSettings, resolve
    from stages.train.trl_adapter import build_config, make_trainer

    s, extra = resolve(TrainSettings(method=method, model=str(TOY_MODEL), max_steps=1, batch_size=2,
                                     max_length=256, truncated=truncated, dedup=False))
    tok = AutoTokenizer.from_pretrained(TOY_MODEL)
    dataset, _, _ = load_rows(run, s, tok)
    trainer, _ = make_trainer(s, build_config(s, extra, tmp_path / method), tok, dataset, [])
    return trainer.train_dataset.to_list(), tok


@pytest.mark.parametrize("truncated", ["no-eos", "eos"])
def test_dpo_rows_end_in_eos_only_where_the_response_stopped(run, tmp_path, truncated):
    rows, tok = _trl_rows(run, tmp_path, "dpo", truncated)
    pairs = artifacts.read_table(run, "branch").to_pylist()
    gpo = [p for p in pairs if p["data"] == "gpo"]
    assert len(rows) == len(gpo)
    cut_seen = 0
    for row, pair in zip(rows, gpo):  # TRL keeps the dataset's order
        for side in ("chosen", "rejected"):
            ids, cut = row[f"{side}_ids"], pair[f"{side}_finish_reason"] == "length"
            assert row[f"{side}_truncated"] == cut
            cut_seen += cut
            ends_in_eos = ids[-1] == tok.eos_token_id
            assert ends_in_eos == (not cut or truncated == "eos")
            body = ids[:-1] if ends_in_eos else ids
            assert tok.decode(body) == pair[side]  # the response itself, untouched
    assert cut_seen > 0


def test_kto_rows_end_in_eos_only_where_the_response_stopped(run, tmp_path):
    rows, tok = _trl_rows(run, tmp_path, "kto", "no-eos")
    assert any(r["completion_truncated"] for r in rows) and not all(r["completion_truncated"] for r in rows)
    for row in rows:
        assert (row["completion_ids"][-1] == tok.eos_token_id) == (not row["completion_truncated"])


def test_drop_leaves_out_pairs_with_a_cut_response(run, tmp_path):
    from stages.train import TrainSettings, train

    pairs = [p for p in artifacts.read_table(run, "branch").to_pylist() if p["data"] == "baseline"]
    whole = [p for p in pairs if "length" not in (p["chosen_finish_reason"], p["rejected_finish_reason"])]
    assert 0 < len(whole) < len(pairs)
    summary = train(run, TrainSettings(method="dpo", model=str(TOY_MODEL), data="baseline", max_steps=1,
                                       batch_size=2, max_length=256, truncated="drop", dedup=False),
                    tmp_path / "dpo-drop", log=lambda msg: None)
    assert summary["rows"] == len(whole) and summary["global_step"] == 1
    config = artifacts.load_json(tmp_path / "dpo-drop" / "config.json")
    assert config["inputs"]["dropped_truncated"] == len(pairs) - len(whole)


def test_bad_truncated_setting_is_one_error(run, tmp_path):
    from stages.train.settings import TrainSettings, resolve

    with pytest.raises(GpoError, match="--truncated must be one of"):
        resolve(TrainSettings(method="dpo", model=str(TOY_MODEL), truncated="keep"))
    with pytest.raises(GpoError, match="not available for simpo"):
        resolve(TrainSettings(method="simpo", model=str(TOY_MODEL), truncated="no-eos"))
    assert resolve(TrainSettings(method="orpo", model=str(TOY_MODEL)))[0].truncated == "drop"


@pytest.mark.parametrize("truncated,dedup", [("drop", True), ("no-eos", True), ("eos", False)])
def test_export_holds_what_gpo_train_would_train_on(run, tmp_path, truncated, dedup):
    """Issue 21.9: the same --truncated and --dedup rules at export, read back as TRL reads the folders."""
    import datasets
    from transformers import AutoTokenizer

    from stages.tools.export import Rules, export
    from stages.train.data import load_rows
    from stages.train.settings import TrainSettings, resolve

    pairs = [p for p in artifacts.read_table(run, "branch").to_pylist() if p["data"] == "gpo"]
    content = [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs]
    assert len(set(content)) < len(content)  # the run has duplicate pairs ...
    assert any("length" in (p["chosen_finish_reason"], p["rejected_finish_reason"]) for p in pairs)  # ... and cut ones
    export(run, "trl", tmp_path / "trl", rules=Rules(truncated, dedup))
    tok = AutoTokenizer.from_pretrained(TOY_MODEL)
    for method, table, sides in [("dpo", "preference", ("chosen", "rejected")), ("kto", "unpaired", ("completion",))]:
        s, _ = resolve(TrainSettings(method=method, model=str(TOY_MODEL), truncated=truncated, dedup=dedup))
        trained, _, _ = load_rows(run, s, tok)
        exported = datasets.load_dataset(str(tmp_path / "trl" / table), split="train")

        flags = truncated == "no-eos"  # the cut responses stay, flagged for a trainer that strips their EOS
        columns = ["prompt", *sides, *(["label"] if method == "kto" else []),
                   *([f"{side}_truncated" for side in sides] if flags else [])]
        assert (f"{sides[0]}_truncated" in exported.column_names) == flags
        key = lambda row: tuple(row[c] for c in columns)  # noqa: E731
        assert sorted(map(key, exported)) == sorted(map(key, trained.to_list()))
        everything = len(pairs) * (2 if method == "kto" else 1)  # a KTO row per side of each pair
        assert len(exported) == len(trained) and (len(exported) < everything) == (dedup or truncated == "drop")
    record = artifacts.load_json(tmp_path / "trl" / ".gpo-export.json")
    assert record["truncated"] == truncated and record["dedup"] == dedup
