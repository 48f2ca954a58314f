"""Release files: the adapters' model card says what their records say; LICENSE and CITATION.cff are valid."""
from __future__ import annotations

import datetime
import json
import re
import shutil

import pandas as pd
import pytest
import yaml

import afr
from afr.experiments.grids import CommittedGrids
from afr.model_card import DOMAINS, ZERO_SHOT_RECORD, main, render_model_card
from afr.paths import PROJECT_ROOT

ADAPTERS = PROJECT_ROOT / "results" / "adapters"
CARD = ADAPTERS / "MODEL_CARD.md"
#: the fitted grid's adapters (make publish-adapters), with their own card
FITTED = ADAPTERS / "dalora-fitted"
#: card section title -> (record key, factor, decimals shown)
SECTIONS = {
    "Test ROC AUC": ("auc", 1.0, 4),
    "Test accuracy (%, mean of the 10 folds)": ("accuracy_mean", 100.0, 2),
    "Test equal error rate": ("eer", 1.0, 4),
}


def card_tables() -> dict[str, dict[str, list[float]]]:
    """``section title -> {row label -> numbers}`` read back from the committed card's Markdown."""
    tables: dict[str, dict[str, list[float]]] = {}
    for section in re.split(r"^### ", CARD.read_text(), flags=re.M)[1:]:
        title, body = section.split("\n", 1)
        body = body.split("\n## ", 1)[0]  # the last table ends where the next top-level section starts
        rows = [line.strip("|").split("|") for line in body.splitlines() if line.startswith("| ")]
        assert [cell.strip() for cell in rows[0]] == ["adapter", *DOMAINS]
        tables[title] = {row[0].strip().strip("`"): [float(cell) for cell in row[1:]] for row in rows[1:]}
    return tables


def records_by_adapter() -> dict[str, dict]:
    """Each committed adapter's test section, read through its source.json (independently of afr.model_card)."""
    tests = {}
    for source in sorted((PROJECT_ROOT / "results" / "adapters").glob("*/source.json")):
        record = json.loads((PROJECT_ROOT / json.loads(source.read_text())["record"]).read_text())
        tests[source.parent.name] = record["test"]
    tests["zero-shot (no adapter)"] = json.loads((PROJECT_ROOT / ZERO_SHOT_RECORD).read_text())["test"]["zero-shot"]
    return tests


@pytest.mark.parametrize("folder", [ADAPTERS, FITTED], ids=["first-grid", "fitted-grid"])
def test_committed_card_is_what_the_generator_writes_from_the_records(folder):
    assert (folder / "MODEL_CARD.md").read_text() == render_model_card(folder), (
        f"regenerate it: python -m afr.model_card --adapters-dir {folder.relative_to(PROJECT_ROOT)} --overwrite")


def test_centred_adapters_are_compared_with_the_centred_zero_shot_and_mixed_centring_is_refused(tmp_path):
    text = (FITTED / "MODEL_CARD.md").read_text()
    table = pd.read_csv(PROJECT_ROOT / "results" / "tables" / "dalora.csv")
    zero_tag = CommittedGrids().dalora_zero_shot_tag()
    rows = table[(table["run"] == zero_tag) & (table["split"] == "test") & (table["metric"] == "auc")]
    centred_auc = [float(rows.loc[rows["domain"] == domain, "value"].iloc[0]) for domain in DOMAINS]
    line = next(line for line in text.splitlines() if line.startswith("| zero-shot, centred (no adapter) |"))
    assert [float(cell) for cell in line.strip("|").split("|")[1:]] == pytest.approx(centred_auc, abs=5e-5)
    assert "| `centre_embeddings` | True |" in text and "| `centre_embeddings` | False |" in CARD.read_text()
    for name in ("lora_seed0", "dalora-classifier_seed0"):  # one centred adapter beside one uncentred one
        shutil.copytree((FITTED if name == "lora_seed0" else ADAPTERS) / name, tmp_path / name)
    with pytest.raises(ValueError, match="some adapters centred their embeddings and others did not"):
        render_model_card(tmp_path)


def test_card_numbers_equal_the_records():
    tables, tests = card_tables(), records_by_adapter()
    assert set(tables) == set(SECTIONS)
    for title, (key, factor, decimals) in SECTIONS.items():
        assert set(tables[title]) == set(tests), title  # every committed adapter, nothing else
        for label, numbers in tables[title].items():
            expected = [factor * tests[label][domain][key] for domain in DOMAINS]
            assert numbers == pytest.approx(expected, abs=0.5 * 10 ** -decimals + 1e-12), (title, label)


def test_card_states_use_limits_and_every_data_licence():
    text = CARD.read_text()
    for heading in ("## Intended use", "## Out-of-scope uses", "## Limits", "## Data licences", "## Training data"):
        assert heading in text
    assert "Surveillance" in text and "without their informed consent" in text
    for licence in ("Olivetti Research Laboratory", "Yale University; research use", "image rights not stated",
                    "GPL-3.0); Notre Dame's own terms apply", "MIT (as shipped in the face-api npm package"):
        assert licence in text
    stats = json.loads((PROJECT_ROOT / "results" / "embedded_stats.json").read_text())
    assert f"{stats['train_records']} training\nchips of {stats['train_identities']} identities" in text


def test_model_card_command_checks_and_never_replaces_a_different_card_unless_told(tmp_path, capsys):
    output = tmp_path / "CARD.md"
    assert main(["--output", str(output), "--check"]) == 1  # missing: not up to date
    assert main(["--output", str(output)]) == 0 and output.read_text() == render_model_card()
    assert main(["--output", str(output), "--check"]) == 0
    output.write_text("edited by hand\n")
    assert main(["--output", str(output)]) == 2
    assert output.read_text() == "edited by hand\n"
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["--output", str(output), "--overwrite"]) == 0 and output.read_text() == render_model_card()


# ------------------------------------------------------------------------------------------------ LICENSE, CITATION
def test_license_is_mit_for_the_adaptface_authors():
    text = (PROJECT_ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 AdaptFace authors\n")
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text


def test_citation_file_is_cff_1_2_0_with_the_package_version():
    citation = yaml.safe_load((PROJECT_ROOT / "CITATION.cff").read_text())
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()  # (tomllib only exists from Python 3.11)
    project_version = re.search(r'^version = "(.+)"$', pyproject, flags=re.M).group(1)
    project_licence = re.search(r'^license = "(.+)"$', pyproject, flags=re.M).group(1)
    assert citation["cff-version"] == "1.2.0"
    # the keys CFF 1.2.0 requires, and an entity (team) as the author
    assert {"cff-version", "message", "title", "authors"} <= set(citation)
    assert citation["authors"] == [{"name": "AdaptFace authors"}]
    assert str(citation["version"]) == afr.__version__ == project_version
    assert citation["license"] == project_licence == "MIT"
    datetime.date.fromisoformat(str(citation["date-released"]))
    assert citation["title"].startswith("AdaptFace")


def test_a_record_scored_on_another_build_is_refused_with_what_to_do(tmp_path):
    """The message names the pack, both SHA-256 and the remedy (rebuild in the pinned venv, or restore the records)."""
    from types import SimpleNamespace

    from afr.model_card import zero_shot_test

    committed = json.loads((PROJECT_ROOT / ZERO_SHOT_RECORD).read_text())
    (tmp_path / ZERO_SHOT_RECORD).parent.mkdir(parents=True)
    (tmp_path / ZERO_SHOT_RECORD).write_text(json.dumps(committed))
    test = {domain: dict(metrics) for domain, metrics in committed["test"]["zero-shot"].items()}
    assert zero_shot_test([SimpleNamespace(record={"test": test}, record_path="r.json", centred=False)], tmp_path)
    test["wild"]["sha256"] = "f" * 64
    with pytest.raises(ValueError) as error:
        zero_shot_test([SimpleNamespace(record={"test": test}, record_path="r.json", centred=False)], tmp_path)
    message = str(error.value)
    assert "r.json scored another wild pack" in message and "ffffffffffff" in message
    assert committed["test"]["zero-shot"]["wild"]["sha256"][:12] in message
    assert "build-embedded --rebuild" in message and "opencv-python-headless 5.0.0" in message
    assert "git checkout -- results/" in message
