"""Problems from a Hugging Face dataset already on this machine, never from the network.

    hf:openai/gsm8k?config=main&split=test
    hf:HuggingFaceH4/MATH-500?split=test&n=100

Read with `datasets.load_dataset` in offline mode, which finds what an earlier `load_dataset` left in
the datasets cache (HF_DATASETS_CACHE, default ~/.cache/huggingface/datasets); failing that, the Parquet
files of a dataset fetched with `hf download --repo-type dataset` in the hub cache (HF_HUB_CACHE).
Fields: --question-field / --answer-field / --id-field; left at their defaults, a dataset without
`question` uses `problem` (MATH), one without `answer` uses `solution` (its last \\boxed{}). GSM8K's
answer is worked reasoning ending in `#### <number>`: the gold is the number, commas removed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from stages.core.pipeline.errors import GpoError

PARAMS = ("config", "split", "n")
FALLBACKS = {"question": ("problem", "prompt"), "answer": ("solution",)}


def hf_rows(name: str, params: dict, fields) -> list[dict]:
    """Rows (problem_id, question, gold_answer, source, meta) of one split of a locally cached dataset."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise GpoError(f"hf:{name}: unknown parameter(s) {', '.join(unknown)} (known: {', '.join(PARAMS)})")
    if not name or name.count("/") > 1:
        raise GpoError(f"hf:{name!r}: expected a dataset id, e.g. hf:openai/gsm8k?config=main&split=test")
    config, split = params.get("config") or None, params.get("split") or "train"
    try:
        limit = int(params["n"]) if "n" in params else None
    except ValueError:
        raise GpoError(f"hf:{name}: n={params['n']!r} is not an integer") from None
    records, revision = _load(name, config, split)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise GpoError(f"hf:{name} split {split} has no rows")
    question, answer = (_field(records[0], fields.question, "question", name),
                        _field(records[0], fields.answer, "answer", name))
    if fields.id and fields.id not in records[0]:
        raise GpoError(f"hf:{name} has no field {fields.id!r}; it has {sorted(records[0])}")
    from stages.core.scoring.answers import gsm8k_gold, normalize_gold

    # A worked solution holds its answer in the last \boxed{}; an answer field may be GSM8K's '#### n'.
    gold_of = normalize_gold if answer == "solution" else gsm8k_gold
    stem = "-".join(part for part in (name.split("/")[-1], config, split) if part)
    source = f"hf:{name}" + (f"/{config}" if config else "") + f"/{split}"
    rows = []
    for i, rec in enumerate(records):
        gold = rec.get(answer)
        pid = str(rec[fields.id]) if fields.id and rec.get(fields.id) is not None else f"{stem}-{i:06d}"
        rows.append({"problem_id": pid, "question": rec.get(question),
                     "gold_answer": None if gold is None else gold_of(str(gold)), "source": source,
                     "meta": json.dumps({"row": i, "revision": revision})})
    return rows


def _field(record: dict, asked: str, default: str, name: str) -> str:
    if asked in record:
        return asked
    if asked == default:  # the option left at its default: try the names datasets commonly use
        for other in FALLBACKS[default]:
            if other in record:
                return other
    raise GpoError(f"hf:{name} has no field {asked!r}; it has {sorted(record)} "
                   "(name them with --question-field / --answer-field / --id-field)")


def _env_dir(var: str, home_sub: str) -> str | None:
    if os.environ.get(var):
        return os.path.expanduser(os.environ[var])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), home_sub)
    return None  # the library's default


def _load(name: str, config: str | None, split: str) -> tuple[list[dict], str | None]:
    """The split's records and the cached revision; one `error:` line saying how to fetch it if absent."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read before `datasets` is imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.config.HF_HUB_OFFLINE = True  # already imported elsewhere in this process: offline all the same
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()  # "Using the latest cached version ..." is not news here
    try:
        ds = datasets.load_dataset(name, config, split=split, cache_dir=_env_dir("HF_DATASETS_CACHE", "datasets"))
        revision = Path(ds.cache_files[0]["filename"]).parent.name if ds.cache_files else None
        return ds.to_list(), revision
    except ValueError as e:  # cached, but not this config or split: datasets names the ones it has
        first = str(e).strip().splitlines()
        if not any(line.startswith(("Couldn't find cache", "Unknown split")) for line in first[:1]):
            raise GpoError(f"hf:{name}: {' '.join(first)}") from None
        cached_error = " ".join(first)
    except (ConnectionError, FileNotFoundError):  # not in the datasets cache at all
        cached_error = None
    except GpoError:  # a SIGTERM (Preempted) keeps its exit code
        raise
    except Exception as e:  # noqa: BLE001 - a damaged cache fails in many ways
        raise GpoError(f"hf:{name}: cannot load from the datasets cache: {str(e).strip()[:300]}") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    found = _hub_parquet(name, config, split)
    if found is not None:
        return found
    if cached_error:
        raise GpoError(f"hf:{name}: {cached_error}")
    call = f"datasets.load_dataset('{name}'" + (f", '{config}'" if config else "") + ")"
    raise GpoError(f"dataset {name} is not in the local Hugging Face datasets cache; on a machine with network "
                   f"run `python -c \"import datasets; {call}\"` (or `hf download --repo-type dataset {name}`), "
                   "then copy the cache here or set HF_DATASETS_CACHE / HF_HUB_CACHE")


def _hub_parquet(name: str, config: str | None, split: str) -> tuple[list[dict], str] | None:
    """The Parquet files of `hf download --repo-type dataset` (<config>/<split>-*.parquet, or data/ for the
    default config), read from the hub cache through huggingface_hub's own resolution."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    from stages.core.generation.models import hub_cache_dir

    try:
        folder = Path(snapshot_download(name, repo_type="dataset", cache_dir=hub_cache_dir(),
                                        local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, HFValidationError):
        return None
    subdirs = [config] if config else ["default", "data", "."]
    for sub in subdirs:
        files = sorted((folder / sub).glob(f"{split}-*.parquet")) + sorted((folder / sub / split).glob("*.parquet"))
        if files:
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
            except (OSError, pa.ArrowException) as e:
                raise GpoError(f"hf:{name}: cannot read {files[0]}: {str(e).splitlines()[0]}") from None
            return table.to_pylist(), folder.name
    return None
