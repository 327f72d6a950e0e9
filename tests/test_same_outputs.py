"""bench/same_outputs.py, the before/after check of a refactor: timings and the folders' own paths are not
differences; a changed value, a missing file or a changed summary is."""

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import same_outputs  # noqa: E402


def write(root, reward=1, seconds=1.0, extra=False):
    (root / "sample").mkdir(parents=True)
    pq.write_table(pa.table({"problem_id": ["a", "b"], "reward": [reward, 0], "wall_seconds": [seconds, 2.0],
                             "model": [f"{root}/model", f"{root}/model"]}), root / "sample" / "part.parquet")
    (root / "summary.json").write_text(json.dumps({"accuracy": 0.5, "timings": [["sample", seconds]],
                                                   "out": str(root)}))
    if extra:
        (root / "extra.parquet").write_bytes((root / "sample" / "part.parquet").read_bytes())


def test_only_what_measures_the_machine_is_ignored(tmp_path, capsys):
    write(tmp_path / "a")
    write(tmp_path / "b", seconds=9.0)  # other timings, other folder name in paths
    assert same_outputs.compare(tmp_path / "a", tmp_path / "b") == []
    write(tmp_path / "c", reward=0, extra=True)
    diffs = same_outputs.compare(tmp_path / "a", tmp_path / "c")
    assert diffs == [f"only in {tmp_path / 'c'}: extra.parquet", "differs: sample/part.parquet (1 rows)"]
    summary = tmp_path / "a" / "summary.json"
    summary.write_text(summary.read_text().replace("0.5", "0.6"))
    assert same_outputs.compare(tmp_path / "a", tmp_path / "b") == ["differs: summary.json (1 rows)"]
    assert same_outputs.main([str(tmp_path / "a"), str(tmp_path / "nowhere")]) == 2
    assert "error:" in capsys.readouterr().err
