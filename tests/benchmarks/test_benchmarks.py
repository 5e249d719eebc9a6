import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ppo_step_benchmark_prints_its_figures(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ppo_step.py"), "--steps", "2", "--batch-size", "4",
                          "--new-tokens", "8"], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("median_step_s", "generate_s", "score_s", "forward_s", "update_s", "gen_tokens_per_s", "peak_rss_mib"):
        assert result[key] > 0


@pytest.mark.slow
def test_decoding_benchmark_times_generate_eager_and_compiled(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decoding.py"), "--batch-size", "2", "--k", "2",
                          "--new-tokens", "4", "--rounds", "1"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])["rollout"]
    assert result["eager_equals_generate"] and set(result["sides"]) == {"generate", "eager", "compiled"}
    assert result["kernel_floor_s"] > 0 and result["in_order_floor_s"] > 0
    assert all(s["tokens_per_s"] > 0 for s in result["sides"].values())


def test_kernel_floor_records_every_matmul_with_its_flops_and_replays_it():
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from limit import KernelRecorder, flops, standalone_seconds

    a, b = torch.randn(3, 4), torch.randn(4, 5, requires_grad=True)
    q = k = v = torch.randn(1, 2, 6, 8)
    recorder = KernelRecorder()
    with recorder:
        (a @ b).sum().backward()  # forward mm, and the weight gradient a^T @ grad
        torch.nn.functional.linear(a, torch.randn(7, 4), torch.randn(7))  # addmm
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
        from rlhf.rl.trainer import Timer

        timer = recorder.tag_phases(Timer)()
        with timer("update"):
            a @ torch.randn(4, 2)
        torch.mm(a, torch.randn(4, 1))  # outside the trainer's timed blocks
    counted = {}
    for (phase, f, lts), c in recorder.calls.items():
        key = (phase, f.__name__, flops(f, lts))
        counted[key] = counted.get(key, 0) + c
    assert counted[("other", "mm.default", 2 * 3 * 4 * 5)] == 2  # forward [3,4]x[4,5], backward [4,3]x[3,5]
    assert counted[("other", "addmm.default", 2 * 3 * 4 * 7)] == 1
    assert counted[("other", "_scaled_dot_product_flash_attention_for_cpu.default", 4 * 1 * 2 * 6 * 6 * 8)] == 1
    assert counted[("update", "mm.default", 2 * 3 * 4 * 2)] == 1 and counted[("other", "mm.default", 2 * 3 * 4 * 1)] == 1
    assert timer.seconds["update"] > 0  # the trainer's timing still works
    assert all(standalone_seconds(f, lts, reps=1) > 0 for _, f, lts in recorder.calls)


def test_in_order_floor_replays_every_call_in_order_with_one_buffer_per_storage():
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from limit import KernelRecorder, in_order_seconds

    from rlhf.rl.trainer import Timer

    weight, x1, x2 = torch.randn(4, 5), torch.randn(3, 4), torch.randn(2, 4)
    q = k = v = torch.randn(1, 2, 6, 8)
    recorder = KernelRecorder(trace=True)
    with recorder:
        x1 @ weight
        x2 @ weight.clone()  # another storage, the weight's layout
        x2 @ weight
        with recorder.tag_phases(Timer)()("update"):
            torch.nn.functional.scaled_dot_product_attention(q, k, v)
    (_, _, a1, _), (_, _, a2, _), (_, _, a3, _), (phase, _, attention, _) = recorder.trace
    assert a1[1].storage == a3[1].storage != a2[1].storage and a2[0].storage == a3[0].storage != a1[0].storage
    assert phase == "update" and len(attention) >= 3
    replayed = KernelRecorder(trace=True)
    with replayed:
        seconds, buffer_bytes = in_order_seconds(recorder.trace, reps=2)
    assert set(seconds) == {"other", "update"} and all(s > 0 for s in seconds.values())
    # one fp32 buffer per storage: the weight, its clone, x1, x2, and q = k = v once
    assert buffer_bytes == 4 * (2 * weight.numel() + x1.numel() + x2.numel() + q.numel())

    def calls(trace):  # each call's op and operand layouts, and which operands share a storage
        storages, out = {}, []
        for _, func, args, _ in trace:
            ops = [a for a in args if hasattr(a, "storage")]
            out.append((func, [(o.offset, o.shape, o.stride) for o in ops],
                        [storages.setdefault(o.storage, len(storages)) for o in ops]))
        return out

    # the warm-up pass and two timed passes, each the recorded calls in their order, the same
    # operands sharing a buffer wherever they shared a storage in the recording
    assert calls(replayed.trace) == calls(recorder.trace * 3)


def test_pickers_benchmark_times_both_sides_and_checks_they_agree():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from decoding import pickers

    result = pickers(rows=6, vocab=40, top_p=0.9, rounds=1)
    assert set(result["median_ms"]) == {"top_p_warper", "top_p_filter", "multinomial", "draw"}
    assert all(v > 0 for v in result["median_ms"].values())
    assert result["top_p_equal"] and result["draws_equal"]
