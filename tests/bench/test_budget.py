"""The per-request CPU budget (``bench/budget.py``): py-spy's raw samples, the rows a stack
belongs to, and the split of every thread's CPU into rows (no process started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import budget

ROOT = Path(__file__).resolve().parents[2]
LOOP = "_run_once (/usr/lib/python3.11/asyncio/base_events.py:1922)"


def frame(path: str, function: str, contains: str = "") -> str:
    """A py-spy frame of this checkout's ``path``, at the first line holding ``contains``."""
    lines = (ROOT / path).read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if contains in text) if contains else 1
    return f"{function} ({ROOT / path}:{line})"


def test_samples_of_subprocesses_are_read_by_thread() -> None:
    # --subprocesses puts the processes first; a spawned worker's command line holds ";"
    text = (
        'process 10:"python -m service";process 12:"python -c from multiprocessing.spawn '
        'import spawn_main; spawn_main(tracker_fd=5) --multiprocessing-fork";'
        f"thread (12): MainThread;{LOOP};f (/x/a.py:3) 7\n"
        f"thread (0x1F): decode_0;g (/x/b.py:9) 2\n"
        "not a sample line\n"
    )
    samples = budget.Samples.parse(text)
    assert samples.names() == {12: "MainThread", 31: "decode_0"}
    assert samples.threads[12][1] == {(LOOP, "f (/x/a.py:3)"): 7}


@pytest.mark.parametrize(
    ("stack", "row"),
    [
        (["loads (/usr/lib/python3.11/json/__init__.py:346)"], budget.JSON_PARSE),
        (["JSONEncoder.encode (/usr/lib/python3.11/json/encoder.py:199)"], budget.ANSWER),
        ([frame("service/protocols/body.py", "parse_json", "json.loads(")], budget.JSON_PARSE),
        (
            [frame("service/protocols/tensors.py", "pixel_batch", "np.asarray(values")],
            budget.TENSOR_LIST,
        ),
        ([frame("service/protocols/tensors.py", "pixel_batch", "np.isfinite")], budget.TENSOR),
        ([frame("service/protocols/v2.py", "split_body", "cut = ")], budget.TENSOR),
        ([frame("service/protocols/v2.py", "infer_answer", "tobytes")], budget.ANSWER),
        (
            [frame("service/grpc/calls.py", "rpc.<locals>.wrap.<locals>.handler", "FromString(")],
            budget.GRPC_PARSE,
        ),
        (
            [
                frame(
                    "service/grpc/calls.py",
                    "rpc.<locals>.wrap.<locals>.handler",
                    "_metadata(context)",
                )
            ],
            budget.GRPC_CALL,
        ),
        (
            [frame("service/protocols/grpc_v2.py", "infer_response", "raw_output_contents=")],
            budget.ANSWER,
        ),
        (
            [frame("service/protocols/grpc_v2.py", "parse_infer", "request.inputs[0]")],
            budget.GRPC_PARSE,
        ),
        ([frame("service/dataplane.py", "predict", "np.argmax")], budget.QUEUE),
        # the innermost frame that a rule knows decides: metrics under the gRPC wrapper
        (
            [
                frame("service/grpc/calls.py", "handler", "request_finished"),
                "Counter.inc (/v/site-packages/prometheus_client/metrics.py:300)",
            ],
            budget.METRICS,
        ),
        ([LOOP], budget.LOOP),
    ],
)
def test_a_stack_belongs_to_the_row_of_its_innermost_known_frame(
    stack: list[str], row: str
) -> None:
    assert budget.classify([LOOP, *stack]) == row


def test_threads_off_the_loop_go_by_name() -> None:
    assert budget.thread_row("decode_0", "python") == budget.DECODE_POOL
    assert budget.thread_row("Thread-1 (_poll_wrapper)", "python") == budget.GRPC_THREADS
    assert budget.thread_row("", "event_engine") == budget.GRPC_THREADS
    assert budget.thread_row("", "grpc_global_tim") == budget.GRPC_THREADS
    assert budget.thread_row("batcher-digits_0", "python") == budget.MODEL
    assert budget.thread_row("", "python") == budget.MODEL  # TensorFlow's native pools
    assert budget.thread_row("capture-writer", "python") == budget.OTHER_THREADS


def test_each_loop_is_split_by_its_own_samples_and_other_processes_apart() -> None:
    json_leaf = "loads (/usr/lib/python3.11/json/__init__.py:346)"
    samples = budget.Samples.parse(
        f"thread (11): MainThread;{LOOP};{json_leaf} 3\n"
        f"thread (11): MainThread;{LOOP} 1\n"
        f"thread (21): MainThread;{LOOP} 5\n"
    )
    threads = {
        11: budget.ThreadCpu(11, 2.0, "python"),  # worker 11's loop
        12: budget.ThreadCpu(11, 0.5, "event_engine"),
        13: budget.ThreadCpu(11, 1.0, "python"),  # TensorFlow
        21: budget.ThreadCpu(21, 1.0, "python"),  # worker 21's loop
        22: budget.ThreadCpu(21, 0.0, "python"),
        30: budget.ThreadCpu(10, 0.25, "python"),  # the supervisor
    }
    seconds, counted = budget.split_cpu(threads, [11, 21], samples)
    assert counted == {11: 4, 21: 5}
    assert seconds[budget.JSON_PARSE] == pytest.approx(1.5)
    assert seconds[budget.LOOP] == pytest.approx(0.5 + 1.0)
    assert seconds[budget.GRPC_THREADS] == pytest.approx(0.5)
    assert seconds[budget.MODEL] == pytest.approx(1.0)
    assert seconds[budget.OTHER_PROCESSES] == pytest.approx(0.25)
    assert sum(seconds.values()) == pytest.approx(sum(t.cpu_s for t in threads.values()))
