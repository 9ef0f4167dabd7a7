"""``--distribute``: two real worker processes training together under
MultiWorkerMirroredStrategy, the custom loop against Keras's ``fit``, and the strategy,
mixed-precision and XLA switches on the CPU."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from contract.metadata import list_versions, verify_version_dir
from tests.helpers.processes import PYTHON, ROOT, quiet_env, run_train
from tests.helpers.servers import free_port
from training.distribute import check_tf_config
from training.errors import UserError

#: TensorFlow start-up, collective set-up and two epochs take ~40 s on an idle 2-core box;
#: a busy one is several times slower.
WORKER_TIMEOUT_S = 480.0
WEIGHTS_LINE = re.compile(r"final weights sha256 ([0-9a-f]{64})")
EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) - [\d.]+ s - (.*)$", re.MULTILINE)


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[str]
    stdout_path: Path
    stderr_path: Path

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def weights_sha256(self) -> str:
        found = WEIGHTS_LINE.findall(self.stderr())
        assert len(found) == 1, self.stderr()[-3000:]
        return str(found[0])


class StartWorkers(Protocol):
    def __call__(self, ports: tuple[int, int], *args: str) -> list[Worker]: ...


def tf_config(ports: tuple[int, int], index: int) -> str:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


@pytest.fixture()
def start_workers(tmp_path: Path) -> Iterator[StartWorkers]:
    """Start one ``train.py --distribute multi-worker`` process per port; any still running
    when the test ends (a failure, a hang) is killed."""
    started: list[Worker] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(ports: tuple[int, int], *args: str) -> list[Worker]:
        workers = []
        for index in range(len(ports)):
            run = len(started)
            out, err = logs / f"worker{index}-{run}.out", logs / f"worker{index}-{run}.err"
            with out.open("w") as stdout, err.open("w") as stderr:
                process = subprocess.Popen(
                    [
                        PYTHON,
                        "training/train.py",
                        "--distribute",
                        "multi-worker",
                        "--models-dir",
                        str(tmp_path / "models"),
                        "--run-dir",
                        str(tmp_path / f"run-{index}"),
                        "--verbose",
                        "2",
                        *args,
                    ],
                    cwd=ROOT,
                    env=quiet_env(TF_CONFIG=tf_config(ports, index)),
                    stdout=stdout,
                    stderr=stderr,
                    text=True,
                )
            worker = Worker(index, process, out, err)
            started.append(worker)
            workers.append(worker)
        return workers

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def wait_all(workers: list[Worker], timeout: float = WORKER_TIMEOUT_S) -> None:
    """Wait for every worker to exit 0; on a failure or timeout, kill the rest and show why."""
    deadline = time.monotonic() + timeout
    try:
        for worker in workers:
            returncode = worker.process.wait(max(deadline - time.monotonic(), 1.0))
            assert returncode == 0, f"worker {worker.index} exited {returncode}"
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
        details = "\n".join(f"--- worker {w.index}:\n{w.stderr()[-2500:]}" for w in workers)
        pytest.fail(f"{exc}\n{details}")


def epoch_lines(worker: Worker) -> list[tuple[int, int, str]]:
    """(epoch, epochs, metrics) of each per-epoch log line."""
    return [(int(a), int(b), logs) for a, b, logs in EPOCH_LINE.findall(worker.stderr())]


def csv_epochs(path: Path) -> list[int]:
    with path.open() as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def two_ports() -> tuple[int, int]:
    first, second = free_port(), free_port()
    while second == first:
        second = free_port()
    return first, second


@pytest.mark.e2e  # two training processes
def test_two_workers_train_together_and_only_the_chief_publishes(
    tmp_path: Path, start_workers: StartWorkers
) -> None:
    workers = start_workers(two_ports(), "--epochs", "2")
    wait_all(workers)
    chief, other = workers

    # One synchronous run: bit-identical weights, and the same global metrics every epoch.
    assert chief.weights_sha256() == other.weights_sha256()
    assert [(e, n) for e, n, _ in epoch_lines(chief)] == [(1, 2), (2, 2)]
    assert epoch_lines(chief) == epoch_lines(other)
    assert "val_accuracy" in epoch_lines(chief)[0][2]

    models = tmp_path / "models" / "digits"
    assert list_versions(models) == [1]
    assert [p.name for p in models.iterdir() if not p.name.startswith(".")] == ["1"]
    metadata = verify_version_dir(models / "1")
    assert metadata.training["strategy"] == "MultiWorkerMirroredStrategy"
    assert metadata.training["replicas"] == 2
    assert metadata.training["epochs_run"] == 2
    assert metadata.metrics["test_accuracy"] > 0.5  # ~0.8 after two epochs at batch 2x64
    assert "published" in chief.stdout() and "published" not in other.stdout()
    assert "the chief publishes" in other.stderr()

    # File-writing callbacks run on the chief only; the other worker writes nothing there.
    assert csv_epochs(tmp_path / "run-0" / "training_log.csv") == [0, 1]
    assert (tmp_path / "run-0" / "best.weights.h5").is_file()
    assert list((tmp_path / "run-1").iterdir()) == []


@pytest.mark.e2e  # two training processes
@pytest.mark.timeout(1200)
def test_two_workers_resume_from_the_chiefs_backup(
    tmp_path: Path, start_workers: StartWorkers
) -> None:
    chief, other = start_workers(two_ports(), "--epochs", "30", "--patience", "30")
    log = tmp_path / "run-0" / "training_log.csv"
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while time.monotonic() < deadline and chief.process.poll() is None:
        # CSVLogger runs after BackupAndRestore, so a logged epoch is a backed-up epoch.
        if log.exists() and len(log.read_text().splitlines()) >= 3:  # header + 2 epochs
            break
        time.sleep(0.1)
    for worker in (chief, other):  # both machines lost at once
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
    metadata = tmp_path / "run-0" / "backup" / "training_metadata.json"
    assert metadata.is_file(), chief.stderr()[-3000:]
    done = json.loads(metadata.read_text())["epoch"]
    assert done >= 2
    assert not (tmp_path / "run-1" / "backup").exists()  # only the chief backs up

    chief, other = start_workers(two_ports(), "--epochs", str(done + 1), "--resume")
    wait_all([chief, other])
    # The other worker has no backup of its own: it resumes at the chief's epoch with the
    # chief's weights (broadcast), else the two would disagree or wait for each other forever.
    assert [e for e, _, _ in epoch_lines(other)] == [done + 1]
    assert epoch_lines(chief) == epoch_lines(other)
    assert chief.weights_sha256() == other.weights_sha256()
    epochs = csv_epochs(log)
    assert epochs[-1] == done and epochs.count(0) == 1
    assert list_versions(tmp_path / "models" / "digits") == [1]


@pytest.mark.e2e  # runs a training process
def test_multi_worker_without_tf_config_is_a_one_line_error(tmp_path: Path) -> None:
    env = quiet_env()
    env.pop("TF_CONFIG", None)
    done = subprocess.run(
        [
            PYTHON,
            "training/train.py",
            "--distribute",
            "multi-worker",
            "--epochs",
            "1",
            "--models-dir",
            str(tmp_path / "m"),
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "TF_CONFIG" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "needs TF_CONFIG"),
        ("{not json", "not valid JSON"),
        ('{"cluster": {"worker": ["a:1"]}}', "'cluster' and a 'task'"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "job"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "outside"),
    ],
)
def test_bad_tf_config_is_a_user_error(value: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        check_tf_config(value)
    assert "\n" not in str(caught.value)


def test_a_good_tf_config_passes() -> None:
    check_tf_config(tf_config((1, 2), 1))
    check_tf_config('{"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief"}}')


def _run_one_epoch(tmp_path: Path, *flags: str) -> dict[str, object]:
    done = run_train(
        *flags,
        "--epochs",
        "1",
        "--models-dir",
        str(tmp_path / "m"),
        "--run-dir",
        str(tmp_path / "run"),
        "--verbose",
        "0",
        timeout=WORKER_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(WEIGHTS_LINE.findall(done.stderr)) == 1  # logged for every strategy
    metadata = verify_version_dir(tmp_path / "m" / "digits" / "1")
    assert metadata.metrics["test_accuracy"] > 0.3  # one epoch learns something
    return metadata.training


@pytest.mark.e2e  # runs a training process
def test_mirrored_strategy_trains_on_the_cpu_with_one_replica(tmp_path: Path) -> None:
    training = _run_one_epoch(tmp_path, "--distribute", "mirrored")
    assert training["strategy"] == "MirroredStrategy" and training["replicas"] == 1


@pytest.mark.e2e  # runs a training process
def test_mixed_precision_runs_on_the_cpu(tmp_path: Path) -> None:
    training = _run_one_epoch(tmp_path, "--mixed-precision")
    assert training["mixed_precision"] is True


@pytest.mark.e2e  # runs a training process
def test_jit_runs_on_the_cpu(tmp_path: Path) -> None:
    training = _run_one_epoch(tmp_path, "--jit")
    assert training["jit"] is True


LOOP_VERSUS_FIT = textwrap.dedent(
    """
    import json, sys
    import keras, tensorflow as tf
    from training.architectures import build
    from training.data import load_digits_data
    from training.distribute import fit_multi_worker
    from training.data import make_dataset

    data = load_digits_data(0.1)

    def run(strategy, loop, csv_path):
        keras.utils.set_random_seed(0)
        # Unshuffled: fit walks a reshuffled dataset in a different order from epoch 2 on.
        train, val = (
            make_dataset(s.images, s.labels, batch_size=64, shuffle=False, augment=False, seed=0)
            for s in (data.train, data.val)
        )
        with strategy.scope():
            model = build("simple", (28, 28, 1), 10)
            model.compile(optimizer=keras.optimizers.Adam(1e-3),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        callbacks = [
            # No epoch improves val_loss by 10: stop after epoch 2, restore epoch 1's weights.
            keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=10, patience=1,
                                          restore_best_weights=True),
            keras.callbacks.CSVLogger(csv_path),
        ]
        if loop:
            history = fit_multi_worker(model, strategy, train, val, epochs=5,
                                       callbacks=callbacks, verbose=0)
        else:
            history = model.fit(train, validation_data=val, epochs=5, callbacks=callbacks,
                                verbose=0).history
        return {"history": {k: [float(v) for v in vs] for k, vs in history.items()},
                "weights": [w.tolist() for w in model.get_weights()]}

    fit = run(tf.distribute.get_strategy(), False, sys.argv[1] + "/fit.csv")
    # Without TF_CONFIG the multi-worker strategy is one local worker: the same maths as fit.
    loop = run(tf.distribute.MultiWorkerMirroredStrategy(), True, sys.argv[1] + "/loop.csv")
    print(json.dumps({"fit": fit, "loop": loop}))
    """
)


@pytest.mark.e2e  # runs a training process
def test_the_multi_worker_loop_trains_like_keras_fit(tmp_path: Path) -> None:
    import numpy as np

    env = quiet_env()
    env.pop("TF_CONFIG", None)
    done = subprocess.run(
        [PYTHON, "-c", LOOP_VERSUS_FIT, str(tmp_path)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    fit, loop = result["fit"]["history"], result["loop"]["history"]
    assert sorted(loop) == sorted(fit) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert len(fit["loss"]) == 2  # early stopping after epoch 2, in both
    for name in fit:
        np.testing.assert_allclose(loop[name], fit[name], rtol=1e-4, err_msg=name)
    for ours, theirs in zip(result["loop"]["weights"], result["fit"]["weights"], strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)  # epoch 1's, restored
    # CSVLogger saw the same epochs and columns.
    fit_csv = (tmp_path / "fit.csv").read_text().splitlines()
    loop_csv = (tmp_path / "loop.csv").read_text().splitlines()
    assert fit_csv[0] == loop_csv[0] and len(fit_csv) == len(loop_csv) == 3
