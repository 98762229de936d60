"""benchmarks.run: a ``--models`` run replaces only the rows it measured (pure bookkeeping, nothing measured here)."""

from __future__ import annotations

from benchmarks.run import merge_model_rows


def _entry(model, size, rate):
    return {"model": model, "size": size, "training": {"images_per_s": {"median": rate}}}


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
