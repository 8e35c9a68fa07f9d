"""Issue 5, part 5: property tests of the parsers that meet the outside world.

Option values come from people (and cron files), EXIF from any camera or program, observation
records from a server: whatever arrives, these functions return a sane value or, for options,
raise argparse.ArgumentTypeError; nothing else. The HTML log shows any text as text.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from support import model
from support.geo import gps_exif
from support.logpage import known_rows, parse_log

import inat_photos as ip

FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

OBSERVATION_KEYS = [
    "id",
    "uri",
    "taxon",
    "time_observed_at",
    "observed_on",
    "location",
    "obscured",
    "geoprivacy",
    "photos",
    "observation_photos",
]

iso_times = st.datetimes(min_value=dt.datetime(1800, 1, 1), max_value=dt.datetime(2200, 1, 1)).map(
    lambda moment: moment.isoformat(timespec="seconds") + "-08:00"
)
ids = st.integers(min_value=1, max_value=2**53)
maybe_ids = ids | json_values
photo_records = st.fixed_dictionaries(
    {},
    optional={
        "id": maybe_ids,
        "url": st.just("https://static.example/photos/1/square.jpg") | st.text() | json_values,
    },
)
observation_photo_entries = st.fixed_dictionaries(
    {},
    optional={
        "id": maybe_ids,
        "position": st.integers(min_value=-3, max_value=50) | json_values,
        "photo": photo_records | json_values,
    },
)
taxa = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text() | st.sampled_from(["Canis latrans", "Amanita", "A b c"]) | json_values,
        "rank": st.sampled_from(["species", "genus", "subspecies", "variety", "form", "Family"])
        | json_values,
        "preferred_common_name": st.text() | json_values,
    },
)
shaped_observations = st.fixed_dictionaries(
    {"id": ids},
    optional={
        "uri": st.text() | json_values,
        "taxon": taxa | json_values,
        "time_observed_at": iso_times | st.text() | json_values,
        "observed_on": st.dates().map(str) | st.text() | json_values,
        "location": st.text() | json_values,
        "obscured": json_values,
        "geoprivacy": json_values,
        "photos": st.lists(photo_records, max_size=4) | json_values,
        "observation_photos": st.lists(observation_photo_entries, max_size=4) | json_values,
    },
)


# -- option values -------------------------------------------------------------------------------


def parse_or_refuse(parse, text: str):
    try:
        return parse(text)
    except argparse.ArgumentTypeError:
        return None


@FEW
@given(st.text())
@example("95%")
@example("nan")
@example("-0")
@example("1e-400")
@example("%")
@example("9" * 5000)
@example("٠.٥")  # Arabic-Indic digits: float() reads them
def test_ssim_threshold_is_a_fraction_below_one_or_refused(text: str) -> None:
    value = parse_or_refuse(ip.parse_ssim_threshold, text)
    if value is not None:
        assert isinstance(value, float)
        assert 0.0 <= value < 1.0


@FEW
@given(st.floats(min_value=0.0, max_value=1.0, exclude_max=True), st.sampled_from(["", " ", "\t"]))
def test_ssim_threshold_reads_back_fractions_and_percentages(value: float, pad: str) -> None:
    assert ip.parse_ssim_threshold(f"{pad}{value!r}{pad}") == value
    percent = float(repr(value * 100))
    if percent / 100 < 1.0:
        assert ip.parse_ssim_threshold(f"{value * 100!r}%") == pytest.approx(value, abs=1e-12)


@FEW
@given(st.floats().filter(lambda x: not 0.0 <= x < 1.0))
def test_ssim_threshold_outside_the_range_is_refused(value: float) -> None:
    for text in (repr(value), f"{value * 100!r}%"):
        if text.endswith("%") and 0.0 <= value * 100 / 100 < 1.0:
            continue  # e.g. 1.0000000000000002 * 100 / 100 rounds back into the range
        with pytest.raises(argparse.ArgumentTypeError):
            ip.parse_ssim_threshold(text)


@FEW
@given(st.text())
@example("9" * 5000)  # int() refuses more than 4300 digits with ValueError
@example("1_000")
@example("６０")  # full-width digits
def test_cluster_threshold_is_a_whole_number_of_at_least_60_or_refused(text: str) -> None:
    value = parse_or_refuse(ip.parse_cluster_threshold, text)
    if value is not None:
        assert isinstance(value, int) and not isinstance(value, bool)
        assert value >= 60


@FEW
@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_cluster_threshold_reads_back_integers(value: int) -> None:
    if value >= 60:
        assert ip.parse_cluster_threshold(str(value)) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            ip.parse_cluster_threshold(str(value))


# -- EXIF ----------------------------------------------------------------------------------------


def in_photo_era(moment: dt.datetime) -> bool:
    return dt.datetime(1826, 1, 1) <= moment <= dt.datetime.now() + dt.timedelta(days=367)


@FEW
@given(st.none() | st.text() | st.from_regex(r"\A\d{4}[:-]\d\d[:-]\d\d[ T]\d\d:\d\d:\d\d.{0,6}\Z"))
@example("0000:00:00 00:00:00")
@example("9999:12:31 23:59:59")
@example("2021:02:30 10:00:00")
@example("    :  :     :  :  ")
def test_exif_datetime_is_none_or_a_plausible_time(text: str | None) -> None:
    value = ip.parse_exif_datetime(text)
    if value is not None:
        assert isinstance(value, dt.datetime) and value.tzinfo is None
        assert in_photo_era(value), value


@FEW
@given(
    st.datetimes(min_value=dt.datetime(1826, 1, 1), max_value=dt.datetime.now()),
    st.sampled_from(["", "\x00", " ", ".123", "+02:00"]),
)
def test_exif_datetime_reads_back_what_cameras_write(moment: dt.datetime, tail: str) -> None:
    moment = moment.replace(microsecond=0)
    assert ip.parse_exif_datetime(moment.strftime("%Y:%m:%d %H:%M:%S") + tail) == moment


GPS_KEYS = [
    "Exif.GPSInfo.GPSLatitude",
    "Exif.GPSInfo.GPSLongitude",
    "Exif.GPSInfo.GPSLatitudeRef",
    "Exif.GPSInfo.GPSLongitudeRef",
]
rationals = st.builds(
    lambda n, d: f"{n}/{d}", st.integers(-(10**12), 10**12), st.integers(-5, 10**6)
)
gps_values = st.text() | rationals | st.lists(rationals, max_size=4).map(" ".join)


@FEW
@given(st.dictionaries(st.sampled_from(GPS_KEYS) | st.text(max_size=30), gps_values))
@example({GPS_KEYS[0]: "1/0 0/0 0/0", GPS_KEYS[1]: "1/1"})
@example({GPS_KEYS[0]: "nan", GPS_KEYS[1]: "inf"})
@example({GPS_KEYS[0]: "1e308/1e-308", GPS_KEYS[1]: "1"})
@example({GPS_KEYS[0]: "", GPS_KEYS[1]: ""})
def test_gps_is_none_or_a_place_on_earth(exif: dict[str, str]) -> None:
    value = ip.parse_gps(exif)
    if value is not None:
        lat, lng = value
        assert -90 <= lat <= 90 and -180 <= lng <= 180
        assert value != (0.0, 0.0)


@FEW
@given(
    st.floats(min_value=-90, max_value=90, allow_nan=False),
    st.floats(min_value=-180, max_value=180, allow_nan=False),
)
def test_gps_reads_back_degrees_minutes_seconds(lat: float, lng: float) -> None:
    assume((lat, lng) != (0.0, 0.0))

    value = ip.parse_gps(gps_exif(lat, lng, denominator=10000))
    assume(value is not None)  # a point that rounds to 0,0 means "no position"
    assert value[0] == pytest.approx(lat, abs=1e-6)
    assert value[1] == pytest.approx(lng, abs=1e-6)


# -- observation records ---------------------------------------------------------------------------


@FEW
@given(st.dictionaries(st.sampled_from(OBSERVATION_KEYS) | st.text(max_size=8), json_values))
@example({"id": 1, "photos": 5})
@example({"id": 1, "photos": True, "observation_photos": []})
@example({"id": True})
def test_any_json_object_parses_or_is_dropped(record: dict) -> None:
    observation = ip.parse_observation(record)
    raw_id = record.get("id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        assert observation is not None and observation.id == raw_id
    else:
        assert observation is None


def usable_photo_ids(record: dict) -> set[int]:
    """Photo ids a correct parser may return: an int id (not bool) and a str url."""
    found = set()
    sources = []
    for key in ("observation_photos", "photos"):
        value = record.get(key)
        if isinstance(value, list):
            sources.extend(value)
    for entry in sources:
        if not isinstance(entry, dict):
            continue
        for photo in (entry.get("photo"), entry):
            if isinstance(photo, dict):
                photo_id = photo.get("id")
                usable = isinstance(photo_id, int) and not isinstance(photo_id, bool)
                if usable and isinstance(photo.get("url"), str):
                    found.add(photo_id)
    return found


@FEW
@given(shaped_observations)
@example({"id": 7, "photos": 5})
@example({"id": 7, "photos": "abc"})
@example({"id": 7, "observation_photos": [{"photo": {"id": 3, "url": "u"}, "position": True}]})
def test_observations_keep_their_id_and_only_real_photos(record: dict) -> None:
    observation = ip.parse_observation(record)
    assert observation is not None
    assert observation.id == record["id"]
    assert {p.id for p in observation.photos} <= usable_photo_ids(record)
    assert [p.position for p in observation.photos] == list(range(1, len(observation.photos) + 1))
    for photo in observation.photos:
        assert photo.observation_id == record["id"]
        assert isinstance(photo.url, str)
    assert observation.url.startswith("http")
    if observation.location is not None:
        lat, lng = observation.location
        assert -90 <= lat <= 90 and -180 <= lng <= 180
    assert observation.caption is None or isinstance(observation.caption, str)


@FEW
@given(taxa | json_values)
@example({"name": "Canis latrans", "rank": "subspecies"})
@example({"name": "  Amanita  ", "rank": "genus"})
@example({"name": "\u2003"})
def test_taxon_names_never_raise_and_are_tidy(taxon) -> None:
    name = ip.taxon_name(taxon)
    if name is None:
        return
    assert name.scientific and name.scientific == " ".join(name.scientific.split())
    assert name.common is None or (name.common and name.common == " ".join(name.common.split()))
    assert isinstance(name.caption, str) and name.scientific in name.caption
    if isinstance(taxon, dict) and taxon.get("rank") == "genus" and len(taxon["name"].split()) == 1:
        assert name.scientific == taxon["name"].strip() + " sp."


# -- the HTML log --------------------------------------------------------------------------------


path_texts = st.text(max_size=30) | st.binary(max_size=30).map(os.fsdecode)
THUMBNAIL = Path("/cache/thumbnails/local/ab/ab12.jpg")


def embed(file: Path) -> str:
    """Stands in for reading a cached thumbnail: the page gets a data: URL all the same."""
    return "data:image/jpeg;base64,/9j/"


@st.composite
def log_pages(draw):
    """Rows of every section, with arbitrary text wherever text goes."""
    rows = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        keywords = draw(st.lists(st.text(max_size=20), max_size=3))
        local = ip.LocalPhoto(
            path=Path(draw(path_texts) or "x"),
            taken_at=dt.datetime(2021, 2, 1, 10, 15),
            location=None,
            orientation=1,
            keywords=tuple(keywords),
            tags=draw(st.none() | st.just(ip.InatTags(1, 2, 3))),
        )
        common = draw(st.none() | st.text(max_size=20))
        observation = ip.Observation(
            id=draw(ids),
            url=draw(
                st.just("https://www.inaturalist.org/observations/1")
                | st.text().map(lambda t: "https://www.inaturalist.org/observations/" + t)
            ),
            name=draw(
                st.none()
                | st.builds(ip.TaxonName, st.text(min_size=1, max_size=20), st.just(common))
            ),
            observed_at=None,
            minute_precision=True,
            observed_on=None,
            location=None,
            obscured=False,
            photos=(),
        )
        photo = ip.InatPhoto(draw(ids), draw(ids), observation.id, 1, "https://x/square.jpg")
        outline = draw(st.none() | st.just(((0.1, 0.2), (0.7, 0.25), (0.65, 0.9), (0.05, 0.85))))
        rows.append(
            ip.LogRow(
                section=draw(st.sampled_from(list(ip.LOG_SECTIONS))),
                local=draw(st.none() | st.just(local)),
                local_thumbnail=draw(st.none() | st.just(ip.Thumbnail(THUMBNAIL, outline))),
                candidate=draw(st.none() | st.just(ip.Candidate(photo, observation))),
                inat_thumbnail=draw(st.none() | st.just(ip.Thumbnail(THUMBNAIL))),
                seconds=draw(st.none() | st.integers(0, 10**6)),
                distance=draw(st.text(max_size=20)),
                score=draw(st.none() | st.floats(0, 1)),
                note=draw(st.text(max_size=30)),
                day=draw(st.none() | st.dates()),
                command=draw(st.text(max_size=30)),
            )
        )
    unlisted = draw(
        st.dictionaries(
            st.sampled_from([ip.UNLISTED_COMPARED, ip.UNLISTED_NO_CANDIDATE]), st.integers(1, 9)
        )
    )
    return rows, draw(st.text(max_size=40)), unlisted


def defanged(rows, summary: str):
    """The same rows with every piece of text replaced by a harmless one of the same
    emptiness (so that every 'if text' in the page takes the same branch)."""

    def x(text):
        return None if text is None else ("x" if text else "")

    out = []
    for row in rows:
        local = row.local
        if local is not None:
            local = dataclasses.replace(
                local, path=Path("x"), keywords=tuple(x(k) for k in local.keywords)
            )
        candidate = row.candidate
        if candidate is not None:
            name = candidate.observation.name
            if name is not None:
                name = ip.TaxonName(x(name.scientific), x(name.common))
            observation = dataclasses.replace(
                candidate.observation, url="https://www.inaturalist.org/observations/1", name=name
            )
            candidate = ip.Candidate(candidate.photo, observation)
        out.append(
            dataclasses.replace(
                row,
                local=local,
                candidate=candidate,
                distance=x(row.distance),
                note=x(row.note),
                command=x(row.command),
            )
        )
    return out, x(summary)


@FEW
@given(log_pages())
@example(
    (
        [
            ip.LogRow(
                "refused",
                distance="<script>alert(1)</script>",
                note="<img src=x onerror=alert(2)>",
                command="'; rm -rf / #</code><b>",
            ),
            ip.LogRow("known", note="</script><script>alert(3)</script>"),
        ],
        "</table><iframe src=//e>",
        {},
    )
)
def test_log_shows_any_text_as_text(page_input) -> None:
    rows, summary, unlisted = page_input
    page = ip.render_log(rows, summary, 0.95, unlisted=unlisted, embed=embed)
    page.encode("utf-8", "backslashreplace")  # as the tool writes it
    parsed = parse_log(page)
    safe_rows, safe_summary = defanged(rows, summary)
    reference_page = ip.render_log(safe_rows, safe_summary, 0.95, unlisted=unlisted, embed=embed)
    reference = parse_log(reference_page)
    assert parsed.markup == reference.markup, "text from the input changed the markup"
    shown = "".join(parsed.text)
    assert summary in shown
    listed = [row for row in rows if row.section != "known"]
    for row in listed:
        assert row.distance in shown
        assert row.note in shown
        assert row.command in shown
        if row.local is not None and row.local.caption:
            assert row.local.caption in shown
        if row.candidate is not None and row.candidate.observation.name is not None:
            assert row.candidate.observation.name.scientific in shown
    # The known rows travel as JSON to the page's script, which inserts them as text.
    known = [row for row in rows if row.section == "known"]

    def texts(row) -> tuple:
        name = row.candidate.observation.name if row.candidate else None
        scientific, common = (name.scientific, name.common or "") if name else ("", "")
        return (row.note, row.command, scientific, common)

    fields = ("note", "command", "scientific", "common")
    sent = sorted(tuple(r[f] for f in fields) for r in known_rows(page))
    assert sent == sorted(map(texts, known))
    # Every '<' in the page is the tool's own: none of the input's got through unescaped.
    assert page.count("<") == reference_page.count("<")


def test_log_escapes_quotes_in_links() -> None:
    """An observation url that tries to leave its href attribute."""
    observation = model.observation(
        1, None, url='https://www.inaturalist.org/" onmouseover="alert(1)'
    )
    photo = ip.InatPhoto(2, 3, 1, 1, "https://x/square.jpg")
    page = ip.render_log(
        [ip.LogRow("lone", candidate=ip.Candidate(photo, observation))], "", 0.95, embed=embed
    )
    parsed = parse_log(page)
    assert not any(name.startswith("on") for _, names in parsed.markup for name in names)
    assert 'href="https://www.inaturalist.org/&quot; onmouseover=&quot;alert(1)"' in page
