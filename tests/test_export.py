"""`gpo export` read back by the tools' own loaders: TRL (datasets + DPOTrainer's preparation), verl
(RLHFDataset and its reward dispatch) and LLaMA-Factory (its dataset_info parser, loader and converter).

verl 0.9.1 and llamafactory 0.9.5 pull ray, vllm and deepspeed; scripts/setup.sh installs them with
`pip install --no-deps --target .venv/interop` (seconds), and these tests import only the data modules,
with the packages' heavy `__init__` files bypassed. Where that folder is missing they skip, saying why.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from stages.core.pipeline import artifacts
from stages.core.generation.backends import FakeGenerator
from stages.core.pipeline.errors import GpoError
from stages.core.generation.prompts import DEFAULT_INSTRUCTION, DEFAULT_SYSTEM
from stages.tools.export import CONTINUE_NOTE, export
from stages.train.data import trainable
from tests.helpers import gpo, run_chain, toy_policy

datasets = pytest.importorskip("datasets")

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


@pytest.fixture(scope="module")
def chat_tokenizer():
    """The toy tokenizer with a chat template that adds BOS itself (as Llama 3's does), the prompt texts
    as single added tokens (the word-level vocabulary has none of their words)."""
    from stages.tools.toy_build import build_toy_tokenizer

    tok = build_toy_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": MARKERS})
    tok.add_tokens([DEFAULT_SYSTEM, DEFAULT_INSTRUCTION, CONTINUE_NOTE])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def chat_generator(tok):
    """toy_policy behind a chat prompt: the question sits in the user turn, the kept prefix after it."""
    plain = toy_policy(tok)

    def respond(prompt_ids, seed):
        head, _, done = tok.decode(list(prompt_ids)).partition("<|assistant|>")
        question = re.search(r"start:[^\n<]*", head).group(0).strip()
        return plain(tuple(tok(f"{question}\n{done}")["input_ids"]), seed)
    return FakeGenerator(tok, respond)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, chat_tokenizer):
    run = tmp_path_factory.mktemp("chat") / "run"
    gen = chat_generator(chat_tokenizer)
    run_chain(run, lambda: gen, baseline=True)
    return run


def rows(run, table, data="gpo"):
    return [r for r in artifacts.read_table(run, table).to_pylist() if r["data"] == data]


def samples(run):
    return {(r["problem_id"], r["sample_idx"]): r for r in artifacts.read_table(run, "sample").to_pylist()}


def load(folder: Path):
    return datasets.load_dataset(str(folder), split="train")


# ----------------------------------------------------------------------------- TRL


def test_trl_tables_load_alone_as_conversational_datasets(chat_run, chat_tokenizer, tmp_path):
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    export(chat_run, "trl", tmp_path)
    sample_rows = samples(chat_run)
    pref, kto, prompts = load(tmp_path / "preference"), load(tmp_path / "unpaired"), load(tmp_path / "prompts")
    # What gpo train learns from: identical pairs once, none cut at the budget (test_export_rules.py).
    pairs, _ = trainable(rows(chat_run, "branch"), "branch", "drop", True, "gpo")
    units, _ = trainable(rows(chat_run, "unpaired"), "unpaired", "drop", True, "gpo")
    assert len(pref) == len(pairs) and len(kto) == len(units) and len(pairs) < len(rows(chat_run, "branch"))
    assert {"problem_id", "pair_id"} <= set(pref.column_names) and {"problem_id", "pair_id"} <= set(kto.column_names)
    assert sorted(pref["pair_id"]) == sorted(p["pair_id"] for p in pairs)
    by_pair = {p["pair_id"]: p for p in pairs}
    for row in pref:
        assert is_conversational(row)
        pair = by_pair[row["pair_id"]]
        text = maybe_apply_chat_template(row, chat_tokenizer)
        # System prompt and instruction kept: re-templating gives the exact prompt the model was sampled with.
        assert text["prompt"] == sample_rows[(pair["problem_id"], pair["sample_idx"])]["prompt_text"]
        assert text["prompt"].count("<bos>") == 1
        assert row["chosen"] == [{"role": "assistant", "content": pair["chosen"]}]
    assert sum(kto["label"]) == sum(u["label"] for u in units) and is_conversational(kto[0])
    resets = [r for r in artifacts.read_table(chat_run, "reset_prompts").to_pylist() if r["data"] == "gpo"]
    with_prefix = [r for r in prompts if r["reset_prefix"]]
    assert len(prompts) == len(resets) and len(with_prefix) == sum(r["prefix_tokens"] > 0 for r in resets) > 0
    for row in with_prefix:
        user = row["prompt"][-1]["content"]
        assert user.endswith(f"{CONTINUE_NOTE}\n\n{row['reset_prefix']}") and DEFAULT_INSTRUCTION in user
        assert maybe_apply_chat_template(row, chat_tokenizer)["prompt"].endswith("<|assistant|>")


def tiny_model(tok):
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def test_dpo_trainer_prepares_the_exported_folder_with_one_bos(chat_run, chat_tokenizer, tmp_path):
    from trl import DPOConfig, DPOTrainer

    export(chat_run, "trl", tmp_path / "trl")
    tok = chat_tokenizer
    model = tiny_model(tok)
    args = DPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], per_device_train_batch_size=2,
                     max_steps=1, dataset_num_proc=None)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, processing_class=tok,
                         train_dataset=load(tmp_path / "trl" / "preference"))
    sample_rows = samples(chat_run)
    pairs = {p["pair_id"]: p for p in artifacts.read_table(chat_run, "branch").to_pylist()}
    prepared = trainer.train_dataset
    for row, pair_id in zip(prepared, load(tmp_path / "trl" / "preference")["pair_id"]):
        pair = pairs[pair_id]
        # Exactly the token ids gpo sampled from: the template's BOS, no second one from the tokenizer.
        assert row["prompt_ids"] == sample_rows[(pair["problem_id"], pair["sample_idx"])]["prompt_token_ids"]
        assert tok.decode(row["chosen_ids"]) == pair["chosen"] + "<|end|>"
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("method,table", [("dpo", "preference"), ("kto", "unpaired")])
def test_trl_cli_scripts_train_on_the_exported_folder(chat_run, chat_tokenizer, tmp_path, method, table):
    """What `trl dpo|kto --dataset_name DIR/<table>` runs after parsing: TRL's own script, in-process."""
    script = importlib.import_module(f"trl.scripts.{method}")
    export(chat_run, "trl", tmp_path / "trl")
    model_dir = tmp_path / "model"
    tiny_model(chat_tokenizer).save_pretrained(model_dir)
    chat_tokenizer.save_pretrained(model_dir)
    argv = ["--model_name_or_path", model_dir, "--dataset_name", tmp_path / "trl" / table, "--output_dir",
            tmp_path / "out", "--max_steps", 1, "--per_device_train_batch_size", 4, "--use_cpu", "--report_to",
            "none", "--save_strategy", "no"]
    script.main(*script.make_parser().parse_args_and_config([str(a) for a in argv]))
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_plain_runs_export_the_exact_plain_text(tmp_path, toy_run):
    from trl.data_utils import is_conversational

    export(toy_run, "trl", tmp_path / "trl")
    pairs = {p["pair_id"]: p for p in artifacts.read_table(toy_run, "branch").to_pylist()}
    pref = load(tmp_path / "trl" / "preference")
    assert not is_conversational(pref[0])
    for row in pref:
        pair = pairs[row["pair_id"]]
        assert (row["prompt"], row["chosen"], row["rejected"]) == (pair["prompt"], pair["chosen"], pair["rejected"])
    prompts = load(tmp_path / "trl" / "prompts")
    assert all(r["prompt"].endswith(r["reset_prefix"]) for r in prompts)


def test_prefix_in_prompt_moves_to_the_start_of_the_assistant_turn(tmp_path, chat_tokenizer):
    from trl.data_utils import maybe_apply_chat_template

    run_chain(tmp_path / "run", lambda: chat_generator(chat_tokenizer), prefix="in-prompt")
    export(tmp_path / "run", "trl", tmp_path / "trl")
    sample_rows = samples(tmp_path / "run")
    pairs = {p["pair_id"]: p for p in artifacts.read_table(tmp_path / "run", "branch").to_pylist()}
    for row in load(tmp_path / "trl" / "preference"):
        pair = pairs[row["pair_id"]]
        base = sample_rows[(pair["problem_id"], pair["sample_idx"])]["prompt_text"]
        prefix = pair["prompt"][len(base):]
        assert prefix and row["chosen"][0]["content"] == prefix + pair["chosen"]
        assert maybe_apply_chat_template(row, chat_tokenizer)["prompt"] == base


# ----------------------------------------------------------------------------- verl and LLaMA-Factory


def interop(module: str):
    """Import one module of verl / llamafactory from the --no-deps folder, skipping their package __init__
    (which imports ray, torchaudio, vllm ...). omegaconf, only used there for isinstance checks on configs,
    is stubbed when missing (its pinned antlr clashes with math-verify's)."""
    root = Path(os.environ.get("GPO_INTEROP_DIR", Path(sys.prefix) / "interop"))
    top = module.split(".")[0]
    if not (root / top).is_dir():
        pytest.skip(f"{top} is not installed in {root} (scripts/setup.sh: pip install --no-deps --target)")
    if "omegaconf" not in sys.modules and importlib.util.find_spec("omegaconf") is None:
        stub = types.ModuleType("omegaconf")
        stub.DictConfig, stub.ListConfig = type("DictConfig", (dict,), {}), type("ListConfig", (list,), {})
        sys.modules["omegaconf"] = stub
    parts = module.split(".")
    for i in range(1, len(parts)):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root.joinpath(*parts[:i]))]
            sys.modules[name] = pkg
    try:
        return importlib.import_module(module)
    except Exception as e:  # a missing dependency of the data module itself
        pytest.skip(f"{module} does not import without its dependencies: {e!r}")


def test_verl_rows_load_in_rlhf_dataset_and_score_like_gpo(chat_run, chat_tokenizer, tmp_path):
    rl_dataset = interop("verl.utils.dataset.rl_dataset")
    (path,) = export(chat_run, "verl", tmp_path / "verl")
    rows = pq.read_table(path).to_pylist()
    ds = rl_dataset.RLHFDataset(str(path), chat_tokenizer, {"max_prompt_length": 1024, "cache_dir": str(tmp_path),
                                                             "filter_overlong_prompts_workers": None})
    assert len(ds) == len(rows) > 0
    resets = [r for r in artifacts.read_table(chat_run, "reset_prompts").to_pylist() if r["data"] == "gpo"]
    with_prefix = 0
    for i in range(len(ds)):
        item = ds[i]
        info = item["extra_info"]
        user = item["raw_prompt"][-1]["content"]
        assert item["raw_prompt"][0] == {"role": "system", "content": DEFAULT_SYSTEM} and DEFAULT_INSTRUCTION in user
        if info["reset_prefix"]:
            with_prefix += 1
            assert user.endswith(info["reset_prefix"]) and CONTINUE_NOTE in user
    assert with_prefix == sum(r["prefix_tokens"] > 0 for r in resets) > 0

    # Loaded as verl loads reward.custom_reward_function.path/name, and called with its keywords.
    import stages.tools.verl_reward
    load_extern_object = interop("verl.utils.import_utils").load_extern_object
    compute_score = load_extern_object(module_path=stages.tools.verl_reward.__file__, object_name="compute_score")
    continuations = artifacts.read_table(chat_run, "continuations").to_pylist()
    by_state = {(r["extra_info"]["problem_id"], r["extra_info"]["sample_idx"], r["extra_info"]["state_idx"]): r
                for r in rows}
    checked = 0
    for c in continuations:
        row = by_state.get((c["problem_id"], c["sample_idx"], c["state_idx"]))
        if row and c["data"] == "gpo":
            score = compute_score(data_source=row["data_source"], solution_str=c["text"],
                                  ground_truth=row["reward_model"]["ground_truth"], extra_info=row["extra_info"])
            assert score == float(c["reward"])
            checked += 1
    assert checked > 0 and {c["reward"] for c in continuations} == {0, 1}


def test_verl_data_source_reaches_verls_own_reward_dispatch(chat_run, tmp_path):
    reward_score = interop("verl.utils.reward_score")
    (path,) = export(chat_run, "verl", tmp_path / "verl", data_source="math")
    rows = pq.read_table(path).to_pylist()
    assert {r["data_source"] for r in rows} == {"math"}
    good = next(c for c in artifacts.read_table(chat_run, "continuations").to_pylist() if c["reward"] == 1)
    gold = next(r for r in rows if r["extra_info"]["problem_id"] == good["problem_id"])["reward_model"]["ground_truth"]
    assert reward_score.default_compute_score("math", good["text"], gold)["acc"] is True
    with pytest.raises(NotImplementedError):  # why gpo ships stages/tools/verl_reward.py
        reward_score.default_compute_score("toy:arith", good["text"], gold)
    with pytest.raises(GpoError, match="data-source"):
        export(chat_run, "trl", tmp_path / "x", data_source="math")


def test_llamafactory_entries_merge_and_load_with_its_loader(chat_run, tmp_path):
    parser = interop("llamafactory.data.parser")
    loader = interop("llamafactory.data.loader")
    out = tmp_path / "data"
    out.mkdir()
    theirs = {"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
              "dpo_en_demo": {"file_name": "dpo_en_demo.json", "ranking": True, "formatting": "sharegpt"}}
    (out / "dataset_info.json").write_text(json.dumps(theirs))
    export(chat_run, "llamafactory", out)
    with pytest.raises(GpoError, match="gpo_gpo_pairwise.json exists .* add --overwrite"):
        export(chat_run, "llamafactory", out)
    export(chat_run, "llamafactory", out, overwrite=True)  # replaces gpo's files and entries, keeps the rest
    info = json.loads((out / "dataset_info.json").read_text())
    assert list(info) == ["alpaca_en_demo", "dpo_en_demo", "gpo_gpo_pairwise", "gpo_gpo_kto"]
    assert info["dpo_en_demo"] == theirs["dpo_en_demo"]

    args = SimpleNamespace(dataset_dir=str(out), streaming=False, preprocessing_num_workers=None, overwrite_cache=True,
                           media_dir=str(out), max_samples=None, cache_dir=None, hf_hub_token=None,
                           local_process_index=0, dataloader_num_workers=0)
    pair_attr, kto_attr = parser.get_dataset_list(["gpo_gpo_pairwise", "gpo_gpo_kto"], str(out))
    assert pair_attr.ranking and kto_attr.kto_tag == "kto_tag"
    pairs = loader._load_single_dataset(pair_attr, args, args, args)
    kto = loader._load_single_dataset(kto_attr, args, args, args)
    branch, _ = trainable(rows(chat_run, "branch"), "branch", "drop", True, "gpo")
    units, _ = trainable(rows(chat_run, "unpaired"), "unpaired", "drop", True, "gpo")
    assert len(pairs) == len(branch) and len(kto) == len(units)
    question = samples(chat_run)[(branch[0]["problem_id"], branch[0]["sample_idx"])]["question"]
    first = next(r for r in pairs if r["_prompt"][0]["content"].startswith(question))
    assert first["_system"] == DEFAULT_SYSTEM
    assert first["_prompt"] == [{"role": "user", "content": f"{question}\n{DEFAULT_INSTRUCTION}"}]
    assert [m["content"] for m in first["_response"]] == [branch[0]["chosen"], branch[0]["rejected"]]
    labels = sorted(u["label"] for u in units)
    assert sorted(bool(r["_response"][0]["content"]) for r in kto) == labels


def test_llamafactory_refuses_a_broken_registry_before_writing(chat_run, tmp_path):
    (tmp_path / "dataset_info.json").write_text("{not json")
    with pytest.raises(GpoError, match="dataset_info.json is not valid JSON"):
        export(chat_run, "llamafactory", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset_info.json"]


# ----------------------------------------------------------------------------- CLI


def test_cli_export_prints_the_verl_reward_and_refuses_bad_options(chat_run, tmp_path):
    out = gpo("export", "--run", chat_run, "--format", "verl", "--out", tmp_path / "v", "--data-source", "math")
    assert "custom_reward_function.path=" in out and "verl_reward.py" in out
    from typer.testing import CliRunner

    from gpo_cli.main import app
    result = CliRunner().invoke(app, ["export", "--run", str(chat_run), "--format", "verl", "--out",
                                      str(tmp_path / "w"), "--data-source", " "])
    assert result.exit_code != 0 and "error: --data-source" in result.output and not (tmp_path / "w").exists()


def test_export_into_a_non_empty_folder_is_refused_and_overwrite_replaces_it_whole(chat_run, tmp_path):
    """Issue 21.5: refused with one line unless --overwrite, which replaces an earlier export and only that."""
    from typer.testing import CliRunner

    from gpo_cli.main import app

    def files(folder):
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    def refused(args, match):
        result = CliRunner().invoke(app, ["export", "--run", str(chat_run), *map(str, args)])
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code != 0 and len(errors) == 1 and match in errors[0], result.output

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not gpo's")
    refused(["--format", "trl", "--out", mine], "is not empty: add --overwrite")
    refused(["--format", "trl", "--out", mine, "--overwrite"], "not an earlier gpo export")
    assert files(mine) == ["notes.txt"]

    out = tmp_path / "out"
    gpo("export", "--run", chat_run, "--format", "trl", "--out", out)
    first = files(out)
    assert ".gpo-export.json" in first and "preference/train.parquet" in first
    refused(["--format", "verl", "--out", out], "is not empty: add --overwrite")
    assert files(out) == first
    gpo("export", "--run", chat_run, "--format", "verl", "--out", out, "--overwrite")
    assert files(out) == [".gpo-export.json", "train.parquet"]  # no table of the trl export left mixed in
    assert artifacts.load_json(out / ".gpo-export.json")["format"] == "verl"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


@pytest.mark.slow  # 23 s wall on this loaded 2-core machine (one GRPO step: generation + update)
def test_trl_grpo_script_trains_with_gpos_reward_on_the_prompts_export(chat_run, chat_tokenizer, tmp_path,
                                                                         monkeypatch):
    """Issue 21.8: `trl grpo --reward_funcs stages.core.scoring.rewards.correct --dataset_name DIR/prompts` (TRL's own
    script, in-process, one step on CPU): the export's columns reach the reward as they are, and it gives gpo's
    verdicts, both on the policy's completions and on the branch stage's own scored continuations."""
    from stages.core.scoring.answers import make_checker
    from stages.core.scoring.rewards import AnswerReward, correct

    export(chat_run, "trl", tmp_path / "trl")
    prompts = load(tmp_path / "trl" / "prompts")
    by_state = {(r["problem_id"], r["sample_idx"], r["state_idx"]): r for r in prompts}
    checked = set()
    for c in rows(chat_run, "continuations"):  # judged by gpo's branch stage: known verdicts, 0 and 1
        row = by_state[(c["problem_id"], c["sample_idx"], c["state_idx"])]
        columns = {k: [v] for k, v in row.items() if k != "prompt"}
        got = correct([row["prompt"]], [[{"role": "assistant", "content": c["text"]}]], **columns)
        assert got == [float(c["reward"])]
        checked.add(c["reward"])
    assert checked == {0, 1}

    calls = []
    original = AnswerReward.__call__

    def recording(self, prompts, completions, **kwargs):
        rewards = original(self, prompts, completions, **kwargs)
        calls.append((completions, kwargs, rewards))
        return rewards
    monkeypatch.setattr(AnswerReward, "__call__", recording)
    script = importlib.import_module("trl.scripts.grpo")
    model_dir = tmp_path / "model"
    tiny_model(chat_tokenizer).save_pretrained(model_dir)
    chat_tokenizer.save_pretrained(model_dir)
    argv = ["--model_name_or_path", model_dir, "--dataset_name", tmp_path / "trl" / "prompts",
            "--reward_funcs", "stages.core.scoring.rewards.correct", "--output_dir", tmp_path / "out", "--max_steps", 1,
            "--per_device_train_batch_size", 4, "--num_generations", 2, "--max_completion_length", 8,
            "--use_cpu", "--use_vllm", "false", "--report_to", "none", "--save_strategy", "no"]
    script.main(*script.make_parser().parse_args_and_config([str(a) for a in argv]))
    assert (tmp_path / "out" / "model.safetensors").exists() and calls
    checkers = {}
    for completions, kwargs, rewards in calls:
        assert {"gold_answer", "checker", "reset_prefix", "problem_id"} <= set(kwargs)
        for i, completion in enumerate(completions):
            text = kwargs["reset_prefix"][i] + completion[0]["content"]
            checker = checkers.setdefault(kwargs["checker"][i], make_checker(kwargs["checker"][i]))
            assert rewards[i] == float(checker.check_many([text], [kwargs["gold_answer"][i]])[0].correct)


def test_verl_data_source_whose_scorer_cannot_read_the_answers_is_refused(chat_run, tmp_path):
    """Issue 21.10: verl's openai/gsm8k scorer reads only `#### n`, and this run answers `answer: n`, so every
    correct answer would score 0 (verl's own scorer says so below, where installed): refused, unless asked."""
    correct_texts = [c for c in rows(chat_run, "continuations") if c["reward"] == 1]
    with pytest.raises(GpoError, match=r"--data-source openai/gsm8k: verl's scorer for it reads '#### <number>', "
                                       r"found in 0 of \d+ correct responses"):
        export(chat_run, "verl", tmp_path / "gsm8k", data_source="openai/gsm8k")
    with pytest.raises(GpoError, match=r"reads \\boxed"):
        export(chat_run, "verl", tmp_path / "math500", data_source="HuggingFaceH4/MATH-500")
    assert not (tmp_path / "gsm8k").exists() and not (tmp_path / "math500").exists()
    export(chat_run, "verl", tmp_path / "forced", data_source="openai/gsm8k", scorer_mismatch_ok=True)
    export(chat_run, "verl", tmp_path / "own", data_source="my_source")  # a name verl does not know: left alone
    export(chat_run, "verl", tmp_path / "math", data_source="math")  # reads `Answer: n` lines, case-insensitive
    if (Path(os.environ.get("GPO_INTEROP_DIR", Path(sys.prefix) / "interop")) / "verl").is_dir():
        reward_score = interop("verl.utils.reward_score")
        good = correct_texts[0]
        gold = next(r for r in rows(chat_run, "reset_prompts") if r["problem_id"] == good["problem_id"])["gold_answer"]
        assert reward_score.default_compute_score("openai/gsm8k", good["text"], gold) == 0.0
        assert reward_score.default_compute_score("math", good["text"], gold)["acc"] is True


def test_readme_trl_commands_parse_with_trls_own_parsers(tmp_path):
    """Issue 21.8/21.11: every `trl ...` line of docs/commands.md (the README's before issue 22.11) is accepted
    by TRL 1.16's parser of that script (flag spellings such as --use_cpu), and a --reward_funcs path imports."""
    readme = (Path(__file__).resolve().parent.parent / "docs" / "commands.md").read_text()
    lines = [line.split("  #")[0].split() for line in readme.splitlines() if line.startswith("trl ")]
    assert {line[1] for line in lines} >= {"dpo", "kto", "grpo"}
    assert any(line[1] == "dpo" and "--use_cpu" in line for line in lines)
    import torch

    for line in lines:
        script = importlib.import_module(f"trl.scripts.{line[1]}")
        argv = [str(tmp_path) if a == "MODEL" else a for a in line[2:]]
        if "--use_cpu" not in argv and not torch.cuda.is_available():
            # TRL's configs default to bf16, refused on a CPU: the GPU lines need the flag here (docs/commands.md)
            with pytest.raises(ValueError, match="use_cpu"):
                script.make_parser().parse_args_and_config(argv)
            argv.append("--use_cpu")
        parsed = script.make_parser().parse_args_and_config(argv)
        if "--use_cpu" in line:
            assert parsed[1].use_cpu is True
        for path in getattr(parsed[0], "reward_funcs", None) or []:
            module, name = path.rsplit(".", 1)
            assert callable(getattr(importlib.import_module(module), name))
