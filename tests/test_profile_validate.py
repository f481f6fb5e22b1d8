"""The validation driver end to end on the CPU with a tiny model (the H100 run uses the same code)."""

import json

import pytest

from kvplan.profilers import calibrate as cal
from kvplan.profilers import store, validate

TINY = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 256,
        "tie_word_embeddings": False}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    monkeypatch.setattr(cal, "CPU_REFERENCE", cal.Reference(str(path), None, 1, ((1, 32), (1, 128)), ((1, 32), (2, 128)),
                                                            copy_bytes=8 * 2**20, matmul_n=128))
    return str(path)


def test_validate_writes_csv_report_and_profile(tiny, tmp_path):
    out = tmp_path / "val"
    args = ["--out", str(out), "--device", "cpu", "--model", tiny, "--layers", "2", "--contexts", "16,24",
            "--batches", "1,2", "--name", "run", "--kinds", "mha;window:size=8,global_every=2;dsa:index_n_heads=2,index_head_dim=16,"
            "index_topk=8", "--repeats", "1", "--usd-per-hour", "0.1"]
    assert validate.main(args) == 0
    rows = store.read_rows(out / "run.csv")
    assert len(rows) == 3 * 2 * 2 and all(r["status"] == "ok" for r in rows)
    assert all(r["cache_bytes_error"] == 0 for r in rows)
    text = (out / "run.md").read_text()
    assert "## Misses of the targets" in text
    assert "python3 -m kvplan.profilers.validate --out" in text
    # One line per kind in the error table, named as served.
    for kind in ("| mha |", "| gqa(kv_heads=2) local(8)/global |", "| dsa(topk=8) |"):
        assert kind in text
    assert json.loads((out / "run-profile.json").read_text())["gpu"]["name"] == "cpu"
    # A rerun resumes: nothing is measured twice, the report is rewritten from the same rows.
    assert validate.main(args) == 0
    assert len(store.read_rows(out / "run.csv")) == 12

    # --reestimate measures nothing: with a changed estimate (here every prefill estimate doubled) the same
    # measurements get the new estimates, and the report keeps its command.
    reestimate = ["--out", str(out), "--name", "run", "--model", tiny, "--reestimate"]
    assert validate.main(reestimate) == 0
    rows = store.read_rows(out / "run.csv")
    original = validate.compare

    def doubled(row, est, full):
        original(row, est, full)
        row["prefill_seconds_estimate"] *= 2

    validate.compare = doubled
    try:
        assert validate.main(reestimate) == 0
    finally:
        validate.compare = original
    again = store.read_rows(out / "run.csv")
    key = ("attention", "batch", "context", "prefill_seconds_measured", "cache_bytes_measured")
    assert [[r[k] for k in key] for r in again] == [[r[k] for k in key] for r in rows]
    for before, after in zip(rows, again):
        assert after["prefill_seconds_estimate"] == pytest.approx(2 * before["prefill_seconds_estimate"])
    assert "python3 -m kvplan.profilers.validate --out" in (out / "run.md").read_text()
    # A "Causes of the misses" section written by hand survives both a re-estimate and a resumed run.
    text = (out / "run.md").read_text().replace("## Rows that did not fit",
                                                "## Causes of the misses\n\n- a cause.\n\n## Rows that did not fit")
    (out / "run.md").write_text(text)
    assert validate.main(reestimate) == 0
    assert validate.main(args) == 0
    text = (out / "run.md").read_text()
    assert text.count("## Causes of the misses\n\n- a cause.\n\n## Rows that did not fit") == 1


def test_time_budget_leaves_rows_out_and_says_so(tiny, tmp_path):
    out = tmp_path / "val"
    args = ["--out", str(out), "--device", "cpu", "--model", tiny, "--contexts", "16", "--batches", "1",
            "--kinds", "mha", "--repeats", "1", "--usd-per-hour", "0.1", "--budget-seconds", "0"]
    assert validate.main(args) == 0
    assert store.read_rows(out / "validation.csv") == []
    assert "## Not run (time budget)" in (out / "validation.md").read_text()
