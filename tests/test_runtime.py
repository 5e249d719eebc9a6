import pytest
import torch

from rlhf.runtime import denormals_flushed, flush_denormals


def test_flush_denormals_turns_subnormal_results_to_zero():
    tiny = torch.tensor(1e-30)
    assert denormals_flushed()  # the test session flushes, as the CLI does (tests/conftest.py)
    try:
        flush_denormals(False)
        assert (tiny * 1e-10).item() > 0.0 and not denormals_flushed()  # 1e-40 is subnormal in float32
        assert flush_denormals()
        assert (tiny * 1e-10).item() == 0.0
    finally:
        flush_denormals()


def test_known_transformers_log_lines_are_dropped_and_others_kept():
    import logging

    from rlhf.runtime import _KnownLogLines

    f = _KnownLogLines()

    def keeps(message: str) -> bool:
        return f.filter(logging.LogRecord("transformers", logging.WARNING, "", 0, message, None, None))

    assert not keeps("There were missing keys in the checkpoint model loaded: ['encoder.embed_tokens.weight', "
                     "'decoder.embed_tokens.weight', 'lm_head.weight'].")
    assert keeps("There were missing keys in the checkpoint model loaded: ['encoder.block.0.layer.0.SelfAttention.q.weight'].")
    assert not keeps("mtime may not be reliable on this filesystem, falling back to numerical ordering")
    assert keeps("Some weights of the model checkpoint were not used")


def test_compile_is_unavailable_without_a_cpp_compiler(monkeypatch):
    import shutil

    import torch

    from rlhf.runtime import compile_unavailable

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert compile_unavailable(torch.device("cpu")) == "no C++ compiler on PATH"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA PeakRss reports GPU memory, not these CPU tensors")
def test_peak_rss_separates_what_the_block_needed_from_what_was_resident():
    import time

    from rlhf.runtime import PeakRss

    before = torch.ones(64, 2**20)  # 256 MiB resident before the block
    with PeakRss(settle=True) as mem:
        inside = torch.ones(32, 2**20)  # 128 MiB more while it runs
        time.sleep(0.3)  # the sampler looks every 50 ms
        del inside
    assert 100 < mem.increase_mib < 200, mem.increase_mib
    assert mem.mib > mem.increase_mib + 200
    del before
