"""The benchmark (tooling, not the product): attacks x poison rates x seeds on the embedded world, with
controls and a defence loop (`run`), its paper-style tables (`tables`), HTML report (`html`) and the
projector-audit table over a finished run (`audit_table`). It drives the product through the same pipeline
as `poisonguard screen` and reads ground truth, which the product never does."""

from poisonguard.bench.run import BenchConfig, quick_config, run_bench

__all__ = ["BenchConfig", "quick_config", "run_bench"]
