"""Issue 11: RAW (DNG), HEIC, RAW+JPEG pairs and XMP sidecars, end to end through the CLI;
hierarchical keywords and Darwin Core read back from the written XMP.

The world: camera files made by support.formats from pictures whose JPEG "exports" were
uploaded to the fake iNaturalist. Every test reads the tags back with exiv2.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from fake_inat import FakeINaturalist
from PIL import Image
from support.cli import run_cli, summary_numbers
from support.examples import USER as DEMO_USER
from support.examples import local_pictures
from support.files import digest
from support.formats import exif_bytes, write_dng, write_heic
from support.images import texture
from support.scenario import observation_record, photo_record
from support.xmp import read_xmp, write_exif, write_xmp

import inat_photos as ip

USER = "raw_shooter"
START = dt.datetime(2023, 6, 10, 8, 0, 20)
SPACING = dt.timedelta(minutes=9)
GPS = (46.52, 6.63)

# A small taxonomy for the fake taxa endpoint: (id, name, rank, common name, parent id)
TAXONOMY = [
    (48460, "Life", "stateofmatter", None, None),
    (1, "Animalia", "kingdom", "Animals", 48460),
    (2, "Chordata", "phylum", None, 1),
    (355675, "Vertebrata", "subphylum", None, 2),
    (40151, "Mammalia", "class", "Mammals", 355675),
    (848317, "Carnivora", "order", None, 40151),
    (42043, "Canidae", "family", None, 848317),
    (42048, "Canis", "genus", None, 42043),
    (42051, "Canis latrans", "species", "Coyote", 42048),
    (42069, "Vulpes", "genus", None, 42043),
    (42070, "Vulpes vulpes", "species", "Red Fox", 42069),
    (3, "Aves", "class", "Birds", 355675),
    (7251, "Passeriformes", "order", None, 3),
    (13685, "Paridae", "family", None, 7251),
    (144849, "Cyanistes", "genus", None, 13685),
    (144815, "Cyanistes caeruleus", "species", "Eurasian Blue Tit", 144849),
    (47126, "Plantae", "kingdom", "Plants", 48460),
    (211194, "Tracheophyta", "phylum", None, 47126),
    (47125, "Magnoliopsida", "class", None, 211194),
    (47853, "Rosales", "order", None, 47125),
    (47148, "Rosaceae", "family", None, 47853),
    (47351, "Rosa", "genus", None, 47148),
    (78806, "Rosa canina", "species", "Dog Rose", 47351),
    (47170, "Fungi", "kingdom", None, 48460),
    (47169, "Basidiomycota", "phylum", None, 47170),
    (48250, "Agaricomycetes", "class", None, 47169),
    (47167, "Agaricales", "order", None, 48250),
    (47392, "Amanitaceae", "family", None, 47167),
    (48715, "Amanita", "genus", None, 47392),
    (48716, "Amanita muscaria", "species", "Fly Agaric", 48715),
]
SPECIES = [42051, 144815, 78806, 48716, 42070]


def taxon(taxon_id: int) -> dict:
    _, name, rank, common, _ = next(t for t in TAXONOMY if t[0] == taxon_id)
    out = {"id": taxon_id, "name": name, "rank": rank}
    if common:
        out["preferred_common_name"] = common
    return out


def lineage(taxon_id: int) -> str:
    """The hierarchical keyword the README promises, computed from TAXONOMY."""
    by_id = {t[0]: t for t in TAXONOMY}
    names = []
    current = taxon_id
    while current is not None:
        entry = by_id[current]
        if entry[2] != "stateofmatter":
            names.insert(0, entry[1])
        current = entry[4]
    return "|".join(names)


def caption(taxon_id: int) -> str:
    t = taxon(taxon_id)
    return f"{t['preferred_common_name']} ({t['name']})"


@dataclass
class Shot:
    """One photo as taken: its files in the archive, and its upload."""

    files: list[Path]
    observation: int
    photo: int
    taxon_id: int
    taken: dt.datetime


@dataclass
class FormatWorld:
    root: Path
    pictures: Path
    sources: Path
    cache: Path
    scenario: dict
    shots: dict[str, Shot] = field(default_factory=dict)

    def fake(self) -> FakeINaturalist:
        return FakeINaturalist(self.scenario, base_dir=self.sources)

    def files(self) -> list[Path]:
        return sorted(p for p in self.pictures.rglob("*") if p.is_file())


def make_world(root: Path, kinds: list[str]) -> FormatWorld:
    """One shot per kind: 'dng' (full-size preview), 'dng_small' (tiny preview: demosaiced),
    'pair' (DNG + JPEG), 'heic' (stored sideways), 'jpeg'."""
    sources, pictures = root / "sources", root / "pictures"
    sources.mkdir(parents=True)
    pictures.mkdir(parents=True)
    scenario: dict = {
        "users": [{"id": 7007, "login": USER, "name": "Raw Shooter"}],
        "taxa": [
            {"id": i, "name": n, "rank": r, "preferred_common_name": c, "parent_id": p}
            for i, n, r, c, p in TAXONOMY
        ],
        "observations": [],
    }
    world = FormatWorld(root, pictures, sources, root / "cache", scenario)
    for i, kind in enumerate(kinds):
        taken = START + i * SPACING
        # The demosaic is half the sensor's size: give that RAW twice the export's pixels.
        picture = texture(500 + i, (1280, 960) if kind == "dng_small" else (640, 480))
        export = sources / f"export{i}.jpg"
        # What the photographer uploaded: an export of the picture at 640 x 480.
        picture.resize((640, 480), Image.Resampling.LANCZOS).save(export, "JPEG", quality=90)
        stem = f"IMG_{i + 1:04d}"
        files: list[Path] = []
        if kind in ("dng", "dng_small", "pair"):
            dng = pictures / f"{stem}.DNG"
            write_dng(
                dng,
                picture,
                taken=taken,
                preview_side=160 if kind == "dng_small" else None,
                gps=GPS,
            )
            files.append(dng)
        if kind in ("pair", "jpeg"):
            jpeg = pictures / f"{stem}.JPG"
            picture.save(jpeg, "JPEG", quality=92)
            write_exif(jpeg, {"Exif.Photo.DateTimeOriginal": taken.strftime("%Y:%m:%d %H:%M:%S")})
            files.append(jpeg)
        if kind == "heic":
            heic = pictures / f"{stem}.HEIC"
            write_heic(heic, picture, taken=taken, orientation=6, gps=GPS, quality=95)
            files.append(heic)
        taxon_id = SPECIES[i % len(SPECIES)]
        obs_id, photo_id = 9100 + i, 810_000 + i
        scenario["observations"].append(
            observation_record(
                obs_id,
                USER,
                taken.replace(second=0),
                [photo_record(photo_id, export.name)],
                taxon(taxon_id),
                "+02:00",
                location="46.5201,6.6302",
            )
        )
        world.shots[kind] = Shot(files, obs_id, photo_id, taxon_id, taken)
    return world


def snapshot(folder: Path) -> dict[Path, str]:
    """sha256 of every file below folder (support.files.snapshot adds stat fields)."""
    return {p: digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def sidecar(path: Path, naming: str = "lightroom") -> Path:
    return path.with_suffix(".xmp") if naming == "lightroom" else Path(f"{path}.xmp")


def assert_tags(xmp: dict, shot: Shot) -> None:
    assert xmp.get(ip.TAG_OBSERVATION) == str(shot.observation)
    assert xmp.get(ip.TAG_PHOTO) == str(shot.photo)
    assert caption(shot.taxon_id) in xmp.get(ip.TAG_SUBJECT, [])


def run(world: FormatWorld, fake: FakeINaturalist, *options: str):
    return run_cli(["-u", USER, *options, str(world.pictures)], fake.api_url, world.cache)


@pytest.fixture(scope="module")
def formats_world(tmp_path_factory: pytest.TempPathFactory) -> FormatWorld:
    """Built once: tests copy its pictures (camera files are slow-ish to make)."""
    return make_world(tmp_path_factory.mktemp("formats"), ["dng", "dng_small", "pair", "heic"])


@pytest.fixture
def world(formats_world: FormatWorld, tmp_path: Path) -> FormatWorld:
    """A private copy of the formats world's pictures, with its own cache (conftest's fake
    serves this world's scenario)."""
    copy = FormatWorld(
        tmp_path,
        tmp_path / "pictures",
        formats_world.sources,
        tmp_path / "cache",
        formats_world.scenario,
    )
    shutil.copytree(formats_world.pictures, copy.pictures)
    copy.shots = {
        kind: Shot(
            [copy.pictures / f.name for f in shot.files],
            shot.observation,
            shot.photo,
            shot.taxon_id,
            shot.taken,
        )
        for kind, shot in formats_world.shots.items()
    }
    return copy


# -- reading and matching each format; RAW and HEIC never written -----------------------------


def test_raw_heic_and_pairs_are_matched_and_tagged_in_sidecars(world: FormatWorld, fake) -> None:
    before = snapshot(world.pictures)

    result = run(world, fake)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for path, old in before.items():
        if path.suffix.upper() in (".DNG", ".HEIC"):
            assert digest(path) == old, f"{path.name} was modified"
    for kind in ("dng", "dng_small", "heic"):
        shot = world.shots[kind]
        (file,) = shot.files
        assert_tags(read_xmp(sidecar(file)), shot)
        assert f"'{file}' without caption found for photo id {shot.photo};" in result.stdout
        assert f"(sidecar {sidecar(file).name})." in result.stdout
    dng, jpeg = world.shots["pair"].files
    assert_tags(read_xmp(sidecar(dng)), world.shots["pair"])  # the RAW: in its sidecar
    assert_tags(read_xmp(jpeg), world.shots["pair"])  # the JPEG: in the file, as always
    assert not sidecar(jpeg, "darktable").exists()
    # The pair was compared once, through the JPEG, the quicker file.
    assert f"'{jpeg}' without caption found" in result.stdout
    assert f"'{dng}' without" not in result.stdout
    assert "1 RAW+JPEG pair(s): each compared once, every file tagged." in result.lines
    numbers = summary_numbers(result.stdout)
    assert (numbers["added"], numbers["locals_left"], numbers["inat_left"]) == (4, 0, 0)


def test_rerun_sees_sidecar_associations_and_writes_nothing(world: FormatWorld, fake) -> None:
    assert run(world, fake).returncode == 0
    after_first = snapshot(world.pictures)
    mtimes = {p: p.stat().st_mtime_ns for p in after_first}

    again = run(world, fake)

    assert again.returncode == 0, again.stderr
    assert snapshot(world.pictures) == after_first
    assert {p: p.stat().st_mtime_ns for p in after_first} == mtimes
    assert not [ln for ln in again.lines if "found for photo id" in ln or "Updating" in ln]
    numbers = summary_numbers(again.stdout)
    assert (numbers["added"], numbers["modified"], numbers["locals_left"]) == (0, 0, 0)

    # The same with a cold index: the associations are read from the sidecars themselves.
    shutil.rmtree(world.cache / "local_index.sqlite", ignore_errors=True)
    (world.cache / "local_index.sqlite").unlink(missing_ok=True)
    cold = run(world, fake)
    assert cold.returncode == 0 and snapshot(world.pictures) == after_first
    assert summary_numbers(cold.stdout)["locals_left"] == 0
    assert not [ln for ln in cold.lines if "found for photo id" in ln]


LIGHTROOM_SIDECAR = """<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
   xmp:Rating="4" xmp:Label="Red" crs:Exposure2012="+0.35" crs:WhiteBalance="As Shot">
   <dc:subject><rdf:Bag><rdf:li>holiday</rdf:li><rdf:li>Lake Geneva</rdf:li></rdf:Bag></dc:subject>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>Places|Lake Geneva</rdf:li></rdf:Bag>
   </lr:hierarchicalSubject>
   <crs:ToneCurvePV2012><rdf:Seq><rdf:li>0, 0</rdf:li><rdf:li>255, 255</rdf:li></rdf:Seq>
   </crs:ToneCurvePV2012>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


@pytest.mark.parametrize("kind", ["dng", "heic"])
def test_existing_sidecar_keeps_every_other_property(world: FormatWorld, fake, kind: str) -> None:
    (file,) = world.shots[kind].files
    xmp_file = sidecar(file)
    xmp_file.write_text(LIGHTROOM_SIDECAR)
    before = read_xmp(xmp_file)
    inode = xmp_file.stat().st_ino

    result = run(world, fake, "--hierarchical-keywords")

    assert result.returncode == 0, result.stderr
    after = read_xmp(xmp_file)
    assert_tags(after, world.shots[kind])
    ours = {ip.TAG_OBSERVATION, ip.TAG_OBSERVATION_PHOTO, ip.TAG_PHOTO, ip.TAG_SUBJECT}
    ours |= {ip.TAG_CAPTION, ip.TAG_HIERARCHY, ip.TAG_HIERARCHY_CAPTION}
    assert {k: v for k, v in after.items() if k not in ours} == {
        k: v for k, v in before.items() if k not in ours
    }
    assert after[ip.TAG_SUBJECT] == ["holiday", "Lake Geneva", caption(world.shots[kind].taxon_id)]
    assert after[ip.TAG_HIERARCHY] == [
        "Places|Lake Geneva",
        lineage(world.shots[kind].taxon_id),
    ]
    assert xmp_file.stat().st_ino != inode  # replaced whole (atomically), not edited in place
    raw = xmp_file.read_text()
    assert "<rdf:Bag>" in raw.split("<dc:subject>")[1].split("</dc:subject>")[0]
    assert not [p for p in world.pictures.iterdir() if p.name.endswith(".inat-tmp")]


def test_darktable_names_and_existing_digikam_sidecars(world: FormatWorld, fake) -> None:
    (heic,) = world.shots["heic"].files
    digikam = sidecar(heic, "darktable")  # IMG_0004.HEIC.xmp, as digiKam writes it
    digikam.write_text(LIGHTROOM_SIDECAR)

    result = run(world, fake, "--sidecar-names", "darktable")

    assert result.returncode == 0, result.stderr
    assert_tags(read_xmp(digikam), world.shots["heic"])
    (dng,) = world.shots["dng"].files
    assert_tags(read_xmp(sidecar(dng, "darktable")), world.shots["dng"])
    assert not [
        p
        for p in world.pictures.iterdir()
        if p.name.lower().endswith(".xmp") and p.name.count(".") == 1
    ]  # no NAME.xmp was created


def test_sidecars_option_leaves_every_jpeg_byte_identical(world: FormatWorld, fake) -> None:
    before = snapshot(world.pictures)

    result = run(world, fake, "--sidecars")

    assert result.returncode == 0, result.stderr
    for path, old in before.items():
        assert digest(path) == old, f"{path.name} was modified"
    dng, jpeg = world.shots["pair"].files
    # IMG_0003.xmp is the RAW's; the JPEG of the pair gets IMG_0003.JPG.xmp and the run says so.
    assert_tags(read_xmp(sidecar(dng)), world.shots["pair"])
    assert_tags(read_xmp(sidecar(jpeg, "darktable")), world.shots["pair"])
    assert any("share a name stem" in ln and "IMG_0003.JPG.xmp" in ln for ln in result.lines)
    plain = run_cli(
        ["-u", USER, "--dry-run", str(world.pictures)], fake.api_url, world.root / "other-cache"
    )
    # Later without --sidecars: the tags are found in the sidecars, where the user chose them.
    assert plain.returncode == 0, plain.stderr
    assert "Updating subject" not in plain.stdout and "found for photo id" not in plain.stdout


def test_dry_run_creates_no_sidecar(world: FormatWorld, fake) -> None:
    before = snapshot(world.pictures)
    result = run(world, fake, "--dry-run", "--sidecars", "--hierarchical-keywords", "--darwin-core")
    assert result.returncode == 0, result.stderr
    assert snapshot(world.pictures) == before
    assert "(dry run)" in result.stdout and "(sidecar IMG_0001.xmp)" in result.stdout


def test_failed_sidecar_write_is_reported_and_the_run_goes_on(world: FormatWorld, fake) -> None:
    (dng,) = world.shots["dng"].files
    sidecar(dng).write_text(LIGHTROOM_SIDECAR)
    sidecar(dng).chmod(0o444)
    (heic,) = world.shots["heic"].files
    sidecar(heic).write_text("this is not XMP")  # exiv2 cannot parse it: never overwritten

    result = run(world, fake)

    assert result.returncode == ip.EXIT_FILE_ERRORS
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{dng}: cannot write metadata (the sidecar IMG_0001.xmp is read-only)" in result.stderr
    assert f"{sidecar(heic)}: cannot read this XMP sidecar" in result.stderr
    assert sidecar(heic).read_text() == "this is not XMP"
    assert ip.TAG_OBSERVATION not in read_xmp(sidecar(dng))
    assert_tags(read_xmp(sidecar(world.shots["dng_small"].files[0])), world.shots["dng_small"])


def test_broken_raw_and_heic_files_get_one_line_each(world: FormatWorld, fake) -> None:
    (world.pictures / "fake.CR2").write_text("not a raw file")
    (world.pictures / "fake.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 40)
    (world.pictures / "empty.NEF").write_bytes(b"")

    result = run(world, fake)

    assert result.returncode == ip.EXIT_FILE_ERRORS
    assert "Traceback" not in result.stdout + result.stderr
    for name in ("fake.CR2", "fake.heic", "empty.NEF"):
        lines = [ln for ln in result.stderr.splitlines() if name in ln]
        assert len(lines) == 1, result.stderr
    assert summary_numbers(result.stdout)["added"] == 4


# -- hierarchical keywords and Darwin Core ----------------------------------------------------

DWC = "Xmp.dwc."


def taxa_requests(fake: FakeINaturalist) -> list[dict]:
    return [r for r in fake.api_requests() if r["path"].startswith("/v1/taxa/")]


def test_hierarchy_and_darwin_core_are_written_and_refreshed(world: FormatWorld, fake) -> None:
    (dng,) = world.shots["dng"].files
    dng_shot = world.shots["dng"]
    pair_dng, pair_jpeg = world.shots["pair"].files
    options = ("--hierarchical-keywords", "--darwin-core")

    first = run(world, fake, *options)

    assert first.returncode == 0, first.stderr
    assert len(taxa_requests(fake)) == 1  # every taxon of the days in one batched request
    xmp = read_xmp(sidecar(dng))
    assert xmp[ip.TAG_HIERARCHY] == [lineage(dng_shot.taxon_id)]
    assert xmp[ip.TAG_HIERARCHY] == [
        "Animalia|Chordata|Vertebrata|Mammalia|Carnivora|Canidae|Canis|Canis latrans"
    ]
    assert {k: v for k, v in xmp.items() if k.startswith(DWC)} == {
        DWC + "occurrenceID": f"https://www.inaturalist.org/observations/{dng_shot.observation}",
        DWC + "scientificName": "Canis latrans",
        DWC + "vernacularName": "Coyote",
        DWC + "taxonRank": "species",
        DWC + "kingdom": "Animalia",
        DWC + "phylum": "Chordata",
        DWC + "class": "Mammalia",
        DWC + "order": "Carnivora",
        DWC + "family": "Canidae",
        DWC + "genus": "Canis",
        DWC + "eventDate": dng_shot.taken.replace(second=0).isoformat(),
    }  # no coordinates: the DNG has GPS of its own
    jpeg_dwc = read_xmp(pair_jpeg)
    assert jpeg_dwc[DWC + "decimalLatitude"] == "46.520100"  # the JPEG has none
    assert jpeg_dwc[DWC + "decimalLongitude"] == "6.630200"
    assert DWC + "decimalLatitude" not in read_xmp(sidecar(pair_dng))

    # The user adds entries of their own and corrects one term; then the identification changes.
    write_xmp(
        sidecar(dng),
        {
            ip.TAG_HIERARCHY: ["Places|Lake Geneva", *xmp[ip.TAG_HIERARCHY]],
            DWC + "vernacularName": "Prairie wolf",
            DWC + "recordedBy": "Raw Shooter",
        },
    )
    # In the JPEG of the pair, a hierarchical keyword of the user's shaped like ours.
    users_tree = "Animalia|Chordata|Mammalia|Carnivora|Canidae|Canis"
    write_xmp(pair_jpeg, {ip.TAG_HIERARCHY: [users_tree, *read_xmp(pair_jpeg)[ip.TAG_HIERARCHY]]})
    fake.set_taxon(dng_shot.observation, taxon(42070))  # Red Fox, Vulpes vulpes
    fake.reset_log()

    second = run(world, fake, *options)

    assert second.returncode == 0, second.stderr
    after = read_xmp(sidecar(dng))
    assert sorted(after[ip.TAG_HIERARCHY]) == sorted(["Places|Lake Geneva", lineage(42070)])
    assert after[DWC + "scientificName"] == "Vulpes vulpes"
    assert after[DWC + "genus"] == "Vulpes"
    assert after[DWC + "family"] == "Canidae"
    assert after[DWC + "vernacularName"] == "Prairie wolf"  # the user's, kept
    assert after[DWC + "recordedBy"] == "Raw Shooter"
    assert after[ip.TAG_SUBJECT] == [caption(42070)]
    assert [r["path"] for r in taxa_requests(fake)] == ["/v1/taxa/42070"]  # only the new taxon
    # The pair's JPEG did not change identification: its entries stay, the user's among them.
    pair_lineage = lineage(world.shots["pair"].taxon_id)
    assert read_xmp(pair_jpeg)[ip.TAG_HIERARCHY] == [users_tree, pair_lineage]

    fake.reset_log()
    before = snapshot(world.pictures)
    third = run(world, fake, *options)
    assert third.returncode == 0 and snapshot(world.pictures) == before
    assert taxa_requests(fake) == []


def test_unknown_taxa_are_asked_for_once(world: FormatWorld, fake) -> None:
    fake.add_taxon({"id": 42071, "name": "Vulpes lagopus", "rank": "species", "parent_id": 42069})
    shot = world.shots["heic"]
    assert run(world, fake, "--hierarchical-keywords").returncode == 0
    fake.set_taxon(shot.observation, {"id": 42071, "name": "Vulpes lagopus", "rank": "species"})
    fake.reset_log()

    result = run(world, fake, "--hierarchical-keywords")

    assert result.returncode == 0, result.stderr
    assert [r["path"] for r in taxa_requests(fake)] == ["/v1/taxa/42071"]
    (heic,) = shot.files
    assert read_xmp(sidecar(heic))[ip.TAG_HIERARCHY] == [
        "Animalia|Chordata|Vertebrata|Mammalia|Carnivora|Canidae|Vulpes|Vulpes lagopus"
    ]


def test_without_the_options_nothing_of_them_is_written(world: FormatWorld, fake) -> None:
    assert run(world, fake).returncode == 0
    assert taxa_requests(fake) == []
    for shot in world.shots.values():
        xmp = read_xmp(sidecar(shot.files[0]))
        assert ip.TAG_HIERARCHY not in xmp
        assert not [k for k in xmp if k.startswith(DWC)]


# -- units: decoding, sidecar names, pairs, the keyword rules ---------------------------------


def test_dng_helper_makes_a_raw_that_libraw_and_exiv2_read(tmp_path: Path) -> None:
    import rawpy

    path = tmp_path / "t.dng"
    write_dng(path, texture(1, (300, 200)), taken=START, orientation=6, gps=GPS)
    with rawpy.imread(str(path)) as raw:
        assert (raw.sizes.raw_width, raw.sizes.raw_height, raw.sizes.flip) == (300, 200, 6)
        assert raw.extract_thumb().format == rawpy.ThumbFormat.JPEG
    photo = ip.read_local_photo(path, ip.Console())
    assert photo is not None and photo.taken_at == START and photo.taken_at_from_exif
    assert photo.location == pytest.approx(GPS, abs=1e-6)


def test_raw_previews_and_demosaic_are_upright(tmp_path: Path) -> None:
    picture = texture(2, (320, 240))
    for name, preview_side in (("big.dng", None), ("small.dng", 60)):
        write_dng(tmp_path / name, picture, taken=START, orientation=6, preview_side=preview_side)
    # orientation 6: the camera was turned; upright, the picture stands 240 wide, 320 high.
    preview = ip.decode_upright(tmp_path / "big.dng", 1, 200)
    assert preview.size == (240, 320)
    demosaic = ip.decode_upright(tmp_path / "small.dng", 1, 200)
    assert demosaic.size == (120, 160)  # half size
    upright = picture.transpose(Image.Transpose.ROTATE_270)
    for decoded in (preview, demosaic):
        score = ip.ssim_score(
            np.asarray(decoded.resize((120, 160))), np.asarray(upright.resize((120, 160)))
        )
        assert score > 0.9


def test_heic_is_decoded_upright_and_its_exif_read(tmp_path: Path) -> None:
    path = tmp_path / "phone.heic"
    picture = texture(3, (320, 240))
    write_heic(path, picture, taken=START, orientation=6, gps=GPS)
    photo = ip.read_local_photo(path, ip.Console())
    assert photo is not None and photo.taken_at == START and photo.orientation == 1
    assert photo.location == pytest.approx(GPS, abs=1e-6)
    decoded = ip.decode_upright(path, photo.orientation, 100)
    assert decoded.size == (320, 240)
    score = ip.ssim_score(np.asarray(decoded), np.asarray(picture.convert("RGB")))
    assert score > 0.9


def test_heic_metadata_falls_back_to_the_decoder(tmp_path: Path, monkeypatch, capsys) -> None:
    path = tmp_path / "phone.heic"
    write_heic(path, texture(4, (160, 120)), taken=START, gps=GPS)

    def exiv2_fails(_: Path) -> None:
        raise RuntimeError("unsupported format")

    monkeypatch.setattr(ip, "_read_metadata", exiv2_fails)
    photo = ip.read_local_photo(path, ip.Console())
    assert photo is not None and photo.taken_at == START
    assert photo.location == pytest.approx(GPS, abs=1e-6)
    warning = capsys.readouterr().err
    assert "exiv2 cannot read the metadata of this HEIC file" in warning
    assert warning.count("\n") == 1


def test_sidecar_names_never_share_a_file(tmp_path: Path) -> None:
    for name in ("A.CR2", "A.JPG", "B.NEF", "B.HEIC", "C.JPG", "D.ARW"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "D.XMP").write_text("")  # an existing sidecar, upper case
    (tmp_path / "C.JPG.xmp").write_text("")
    files = sorted(p for p in tmp_path.iterdir() if p.suffix.upper() != ".XMP")
    console = ip.Console()

    plain = ip.name_sidecars(files, "lightroom", False, console)
    assert {p.name: s.name for p, s in plain.items()} == {
        "A.CR2": "A.xmp",
        "B.NEF": "B.xmp",
        "B.HEIC": "B.HEIC.xmp",  # B.xmp belongs to the RAW file
        "D.ARW": "D.XMP",
    }
    everything = ip.name_sidecars(files, "lightroom", True, console)
    assert everything[tmp_path / "A.JPG"].name == "A.JPG.xmp"
    assert everything[tmp_path / "C.JPG"].name == "C.JPG.xmp"  # the existing one
    darktable = ip.name_sidecars(files, "darktable", True, console)
    assert darktable[tmp_path / "A.CR2"].name == "A.CR2.xmp"
    assert darktable[tmp_path / "D.ARW"].name == "D.XMP"  # existing beats the convention
    assert len(set(everything.values())) == len(everything)
    assert len(set(darktable.values())) == len(darktable)


def test_pairs_need_the_same_folder_stem_and_time(tmp_path: Path) -> None:
    def photo(name: str, seconds: int, exif: bool = True) -> ip.LocalPhoto:
        return ip.LocalPhoto(
            tmp_path / name,
            START + dt.timedelta(seconds=seconds),
            None,
            1,
            (),
            None,
            taken_at_from_exif=exif,
        )

    photos = [
        photo("a.CR2", 0),
        photo("a.jpg", 0),
        photo("b.NEF", 0),
        photo("b.jpg", 5),  # another moment: not the same photo
        photo("c.dng", 0, exif=False),
        photo("c.jpg", 0, exif=False),  # file times only: not paired
        photo("d.jpg", 0),
        photo("d.heic", 0),  # no RAW: not a pair
    ]
    result = ip.pair_raw_with_exports(photos)
    paired = {p.path.name: [q.path.name for q in p.partners] for p in result}
    assert paired["a.jpg"] == ["a.CR2"]
    assert "a.CR2" not in paired
    assert len(result) == len(photos) - 1
    assert [p.path.name for p in result] == [p.path.name for p in photos if p.path.name != "a.CR2"]


def local(**changes: object) -> ip.LocalPhoto:
    base = ip.LocalPhoto(Path("a.jpg"), START, None, 1, (), ip.InatTags(1, 2, 3))
    return dataclasses.replace(base, **changes)


def test_lineage_shape() -> None:
    """Our entry is the one recorded in the photo, never one merely shaped like a lineage."""
    coyote = ip.hierarchy_entry(
        (("kingdom", "Animalia"), ("phylum", "Chordata"), ("species", "Canis latrans"))
    )
    assert coyote == "Animalia|Chordata|Canis latrans"
    fox = "Animalia|Chordata|Vulpes vulpes"
    users = ("Places|Lake Geneva", "Animalia|Chordata|Mammalia")  # shaped like ours, the user's
    recorded = local(hierarchy=(*users, coyote), written_hierarchy=coyote)
    update = ip.plan_update(recorded, None, (), None, hierarchy=fox)
    assert update is not None and update.hierarchy == (*users, fox)
    assert update.hierarchy_entry == fox
    assert update.xmp_changes()[ip.TAG_HIERARCHY_CAPTION] == fox
    assert update.applied().written_hierarchy == fox
    unrecorded = ip.plan_update(local(hierarchy=users), None, (), None, hierarchy=fox)
    assert unrecorded is not None and unrecorded.hierarchy == (*users, fox)  # nothing replaced
    # The user removed our entry and the identification is the same: it is not put back.
    removed = local(hierarchy=users, written_hierarchy=coyote)
    assert ip.plan_update(removed, None, (), None, hierarchy=coyote) is None
    assert ip.plan_update(removed, None, (), None, hierarchy=fox).hierarchy == (*users, fox)


def test_darwin_core_rule_replaces_only_our_terms() -> None:
    url = "https://www.inaturalist.org/observations/1"
    old = {DWC + "occurrenceID": url, DWC + "genus": "Canis", DWC + "scientificName": "Canis"}
    new = {DWC + "occurrenceID": url, DWC + "genus": "Vulpes", DWC + "family": "Canidae"}
    current = {**old, DWC + "genus": "Canis", DWC + "vernacularName": "mine"}
    current[DWC + "scientificName"] = "Canis (corrected by me)"
    assert ip.updated_darwin_core(current, old, new) == {
        DWC + "genus": "Vulpes",
        DWC + "family": "Canidae",
    }
    # Ours and no longer wanted: removed.
    assert ip.updated_darwin_core(old, old, new) == {
        DWC + "genus": "Vulpes",
        DWC + "family": "Canidae",
        DWC + "scientificName": None,
    }
    # Nothing recorded as ours (another program's record): only missing terms are added.
    other = {DWC + "occurrenceID": "https://example.org/42", DWC + "genus": "Canis"}
    assert ip.updated_darwin_core(other, {}, new) == {DWC + "family": "Canidae"}
    # A term the user removed is not put back while it would read the same.
    assert ip.updated_darwin_core({}, new, new) == {}
    moved = {**new, DWC + "genus": "Urocyon"}
    assert ip.updated_darwin_core({}, new, moved) == {DWC + "genus": "Urocyon"}


def test_darwin_core_record_follows_what_the_photo_holds() -> None:
    """plan_update records the terms it owns in the photo (TAG_DARWIN_CORE): what holds our
    value, and what the user removed; a term the user changed is no longer ours."""
    url = "https://www.inaturalist.org/observations/1"
    first = {DWC + "occurrenceID": url, DWC + "genus": "Canis", DWC + "vernacularName": "Coyote"}
    update = ip.plan_update(local(), None, (), None, darwin_core=first)
    assert update is not None and dict(update.darwin_core) == first
    written = update.applied()
    assert dict(written.written_darwin_core) == first
    assert sorted(update.xmp_changes()[ip.TAG_DARWIN_CORE]) == [
        "genus=Canis",
        f"occurrenceID={url}",
        "vernacularName=Coyote",
    ]
    assert ip.plan_update(written, None, (), None, darwin_core=first) is None
    edited = dataclasses.replace(
        written, darwin_core=((DWC + "genus", "Canis"), (DWC + "vernacularName", "Prairie wolf"))
    )  # the user changed one term and removed another
    again = ip.plan_update(edited, None, (), None, darwin_core=first)
    assert again is not None and again.darwin_core == ()
    assert dict(again.written_darwin_core) == {
        DWC + "occurrenceID": url,
        DWC + "genus": "Canis",
    }
    settled = again.applied()
    assert ip.plan_update(settled, None, (), None, darwin_core=first) is None


def test_avif_is_read_and_decoded_upright(tmp_path: Path) -> None:
    picture = texture(5, (320, 240))
    path = tmp_path / "sideways.avif"  # stored turned, EXIF says how to show it
    picture.transpose(Image.Transpose.ROTATE_90).save(
        path, exif=exif_bytes(START, 6, GPS), quality=90
    )
    photo = ip.read_local_photo(path, ip.Console())
    assert photo is not None and photo.taken_at == START
    decoded = ip.decode_upright(path, photo.orientation, 100)
    assert decoded.size == (320, 240)
    assert ip.ssim_score(np.asarray(decoded), np.asarray(picture.convert("RGB"))) > 0.9


def test_sidecars_option_on_the_example_pictures(fake_inat, pictures: Path, cache: Path) -> None:
    """--sidecars puts exactly the tags a normal run writes into the JPEGs into sidecars."""
    before = {p: digest(p) for p in local_pictures(pictures)}
    result = run_cli(["-u", DEMO_USER, "--sidecars", str(pictures)], fake_inat.api_url, cache)
    assert result.returncode == 0, result.stderr
    assert {p: digest(p) for p in local_pictures(pictures)} == before
    in_file = pictures.parent / "in-file"
    shutil.copytree(pictures, in_file, ignore=shutil.ignore_patterns("*.xmp"))  # untouched JPEGs
    plain = run_cli(["-u", DEMO_USER, str(in_file)], fake_inat.api_url, cache.parent / "c2")
    assert plain.returncode == 0, plain.stderr
    tagged = 0
    for path in local_pictures(pictures):
        xmp_file = sidecar(path)
        written = read_xmp(in_file / path.name)
        if ip.TAG_OBSERVATION in written:
            tagged += 1
            assert read_xmp(xmp_file) == written
        else:
            assert not xmp_file.exists()
    assert tagged == summary_numbers(result.stdout)["added"] > 0


def test_heic_is_decoded_once_for_thumbnail_and_comparison(
    tmp_path: Path, decoded: list[tuple[str, int]]
) -> None:
    """libheif cannot decode at reduced size: the thumbnail is the comparison picture."""
    heic, jpeg = tmp_path / "phone.heic", tmp_path / "camera.jpg"
    write_heic(heic, texture(6, (640, 480)), taken=START)
    texture(7, (640, 480)).save(jpeg, "JPEG")
    pictures = ip.PictureSource(None, ("large",), ip.Console())  # type: ignore[arg-type]
    for path in (heic, jpeg):
        photo = ip.LocalPhoto(path, START, None, 1, (), None)
        assert pictures.local_thumbnail(photo) is not None
        assert pictures.local(photo) is not None
        assert pictures.local_thumbnail(photo) is not None
    names = [name for name, _ in decoded]
    assert names == ["phone.heic", "camera.jpg", "camera.jpg"]  # a JPEG's 1/8 draft is cheap


def test_associate_and_dissociate_a_heic_write_its_sidecar_only(tmp_path: Path) -> None:
    """--associate and --dissociate on a HEIC (or RAW) file act on its sidecar, as a run
    does: the file itself is never written."""
    world = make_world(tmp_path, ["heic"])
    shot = world.shots["heic"]
    (heic,) = shot.files
    before = digest(heic)
    with world.fake() as fake:
        args = ["-u", USER, "--associate", str(heic), str(shot.photo)]
        associated = run_cli(args, fake.api_url, world.cache)
        assert associated.returncode == 0, associated.stdout + associated.stderr
        assert_tags(read_xmp(sidecar(heic)), shot)
        gone = run_cli(["-u", USER, "--dissociate", str(heic)], fake.api_url, world.cache)
        assert gone.returncode == 0, gone.stdout + gone.stderr
    assert read_xmp(sidecar(heic)).get(ip.TAG_PHOTO) is None
    assert digest(heic) == before
