"""The training CLI as users run it: default digits run, --data folders, mistakes, --resume."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contract.drift import CONFIDENCE_EDGES, baseline_from
from contract.metadata import DataSource, list_versions, verify_version_dir
from tests.helpers.processes import PYTHON, ROOT, TF_START_UP_LINE, quiet_env, run_train
from training.data import digit_images, load_digits_data, load_folder_data
from training.errors import UserError
from training.train import build_parser, check_args

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e  # the shared trained model
def test_default_run_publishes_digits_version_1_with_high_test_accuracy(trained_repo: Path) -> None:
    version_dir = trained_repo / "digits" / "1"
    metadata = verify_version_dir(version_dir, repository_root=trained_repo)
    assert metadata.name == "digits" and metadata.version == 1
    assert metadata.class_names == [str(d) for d in range(10)]
    assert (metadata.input.height, metadata.input.width, metadata.input.channels) == (28, 28, 1)
    assert metadata.metrics["test_accuracy"] >= 0.97
    assert metadata.arch == "simple" and metadata.parameter_count > 0
    assert metadata.training["examples"]["test"] == 360
    assert "saved_model.pb" in metadata.files
    for name in ("curves.png", "confusion_matrix.png", "filters.png"):
        assert (version_dir / "report" / name).read_bytes().startswith(PNG_MAGIC)
    per_class = json.loads((version_dir / "report" / "per_class.json").read_text())
    assert set(str(d) for d in range(10)) <= set(per_class)
    matrix = json.loads((version_dir / "report" / "confusion_matrix.json").read_text())["matrix"]
    assert sum(map(sum, matrix)) == 360
    summary = metadata.data_summary
    assert summary is not None and summary.sources is not None
    assert summary.sources == [
        DataSource(path="sklearn:digits", files=1797, class_counts=summary.class_counts)
    ]
    baseline = metadata.drift_baseline
    assert baseline is not None
    assert baseline.examples == metadata.training["examples"]["test"] == 360
    assert list(baseline.class_shares) == metadata.class_names
    assert sum(baseline.class_shares.values()) == pytest.approx(1.0, abs=1e-5)
    assert sum(baseline.confidence_shares) == pytest.approx(1.0, abs=1e-5)
    assert baseline.confidence_edges == list(CONFIDENCE_EDGES)


@pytest.mark.e2e  # the shared trained model
def test_saved_model_reproduces_the_reported_test_accuracy_and_drift_baseline(
    trained_repo: Path,
) -> None:
    import tensorflow as tf

    version_dir = trained_repo / "digits" / "1"
    metadata = verify_version_dir(version_dir)
    loaded = tf.saved_model.load(str(version_dir))
    test = load_digits_data(0.1).test
    probabilities = loaded.serve(test.images.astype(np.float32)).numpy()
    accuracy = float(np.mean(probabilities.argmax(axis=1) == test.labels))
    assert accuracy == pytest.approx(metadata.metrics["test_accuracy"], abs=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    # The baseline is what this version predicts on its test split (a confidence within float
    # noise of a bin edge may land in the next bin: one image is 1/360 of a share).
    again = baseline_from(
        probabilities.argmax(axis=1).tolist(),
        probabilities.max(axis=1).tolist(),
        metadata.class_names,
    )
    assert metadata.drift_baseline is not None
    assert metadata.drift_baseline.class_shares == again.class_shares
    np.testing.assert_allclose(
        metadata.drift_baseline.confidence_shares, again.confidence_shares, atol=1.01 / 360
    )


def _make_folder(root: Path) -> Path:
    """Three digit classes as files: grayscale PNGs of several sizes and RGB JPEGs."""
    images, labels = digit_images()
    data = root / "shapes-data"
    rng = np.random.default_rng(0)
    for digit, name in ((0, "zero"), (1, "one"), (7, "seven")):
        folder = data / name
        folder.mkdir(parents=True)
        for i, img in enumerate(images[labels == digit][:60]):
            size = int(rng.choice([20, 28, 40, 56]))
            pil = Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR)
            if i % 2:
                pil.convert("RGB").save(folder / f"{i}.jpg", quality=95)
            else:
                pil.save(folder / f"{i}.png")
    (data / "seven" / "broken.png").write_bytes(PNG_MAGIC + b"not really a png")
    (data / "zero" / "notes.txt").write_text("not an image, ignored by extension")
    return data


@pytest.mark.e2e  # runs training/train.py
def test_data_folder_run_publishes_a_model_that_reloads_and_classifies(tmp_path: Path) -> None:
    import tensorflow as tf

    data = _make_folder(tmp_path)
    models = tmp_path / "models"
    done = run_train(
        "--data",
        str(data),
        "--input-shape",
        "28,28,1",
        "--epochs",
        "12",
        "--models-dir",
        str(models),
        "--run-dir",
        str(tmp_path / "run"),
        "--verbose",
        "0",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped unreadable image" in done.stderr and "broken.png" in done.stderr
    metadata = verify_version_dir(models / "shapes-data" / "1")
    assert metadata.class_names == ["one", "seven", "zero"]  # folder names, sorted
    assert (
        metadata.training["examples"]["train"]
        + metadata.training["examples"]["val"]
        + metadata.training["examples"]["test"]
        == 180
    )
    loaded = tf.saved_model.load(str(models / "shapes-data" / "1"))
    # Raw files of other sizes and modes go straight in: the model resizes and converts itself.
    correct = 0
    files = sorted((data / "seven").glob("*.jpg"))[:10] + sorted((data / "one").glob("*.png"))[:10]
    for path in files:
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)[None]
        label = metadata.class_names[int(loaded.serve(pixels).numpy().argmax())]
        correct += label == path.parent.name
    assert correct >= 18


def _digit_folder(root: Path, counts: dict[str, int], first: int = 0) -> Path:
    """``counts[d]`` bundled images of digit ``d`` as 28x28 PNGs in ``root/<d>/``, starting at
    the ``first``-th of each digit, and a hidden ``.records/`` as the feedback folders have."""
    images, labels = digit_images()
    for digit, count in counts.items():
        (root / digit).mkdir(parents=True)
        for i, gray in enumerate(images[labels == int(digit)][first : first + count]):
            Image.fromarray(gray).save(root / digit / f"{i}.png")
    (root / ".records").mkdir()
    (root / ".records" / "x.json").write_text("{}")
    return root


@pytest.mark.e2e  # runs training/train.py
def test_several_data_folders_train_one_model_with_every_source_in_the_metadata(
    tmp_path: Path,
) -> None:
    base = _digit_folder(tmp_path / "base-digits", {"0": 20, "1": 20, "7": 20})
    feedback = _digit_folder(tmp_path / "feedback", {"1": 3, "7": 4}, first=100)
    done = run_train(
        *("--data", str(base), "--data", str(feedback), "--input-shape", "28,28,1"),
        *("--epochs", "1", "--models-dir", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r")),
        *("--verbose", "0"),
    )
    assert done.returncode == 0, done.stderr[-3000:]

    metadata = verify_version_dir(tmp_path / "m" / "base-digits" / "1")  # the first folder's name
    assert metadata.class_names == ["0", "1", "7"]
    summary = metadata.data_summary
    assert summary is not None
    assert summary.source == f"{base} + {feedback}"
    assert summary.files == 67 and summary.class_counts == {"0": 20, "1": 23, "7": 24}
    assert summary.sources == [
        DataSource(path=str(base), files=60, class_counts={"0": 20, "1": 20, "7": 20}),
        DataSource(path=str(feedback), files=7, class_counts={"1": 3, "7": 4}),
    ]
    merged = load_folder_data([base, feedback], val_split=0.1)
    assert metadata.data_fingerprint == merged.fingerprint
    assert metadata.training["examples"]["test"] == len(merged.test)
    assert metadata.drift_baseline is not None
    assert metadata.drift_baseline.examples == len(merged.test)


@pytest.mark.parametrize(
    ("folders", "message"),
    [
        (["base", "missing"], "data folder {tmp}/missing does not exist"),
        (["base", "base/0"], "--data {tmp}/base and --data {tmp}/base/0 overlap"),
        (["base", "base"], "--data {tmp}/base and --data {tmp}/base overlap"),
        (["base", "file.png"], "{tmp}/file.png is not a folder"),
    ],
)
def test_every_data_folder_is_checked_before_tensorflow_starts(
    folders: list[str], message: str, tmp_path: Path
) -> None:
    (tmp_path / "base" / "0").mkdir(parents=True)
    (tmp_path / "file.png").write_bytes(b"x")
    argv = [arg for name in folders for arg in ("--data", str(tmp_path / name))]
    args = build_parser().parse_args(argv)
    assert args.data == [tmp_path / name for name in folders]
    with pytest.raises(UserError) as raised:
        check_args(args)
    assert str(raised.value).startswith(message.format(tmp=tmp_path))


@pytest.mark.slow  # trains in process
def test_exported_saved_model_predicts_like_the_in_memory_model(tmp_path: Path) -> None:
    import tensorflow as tf

    from training.architectures import build
    from training.export import export_saved_model

    model = build("simple", (32, 24, 3), 4)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, size=(64, 32, 24, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=64)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    endpoints = export_saved_model(model, tmp_path / "sm")
    assert endpoints[0] == "serve"
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    probe = rng.uniform(0, 255, size=(5, 50, 70, 3)).astype(np.float32)  # any size goes in
    np.testing.assert_allclose(
        loaded.serve(probe).numpy(), model(probe, training=False).numpy(), atol=1e-5
    )
    # Each weight is stored once (the checkpoint holds no second copy of the model).
    stored = tf.train.list_variables(str(tmp_path / "sm" / "variables" / "variables"))
    floats = sum(
        int(np.prod(shape)) for name, shape in stored if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    )
    assert floats == model.count_params()


@pytest.mark.e2e  # runs training/train.py
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent/folder"], "does not exist"),
        (["--arch", "resnet"], "unknown architecture"),
        (["--arch", "alexnet", "--input-shape", "28,28,1"], "alexnet"),
        (["--input-shape", "28,28"], "expected H,W,C"),
    ],
)
def test_user_mistakes_end_with_one_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path
) -> None:
    done = run_train(*args, "--models-dir", str(tmp_path / "m"), "--epochs", "1")
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "m").exists() or list_versions(tmp_path / "m" / "digits") == []


@pytest.mark.e2e  # runs training/train.py
def test_empty_and_single_class_folders_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_train("--data", str(empty))
    assert (
        done.returncode == 2
        and "no class sub-folders" in done.stderr
        and "Traceback" not in done.stderr
    )
    single = tmp_path / "single" / "cats"
    single.mkdir(parents=True)
    Image.new("L", (16, 16), 200).save(single / "a.png")
    done = run_train("--data", str(tmp_path / "single"))
    assert (
        done.returncode == 2 and "only one class" in done.stderr and "Traceback" not in done.stderr
    )
    unreadable = tmp_path / "unreadable"
    for name in ("a", "b"):
        (unreadable / name).mkdir(parents=True)
        (unreadable / name / "x.png").write_bytes(b"garbage")
    done = run_train("--data", str(unreadable))
    assert done.returncode == 2 and "no readable images" in done.stderr


@pytest.mark.e2e  # runs training/train.py
def test_describe_prints_the_published_lenet5_total_and_the_formula() -> None:
    done = run_train("--describe", "--arch", "lenet5")
    assert done.returncode == 0, done.stderr
    assert "61,706" in done.stdout or "61706" in done.stdout
    assert "(5*5*1+1)*6" in done.stdout.replace(" ", "")


@pytest.mark.e2e  # runs training/train.py
def test_resume_continues_an_interrupted_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [
        "--epochs",
        "40",
        "--patience",
        "40",
        "--models-dir",
        str(tmp_path / "m"),
        "--run-dir",
        str(run_dir),
        "--verbose",
        "0",
    ]
    proc = subprocess.Popen(
        [PYTHON, "training/train.py", *args],
        cwd=ROOT,
        env=quiet_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal sends it: a suite started in the background of a shell (`cmd &`)
        # runs with SIGINT ignored, which children inherit, and Python then keeps ignoring it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    log = run_dir / "training_log.csv"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 4:  # header + 3 epochs
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "--resume" in stderr
    done_epochs = len(log.read_text().splitlines()) - 1
    assert (
        not (tmp_path / "m" / "digits").exists() or list_versions(tmp_path / "m" / "digits") == []
    )

    resumed = run_train(*args[:-2], "--epochs", str(done_epochs + 2), "--verbose", "0", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with log.open() as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    # The resumed run starts where the backup left off instead of at epoch 0 again.
    assert epochs[-1] == done_epochs + 1
    assert epochs.count(0) == 1


# -- fast, quiet user errors and --help ----------------------------------------------------------

#: Runs the CLI as ``python training/train.py ARGS`` would, then reports on stderr whether
#: TensorFlow (or Keras, which imports it) had been imported by the time the CLI exited.
_IMPORT_PROBE = """
import runpy, sys
sys.argv = ["training/train.py", *sys.argv[1:]]
try:
    runpy.run_path("training/train.py", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
print(f"PROBE exit={code} imported={','.join(heavy) or 'none'}", file=sys.stderr)
"""


def _user_env() -> dict[str, str]:
    """The environment of a user who never heard of TF_CPP_MIN_LOG_LEVEL."""
    env = quiet_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", _IMPORT_PROBE, *args],
        cwd=ROOT,
        env=_user_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.e2e  # runs training/train.py
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--arch", "resnet"],
            "train.py: error: argument --arch: unknown architecture 'resnet'; "
            "choose one of: simple, lenet5, alexnet, vgg16",
        ),
        (
            ["--data", "/nonexistent/folder"],
            "error: data folder /nonexistent/folder does not exist",
        ),
        (
            ["--distribute", "multi-worker"],
            "error: --distribute multi-worker needs TF_CONFIG",
        ),
        (["--input-shape", "16,16"], "train.py: error: argument --input-shape"),
        (["--val-split", "1.5"], "train.py: error: argument --val-split"),
        (["--epochs", "0"], "train.py: error: argument --epochs"),
    ],
)
def test_user_mistakes_are_reported_before_tensorflow_is_imported(
    args: list[str], error: str
) -> None:
    done = _probe(*args)
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == "PROBE exit=2 imported=none", done.stderr[-3000:]
    assert lines[-2].startswith(error), done.stderr[-3000:]
    assert len(lines) == 2, done.stderr[-3000:]  # one error: line, no usage block before it
    assert not TF_START_UP_LINE.search(done.stderr), done.stderr[-3000:]
    assert done.stdout == ""


@pytest.mark.e2e  # runs training/train.py
def test_tensorflow_start_up_lines_stay_out_of_the_default_output() -> None:
    """A run that does import TensorFlow (the layer table) prints its table and nothing else."""
    done = _probe("--describe", "--arch", "lenet5")
    assert done.stderr.strip() == "PROBE exit=0 imported=keras,tensorflow", done.stderr[-3000:]
    assert "61,706" in done.stdout or "61706" in done.stdout


@pytest.mark.e2e  # runs training/train.py
def test_help_shows_each_default_once_and_the_choices() -> None:
    done = subprocess.run(
        [PYTHON, "training/train.py", "--help"],
        cwd=ROOT,
        env=_user_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(done.stdout.split())  # argparse wraps lines anywhere
    assert "(default: None)" not in text
    assert "(default: False)" not in text
    assert "--arch {simple,lenet5,alexnet,vgg16}" in text
    for flag, default in [
        ("--epochs EPOCHS", "(default: 20)"),
        ("--batch-size BATCH_SIZE", "(default: 64)"),
        ("--learning-rate LEARNING_RATE", "(default: 0.001)"),
        ("--models-dir MODELS_DIR", "(default: models)"),
        ("--arch {simple,lenet5,alexnet,vgg16}", "(default: simple)"),
    ]:
        entry = text.split(f" {flag} ", 1)[1].split(" --", 1)[0]
        assert entry.count("default") == 1 and entry.endswith(default), (flag, entry)
    for flag in ("--data DATA", "--input-shape INPUT_SHAPE", "--test-split TEST_SPLIT"):
        entry = text.split(f" {flag} ", 1)[1].split(" --", 1)[0]
        assert entry.count("default") == 1, (flag, entry)
    verbose = text.split(" --verbose {0,1,2} ", 1)[1]
    assert "0 silent" in verbose and "TensorFlow's own start-up log" in verbose
