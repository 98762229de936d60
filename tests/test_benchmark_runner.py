"""benchmarks.run: a ``--models`` run replaces only the rows it measured (pure bookkeeping, nothing measured here)."""

from __future__ import annotations

from benchmarks.run import merge_model_rows


def _entry(model, size, rate):
    return {"model": model, "size": size, "scale": size, "input_shape": [128, 128, 1],
            "training": {"images_per_s": {"median": rate}}}


def test_models_run_replaces_only_its_rows_and_stamps_them():
    previous = {
        "sections": {"models": {"small_size": 128, "entries": [_entry("unet", "small", 10.0),
                                                               _entry("mask2former", "small", 0.1),
                                                               _entry("mask2former", "paper", 0.01)]}},
        "load": {"models": {"measured": {"commit": "old", "at": "then"}}},
    }
    report = {"git_commit": "new", "finished_at": "now", "load": {"models": {}},
              "sections": {"models": {"small_size": 128, "entries": [_entry("mask2former", "small", 16.0),
                                                                     _entry("maskformer", "small", 40.0)]}}}
    merge_model_rows(report, previous)
    rows = {(e["model"], e["size"]): e for e in report["sections"]["models"]["entries"]}
    assert set(rows) == {("unet", "small"), ("mask2former", "small"), ("mask2former", "paper"), ("maskformer", "small")}
    assert rows[("mask2former", "small")]["training"]["images_per_s"]["median"] == 16.0
    assert rows[("mask2former", "small")]["measured"] == {"commit": "new", "at": "now"}
    # rows the run did not measure keep their numbers and carry no stamp of the new run
    assert rows[("unet", "small")]["training"]["images_per_s"]["median"] == 10.0 and "measured" not in rows[("unet", "small")]
    assert "measured" not in rows[("mask2former", "paper")]
    assert report["load"]["models"]["measured"] == {"commit": "old", "at": "then"}
    assert report["load"]["models"]["rows_measured_later"] == {"commit": "new", "at": "now"}


def test_model_plan_covers_every_registry_model_at_both_sizes():
    # a model registered without a paper input shape once made the full models section fail outright
    from benchmarks.models import plan
    from lungkit.models import available_models

    entries = plan(quick=False)
    assert {(e["model"], e["size"]) for e in entries} == {
        (name, size) for name in available_models() for size in ("small", "paper")}
    assert all(len(e["input_shape"]) == 3 and e["timeout_s"] > 0 for e in entries)


def test_failed_models_run_keeps_the_section_it_did_not_measure(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from benchmarks import run as bench_run

    # the committed report is the realistic "previous run"
    committed = Path(bench_run.__file__).resolve().parent.parent / "reports" / "benchmarks.json"
    previous = json.loads(committed.read_text())
    (tmp_path / "benchmarks.json").write_text(json.dumps(previous))

    def broken_section(*args, **kwargs):
        raise KeyError("no paper input")

    monkeypatch.setattr(bench_run, "_run_section", broken_section)
    status = bench_run.main(["--sections", "models", "--models", "unet", "--out", str(tmp_path),
                             "--work-dir", str(tmp_path / "work")])
    assert status == 1
    kept = json.loads((tmp_path / "benchmarks.json").read_text())
    assert kept["sections"]["models"] == previous["sections"]["models"]
    assert "no paper input" not in (tmp_path / "benchmarks.md").read_text()
