"""The screening pipeline: one ordered set of stage functions, each one library call with a typed config.

    extract_attention -> audit_projector -> profile_heads -> fit_gmm -> em_vote -> gate -> release
    (finetune first when no fine-tuned model is given)

The DVC stage scripts run one stage per process (`stages/*.py`); `poisonguard screen`, the Prefect flows and
the benchmark run them all in one process through `poisonguard.pipeline.screen.run_screen`. Every stage reads
its section of params.yaml through `poisonguard.pipeline.config`, and writes where `Layout` says.
"""
