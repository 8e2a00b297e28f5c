"""The benchmark runs from one command and writes sane figures (not a performance test: no
timing is asserted, only that every part ran and answered correctly)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_bench_writes_its_json(tmp_path: Path) -> None:
    suites = ["--only", "nonstream", "--only", "stream"]
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *suites, "--no-nginx", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    [written] = tmp_path.glob("*.json")
    results = json.loads(written.read_text())
    assert "| non-stream c=32: req/s |" in out.stdout  # the table was printed
    assert results["quick"] is True
    assert results["machine"]["cpus"] >= 1
    assert sorted(results["targets_run"]) == ["baseline", "direct", "gateway"]

    for conc in ("1", "32"):
        for target, figures in results["nonstream"]["concurrency"][conc].items():
            assert figures["requests"] > 0, (conc, target)
            assert figures["non2xx"] == 0 and figures["errors"] == 0, (conc, target)
            assert 0 < figures["p50_ms"] <= figures["p99_ms"], (conc, target)
            if target != "nginx":
                assert figures["cpu_us_per_request"] > 0
    assert set(results["nonstream"]["added_ms"]) == {"p50", "p99"}

    for kind in ("throughput", "paced"):
        for target, figures in results["stream"][kind].items():
            assert figures["streams"] > 0 and figures["errors"] == 0, (kind, target)
            # 20 tokens, the finish chunk, the usage chunk and [DONE] in every stream.
            assert figures["events"] == 23 * figures["streams"], (kind, target)
    paced_gap = results["stream"]["paced"]["gateway"]["gap_ms"]["p50"]
    assert 40 < paced_gap < 1000  # chunks 50 ms apart come through 50 ms apart, not bunched

    names = {t["target"] for t in results["targets"]}
    assert "non-stream c=32 req/s" in names
    assert all(isinstance(t["ok"], bool) for t in results["targets"])
