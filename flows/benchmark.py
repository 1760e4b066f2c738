"""
# Benchmark

Runs `poisonguard bench` (attacks x detectors x poison rates x seeds with controls, optionally the `--retrain`
defence loop; the paper-style tables and an HTML report with plots) as one task, so a benchmark gets Prefect's
schedule, logs and history without the CLI knowing about Prefect. The CLI's arguments are this flow's `args`
parameter, passed through unchanged; its last lines of output (the tables) and the path of the HTML report
become a markdown artifact.

```
python flows/benchmark.py --out work/bench --rates 0.05,0.1 --seeds 0,1,2 --retrain
```
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.shell import poisonguard_cli, run_command

ARTIFACT_KEY = "benchmark-output"
_SHOWN_LINES = 150  # the goal check and the defence table end the output


@task(retries=0)
def run_bench(repo_dir: str, args: list[str], timeout_s: float | None) -> list[str]:
    """`poisonguard bench ARGS` in the repo; returns its output lines. No retries: a benchmark is long and
    seeded, so a failure repeats and a retry only doubles its cost."""
    return run_command([*poisonguard_cli(), "bench", *args], cwd=repo_dir, timeout_s=timeout_s,
                       logger=get_run_logger())


@flow(name="benchmark")
def benchmark(args: list[str] | None = None, repo_dir: str = ".", timeout_s: float | None = None) -> list[str]:
    """Run the benchmark CLI with `args`; returns its output lines (the tail is also an artifact)."""
    lines = run_bench(str(Path(repo_dir).resolve()), list(args or []), timeout_s)
    tail = "\n".join(lines[-_SHOWN_LINES:])
    report = next((ln.removeprefix("report: ") for ln in reversed(lines) if ln.startswith("report: ")), None)
    where = f"HTML report: `{Path(repo_dir).resolve() / report}`\n\n" if report else ""
    create_markdown_artifact(markdown=f"# poisonguard bench {' '.join(args or [])}\n\n{where}```\n{tail}\n```",
                             key=ARTIFACT_KEY, description="last lines of the benchmark's output")
    return lines


if __name__ == "__main__":
    benchmark(args=sys.argv[1:])
