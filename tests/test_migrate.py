"""Legacy job requests -> Tasks API requests: the mapping, the notes, and the CLI."""

from __future__ import annotations

import io
import json
import pathlib
import sys
from typing import Any

import pytest

from audioshake_async import Target, errors
from audioshake_async.cli import main
from audioshake_async.migrate import MigrationNote, migrate_jobs

#: The job requests of the legacy API page (seed 002), verbatim.
SEED_JOBS: list[dict[str, Any]] = [
    {
        "metadata": {"format": "wav", "name": "vocals"},
        "assetId": "clyxaywtp00ne0jpi4nf435dv",
        "callbackUrl": "https://your-app.com/webhooks",
    },
    {"metadata": {"format": "json", "name": "music_detection"}, "assetId": "<asset-id>"},
]


def job(model: str, fmt: str, asset: str, **extra: Any) -> dict[str, Any]:
    metadata = {"name": model, "format": fmt, **extra.pop("metadata", {})}
    return {"metadata": metadata, "assetId": asset, **extra}


def notes_of(level: str, notes: tuple[MigrationNote, ...]) -> list[str]:
    return [str(n) for n in notes if n.level == level]


def test_seed_examples() -> None:
    result = migrate_jobs(SEED_JOBS)
    assert result.ok
    assert result.to_json() == [
        {
            "assetId": "clyxaywtp00ne0jpi4nf435dv",
            "targets": [{"model": "vocals", "formats": ["wav"]}],
        },
        {"assetId": "<asset-id>", "targets": [{"model": "music_detection", "formats": ["json"]}]},
    ]
    assert result.webhook_urls == ("https://your-app.com/webhooks",)
    actions = notes_of("action", result.notes)
    assert any("callbackUrl https://your-app.com/webhooks" in a and "job 0:" in a for a in actions)
    assert any("POST /assets" in a for a in actions)
    assert any("response.id" in str(n) for n in result.notes)
    assert notes_of("warning", result.notes) == []


def test_mixed_models_and_formats_on_two_assets() -> None:
    jobs = [
        job("vocals", "wav", "A"),
        job("drums", "wav", "B"),
        job("vocals", "mp3", "A"),
        job("instrumental", "wav", "A", metadata={"variant": "high_quality"}),
        job("vocals", "wav", "B"),
        job("drums", "flac", "B"),
        job("vocals", "wav", "A"),  # the same output twice
        job("transcription", "json", "B", metadata={"language": "en"}),
    ]
    result = migrate_jobs(jobs)
    assert result.ok
    assert [(r.asset_id, r.jobs) for r in result.requests] == [
        ("A", (0, 2, 3, 6)),
        ("B", (1, 4, 5, 7)),
    ]
    assert result.requests[0].targets == (
        Target("vocals", ("wav", "mp3")),
        Target("instrumental", ("wav",), variant="high_quality"),
    )
    assert result.to_json()[1] == {
        "assetId": "B",
        "targets": [
            {"model": "drums", "formats": ["wav", "flac"]},
            {"model": "vocals", "formats": ["wav"]},
            {"model": "transcription", "formats": ["json"], "language": "en"},
        ],
    }
    assert any(
        "job 6:" in n and "repeats vocals as wav" in n for n in notes_of("info", result.notes)
    )


def test_more_than_twenty_targets_are_split() -> None:
    jobs = [job(f"model_{i:02d}", "wav", "A") for i in range(25)]
    result = migrate_jobs(jobs)
    assert [len(r.targets) for r in result.requests] == [20, 5]
    assert result.requests[1].targets[0].model == "model_20"
    (split,) = notes_of("warning", result.notes)
    assert "25 targets split into 2 tasks" in split and "at most 20" in split
    assert [len(r.targets) for r in migrate_jobs(jobs, max_targets=10).requests] == [10, 10, 5]


def test_everything_without_an_equivalent_is_reported() -> None:
    jobs = [
        job(
            "alignment",
            "json",
            "A",
            otherSourceAssets=[{"id": "t1", "type": "transcription"}],
            priority=3,
            metadata={"customProperty": "x", "residual": "yes"},
        ),
        job("vocals", "wav", "A", metadata={"residual": True}),
        job("vocals", "wav", "A"),  # same model, other options: a second task
        job("vocals", "ogg", "A", metadata={"variant": "high_quality"}),
        {"job": job("bass", "wav", "C") | {"id": "j1", "status": "completed"}},
        {"assetId": "A"},
        job("", "wav", "A"),
        {"metadata": {"name": "drums"}},
        "vocals.wav",
    ]
    result = migrate_jobs(jobs)
    warnings = "\n".join(notes_of("warning", result.notes))
    assert "job 0: otherSourceAssets has no Tasks API equivalent" in warnings
    assert "transcriptAssetId" in warnings
    assert "job 0: field 'priority' has no Tasks API equivalent" in warnings
    assert "job 0: metadata customProperty has no target equivalent" in warnings
    assert "job 0: metadata.residual='yes' is not a bool" in warnings
    assert "split into 2 tasks" in warnings and "each model once" in warnings
    assert "job 3: format ogg is not a documented" in warnings
    errors_ = notes_of("error", result.notes)
    assert [e.split(":")[1].strip() for e in errors_] == ["job 5", "job 6", "job 7", "job 8"]
    assert not result.ok
    assert any("response field 'status' ignored" in str(n) for n in result.notes)
    bodies = result.to_json()
    assert bodies[0]["targets"] == [
        {"model": "alignment", "formats": ["json"]},
        {"model": "vocals", "formats": ["wav"], "residual": True},
        {"model": "vocals", "formats": ["ogg"], "variant": "high_quality"},
    ]
    assert bodies[1] == {"assetId": "A", "targets": [{"model": "vocals", "formats": ["wav"]}]}
    assert bodies[2] == {"assetId": "C", "targets": [{"model": "bass", "formats": ["wav"]}]}


def test_input_shapes() -> None:
    assert migrate_jobs({"jobs": SEED_JOBS}).to_json() == migrate_jobs(SEED_JOBS).to_json()
    assert len(migrate_jobs(SEED_JOBS[0]).requests) == 1
    assert migrate_jobs([]).requests == ()
    with pytest.raises(errors.ValidationError):
        migrate_jobs(42)  # type: ignore[arg-type]
    with pytest.raises(errors.ValidationError):
        migrate_jobs(SEED_JOBS, max_targets=0)
    missing_format = migrate_jobs([{"metadata": {"name": "vocals"}, "assetId": "A"}])
    assert missing_format.to_json()[0]["targets"] == [{"model": "vocals", "formats": ["wav"]}]
    assert any("wav assumed" in str(n) for n in missing_format.notes)


def run_cli(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    original = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        status = main(list(argv), stdout=out, stderr=err)
    finally:
        sys.stdin = original
    return status, out.getvalue(), err.getvalue()


def test_cli_migrate(tmp_path: pathlib.Path) -> None:
    seed = tmp_path / "jobs.json"
    seed.write_text(json.dumps(SEED_JOBS))
    status, out, err = run_cli("migrate", str(seed))
    assert status == 0, err
    assert json.loads(out) == migrate_jobs(SEED_JOBS).to_json()
    assert "action: job 0: callbackUrl https://your-app.com/webhooks" in err
    mixed = [job("vocals", "wav", "A"), job("vocals", "mp3", "A"), job("drums", "wav", "B")]
    status, out, _ = run_cli("migrate", "-", stdin=json.dumps(mixed))
    assert status == 0
    assert json.loads(out) == [
        {"assetId": "A", "targets": [{"model": "vocals", "formats": ["wav", "mp3"]}]},
        {"assetId": "B", "targets": [{"model": "drums", "formats": ["wav"]}]},
    ]
    status, out, err = run_cli("migrate", "-", stdin=json.dumps([*mixed, {"assetId": "A"}]))
    assert status == 1 and "error: job 3: no metadata object" in err
    assert len(json.loads(out)) == 2  # what could be converted still is
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    status, _, err = run_cli("migrate", str(bad))
    assert status == 2 and "is not JSON" in err
    status, _, err = run_cli("migrate", str(tmp_path / "missing.json"))
    assert status == 2 and "cannot read" in err
    status, _, err = run_cli("migrate", "-", stdin="42")
    assert status == 2 and "expected a list" in err
