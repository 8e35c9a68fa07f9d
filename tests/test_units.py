"""Unit tests of the pure core: parsing, names, clustering, assignment, keywords."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import model

import inat_photos as ip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.95", 0.95),
        ("95%", 0.95),
        (" 80 % ".replace(" %", "%"), 0.80),
        ("0", 0.0),
        ("99.5%", 0.995),
    ],
)
def test_ssim_threshold_accepts_fractions_and_percentages(text: str, expected: float) -> None:
    assert ip.parse_ssim_threshold(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["1", "1.0", "100%", "-0.1", "abc", "95%%", "nan", ""])
def test_ssim_threshold_rejects_out_of_range(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        ip.parse_ssim_threshold(text)


def test_cluster_threshold_minimum() -> None:
    assert ip.parse_cluster_threshold("60") == 60
    assert ip.parse_cluster_threshold("180") == 180
    for bad in ("59", "3.5", "x", "-100"):
        with pytest.raises(argparse.ArgumentTypeError):
            ip.parse_cluster_threshold(bad)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (1, "1st"),
        (2, "2nd"),
        (3, "3rd"),
        (4, "4th"),
        (11, "11th"),
        (12, "12th"),
        (13, "13th"),
        (21, "21st"),
        (22, "22nd"),
        (101, "101st"),
        (111, "111th"),
    ],
)
def test_ordinal(n: int, text: str) -> None:
    assert ip.ordinal(n) == text


@pytest.mark.parametrize(
    ("taxon", "caption"),
    [
        (
            {"name": "Canis latrans", "rank": "species", "preferred_common_name": "Coyote"},
            "Coyote (Canis latrans)",
        ),
        ({"name": "Cardamine californica", "rank": "species"}, "Cardamine californica"),
        (
            {"name": "Quercus", "rank": "genus", "preferred_common_name": "Oaks"},
            "Oaks (Quercus sp.)",
        ),
        (
            {
                "name": "Canis lupus familiaris",
                "rank": "subspecies",
                "preferred_common_name": "Dog",
            },
            "Dog (Canis lupus ssp. familiaris)",
        ),
        (
            {"name": "Arctostaphylos glauca puberula", "rank": "variety"},
            "Arctostaphylos glauca var. puberula",
        ),
        (
            {"name": "Fagaceae", "rank": "family", "preferred_common_name": "Beech Family"},
            "Beech Family (Fagaceae)",
        ),
        (
            {"name": "  Canis   latrans ", "rank": "species", "preferred_common_name": " "},
            "Canis latrans",
        ),
    ],
)
def test_taxon_captions(taxon: dict, caption: str) -> None:
    name = ip.taxon_name(taxon)
    assert name is not None and name.caption == caption


@pytest.mark.parametrize("taxon", [None, {}, {"name": None}, {"name": ""}, "Canis", 5])
def test_missing_taxon_gives_no_name(taxon: object) -> None:
    assert ip.taxon_name(taxon) is None  # type: ignore[arg-type]


def test_owned_caption_is_the_one_written_never_a_look_alike() -> None:
    ours = "Elm Borer (Saperda tridentata)"
    photo = dataclasses.replace(
        _local("a.jpg", dt.datetime(2021, 1, 1, 9)),
        tags=ip.InatTags(1, 2, 3),
        keywords=("Beetle on elm", ours, "Elm (Ulmus americana)"),
        written_caption=ours,
    )
    # Files written by this version name their caption.
    assert ip.owned_caption(photo, set()) == ours
    # Older files: only a caption the observation once had counts, never a look-alike.
    legacy = dataclasses.replace(photo, written_caption=None)
    assert ip.owned_caption(legacy, {ours}) == ours
    assert ip.owned_caption(legacy, {"Something (Else entirely)"}) is None
    # Our keyword removed by the user: nothing is ours.
    removed = dataclasses.replace(photo, keywords=("Beetle on elm",))
    assert ip.owned_caption(removed, {ours}) is None


def test_distance_known_points() -> None:
    # One degree of latitude is about 111.2 km; a point to itself is 0.
    assert ip.distance_m((37.0, -122.0), (38.0, -122.0)) == pytest.approx(111_195, rel=1e-3)
    assert ip.distance_m((37.4, -122.1), (37.4, -122.1)) == 0.0
    # San Francisco to Los Angeles is about 559 km.
    assert ip.distance_m((37.7749, -122.4194), (34.0522, -118.2437)) == pytest.approx(
        559_000, rel=0.01
    )


def test_exif_datetime_parsing() -> None:
    assert ip.parse_exif_datetime("2021:02:01 10:15:58") == dt.datetime(2021, 2, 1, 10, 15, 58)
    assert ip.parse_exif_datetime("2021-02-01T10:15:58") == dt.datetime(2021, 2, 1, 10, 15, 58)
    for absurd in (
        "0000:00:00 00:00:00",
        "1700:01:01 00:00:00",
        "9999:12:31 23:59:59",
        "2021:02:30 10:00:00",
        "garbage",
        "",
        None,
        "    :  :     :  :  ",
    ):
        assert ip.parse_exif_datetime(absurd) is None, absurd


def test_gps_parsing() -> None:
    exif = {
        "Exif.GPSInfo.GPSLatitude": "37/1 25/1 1234/100",
        "Exif.GPSInfo.GPSLatitudeRef": "N",
        "Exif.GPSInfo.GPSLongitude": "122/1 10/1 0/1",
        "Exif.GPSInfo.GPSLongitudeRef": "W",
    }
    lat, lng = ip.parse_gps(exif)  # type: ignore[misc]
    assert lat == pytest.approx(37 + 25 / 60 + 12.34 / 3600)
    assert lng == pytest.approx(-(122 + 10 / 60))
    assert ip.parse_gps({}) is None
    assert ip.parse_gps({**exif, "Exif.GPSInfo.GPSLatitude": "1/0 0/0 0/0"}) is None
    assert ip.parse_gps({**exif, "Exif.GPSInfo.GPSLatitude": "91/1 0/1 0/1"}) is None


def _local(name: str, when: dt.datetime) -> ip.LocalPhoto:
    return ip.LocalPhoto(ip.Path(name), when, None, 1, (), None)


def _candidate(photo_id: int, when: dt.datetime | None, minute: bool = True) -> ip.Candidate:
    return model.candidate(photo_id, when, minute_precision=minute)


def test_cluster_by_time_single_linkage() -> None:
    t0 = dt.datetime(2021, 2, 1, 10, 0, 0)
    locals_ = [
        _local(f"{i}.jpg", t0 + dt.timedelta(seconds=s)) for i, s in enumerate([0, 150, 290, 700])
    ]
    candidates = [
        _candidate(1, t0 + dt.timedelta(seconds=60)),
        _candidate(2, t0 + dt.timedelta(seconds=900)),
    ]
    clusters = ip.cluster_by_time(locals_, candidates, 180)
    # 0, 60(+59), 150, 290 chain together; 700 and 900 are more than 180 s from anything earlier.
    assert [[p.path.name for p in c.photos] for c in clusters] == [
        ["0.jpg", "1.jpg", "2.jpg"],
        ["3.jpg"],
        [],
    ]
    assert [[c.photo.id for c in cl.candidates] for cl in clusters] == [[1], [], [2]]


def test_cluster_minute_precision_spans_the_minute() -> None:
    t0 = dt.datetime(2021, 2, 1, 10, 0, 0)
    # The observation says 10:00 (no seconds); the photo at 10:03:50 is 230 s later but only
    # 171 s after the end of that minute, so it belongs with it at a 180 s threshold.
    clusters = ip.cluster_by_time(
        [_local("a.jpg", t0 + dt.timedelta(seconds=230))], [_candidate(1, t0, minute=True)], 180
    )
    assert len(clusters) == 1
    clusters = ip.cluster_by_time(
        [_local("a.jpg", t0 + dt.timedelta(seconds=230))], [_candidate(1, t0, minute=False)], 180
    )
    assert len(clusters) == 2


def test_cluster_leaves_out_untimed_candidates() -> None:
    clusters = ip.cluster_by_time(
        [_local("a.jpg", dt.datetime(2021, 1, 1, 9))], [_candidate(1, None)], 180
    )
    assert sum(len(c.candidates) for c in clusters) == 0


def _pairs(decisions: list) -> list[tuple]:
    return [
        (d.local_index, d.upload_index, d.score, d.rivals) for d in decisions if d.kind != "part"
    ]


def _assign(scores: dict, threshold: float = 0.95, areas: dict | None = None, order=()) -> list:
    return ip.assign_uploads(scores, areas or {}, threshold, order)


def test_assign_one_to_one_best_first() -> None:
    scores = {(0, 0): 0.97, (0, 1): 0.99, (1, 1): 0.98, (1, 0): 0.96, (2, 0): 0.50}
    assert _pairs(_assign(scores)) == [(1, 0, 0.96, ()), (0, 1, 0.99, ())]
    assert _assign(scores, 0.995) == []


def test_assign_is_optimal_where_greedy_is_wrong() -> None:
    # Shots 0 and 1; upload 0 was made from shot 0, upload 1 from shot 1, but upload 0 also
    # appears inside shot 1 and scores best there. Best-first would give shot 1 upload 0
    # and leave upload 1 unmatched; the optimal assignment pairs each with its own.
    scores = {(0, 0): 0.970, (1, 0): 0.985, (1, 1): 0.975}
    assert _pairs(_assign(scores)) == [(0, 0, 0.970, ()), (1, 1, 0.975, ())]


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.tuples(st.integers(0, 3), st.integers(0, 3)),
        st.floats(0.9, 1.0),
        max_size=10,
    )
)
def test_optimal_pairs_reach_the_best_total_of_any_one_to_one_pairing(valid) -> None:
    """Against every one-to-one choice of the valid pairs (the fast path for pairs that share
    nothing, and scipy's assignment for the rest)."""
    chosen = ip._optimal_pairs(valid)
    assert len(set(chosen.values())) == len(chosen)
    assert all((local, upload) in valid for local, upload in chosen.items())
    pairs = list(valid)
    best = max(
        sum(valid[p] for p in subset)
        for size in range(len(pairs) + 1)
        for subset in itertools.combinations(pairs, size)
        if len({a for a, _ in subset}) == size == len({b for _, b in subset})
    )
    assert sum(valid[p] for p in chosen.items()) == pytest.approx(best)


def test_assign_refuses_a_burst_tie() -> None:
    # Two local frames score within TIE_MARGIN for the same upload: neither is chosen.
    scores = {(0, 0): 0.981, (1, 0): 0.979, (2, 0): 0.90}
    (decision,) = _assign(scores)
    assert (decision.kind, decision.upload_index, decision.local_index, decision.rivals) == (
        "tie",
        0,
        0,
        (1,),
    )
    # A clear winner is still chosen.
    scores = {(0, 0): 0.99, (1, 0): 0.96}
    assert _pairs(_assign(scores)) == [(0, 0, 0.99, ())]


def test_assign_tie_frees_the_frames_for_other_uploads() -> None:
    # Upload 0 ties between frames 0 and 1; frame 1 is still free for upload 1.
    scores = {(0, 0): 0.981, (1, 0): 0.979, (1, 1): 0.97}
    decisions = _assign(scores)
    assert [(d.kind, d.upload_index, d.local_index) for d in decisions] == [
        ("tie", 0, 0),
        ("associate", 1, 1),
    ]


def test_assign_gives_a_tie_to_the_frame_that_left_out_nothing() -> None:
    # Frame 1 scores as well as frame 0 only with 7% of the upload left out (its subject
    # moved, taken for a mark): frame 0 shows that part, and takes the upload.
    scores = {(0, 0): 0.964, (1, 0): 0.966}
    decisions = ip.assign_uploads(scores, {}, 0.95, covered={(0, 0): 0.0, (1, 0): 0.074})
    assert _pairs(decisions) == [(0, 0, 0.964, (1,))]  # the rival it beat
    # Both left out as much (a logo over both frames): still too close to choose.
    decisions = ip.assign_uploads(scores, {}, 0.95, covered={(0, 0): 0.07, (1, 0): 0.074})
    assert [(d.kind, d.local_index, d.rivals) for d in decisions] == [("tie", 1, (0,))]


def test_assign_prefers_the_first_upload_of_a_photo_uploaded_twice() -> None:
    # Local photo 0 fits uploads 0 and 1 equally; upload 1 came first (lower id).
    scores = {(0, 0): 0.990, (0, 1): 0.988}
    decisions = _assign(scores, order=[222, 111])
    assert [(d.kind, d.local_index, d.upload_index) for d in decisions] == [
        ("part", 0, 0),
        ("associate", 0, 1),
    ]


def test_assign_whole_upload_beats_a_crop_of_the_same_picture() -> None:
    # Upload 0 (first, lower id) is a 29 % crop scoring 100 %; upload 1 the whole frame at
    # 98.4 %. The photo takes the upload that shows most of it; the crop is a part of it.
    scores = {(0, 0): 1.0, (0, 1): 0.984}
    areas = {(0, 0): 0.29, (0, 1): 1.0}
    decisions = _assign(scores, areas=areas, order=[111827888, 111827898])
    assert [(d.kind, d.local_index, d.upload_index) for d in decisions] == [
        ("part", 0, 0),
        ("associate", 0, 1),
    ]
    # Equal areas: the higher score wins when it is clearly higher.
    areas = {(0, 0): 0.60, (0, 1): 0.61}
    kinds = [(d.kind, d.upload_index) for d in _assign(scores, areas=areas)]
    assert kinds == [("associate", 0), ("part", 1)]


def test_updated_keywords_keep_other_keywords() -> None:
    keywords = ["holiday", "Coyote (Canis latrans)", "Yosemite"]
    assert ip.updated_keywords(
        keywords, "Coyote (Canis latrans)", "Gray Fox (Urocyon cinereoargenteus)"
    ) == ["holiday", "Gray Fox (Urocyon cinereoargenteus)", "Yosemite"]
    assert ip.updated_keywords(["holiday"], None, "Coyote (Canis latrans)") == [
        "holiday",
        "Coyote (Canis latrans)",
    ]
    assert ip.updated_keywords(["Coyote (Canis latrans)"], None, "Coyote (Canis latrans)") == [
        "Coyote (Canis latrans)"
    ]


def test_parse_observation_real_shape() -> None:
    record = {
        "id": 68980359,
        "uri": "https://www.inaturalist.org/observations/68980359",
        "time_observed_at": "2021-02-01T10:15:00-08:00",
        "observed_on": "2021-02-01",
        "location": "37.42,-122.17",
        "obscured": False,
        "taxon": {"name": "Canis latrans", "rank": "species", "preferred_common_name": "Coyote"},
        "observation_photos": [
            {"id": 2, "position": 1, "photo": {"id": 22, "url": "https://h/photos/22/square.jpg"}},
            {
                "id": 1,
                "position": 0,
                "photo": {"id": 11, "url": "https://h/photos/11/square.jpg?1"},
            },
        ],
    }
    obs = ip.parse_observation(record)
    assert obs is not None
    assert obs.observed_at == dt.datetime(2021, 2, 1, 10, 15)  # wall-clock time kept
    assert obs.minute_precision
    assert obs.location == (37.42, -122.17)
    assert [(p.id, p.position, p.observation_photo_id) for p in obs.photos] == [
        (11, 1, 1),
        (22, 2, 2),
    ]
    assert obs.photos[0].url_for_size("large") == "https://h/photos/11/large.jpg?1"
    for url, large in [
        ("https://s/photos/5/square.jpeg?1536150664", "https://s/photos/5/large.jpeg?1536150664"),
        ("https://s/photos/5/square.JPG", "https://s/photos/5/large.JPG"),
        ("https://s/photos/5/square.?1413275622", "https://s/photos/5/large.?1413275622"),
    ]:
        assert ip.InatPhoto(5, None, 1, 1, url).url_for_size("large") == large
    assert obs.caption == "Coyote (Canis latrans)"


@pytest.mark.parametrize(
    "record",
    [
        {"id": 5},
        {"id": 5, "taxon": None, "time_observed_at": None, "observation_photos": None},
        {"id": 5, "observed_on": "not a date", "location": "nowhere", "observation_photos": [{}]},
        {"id": 5, "observation_photos": [{"photo": {"id": "x", "url": 3}}], "obscured": "yes"},
    ],
)
def test_parse_observation_odd_fields(record: dict) -> None:
    obs = ip.parse_observation(record)
    assert obs is not None and obs.id == 5 and obs.photos == () and obs.caption is None


def test_parse_observation_without_id() -> None:
    assert ip.parse_observation({"taxon": {}}) is None
    assert ip.parse_observation({"id": True}) is None


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("+1h", 60),
        ("1h", 60),
        ("-30m", -30),
        ("45min", 45),
        ("-3:00", -180),
        ("+1:30", 90),
        ("90s", 1.5),
        (" -0.5h ", -30),
    ],
)
def test_time_offset_parsing(text: str, minutes: float) -> None:
    assert ip.parse_time_offset(text) == dt.timedelta(minutes=minutes)


@pytest.mark.parametrize("text", ["", "1", "one hour", "+27h", "1:3", "h", "--1h"])
def test_time_offset_rejects_nonsense(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        ip.parse_time_offset(text)


def test_describe_offset() -> None:
    assert ip.describe_offset(dt.timedelta(hours=1)) == "1 h 00 min ahead"
    assert ip.describe_offset(dt.timedelta(hours=-3, minutes=-45)) == "3 h 45 min behind"
    assert ip.describe_offset(dt.timedelta(minutes=30)) == "0 h 30 min ahead"


def test_corrected_time_applies_the_clock_error() -> None:
    photo = _local("a.jpg", dt.datetime(2023, 6, 14, 11, 30))
    photo = dataclasses.replace(photo, clock_error=dt.timedelta(hours=1))
    assert photo.corrected_time == dt.datetime(2023, 6, 14, 10, 30)
    observation = _candidate(1, dt.datetime(2023, 6, 14, 10, 30, 20), minute=False).observation
    assert ip.seconds_apart(photo, observation) == 20


def _texture(width: int, height: int, seed: int) -> ip.Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    picture = ip.Image.fromarray(coarse).resize((width, height), ip.Image.Resampling.BICUBIC)
    noise = rng.integers(-20, 21, (height, width, 3))
    return ip.Image.fromarray(np.clip(np.asarray(picture) + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "box", [(0.3, 0.3, 1.0, 1.0), (0.0, 0.0, 0.75, 0.75), (0.1, 0.2, 0.9, 1.0)]
)
def test_alignment_finds_crops_up_to_the_edges(box: tuple) -> None:
    local = _texture(1200, 900, 7)
    pixels = (box[0] * 1200, box[1] * 900, box[2] * 1200, box[3] * 900)
    upload = local.crop(tuple(round(v) for v in pixels)).resize((500, 375))
    small = upload.resize((160, 120))
    rough, correlation = ip.coarse_alignment(ip.grayscale(local, ip.ALIGN_SIDE), small)
    assert correlation > ip.ALIGN_GATE
    found = ip.refine_alignment(local, upload, rough)
    assert all(0.0 <= v <= 1.0 for v in found.box)
    assert found.box == pytest.approx(box, abs=0.01)


def test_alignment_finds_a_quarter_turn() -> None:
    local = _texture(1200, 900, 11)
    upload = local.resize((500, 375)).transpose(ip.Image.Transpose.ROTATE_90)
    rough, correlation = ip.coarse_alignment(
        ip.grayscale(local, ip.ALIGN_SIDE), upload.resize((120, 160))
    )
    assert correlation > ip.ALIGN_GATE and rough.turns == 3 and rough.whole is False
