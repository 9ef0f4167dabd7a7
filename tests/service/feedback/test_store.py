"""Tests for service.feedback.store: which labels can become class folders, how an answer is
judged, and where a labelled example lands (``<feedback>/<model>/<label>/<id>.<ext>``, the layout
``train.py --data`` reads, plus a hidden provenance record). Captures are written by the real
capture writer; nothing ever lands outside the capture and feedback folders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from service.feedback.store import (
    CORRECT,
    NEW_CLASS,
    WRONG,
    FeedbackStore,
    check_label,
    outcome_of,
)
from service.serving.errors import (
    AlreadyLabelled,
    InvalidInput,
)
from tests.helpers.answers import refused
from tests.helpers.feedback import (
    CLASS_NAMES,
    capture_now,
    captured,
    files_under,
    read_json,
    sample,
)
from tests.helpers.images import digit_png, solid_jpeg

MODELS = ["digits", "letters"]


def classes_of(model: str, version: int) -> Sequence[str]:
    return CLASS_NAMES


@pytest.fixture()
def store(tmp_path: Path) -> FeedbackStore:
    return FeedbackStore(tmp_path / "captured", tmp_path / "feedback")


def assert_only_in_the_two_folders(tmp_path: Path) -> None:
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert path.is_relative_to(tmp_path / "captured") or path.is_relative_to(
                tmp_path / "feedback"
            ), path


def stored_state(tmp_path: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The captured samples (id: image) and the feedback folder's files."""
    samples = {key: value.data for key, value in captured(tmp_path / "captured").items()}
    return samples, files_under(tmp_path / "feedback")


# --- labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "label", ["7", "golden retriever", "zif\u00e9r", "a.b", "x" * 64, "-1", "Label_2"]
)
def test_a_label_that_can_be_a_folder_name_is_accepted(label: str) -> None:
    assert check_label(label) == label


@pytest.mark.parametrize(
    ("label", "says"),
    [
        ("", "non-empty string"),
        ("   ", "non-empty string"),
        ("../x", "cannot be a class folder name"),
        ("..", "cannot be a class folder name"),
        ("a/b", "cannot be a class folder name"),
        ("a\\b", "cannot be a class folder name"),
        (".hidden", "cannot be a class folder name"),
        (" 7", "cannot be a class folder name"),
        ("7 ", "cannot be a class folder name"),
        ("a\nb", "cannot be a class folder name"),
        ("a\tb", "cannot be a class folder name"),
        ("a\x00b", "cannot be a class folder name"),
        ("a\x7fb", "cannot be a class folder name"),
        ("x" * 300, "label is 300 characters; at most 64"),
        (None, "non-empty string"),
        (7, "non-empty string"),
        (["7"], "non-empty string"),
    ],
    ids=repr,
)
def test_a_label_that_cannot_be_a_folder_name_is_refused(label: object, says: str) -> None:
    message = refused(lambda: check_label(label))
    assert says in message
    assert len(message) < 300  # a huge label is not echoed back whole


def test_a_refused_label_message_says_what_is_allowed() -> None:
    message = refused(lambda: check_label("a/b"))
    assert "no '/', '\\', control characters, surrounding spaces or leading '.'" in message


# --- outcomes ----------------------------------------------------------------------------------


def test_outcomes() -> None:
    assert outcome_of("7", "7", CLASS_NAMES, new_class=False) == CORRECT
    assert outcome_of("3", "7", CLASS_NAMES, new_class=False) == WRONG
    assert outcome_of("3", "7", CLASS_NAMES, new_class=True) == WRONG  # known: counted anyway
    assert outcome_of("zebra", "7", CLASS_NAMES, new_class=True) == NEW_CLASS


def test_an_unknown_label_lists_the_known_ones_and_how_to_add_a_class() -> None:
    message = refused(lambda: outcome_of("zebra", "7", CLASS_NAMES, new_class=False), 422)
    assert "label 'zebra' is not a class of this model" in message
    assert "known labels: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9." in message
    assert '"new_class": true' in message


def test_a_long_class_list_is_cut_short_in_the_message() -> None:
    names = [f"c{i}" for i in range(60)]
    message = refused(lambda: outcome_of("zebra", "c0", names, new_class=False), 422)
    assert "c49 (and 10 more)" in message and "c50" not in message


# --- finding a capture -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "../etc/passwd", "a b", "a/b", "x" * 65, "abc.12345"])
def test_an_id_that_is_not_a_prediction_id_is_refused(store: FeedbackStore, bad: str) -> None:
    message = refused(lambda: store.find(bad, MODELS))
    assert "id must be a prediction id this service answered with" in message


def test_an_unknown_id_is_not_found_and_the_message_offers_the_other_route(
    store: FeedbackStore,
) -> None:
    message = refused(lambda: store.find("nope", MODELS), 404)
    assert "no captured prediction nope" in message
    assert "IMGCLS_CAPTURE_RATE" in message and "POST /models/{name}/feedback" in message


def test_a_capture_is_found_in_its_models_folder(store: FeedbackStore, tmp_path: Path) -> None:
    capture_now(store.capture_dir, sample("req1", digit_png(), model="letters", version=4, top=2))
    found = store.find("req1", MODELS)
    assert (found.model, found.version, found.label, found.suffix) == ("letters", 4, "2", "png")


def test_a_capture_of_a_model_not_served_is_not_found(store: FeedbackStore) -> None:
    capture_now(store.capture_dir, sample("req1", digit_png(), model="retired"))
    refused(lambda: store.find("req1", MODELS), 404)


def test_a_damaged_record_counts_as_expired(store: FeedbackStore) -> None:
    capture_now(store.capture_dir, sample("req1", digit_png()))
    (index,) = (store.capture_dir / "digits").glob("*.idx")
    index.write_bytes(index.read_bytes().replace(b'"record":{', b'"record":{not json'))
    refused(lambda: store.find("req1", MODELS), 404)


# --- labelling a capture -----------------------------------------------------------------------


def test_feedback_moves_the_capture_into_the_training_layout(
    store: FeedbackStore, tmp_path: Path
) -> None:
    image = digit_png()
    capture_now(store.capture_dir, sample("req1.2", image, version=3, top=7))
    labelled = store.label_prediction("req1.2", "3", False, MODELS, classes_of)
    assert labelled.answer() == {
        "id": "req1.2",
        "model": "digits",
        "version": 3,
        "label": "3",
        "predicted": "7",
        "outcome": WRONG,
    }
    # The capture stays until the budget drops it; the prediction cannot be labelled twice.
    assert list(captured(tmp_path / "captured")) == ["req1.2"]
    refused(lambda: store.find("req1.2", MODELS), 409)
    stored = files_under(tmp_path / "feedback")
    assert set(stored) == {"digits/3/req1.2.png", "digits/.records/req1.2.json"}
    assert stored["digits/3/req1.2.png"] == image
    assert labelled.path == tmp_path / "feedback" / "digits" / "3" / "req1.2.png"
    record = read_json(tmp_path / "feedback" / "digits" / ".records" / "req1.2.json")
    assert {k: record[k] for k in ("id", "model", "version", "predicted", "label")} == {
        "id": "req1.2",
        "model": "digits",
        "version": 3,
        "predicted": "7",
        "label": "3",
    }
    assert record["outcome"] == WRONG
    assert record["source"] == "capture"
    assert record["file"] == "3/req1.2.png"
    assert record["time"]
    assert record["captured"]["top_k"][0]["label"] == "7"


def test_a_jpeg_capture_keeps_its_suffix(store: FeedbackStore, tmp_path: Path) -> None:
    image = solid_jpeg(10, 10)
    capture_now(store.capture_dir, sample("j", image, top=5))
    store.label_prediction("j", "5", False, MODELS, classes_of)
    assert files_under(tmp_path / "feedback" / "digits" / "5") == {"j.jpg": image}


def test_feedback_is_taken_once(store: FeedbackStore, tmp_path: Path) -> None:
    capture_now(store.capture_dir, sample("req1", digit_png(), top=7))
    store.label_prediction("req1", "7", False, MODELS, classes_of)
    before = stored_state(tmp_path)
    message = refused(lambda: store.label_prediction("req1", "1", False, MODELS, classes_of), 409)
    assert "already has its true label ('7')" in message
    refused(lambda: store.find("req1", MODELS), 409)
    assert stored_state(tmp_path) == before


def test_an_unknown_label_leaves_the_capture_for_a_corrected_retry(
    store: FeedbackStore, tmp_path: Path
) -> None:
    capture_now(store.capture_dir, sample("req1", digit_png()))
    before = stored_state(tmp_path)
    refused(lambda: store.label_prediction("req1", "zebra", False, MODELS, classes_of), 422)
    assert stored_state(tmp_path) == before
    labelled = store.label_prediction("req1", "zebra", True, MODELS, classes_of)
    assert labelled.outcome == NEW_CLASS
    assert (tmp_path / "feedback" / "digits" / "zebra" / "req1.png").is_file()


def test_an_image_that_expired_after_the_lookup_is_not_found(
    store: FeedbackStore, tmp_path: Path
) -> None:
    capture_now(store.capture_dir, sample("req1", digit_png()))
    found = store.find("req1", MODELS)
    for segment in (tmp_path / "captured" / "digits").iterdir():
        segment.unlink()  # the budget dropped it meanwhile
    refused(lambda: store.label_captured(found, "7", CORRECT), 404)
    assert not (tmp_path / "feedback" / "digits" / ".records" / "req1.json").exists()


def test_an_unwritable_feedback_folder_is_unavailable_and_the_capture_stays(
    tmp_path: Path,
) -> None:
    (tmp_path / "feedback").write_bytes(b"")  # a file where the folder should be
    store = FeedbackStore(tmp_path / "captured", tmp_path / "feedback")
    capture_now(store.capture_dir, sample("req1", digit_png()))
    message = refused(lambda: store.label_prediction("req1", "7", False, MODELS, classes_of), 503)
    assert "the feedback folder cannot be written" in message and "retry later" in message
    assert list(captured(tmp_path / "captured")) == ["req1"]


# --- a labelled image sent directly ------------------------------------------------------------


def test_a_direct_example_is_stored_with_its_record(store: FeedbackStore, tmp_path: Path) -> None:
    image = digit_png(4)
    labelled = store.store_direct("up1", "digits", 2, image, "9", "4", WRONG)
    assert labelled.path == tmp_path / "feedback" / "digits" / "4" / "up1.png"
    stored = files_under(tmp_path / "feedback")
    assert set(stored) == {"digits/4/up1.png", "digits/.records/up1.json"}
    assert stored["digits/4/up1.png"] == image
    record = read_json(tmp_path / "feedback" / "digits" / ".records" / "up1.json")
    assert record["source"] == "direct"
    assert (record["predicted"], record["label"], record["outcome"]) == ("9", "4", WRONG)
    assert record["captured"] is None


def test_a_direct_example_with_a_used_id_is_refused_and_the_first_kept(
    store: FeedbackStore, tmp_path: Path
) -> None:
    store.store_direct("up1", "digits", 2, digit_png(4), "4", "4", CORRECT)
    message = refused(
        lambda: store.store_direct("up1", "digits", 2, digit_png(5), "5", "5", CORRECT), 409
    )
    assert "send another X-Request-Id" in message
    assert set(files_under(tmp_path / "feedback")) == {
        "digits/4/up1.png",
        "digits/.records/up1.json",
    }


# --- nothing lands elsewhere -------------------------------------------------------------------

HOSTILE_IDS = ["../../escape", "..", "/etc/x", "a/../../b", "a\\..\\b", "x\x00y", "ok.1/../.."]
HOSTILE_LABELS = ["../../escape", "..", "/abs", "a/../../b", "..\\..\\b", ".x", "x\x00y", ""]


def test_nothing_is_written_outside_the_two_folders(store: FeedbackStore, tmp_path: Path) -> None:
    capture_now(store.capture_dir, sample("ok", digit_png()), sample("ok2", digit_png(1)))
    for bad_id in HOSTILE_IDS:
        with pytest.raises(InvalidInput):
            store.label_prediction(bad_id, "7", True, MODELS, classes_of)
    for bad_label in HOSTILE_LABELS:
        with pytest.raises(InvalidInput):
            store.label_prediction("ok", bad_label, True, MODELS, classes_of)
    store.label_prediction("ok", "7", False, MODELS, classes_of)
    store.store_direct("d1", "digits", 1, digit_png(), "7", "new thing", NEW_CLASS)
    with pytest.raises(AlreadyLabelled):
        store.label_prediction("ok", "7", False, MODELS, classes_of)
    assert_only_in_the_two_folders(tmp_path)
    assert list(captured(tmp_path / "captured")) == ["ok", "ok2"]
    assert set(files_under(tmp_path / "feedback")) == {
        "digits/7/ok.png",
        "digits/.records/ok.json",
        "digits/new thing/d1.png",
        "digits/.records/d1.json",
    }


def test_captures_and_labels_of_several_models_stay_apart(
    store: FeedbackStore, tmp_path: Path
) -> None:
    capture_now(store.capture_dir, sample("a", digit_png(), model="digits"))
    capture_now(store.capture_dir, sample("b", digit_png(1), model="letters"))
    store.label_prediction("a", "1", False, MODELS, classes_of)
    store.label_prediction("b", "2", False, MODELS, classes_of)
    assert set(files_under(tmp_path / "feedback")) == {
        "digits/1/a.png",
        "digits/.records/a.json",
        "letters/2/b.png",
        "letters/.records/b.json",
    }
