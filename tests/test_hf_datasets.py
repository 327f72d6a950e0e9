"""hf:<dataset id> problem sources, read offline from a datasets cache built in tmp_path in the layout
`datasets.load_dataset` leaves (<namespace>___<name>/<config>/<version>/<hash>/ with dataset_info.json and
<name>-<split>.arrow), or from the Parquet files `hf download --repo-type dataset` puts in the hub cache."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gpo_cli.main import app
from stages.core.pipeline.errors import GpoError
from stages.core.sources.problems import Fields, load_problems

SHA = "0123456789abcdef0123456789abcdef01234567"
GSM8K = [
    {"question": "Tom has 3 apples and buys 1,200 more. How many apples does he have?",
     "answer": "He has 3 + 1200 = <<3+1200=1203>>1203 apples.\n#### 1,203"},
    {"question": "A pen costs $2. How much do 4 pens cost?", "answer": "4 * 2 = <<4*2=8>>8\n#### 8"},
    {"question": "It was 5 degrees and fell by 12. What is it now?", "answer": "5 - 12 = -7\n#### -7"},
]
MATH = [
    {"problem": "What is $\\frac{1}{2} + \\frac{1}{3}$?", "solution": "We get $\\boxed{\\frac{5}{6}}$.",
     "unique_id": "test/algebra/1.json"},
    {"problem": "Compute $2^{10}$.", "solution": "It is $\\boxed{1024}$.", "unique_id": "test/algebra/2.json"},
]


def write_datasets_cache(cache: Path, repo_id: str, config: str, split: str, rows: list[dict]) -> None:
    """What `load_dataset(repo_id, config)` writes, made with datasets' own ArrowWriter and DatasetInfo."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    namespace, name = repo_id.split("/")
    folder = cache / f"{namespace}___{name.lower()}" / config / "0.0.0" / SHA
    folder.mkdir(parents=True)
    ds = datasets.Dataset.from_list(rows)
    with ArrowWriter(features=ds.features, path=str(folder / f"{name.lower()}-{split}.arrow")) as writer:
        writer.write_table(ds.data.table)
        writer.finalize()
    splits = datasets.SplitDict({split: datasets.SplitInfo(name=split, num_examples=len(rows),
                                                           dataset_name=name.lower())})
    datasets.DatasetInfo(dataset_name=name.lower(), config_name=config, features=ds.features,
                         splits=splits).write_to_directory(str(folder))


@pytest.fixture
def caches(tmp_path, monkeypatch):
    datasets_cache, hub = tmp_path / "datasets", tmp_path / "hub"
    datasets_cache.mkdir()
    hub.mkdir()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(datasets_cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return datasets_cache, hub


def test_gsm8k_from_the_datasets_cache_parses_gold_numbers(caches):
    write_datasets_cache(caches[0], "openai/gsm8k", "main", "test", GSM8K)
    table = load_problems("hf:openai/gsm8k?config=main&split=test").table
    assert table.column("gold_answer").to_pylist() == ["1203", "8", "-7"]
    assert table.column("question").to_pylist() == [r["question"] for r in GSM8K]
    assert table.column("problem_id").to_pylist() == [f"gsm8k-main-test-{i:06d}" for i in range(3)]
    assert set(table.column("source").to_pylist()) == {"hf:openai/gsm8k/main/test"}
    assert json.loads(table.column("meta")[0].as_py()) == {"row": 0, "revision": SHA}
    assert load_problems("hf:openai/gsm8k?config=main&split=test&n=2").table.num_rows == 2


def test_math_style_fields_and_boxed_solutions(caches):
    write_datasets_cache(caches[0], "org/MATH-mini", "default", "test", MATH)
    table = load_problems("hf:org/MATH-mini?split=test", Fields(id="unique_id")).table
    assert table.column("question").to_pylist() == [r["problem"] for r in MATH]
    assert table.column("gold_answer").to_pylist() == ["\\frac{5}{6}", "1024"]
    assert table.column("problem_id").to_pylist() == ["test/algebra/1.json", "test/algebra/2.json"]
    with pytest.raises(GpoError, match="no field 'question_text'"):
        load_problems("hf:org/MATH-mini?split=test", Fields(question="question_text"))


def test_hub_cache_parquet_files(caches):
    """`hf download --repo-type dataset openai/gsm8k` leaves main/test-00000-of-00001.parquet in the hub cache."""
    repo = caches[1] / "datasets--openai--gsm8k"
    (repo / "snapshots" / SHA / "main").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(GSM8K), repo / "snapshots" / SHA / "main" / "test-00000-of-00001.parquet")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    table = load_problems("hf:openai/gsm8k?config=main&split=test").table
    assert table.column("gold_answer").to_pylist() == ["1203", "8", "-7"]
    with pytest.raises(GpoError, match="not in the local Hugging Face datasets cache"):
        load_problems("hf:openai/gsm8k?config=socratic&split=test")


def test_missing_split_or_config_names_what_is_cached(caches):
    write_datasets_cache(caches[0], "openai/gsm8k", "main", "test", GSM8K)
    with pytest.raises(GpoError, match="Unknown split"):
        load_problems("hf:openai/gsm8k?config=main&split=train")
    with pytest.raises(GpoError, match="Available configs in the cache: \\['main'\\]"):
        load_problems("hf:openai/gsm8k?config=socratic&split=test")
    with pytest.raises(GpoError, match="unknown parameter"):
        load_problems("hf:openai/gsm8k?configuration=main")


def test_not_cached_is_one_line_with_the_download_command(caches, tmp_path):
    model = tmp_path / "model"  # never loaded: the problems are checked first
    model.mkdir()
    result = CliRunner().invoke(app, ["sample", "--problems", "hf:openai/gsm8k?config=main&split=test",
                                      "--model", str(model), "--run", str(tmp_path / "r")])
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "not in the local Hugging Face datasets cache" in lines[0]
    assert "datasets.load_dataset('openai/gsm8k', 'main')" in lines[0]
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()
