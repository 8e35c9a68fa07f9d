"""The evidence behind inat_photos' verdict on a labelled set (issue 17): true pairs against
the closest wrong ones.

    python tests/bench_verdict.py SET [--jobs N] [--pairs FILE]

SET is a folder written by tests/make_matching_set.py. Every local photo is compared, as the
tool compares it (inat_photos.compare_pictures on the same decoded pictures and keypoints),
with every upload observed within the cluster threshold of its camera time (days with a
camera-clock error are left out). The uploads are rendered as the fake iNaturalist serves
them, at "large". Each pair's evidence is written to FILE (JSON lines; default
SET/pairs.jsonl), and a table prints, for each piece of evidence, its spread over the true
pairs and over the closest wrong pairs: for each local photo its best-scoring wrong upload,
and for each upload its best-scoring wrong local photo. It is a measurement: exit code 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import json
import multiprocessing
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_inat import render_photo
from support import SCRIPT
from support.xmp import read_exif

WINDOW = 180 + 59  # the default cluster threshold, and an observation time's minute


def _tool() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("inat_photos", SCRIPT)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["inat_photos"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    module.configure_process()  # the pixel limit and namespaces, as main sets them
    return module


def _camera_time(path: Path) -> tuple[dt.datetime, int]:
    exif = read_exif(path)
    taken = dt.datetime.strptime(exif["Exif.Photo.DateTimeOriginal"], "%Y:%m:%d %H:%M:%S")
    return taken, int(exif.get("Exif.Image.Orientation", "1"))


def plan_pairs(root: Path) -> list[tuple[str, list[dict]]]:
    """Each local photo with the uploads observed near its camera time."""
    truth = json.loads((root / "truth.json").read_text(encoding="utf-8"))
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    skipped_days = set(manifest.get("clock_offsets_minutes") or {})
    scenario = json.loads((root / "scenario.json").read_text(encoding="utf-8"))
    uploads = []
    for observation in scenario["observations"]:
        when = dt.datetime.fromisoformat(observation["time_observed_at"][:19])
        for photo in observation["photos"]:
            uploads.append({**photo, "when": when.isoformat()})
    plans = []
    for path in truth:
        taken, _ = _camera_time(root / path)
        if taken.date().isoformat() in skipped_days:
            continue
        near = [
            u
            for u in uploads
            if abs((dt.datetime.fromisoformat(u["when"]) - taken).total_seconds()) <= WINDOW
        ]
        if near:
            plans.append((path, near))
    return plans


def compare_one(args: tuple[str, str, list[dict], dict]) -> list[dict]:
    """Every pair of one local photo, as the tool compares them."""
    root_text, path, uploads, truth = args
    tool = _tool()
    root = Path(root_text)
    _, orientation = _camera_time(root / path)
    side = round(max(tool.INAT_PIXELS["large"], tool.HTML_THUMBNAIL) / tool.SMALLEST_CROP)
    local = tool.decode_upright(root / path, orientation, side)
    local_features = tool.find_local_features(local)

    def sharper() -> Image.Image:
        return tool.decode_upright(root / path, orientation, 1 << 16)

    rows = []
    for upload in uploads:
        data = render_photo(
            root / upload["source"],
            "large",
            crop=upload.get("crop"),
            rotate=upload.get("rotate", 0),
            quality=upload.get("quality", 85),
        )
        picture = tool._open_rgb(io.BytesIO(data))  # as the tool decodes a download
        features = tool.find_upload_features(picture)
        found = tool.compare_pictures(
            local, local_features, picture, features, tool.ssim_score, sharper
        )
        evidence = {
            k: v
            for k, v in dataclasses.asdict(found).items()
            if v is None or isinstance(v, (int, float))
        }
        evidence["levelled"] = list(found.levelled) if found.levelled else None
        rows.append(
            {
                "local": path,
                "upload": upload["id"],
                "true": truth.get(path) == upload["id"],
                **evidence,
            }
        )
    return rows


EVIDENCE = {  # name in the table -> how to read it from a pair's row
    "similarity (SSIM)": lambda r: r["score"],
    "coarse score": lambda r: r.get("coarse"),
    "worst part": lambda r: r.get("worst_part"),
    "share of matches fitting": lambda r: r["inliers"] / r["matches"] if r["matches"] else None,
    "matching points": lambda r: r["inliers"],
    "parts moving (px)": lambda r: r["misfit"],
    "coarse score, local tones set aside": lambda r: (r.get("levelled") or [None])[0],
    "worst part, local tones set aside": lambda r: (r.get("levelled") or [None, None])[1],
}


def _figures(rows: list[dict], read: Any, low: bool) -> str:
    values = np.array([v for v in map(read, rows) if v is not None], np.float64)
    if not len(values):
        return "-"
    big = values.max() > 2
    show = (lambda v: f"{v:.0f}") if big else (lambda v: f"{v:.3f}")
    if low:  # true pairs: how low they go
        picks = (values.min(), np.percentile(values, 5), np.median(values))
    else:  # wrong pairs: how high they reach
        picks = (values.max(), np.percentile(values, 95), np.median(values))
    return " / ".join(show(v) for v in picks)


def closest_wrong(rows: list[dict]) -> list[dict]:
    """For each local photo its best-scoring wrong upload, and for each upload its
    best-scoring wrong local photo, among the pairs that lined up and did not move. The
    second upload of a photo uploaded twice (category twice) is the same picture, not a
    look-alike: the earlier observation takes it, by rule, and it is left out here."""
    eligible = [
        r
        for r in rows
        if not r["true"]
        and not r["prefiltered"]
        and r["misfit"] <= 0.5
        and r.get("category") != "twice"
    ]
    closest: dict[tuple[str, int], dict] = {}
    for key in ("local", "upload"):
        best: dict[Any, dict] = {}
        for r in eligible:
            if r[key] not in best or r["score"] > best[r[key]]["score"]:
                best[r[key]] = r
        closest.update({(r["local"], r["upload"]): r for r in best.values()})
    return list(closest.values())


def report(rows: list[dict]) -> None:
    true = [r for r in rows if r["true"]]
    found = [r for r in true if not r["prefiltered"]]
    wrong = closest_wrong(rows)
    print(
        f"{len(rows)} pairs compared: {len(true)} true ({len(true) - len(found)} never lined"
        f" up), {len(wrong)} closest wrong pairs that lined up and did not move"
    )
    print()
    twins = [r for r in wrong if r.get("category") == "hdr"]
    others = [r for r in wrong if r.get("category") != "hdr"]
    print(
        "| evidence | true pairs: min / 5% / median | closest wrong, other frames and shots:"
        " max / 95% / median | the other version of an HDR pair: max / 95% / median |"
    )
    print("| --- | --- | --- | --- |")
    for name, read in EVIDENCE.items():
        print(
            f"| {name} | {_figures(found, read, True)} | {_figures(others, read, False)}"
            f" | {_figures(twins, read, False)} |"
        )
    print()
    lined: dict[str, list[int]] = {}
    for r in true:
        counts = lined.setdefault(r.get("category") or "?", [0, 0])
        counts[0] += not r["prefiltered"]
        counts[1] += 1
    print("Lined up by the pre-filter (registration), true pairs per category:")
    print("  " + ", ".join(f"{c} {n}/{m}" for c, (n, m) in sorted(lined.items())))
    print()
    print("True pairs below 95% or never lined up:")
    for r in sorted(true, key=lambda r: r["score"]):
        if r["score"] < 0.95 or r["prefiltered"]:
            print(f"  {r.get('category')}: {r['local']} {_row(r)}")
    print("Closest wrong pairs at 85% and above:")
    for r in sorted(wrong, key=lambda r: -r["score"]):
        if r["score"] >= 0.85:
            print(f"  {r.get('category')}: {r['local']} / {r['upload']} {_row(r)}")


def _row(r: dict) -> str:
    return " ".join(
        f"{name.split()[0]}{'*' * ('aside' in name)}={'-' if v is None else f'{v:.3f}'}"
        for name, v in ((n, read(r)) for n, read in EVIDENCE.items())
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", type=Path)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--pairs", type=Path, default=None)
    parser.add_argument("--report-only", action="store_true", help="read FILE, compare nothing")
    parser.add_argument("--only", default="", help="comma-separated categories (default: all)")
    args = parser.parse_args(argv)
    root = args.set.resolve()
    out = args.pairs or root / "pairs.jsonl"
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    categories = {path: note["category"] for path, note in manifest["pictures"].items()}
    if args.report_only:
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    else:
        truth = json.loads((root / "truth.json").read_text(encoding="utf-8"))
        only = set(filter(None, args.only.split(",")))
        work = [
            (str(root), path, near, truth)
            for path, near in plan_pairs(root)
            if not only or categories.get(path) in only
        ]
        rows = []
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            for found in pool.imap_unordered(compare_one, work):
                rows.extend({**r, "category": categories.get(r["local"])} for r in found)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
