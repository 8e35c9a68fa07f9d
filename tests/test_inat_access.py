"""Issue 8: how the tool talks to iNaturalist, against the fake server.

Observations without a taxon, the size of by-id requests, TLS behind an intercepting proxy,
photos iNaturalist does not show (still processing, hidden, flagged), and identifications that
change without iNaturalist dating the change (renames) or observations that vanish.
"""

from __future__ import annotations

from pathlib import Path

from test_safety import USER, World, make_world, run_main

import inat_photos as ip


def without_taxa(world: World) -> World:
    for observation in world.scenario["observations"]:
        observation["taxon"] = None
    return world


# -- 7. small ones ------------------------------------------------------------------------------


def test_observation_without_taxon_reads_no_identification(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    world = without_taxa(make_world(tmp_path, 1, unmatched=1))
    twin = world.twins[0]
    lonely = world.scenario["observations"][1]
    log = tmp_path / "log.html"
    with world.fake() as fake:
        args = ["-u", USER, "--logfile", str(log), str(world.pictures)]
        result = run_main(monkeypatch, capsys, args, fake.api_url, world.cache)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "'None'" not in result.stdout
    found = [line for line in result.lines if f"found for photo id {twin.photo};" in line]
    assert len(found) == 1 and f"{twin.photo}; no identification, time from" in found[0]
    assert (
        f"Not associated with a local picture: photo id {lonely['photos'][0]['id']}, 1st photo"
        f" of observation https://www.inaturalist.org/observations/{lonely['id']},"
        " no identification." in result.lines
    )
    page = log.read_text(encoding="utf-8")
    assert page.count("<i>no identification</i>") == 2 and "None" not in page


def test_observations_by_id_asks_for_at_most_100_ids_at_a_time(tmp_path: Path) -> None:
    world = make_world(tmp_path, 0, unmatched=3)
    held = [o["id"] for o in world.scenario["observations"]]
    wanted = sorted({*held, *range(1, 248)})  # 250 ids, three of them real
    with world.fake() as fake:
        client = ip.InatClient(fake.api_url, world.cache)
        found = client.observations_by_id(wanted)
        asked = [r["query"]["id"].split(",") for r in fake.api_requests()]
    assert sorted(r["id"] for r in found) == sorted(held)
    assert max(map(len, asked)) <= 100, [len(ids) for ids in asked]
    assert sorted(int(i) for ids in asked for i in ids) == wanted
    assert len(asked) == 3
