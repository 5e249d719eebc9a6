import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ppo_step_benchmark_prints_its_figures(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ppo_step.py"), "--steps", "2", "--batch-size", "4",
                          "--new-tokens", "8"], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("median_step_s", "generate_s", "score_s", "forward_s", "update_s", "gen_tokens_per_s", "peak_rss_mib"):
        assert result[key] > 0
