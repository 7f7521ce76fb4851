"""The data set audited: near-duplicates (known copies found, distinct films kept apart, groups kept in one split,
label conflicts left out and listed), the source probe, leaving one source out, and the CLAIM checklist."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covid_mobilenet.data import duplicates, grouping
from covid_mobilenet.data.demo import DEMO_RECORD, generate_demo_dataset
from covid_mobilenet.data.layout import DatasetError
from covid_mobilenet.data.scan import scan_dataset
from covid_mobilenet.data.sources import hold_out
from covid_mobilenet.data.split import split_images


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """A generated set of 200 films at the real size, with its known copies (demo.json)."""
    root = generate_demo_dataset(tmp_path_factory.mktemp("films") / "COVID-19_Radiography_Dataset", images=200, seed=5)
    return root, json.loads((root / DEMO_RECORD).read_text())["duplicates"]


def _confirmed(prints: list) -> set[tuple[int, int]]:
    hashes, thumbs = np.stack([h for h, _ in prints]), np.stack([t for _, t in prints])
    pairs = duplicates.candidate_pairs(hashes)
    return {(int(i), int(j)) for (i, j, _), s in zip(pairs, duplicates.similarities(thumbs, pairs))
            if s >= duplicates.PIXEL_SIMILARITY}


def test_every_kind_of_copy_is_found_and_distinct_films_are_not_merged(films):
    """Known pairs: each transformation of ten films, with two crops of each extreme size; known distinct films:
    every other film of the set, which all resemble each other (one template per class)."""
    root, planted = films
    related = {copy[key] for copy in planted for key in ("path", "of")}
    paths = [p for p in sorted(root.glob("*/images/*.png")) if p.relative_to(root).as_posix() not in related]
    pictures = [Image.open(p).convert("L") for p in paths]
    rng = np.random.default_rng(0)
    prints = [duplicates.fingerprint(p) for p in pictures]
    origin = list(range(len(pictures)))
    for n in rng.choice(len(pictures), 10, replace=False):
        for kind in duplicates.TRANSFORMS:
            prints.append(duplicates.fingerprint(duplicates.near_copy(pictures[n], kind, rng)))
            origin.append(n)
        for share in (0.02, 0.06):  # the smallest and largest border crops
            crop = duplicates._crop(pictures[n], share).resize(pictures[n].size, Image.BICUBIC)
            prints.append(duplicates.fingerprint(crop))
            origin.append(n)
    found = _confirmed(prints)
    copies = [(origin[row], row) for row in range(len(pictures), len(origin))]
    assert all(pair in found for pair in copies), [pair for pair in copies if pair not in found]
    assert not [(i, j) for i, j in found if origin[i] != origin[j]], "two different films merged"


def test_the_demo_sets_planted_copies_are_grouped_and_nothing_else_is(films, tmp_path):
    root, planted = films
    index = scan_dataset(root)
    groups = grouping.group_images(root, index.images, tmp_path)
    group_of = dict(zip(groups.images["path"], groups.images["group"]))
    assert planted and all(group_of[c["path"]] == group_of[c["of"]] for c in planted)
    assert {c["kind"] for c in planted} >= set(duplicates.TRANSFORMS) | {"exact"} or len(planted) < 6
    known = {c["path"] for c in planted} | {c["of"] for c in planted}
    assert set(groups.table["path"]) == known, "every image in a group is a planted copy or its original"


def test_a_label_conflict_is_left_out_listed_and_counted_and_a_group_never_straddles_splits(films, tmp_path):
    """A film copied under another class (resized) and five more copies in its own class: the conflict's images are
    in no split and listed; each group's images share one split; a split by file content alone would cut some."""
    source, _ = films
    root = tmp_path / "COVID-19_Radiography_Dataset"
    shutil.copytree(source, root)
    rng = np.random.default_rng(1)
    covid = sorted((root / "COVID" / "images").glob("*.png"))[:6]
    duplicates.near_copy(Image.open(covid[0]), "resize", rng).save(root / "Normal" / "images" / "Normal-copy.png")
    for n, film in enumerate(covid[1:]):
        for k in range(3):
            duplicates.near_copy(Image.open(film), duplicates.TRANSFORMS[k], rng).save(film.with_name(f"COVID-copy-{n}-{k}.png"))
    index = scan_dataset(root)
    split, groups, record = grouping.grouped_split(root, index.images, tmp_path / "cache", val_fraction=0.16,
                                                   test_fraction=0.2, seed=42)
    conflict = {"Normal/images/Normal-copy.png", covid[0].relative_to(root).as_posix()}
    assert conflict <= set(groups.conflicts["path"]), "the film and its copy under Normal are a listed conflict"
    assert not conflict & set(split.table["path"]), "left out of training, validation and testing"
    assert record["groups_across_classes"] >= 1 and record["images_in_conflicts"] >= 2 and record["conflicts_left_out"]
    table = groups.with_splits(split.table)
    assert set(table.loc[table["path"].isin(conflict), "split"]) == {grouping.LEFT_OUT}
    kept = table[~table["conflict"]]
    assert kept.groupby("group")["split"].nunique().eq(1).all(), "a group in two splits"
    assert record["would_have_crossed_splits"] > 0, "grouping by file content alone would have cut a group"
    assert split.sha256 != split_images(index.images, val_fraction=0.16, test_fraction=0.2, seed=42).sha256

    kept_split, kept_groups, kept_record = grouping.grouped_split(
        root, index.images, tmp_path / "cache", keep_conflicts=True, val_fraction=0.16, test_fraction=0.2, seed=42)
    assert conflict <= set(kept_split.table["path"]) and not kept_record["conflicts_left_out"]
    assert kept_split.table[kept_split.table["path"].isin(conflict)]["split"].nunique() == 1


def test_fingerprints_are_cached_by_file_content(films, tmp_path, monkeypatch):
    root, _ = films
    images = scan_dataset(root).images
    first = duplicates.fingerprints(root, images, tmp_path)

    def no_decoding(path):
        raise AssertionError(f"{path} decoded again")

    monkeypatch.setattr(duplicates, "_file_fingerprint", no_decoding)
    again = duplicates.fingerprints(root, images.iloc[::-1], tmp_path)  # another order, the same files
    assert np.array_equal(again[0], first[0][::-1]) and np.array_equal(again[1], first[1][::-1])


def test_holding_out_a_source_moves_its_images_of_that_class_to_test_and_refuses_a_single_source_class(films, tmp_path):
    root, _ = films
    index = scan_dataset(root)
    split = split_images(index.images, val_fraction=0.16, test_fraction=0.2, seed=42)
    groups = index.images.assign(group=range(len(index.images)))  # no near-duplicate group: nothing else moves
    held, record = hold_out(split, root, "COVID=demo-hospital-A", groups)
    sheet = pd.read_excel(root / "COVID.metadata.xlsx", dtype=str, engine="calamine")
    from_a = {f"COVID/images/{name}.png" for name in sheet.loc[sheet["URL"] == "demo-hospital-A", "FILE NAME"]}
    moved = held.table[held.table["path"].isin(from_a)]
    assert record["images"] == len(from_a) == len(moved) and set(moved["split"]) == {"test"}
    others = held.table[~held.table["path"].isin(from_a)]
    assert others.equals(split.table[~split.table["path"].isin(from_a)]), "nothing else moves"
    assert held.sha256 != split.sha256
    with pytest.raises(DatasetError, match="no COVID image comes from 'nowhere'"):
        hold_out(split, root, "COVID=nowhere", groups)
    single = tmp_path / "COVID-19_Radiography_Dataset"  # every COVID image from one source: none left to train on
    shutil.copytree(root, single)
    sheet.assign(URL="demo-hospital-A").to_excel(single / "COVID.metadata.xlsx", index=False)
    with pytest.raises(DatasetError, match="single source cannot be held out"):
        hold_out(split, single, "COVID=demo-hospital-A", groups)


def test_the_probe_reads_a_source_the_features_carry_and_not_one_they_do_not():
    from covid_mobilenet.analysis.source_probe import probe_lines, source_probe

    rng = np.random.default_rng(0)
    sources = np.array(["hospital"] * 120 + ["screening"] * 80 + ["clinic"] * 3)
    noise = rng.normal(size=(len(sources), 64)).astype(np.float32)
    readable = noise.copy()
    readable[sources == "screening", :8] += 1.5  # the screening collection's images look different
    labels = ["COVID"] * len(sources)
    carried = source_probe(readable, labels, list(sources))["COVID"]
    assert carried["testable"] and carried["above_majority"] and carried["accuracy"] > 0.9
    assert carried["majority"] == pytest.approx(120 / 200) and carried["left_out_sources"] == ["clinic"]
    assert carried["interval"]["low"] <= carried["accuracy"] <= carried["interval"]["high"]
    blind = source_probe(noise, labels, list(sources))["COVID"]
    assert blind["testable"] and not blind["above_majority"] and blind["accuracy"] < blind["majority"] + 0.1
    single = source_probe(noise[:50], ["Viral Pneumonia"] * 50, ["paediatric"] * 50)["Viral Pneumonia"]
    assert not single["testable"] and single["reason"] == "a single source"
    lines = probe_lines({"COVID": carried, "Viral Pneumonia": single})
    assert "the features carry the source" in lines[0] and "not testable (a single source" in lines[1]


def test_the_claim_checklist_says_done_not_done_or_not_possible_from_the_files(tmp_path):
    from covid_mobilenet.analysis.claim import DONE, IMPOSSIBLE, NOT_DONE, claim_checklist, claim_markdown
    from covid_mobilenet.analysis.results import collect_results
    from tests.conftest import write_finished_run

    write_finished_run(tmp_path, "mn_resultset1")
    config = {"experiments": {"mn_resultset1": {}}}
    status = {row["item"]: row["status"] for row in claim_checklist(collect_results(tmp_path, config), None, 0, demo=True)}
    assert status["14"] == IMPOSSIBLE and status["32"] == IMPOSSIBLE, "what the data cannot give is said"
    assert status["31"] == DONE and status["21a"] == NOT_DONE, "calibrated; made before near-duplicates were grouped"
    metrics_file = tmp_path / "mn_resultset1" / "seed-42" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["dataset"]["duplicates"] = {"file": "duplicates-abc.csv", "groups": 3, "groups_across_classes": 1,
                                        "conflicts_left_out": True}
    del metrics["calibration"]
    metrics_file.write_text(json.dumps(metrics))
    rows = claim_checklist(collect_results(tmp_path, config), None, 2, demo=True)
    status = {row["item"]: row["status"] for row in rows}
    assert status["21a"] == DONE and status["31"] == NOT_DONE
    assert "2 held-out source run(s)" in next(r["where"] for r in rows if r["item"] == "30")
    assert claim_markdown(rows)[2].startswith("| CLAIM item |") and len(claim_markdown(rows)) == 4 + len(rows)


@pytest.mark.slow
def test_holdout_sources_on_the_demo_trains_without_each_covid_source_and_tables_it(tmp_path):
    """Two fast-mode runs of the baseline on the demo set, one per COVID source held out; the summary's table."""
    from tests.conftest import TINY, run_all

    data = generate_demo_dataset(tmp_path / "data" / "COVID-19_Radiography_Dataset", images=600, seed=0)
    folders = ["--results-dir", str(tmp_path / "results"), "--graph-dir", str(tmp_path / "Graph"), "--data-dir", str(data)]
    done = run_all("--demo", "--fast", "--holdout-sources", "COVID", *folders, *TINY)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    plan = json.loads((tmp_path / "results" / "holdout-sources.json").read_text())
    assert [(t["class"], t["source"]) for t in plan["testable"]] == [("COVID", "demo-hospital-A"), ("COVID", "demo-hospital-B")]
    table = pd.read_csv(tmp_path / "results" / "holdout_sources.csv")
    assert list(zip(table["Class"], table["Source"])) == [("COVID", "demo-hospital-A"), ("COVID", "demo-hospital-B")]
    for row in table.to_dict("records"):
        metrics = json.loads((Path(row["Run"]) / "metrics.json").read_text())
        held = metrics["dataset"]["holdout_source"]
        assert (held["class"], held["source"]) == (row["Class"], row["Source"]) and row["Held-out images"] == held["images"]
        split = pd.read_csv(tmp_path / "results" / metrics["dataset"]["split_file"])
        assert metrics["dataset"]["counts"]["train"]["COVID"] > 0, "the class's other source is still trained on"
        assert row["Held-out low"] <= row["Held-out accuracy"] <= row["Held-out high"]
        assert len(split) == metrics["dataset"]["total_images"]
        # the unfamiliar-image guard against the held-out source: its images apart from the other test images
        guard = metrics["unfamiliar"]
        assert guard["shifted"]["images"] == held["images"] and 0 <= guard["shifted"]["auroc"] <= 1
        assert guard["test_flagged"]["of"] == sum(metrics["dataset"]["counts"]["test"].values()) - held["images"]
    summary = (tmp_path / "results" / "summary.md").read_text()
    assert "Leaving one source out" in summary and "Reporting checklist (CLAIM 2020)" in summary
    assert (tmp_path / "Graph" / "Held_out_sources.png").is_file()
    assert list((tmp_path / "results").glob("audit-*.json")), "the data set's audit"


def test_holdout_sources_refuses_an_unknown_class_and_a_selection_of_configurations(demo_root, tmp_path):
    from tests.conftest import run_all_here

    folders = ["--results-dir", str(tmp_path / "results"), "--graph-dir", str(tmp_path / "Graph"), "--data-dir", str(demo_root)]
    unknown = run_all_here("--demo", "--holdout-sources", "Pneumothorax", "--dry-run", *folders)
    assert unknown.returncode == 2 and "unknown class(es) Pneumothorax" in unknown.stderr
    only = run_all_here("--demo", "--holdout-sources", "--only", "mn_resultset2", "--dry-run", *folders)
    assert only.returncode == 2 and "leave out --only" in only.stderr
    planned = run_all_here("--demo", "--holdout-sources", "--dry-run", *folders)
    assert planned.returncode == 0 and "held-out sources" in planned.stdout
    assert "mn_resultset1-holdout-COVID-demo-hospital-A" in planned.stdout


def test_holdout_plans_only_sources_with_enough_images_in_classes_with_another():
    from covid_mobilenet.data.sources import holdout_pairs

    testable, untestable = holdout_pairs({
        "COVID": {"hospital-A": 90, "hospital-B": 9},
        "Viral Pneumonia": {"paediatric": 32, "hospital-B": 5, "screening": 1},  # a stray copy from another class
        "Lung_Opacity": {"RSNA": 170},
        "Normal": {"unknown (not in the metadata spreadsheet)": 4},
    })
    assert testable == [("COVID", "hospital-A"), ("COVID", "hospital-B"), ("Viral Pneumonia", "paediatric"),
                        ("Viral Pneumonia", "hospital-B")]
    reasons = {(u["class"], tuple(u["sources"])): u["reason"] for u in untestable}
    assert reasons[("Viral Pneumonia", ("screening",))].startswith("only 1 image(s)")
    assert reasons[("Lung_Opacity", ("RSNA",))].startswith("a single source")
    assert reasons[("Normal", ("unknown (not in the metadata spreadsheet)",))] == "no known source"


def test_a_holdout_that_leaves_no_validation_image_is_left_out_of_the_sweep_and_said(tmp_path):
    """The demo's Viral Pneumonia: holding its paediatric source out leaves 5 images of another source, none of them
    in validation; that run is dropped before anything trains, the other kept, and the plan says why."""
    from covid_mobilenet.common.config import load_config
    from covid_mobilenet.sweep.plan import make_mode, plan_holdouts
    from covid_mobilenet.sweep.preflight import preflight

    data = generate_demo_dataset(tmp_path / "data" / "COVID-19_Radiography_Dataset", images=600, seed=0)
    config = load_config()
    mode = make_mode(config, demo=True, results_dir=tmp_path / "results", graph_dir=tmp_path / "Graph", data_dir=data)
    jobs, plan = plan_holdouts(config, mode, {"feature_dir": str(tmp_path / "cache")}, None, ["Viral Pneumonia"])
    assert [job.params["holdout_source"] for job in jobs] == ["Viral Pneumonia=demo-hospital-B", "Viral Pneumonia=demo-paediatric"]
    said = []
    kept = preflight(jobs, mode, say=said.append, holdout_plan=plan)
    assert [job.params["holdout_source"] for job in kept] == ["Viral Pneumonia=demo-hospital-B"]
    assert [(t["class"], t["source"]) for t in plan["testable"]] == [("Viral Pneumonia", "demo-hospital-B")]
    reasons = {u["sources"][0]: u["reason"] for u in plan["untestable"]}
    assert "left for val" in reasons["demo-paediatric"] and reasons["demo-screening"].startswith("only 1 image")
    left_out = [line for line in said if "left out" in line]
    assert len(left_out) == 1 and "demo-paediatric" in left_out[0]


def _with_text_chunk_of_bad_crc(png: bytes) -> bytes:
    """The PNG with a tEXt chunk whose CRC is wrong before its first IDAT: libpng (training) and the scan ignore it,
    Pillow's own reader refuses the file."""
    import struct

    at = png.find(b"IDAT") - 4
    body = b"k\0v"
    return png[:at] + struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", 1) + png[at:]


def test_fingerprints_read_what_training_decodes_a_damaged_text_chunk_and_16_bit_films(films, tmp_path):
    """A PNG with a damaged ancillary chunk (the scan accepts it) used to stop every sweep (Pillow's
    UnidentifiedImageError); a 16-bit copy of a film was saturated to white by convert("L") and never found."""
    import tensorflow as tf

    source, _ = films
    root = tmp_path / "COVID-19_Radiography_Dataset"
    shutil.copytree(source, root)
    folder = root / "Normal" / "images"
    first, second = sorted(folder.glob("Normal-*.png"))[:2]
    damaged, sixteen = folder / "Normal-damaged-text.png", folder / "Normal-sixteen.png"
    damaged.write_bytes(_with_text_chunk_of_bad_crc(first.read_bytes()))
    gray = np.asarray(Image.open(second).convert("L")).astype(np.uint16)
    Image.fromarray(gray * 257 + np.uint16(100)).save(sixteen)  # 16-bit, its high byte the 8-bit film
    index = scan_dataset(root)
    listed = set(index.images["path"])
    assert {f"Normal/images/{damaged.name}", f"Normal/images/{sixteen.name}"} <= listed, "the scan accepts both"
    groups = grouping.group_images(root, index.images, tmp_path / "cache")
    group_of = dict(zip(groups.images["path"], groups.images["group"]))
    for copy, original in ((damaged, first), (sixteen, second)):
        assert group_of[f"Normal/images/{copy.name}"] == group_of[f"Normal/images/{original.name}"], copy.name
    row = groups.table.set_index("path").loc[f"Normal/images/{sixteen.name}"]
    assert row["pixel_similarity"] > 0.99 and row["hash_distance"] <= 2
    from covid_mobilenet.data.image_files import decoded_picture

    trained = tf.io.decode_image(sixteen.read_bytes(), channels=1, dtype=tf.uint8, expand_animations=False).numpy()[..., 0]
    assert np.array_equal(np.asarray(decoded_picture(sixteen.read_bytes())), trained), "the pixels training reads"


def test_holding_out_a_source_leaves_out_the_copies_of_its_images_from_other_sources(films, tmp_path):
    """A film of hospital B and its resized copy filed under hospital A: holding B out used to leave the copy in
    training (when their group was trained on) while its original was tested on."""
    source, _ = films
    root = tmp_path / "COVID-19_Radiography_Dataset"
    shutil.copytree(source, root)
    sheet = pd.read_excel(root / "COVID.metadata.xlsx", dtype=str, engine="calamine")
    originals = sheet.loc[sheet["URL"] == "demo-hospital-B", "FILE NAME"].tolist()[:5]
    rng = np.random.default_rng(2)
    for n, name in enumerate(originals):  # several, so that some group lands in train whatever the seed
        picture = Image.open(root / "COVID" / "images" / f"{name}.png")
        duplicates.near_copy(picture, "resize", rng).save(root / "COVID" / "images" / f"COVID-copy-{n}.png")
    rows = pd.DataFrame({"FILE NAME": [f"COVID-copy-{n}" for n in range(len(originals))], "FORMAT": "PNG",
                         "SIZE": "299*299", "URL": "demo-hospital-A"})
    pd.concat([sheet, rows]).to_excel(root / "COVID.metadata.xlsx", index=False)
    index = scan_dataset(root)
    split, groups, _ = grouping.grouped_split(root, index.images, None, val_fraction=0.16, test_fraction=0.2, seed=42)
    copies = {f"COVID/images/COVID-copy-{n}.png" for n in range(len(originals))} & set(split.table["path"])  # not conflicts
    assert set(split.subset("train")["path"]) & copies, "some copy's group is trained on before the hold-out"
    held, record = hold_out(split, root, "COVID=demo-hospital-B", groups.images)
    assert not copies & set(held.table["path"]), "no copy of a held-out film is trained, validated or tested on"
    assert set(held.table.loc[held.table["path"].isin({f"COVID/images/{n}.png" for n in originals}), "split"]) == {"test"}
    assert record["copies_left_out"]["images"] == len(copies) and sum(record["copies_left_out"]["from"].values()) == len(copies)
    assert len(held.table) == len(split.table) - len(copies), "nothing else is left out"


def test_the_duplicates_table_is_named_by_its_split(films, tmp_path):
    """Two splits of one data set (another seed) used to write one file, the second overwriting the first's splits."""
    root, _ = films
    images = scan_dataset(root).images
    written = {}
    for seed in (1, 2):
        split, groups, record = grouping.grouped_split(root, images, tmp_path / "cache", val_fraction=0.16,
                                                       test_fraction=0.2, seed=seed)
        path = grouping.write_duplicates_table(tmp_path, groups, split, record)
        assert record["data_sha256"] == grouping.data_hash(images) and split.sha256[:12] in path.name
        written[path] = dict(zip(split.table["path"], split.table["split"]))
    assert len(written) == 2, "one file per split"
    for path, split_of in written.items():
        table = pd.read_csv(path)
        assert all(split_of.get(p, grouping.LEFT_OUT) == s for p, s in zip(table["path"], table["split"])), path.name


def test_the_probe_keeps_near_copies_in_one_fold():
    """Three noisy copies of each of 150 images whose sources are random: folding image by image "found the source"
    (0.70 against a majority near 0.5) by recognising the copies; folding by group does not."""
    from covid_mobilenet.analysis.source_probe import source_probe

    rng = np.random.default_rng(0)
    films = rng.normal(size=(150, 64)).astype(np.float32)
    sources = np.tile(rng.choice(["hospital", "screening"], 150), 3)
    copies = np.concatenate([films + rng.normal(0, 0.3, films.shape).astype(np.float32) for _ in range(3)])
    groups = np.tile(np.arange(150), 3)
    grouped = source_probe(copies, ["COVID"] * 450, list(sources), groups)["COVID"]
    assert grouped["testable"] and grouped["groups"] == 150 and not grouped["above_majority"], grouped
    assert grouped["accuracy"] < grouped["majority"] + 0.1
    image_by_image = source_probe(copies, ["COVID"] * 450, list(sources))["COVID"]
    assert image_by_image["above_majority"], "the copies alone give the source away when they are split across folds"


def test_the_maximum_over_positions_finds_a_small_local_mark_that_averaging_washes_out():
    """Generated feature maps (7 x 7 positions): each image's content varies whole-image channel levels; 40% of one
    source's images carry a mark that lights a few channels at one corner position (2% of the map), as a bright
    square outside the lungs would."""
    from covid_mobilenet.analysis.source_probe import POOLINGS, pooled, probe_lines, spatial_probe, which_found

    rng = np.random.default_rng(0)
    count = 300
    sources = np.where(np.arange(count) % 2 == 0, "hospital", "screening")
    content = rng.normal(0, 1, (count, 1, 1, 32))  # what each film looks like, everywhere
    maps = np.maximum(content + rng.normal(0, 0.5, (count, 7, 7, 32)), 0).astype(np.float32)
    marked = (sources == "screening") & (rng.uniform(size=count) < 0.4)
    maps[marked, 0, 0, :4] += 4.0
    probes = spatial_probe({pooling: pooled(maps, pooling) for pooling in POOLINGS}, ["COVID"] * count, list(sources))
    mean, peak = probes["mean"]["COVID"], probes["max"]["COVID"]
    assert not mean["above_majority"] and peak["above_majority"], (mean["accuracy"], peak["accuracy"])
    assert "only the maximum over positions finds the source" in which_found(probes)[0]
    assert "the features carry the source" in probe_lines(probes["max"])[0]


def test_a_sweep_reuses_the_audit_of_the_same_images_split_and_backbone(tmp_path):
    """The audit (38 s at full size) is made again only when what it depends on changed."""
    import json

    from covid_mobilenet.analysis.audit_summary import audit_inputs, current_audit
    from covid_mobilenet.sweep.notebooks import audit_data
    from covid_mobilenet.sweep.plan import Mode
    from tests.conftest import write_finished_run

    results = tmp_path / "results"
    run = write_finished_run(results, "mn_resultset1")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["params"].update(weights=None, seed=42)
    metrics["dataset"]["duplicates"] = {"data_sha256": "cd" * 32}
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert current_audit(run, results) is None, "no audit yet"
    record = results / f"audit-{'cd' * 6}.json"
    record.write_text(json.dumps({"inputs": audit_inputs(metrics)}))
    assert current_audit(run, results) == record

    job = type("Job", (), {"run_dir": run})()
    outcome = audit_data(Mode("demo", str(results), str(tmp_path / "Graph"), None), [job])
    assert outcome.status == "skipped" and record.name in outcome.detail

    for changed in ({"split_sha256": "ef" * 32}, {"duplicates": {"data_sha256": "cd" * 32 + "0"}}):
        other = {**metrics, "dataset": {**metrics["dataset"], **changed}}
        (run / "metrics.json").write_text(json.dumps(other))
        assert current_audit(run, results) is None, changed
    for params in ({"seed": 43}, {"image_size": 64}, {"weights": "imagenet"}):
        (run / "metrics.json").write_text(json.dumps({**metrics, "params": {**metrics["params"], **params}}))
        assert current_audit(run, results) is None, params
    record.write_text(json.dumps({"inputs": {**audit_inputs(metrics), "version": 0}}))
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert current_audit(run, results) is None, "an audit of an older version is made again"
