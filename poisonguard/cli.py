"""poisonguard command line. Exit codes: 0 ok, 1 release blocked, 2 bad input (no traceback)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find backdoor-poisoned samples in multimodal instruction data and gate their release.")

EXIT_OK, EXIT_BLOCKED, EXIT_BAD_INPUT = 0, 1, 2


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=float))


Device = Annotated[str | None, typer.Option(
    help="auto | cpu | cuda | cuda:N (default: params.yaml runtime.device; auto = CUDA when a GPU is present).")]
Dtype = Annotated[str | None, typer.Option(
    help="auto | float32 | bfloat16 (default: params.yaml runtime.dtype; auto = bf16 on a GPU, fp32 on the CPU).")]
Compile = Annotated[bool | None, typer.Option(
    "--compile/--no-compile",
    help="torch.compile the language model for the extraction passes (default: params.yaml runtime.compile). "
         "A GPU speed-up; on the CPU it works but compiling takes minutes.")]
MaxPixels = Annotated[int | None, typer.Option(
    help="Dynamic-resolution processors (Qwen2-VL family): at most this many pixels per image, so fewer image "
         "tokens (default: params.yaml runtime.max_pixels; unset: the processor's own).")]
MinPixels = Annotated[int | None, typer.Option(
    help="Dynamic-resolution processors: at least this many pixels per image (default: runtime.min_pixels).")]
PadToSquare = Annotated[bool, typer.Option(
    "--pad-to-square", help="Pad each image to a square of the processor's mean colour before the processor, "
                            "as LLaVA-1.5 was trained (default: params.yaml runtime.pad_to_square).")]


def _runtime_options(device, dtype, max_pixels, min_pixels, pad_to_square, compile=None) -> dict:
    """The `runtime` section's keys a command was given (None: keep params.yaml's)."""
    return {"device": device, "dtype": dtype, "max_pixels": max_pixels, "min_pixels": min_pixels,
            "pad_to_square": True if pad_to_square else None, "compile": compile}


def _setup_threads(runtime=None) -> None:
    """Torch threads on the CPU: `PG_THREADS` if set, else at most 2 (the reference machines have 2 cores;
    more threads than cores make a tiny model slower, not faster), and the CPU kernels pinned to AVX2 so the
    bytes a command writes do not depend on the host's vector unit (`PG_CPU_KERNELS=native` opts out). Left
    alone on a GPU."""
    from poisonguard.runtime import pin_cpu_kernels, set_threads

    try:
        if runtime is None or runtime.device.type == "cpu":
            pin_cpu_kernels()
        set_threads(runtime)
    except ValueError as exc:  # PG_CPU_KERNELS or PG_THREADS set to something else than they take
        _fail(str(exc))


def _runtime(cfg):
    """The config's runtime resolved on this machine (a bad or impossible choice is bad input, exit 2)."""
    try:
        return cfg.runtime.resolve()
    except ValueError as exc:
        _fail(str(exc))


@app.command()
def world(
    out: Annotated[Path, typer.Option(help="Output folder: train.json, test.json, images/, base_model/.")],
    seed: Annotated[int, typer.Option(help="Seed for data and pretraining; same seed -> identical files.")] = 0,
    n_train: Annotated[int, typer.Option(help="Training samples (the data a customer would hand in).")] = 5000,
    n_test: Annotated[int, typer.Option(help="Test samples (CP and ASR are measured on these).")] = 1000,
    params: Annotated[Path | None, typer.Option(help="params.yaml to read the `world` section from.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Generate the embedded world (synthetic VQA data) and pretrain its tiny LLaVA from scratch."""
    from poisonguard.params import section
    from poisonguard.world.build import make_world, world_configs

    _setup_threads()
    sect = section(params, "world")
    model_cfg, pretrain_cfg = world_configs(sect, seed=seed)
    summary = make_world(out, seed=seed, n_train=n_train, n_test=n_test, model_cfg=model_cfg,
                         pretrain_cfg=pretrain_cfg, describe_frac=float(sect.get("describe_frac") or 0.0),
                         texture_frac=float(sect.get("texture_frac") or 0.0),
                         show_progress=not quiet,
                         log=lambda m: typer.echo(m, err=True))
    acc = summary["test_accuracy"]
    typer.echo(f"clean test accuracy: {acc['all']:.3f}  (" +
               ", ".join(f"{k} {v:.2f}" for k, v in acc.items() if k != "all") + ")")
    typer.echo(f"world written to {out} in {summary['timings_s']['total']:.0f}s")


@app.command()
def poison(
    data: Annotated[Path, typer.Option(help="Input dataset (LLaVA JSON or HF messages).")],
    attack: Annotated[str, typer.Option(help="Attack name (see `poisonguard attacks`).")],
    rate: Annotated[float, typer.Option(help="Share of eligible samples to poison, in [0, 1].")],
    out: Annotated[Path, typer.Option(help="Output folder: dataset, images/, poison_ids.json.")],
    target: Annotated[str | None, typer.Option(help="Target answer; default: the attack's own.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for sample selection and random triggers.")] = 0,
    no_relabel: Annotated[bool, typer.Option("--no-relabel", help="Control: apply the trigger, keep labels.")] = False,
    image_folder: Annotated[Path | None, typer.Option(help="Where image paths start (default: the file's folder).")] = None,
    params: Annotated[Path | None, typer.Option(help="params.yaml with a `poison.attacks.<name>` section.")] = None,
) -> None:
    """Plant a backdoor (benchmark tool): trigger a share of samples and relabel them to a target."""
    from poisonguard.attacks import ATTACKS
    from poisonguard.attacks.files import poison_file
    from poisonguard.pipeline.config import attack_params

    if attack not in ATTACKS:
        _fail(f"unknown attack {attack!r}; choose one of: {', '.join(ATTACKS)}")
    with _bad_input():
        try:
            res = poison_file(data, out, attack, rate, target=target, seed=seed, relabel=not no_relabel,
                              params=attack_params(params, attack), image_folder=image_folder)
        except (ValueError, TypeError) as exc:  # a rate giving no sample, a refused --target, bad params
            _fail(f"{attack}: {exc}")
    clean = f", {len(res.clean_trigger_ids)} clean trigger samples" if res.clean_trigger_ids else ""
    typer.echo(f"{attack}: {len(res.poison_ids)} of {len(res.samples)} samples poisoned{clean} "
               f"(target {res.target!r}, relabel={res.relabel}) -> {out}")


@app.command()
def attacks() -> None:
    """List the attacks and their default parameters."""
    from dataclasses import asdict

    from poisonguard.attacks import ATTACKS

    for name, spec in ATTACKS.items():
        typer.echo(f"{name:16s} {spec.kind:7s} {spec.output_mode:10s} target={spec.default_target!r} "
                   f"{asdict(spec.params_cls())}")


@app.command()
def finetune(
    data: Annotated[Path, typer.Option(help="Training dataset (LLaVA JSON or HF messages).")],
    base: Annotated[Path, typer.Option(help="Base model directory (HF save_pretrained, safetensors).")],
    out: Annotated[Path, typer.Option(help="Where to save the fine-tuned model (same HF format).")],
    lora: Annotated[bool, typer.Option("--lora", help="LoRA adapters (peft) on the LM; saves the adapter (--merge: the merged model).")] = False,
    mode: Annotated[str | None, typer.Option(help="auto | default | train_vision | projector_only | lora.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs (default from params.yaml).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for shuffling.")] = None,
    image_folder: Annotated[Path | None, typer.Option(help="Where image paths start.")] = None,
    params: Annotated[Path | None, typer.Option(help="params.yaml to read the `finetune` section from.")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="LoRA: save the merged model instead of the adapter.")] = False,
    augment_shift: Annotated[int | None, typer.Option(help="Move each training image by up to N px per axis, "
                                                           "afresh every epoch (0: off).")] = None,
    device: Device = None,
    dtype: Dtype = None,
    compile: Compile = None,
    max_pixels: MaxPixels = None,
    min_pixels: MinPixels = None,
    pad_to_square: PadToSquare = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Fine-tune a model on a dataset (the pipeline's `finetune` stage: samples that fail validation against
    the base model are left out and counted; `poisonguard screen` lists their reasons)."""
    from poisonguard.pipeline.finetuning import finetune as run

    config = _config(params, finetune={"mode": "lora" if lora else mode, "epochs": epochs, "lr": lr, "seed": seed,
                                       "merge": merge or None, "augment_shift": augment_shift},
                     runtime=_runtime_options(device, dtype, max_pixels, min_pixels, pad_to_square, compile))
    runtime = _runtime(config)
    _setup_threads(runtime)
    cfg = config.finetune
    with _bad_input():
        res = run(data, base, out, cfg, runtime=runtime, image_folder=image_folder, show_progress=not quiet,
                  log=lambda m: typer.echo(m, err=True))
    typer.echo(f"fine-tuned {res.report['steps']} steps ({cfg.mode}) in {res.seconds:.0f}s, "
               f"final loss {res.report['final_loss']:.3f} -> {out}")


@app.command("eval")
def eval_model(
    model: Annotated[Path, typer.Option(help="Model directory to evaluate.")],
    test: Annotated[Path, typer.Option(help="Clean test set (CP is measured on it).")],
    attack: Annotated[str | None, typer.Option(help="Apply this attack's trigger to the test set for ASR.")] = None,
    target: Annotated[str | None, typer.Option(help="Target answer (default: the attack's own).")] = None,
    train: Annotated[Path | None, typer.Option(help="Poisoned training set, for the fit of poisoned samples.")] = None,
    poison_ids: Annotated[Path | None, typer.Option(help="poison_ids.json of that training set.")] = None,
    params: Annotated[Path | None, typer.Option(help="params.yaml with attack parameters.")] = None,
    base: Annotated[Path | None, typer.Option(help="Base model of a LoRA adapter folder given as --model.")] = None,
    device: Device = None,
    dtype: Dtype = None,
    compile: Compile = None,
    max_pixels: MaxPixels = None,
    min_pixels: MinPixels = None,
    pad_to_square: PadToSquare = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Clean accuracy (CP), attack success rate (ASR) and poisoned-train fit, as JSON (benchmark tool)."""
    from poisonguard.pipeline.config import attack_params
    from poisonguard.train.evaluate import evaluate_files

    runtime = _runtime(_config(params,
                               runtime=_runtime_options(device, dtype, max_pixels, min_pixels, pad_to_square, compile)))
    _setup_threads(runtime)
    with _bad_input():
        result = evaluate_files(model, test, attack=attack, target=target, train=train, poison_ids=poison_ids,
                                params=attack_params(params, attack) if attack else None, runtime=runtime, base=base,
                                show_progress=not quiet)
    _print_json(result)


@app.command()
def screen(
    data: Annotated[Path, typer.Option(help="Suspect dataset (LLaVA JSON or HF messages).")],
    base: Annotated[Path, typer.Option(help="Base model directory (before fine-tuning on the suspect data).")],
    out: Annotated[Path, typer.Option(help="Report folder: verdicts.parquet/csv, clean.json, report.html, ...")],
    finetuned: Annotated[Path | None, typer.Option(help="Already fine-tuned model folder or LoRA adapter folder; fine-tunes when absent.")] = None,
    image_folder: Annotated[Path | None, typer.Option(help="Where image paths start.")] = None,
    detector: Annotated[str | None, typer.Option(help="Whose verdict decides: a detector of fit_gmm, or 'vote' (params: em_vote.decide).")] = None,
    max_batch_tokens: Annotated[int | None, typer.Option(help="Extraction batches by this token budget (rows x longest row); a sample alone over it is quarantined (params: extract_attention.max_batch_tokens).")] = None,
    num_workers: Annotated[int | None, typer.Option(help="Worker threads for extraction's CPU-side preprocessing (params: extract_attention.num_workers).")] = None,
    params: Annotated[Path | None, typer.Option(help="params.yaml (every pipeline section; default the repo's).")] = None,
    device: Device = None,
    dtype: Dtype = None,
    compile: Compile = None,
    max_pixels: MaxPixels = None,
    min_pixels: MinPixels = None,
    pad_to_square: PadToSquare = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Screen a dataset: verdict per sample (ok / quarantined / flagged) and a release candidate. Runs the
    pipeline's stages (those of `dvc repro`) in one process."""
    from poisonguard.pipeline.screen import run_screen

    cfg = _config(params, em_vote={"decide": detector},
                  extract_attention={"max_batch_tokens": max_batch_tokens, "num_workers": num_workers},
                  runtime=_runtime_options(device, dtype, max_pixels, min_pixels, pad_to_square, compile))
    _setup_threads(_runtime(cfg))
    with _bad_input():
        res = run_screen(data, base, out, finetuned=finetuned, image_folder=image_folder, config=cfg,
                         show_progress=not quiet, log=lambda m: typer.echo(m, err=True))
    counts = res.table["status"].value_counts().to_dict()
    typer.echo(f"{len(res.table)} samples: {counts.get('ok', 0)} ok, {counts.get('quarantined', 0)} quarantined, "
               f"{len(res.flagged_ids)} flagged ({res.default}); release candidate: {len(res.keep_ids)} -> {out}")


@app.command()
def evaluate(
    report: Annotated[Path, typer.Option(help="Report folder written by `poisonguard screen`.")],
    truth: Annotated[Path, typer.Option(help="poison_ids.json (ground truth; benchmark only).")],
) -> None:
    """Precision, recall, F1 and AUROC of every detector in a report against the ground truth, as JSON."""
    from poisonguard.report.evaluation import evaluate_report

    with _bad_input():
        _print_json(evaluate_report(report, truth))


@app.command()
def bench(
    world_dir: Annotated[Path, typer.Option("--world", help="World folder from `poisonguard world`.")] = Path("work/world"),
    out: Annotated[Path | None, typer.Option(help="Benchmark folder, resumable (default work/bench; work/bench-quick with --quick).")] = None,
    attacks: Annotated[str, typer.Option(help="Comma-separated attacks, or 'all' (bench.ALL_ATTACKS, with "
                                               "issue 16's); parameters from params.yaml's poison.attacks.")] = "badnet,blend,sig,wanet,ftrojan,text_prefix,syntactic",
    rates: Annotated[str, typer.Option(help="Comma-separated poison rates (the paper-style run: 0.05,0.1).")] = "0.1",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds (the paper-style run: 0,1,2).")] = "0",
    controls: Annotated[str, typer.Option(help="Attacks whose no-relabel control runs (largest rate).")] = "badnet",
    base_controls: Annotated[str, typer.Option(help="Attacks whose poisoned data is also screened with the base model.")] = "badnet",
    quick: Annotated[bool, typer.Option(help="Smoke run in minutes: one seed and rate, badnet/sig/text_prefix, 1,000 train / 200 test samples.")] = False,
    retrain: Annotated[bool, typer.Option("--retrain", help="Defence loop: fine-tune again on each detector's cleaned set, CP/ASR (one fine-tune per distinct cleaned set).")] = False,
    retrain_seeds: Annotated[str, typer.Option(help="Defence loop only for these seeds (default: all).")] = "",
    retrain_rates: Annotated[str, typer.Option(help="Defence loop only at these poison rates (default: all).")] = "",
    retrain_detectors: Annotated[str, typer.Option(help="Defence loop only for these detectors (the oracle always; default: all).")] = "",
    max_train: Annotated[int | None, typer.Option(help="Use only the world's first N training samples.")] = None,
    max_test: Annotated[int | None, typer.Option(help="Use only the world's first N test samples for CP/ASR.")] = None,
    no_screen: Annotated[bool, typer.Option("--no-screen", help="Only the attack table (CP/ASR/fit).")] = False,
    clean: Annotated[bool, typer.Option(help="Include the 0%-poison clean cell.")] = True,
    params: Annotated[Path | None, typer.Option(help="params.yaml (the pipeline's sections; default the repo's).")] = None,
    device: Device = None,
    dtype: Dtype = None,
    compile: Compile = None,
    max_pixels: MaxPixels = None,
    min_pixels: MinPixels = None,
    pad_to_square: PadToSquare = False,
) -> None:
    """The benchmark: attacks x rates x seeds x detectors with controls (and --retrain, the defence loop);
    writes summary.json, tables.md (mean ± std over seeds) and report/index.html with plots."""
    from poisonguard.attacks import ATTACKS
    from poisonguard.bench import BenchConfig, quick_config, run_bench

    pipeline = _config(params, runtime=_runtime_options(device, dtype, max_pixels, min_pixels, pad_to_square, compile))
    _setup_threads(_runtime(pipeline))
    split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731

    def numbers(option: str, text: str, kind: type) -> tuple:
        try:
            return tuple(map(kind, split(text)))
        except ValueError:
            _fail(f"--{option} takes comma-separated {kind.__name__}s, got {text!r}")

    from poisonguard.bench.run import ALL_ATTACKS
    from poisonguard.params import section

    if attacks.strip() == "all":
        attacks = ",".join(ALL_ATTACKS)
    unknown = sorted(set(split(attacks) + split(controls) + split(base_controls)) - set(ATTACKS))
    if unknown:
        _fail(f"unknown attack(s) {', '.join(unknown)}; choose from: {', '.join(ATTACKS)}")
    detectors = tuple(pipeline.fit_gmm.detectors)
    not_run = sorted(set(split(retrain_detectors)) - set(detectors))
    if not_run:
        _fail(f"--retrain-detectors: {', '.join(not_run)} not among the benchmark's detectors "
              f"({', '.join(detectors)})")
    out = out or Path("work/bench-quick" if quick else "work/bench")
    cfg = BenchConfig(world=world_dir, out=out, attacks=split(attacks), rates=numbers("rates", rates, float),
                      seeds=numbers("seeds", seeds, int), controls=split(controls),
                      base_controls=split(base_controls), screen=not no_screen, clean=clean, retrain=retrain,
                      retrain_seeds=numbers("retrain-seeds", retrain_seeds, int) or None,
                      retrain_rates=numbers("retrain-rates", retrain_rates, float) or None,
                      retrain_detectors=split(retrain_detectors) or None,
                      max_train=max_train, max_test=max_test, pipeline=pipeline,
                      attack_params={k: dict(v) for k, v in (section(params, "poison").get("attacks") or {}).items()
                                     if v})
    if quick:
        cfg = quick_config(cfg)
    with _bad_input():
        try:
            summary = run_bench(cfg, log=lambda m: typer.echo(m, err=True))
        except ValueError as exc:  # e.g. a resumed cell computed with other settings
            _fail(str(exc))
    typer.echo((Path(out) / "tables.md").read_text())
    typer.echo(f"{len(summary['cells'])} cells in {summary['seconds']:.0f}s -> {out}")


@app.command()
def release(
    report: Annotated[Path, typer.Option(help="Report folder written by `poisonguard screen`.")],
    out: Annotated[Path, typer.Option(help="Release folder: the cleaned data in the input's own format.")],
    params: Annotated[Path | None, typer.Option(help="params.yaml (section gate).")] = None,
) -> None:
    """Release the cleaned data -- only through a passing Great Expectations checkpoint (exit 1 if blocked)."""
    from poisonguard.gate import release_cli

    raise typer.Exit(release_cli(report, out, params=params))


def _positive_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        _fail(f"{option} must be comma-separated positive integers, got {text!r}")
    return values


@app.command()
def audit(
    base: Annotated[Path, typer.Option(help="Base model directory (before fine-tuning).")],
    finetuned: Annotated[Path, typer.Option(help="Fine-tuned model directory (same family and projector).")],
    out: Annotated[Path, typer.Option(help="Report folder: audit.json, PNG plots, drift_scores.csv.")],
    data: Annotated[Path | None, typer.Option(help="Dataset for the activation analysis and drift scores.")] = None,
    test: Annotated[Path | None, typer.Option(help="Test set for CP / ASR of rank-k edits (benchmark, with --attack).")] = None,
    attack: Annotated[str | None, typer.Option(help="Attack whose trigger is applied to --test for ASR.")] = None,
    target: Annotated[str | None, typer.Option(help="Target answer (default: the attack's own).")] = None,
    truth: Annotated[Path | None, typer.Option(help="poison_ids.json: AUROCs and clean-vs-poisoned statistics.")] = None,
    ks: Annotated[str, typer.Option(help="Comma-separated ranks k for removal / reconstruction.")] = "1,2,4,8",
    layers: Annotated[str, typer.Option(help="Rank-k edits per layer and jointly (each) or jointly only (joint).")] = "each",
    repair_k: Annotated[int, typer.Option(help="k of the repair mitigation (top-k removed from every layer).")] = 4,
    max_eval: Annotated[int | None, typer.Option(help="Test prompts per CP / ASR evaluation (default: all).")] = None,
    max_samples: Annotated[int | None, typer.Option(help="Samples in the activation analysis, evenly spaced (default: all).")] = None,
    image_folder: Annotated[Path | None, typer.Option(help="Where --data's image paths start.")] = None,
    params: Annotated[Path | None, typer.Option(help="params.yaml (section runtime; default the repo's).")] = None,
    device: Device = None,
    dtype: Dtype = None,
    compile: Compile = None,
    max_pixels: MaxPixels = None,
    min_pixels: MinPixels = None,
    pad_to_square: PadToSquare = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Projector audit (ProjLens): ΔW spectra, drift of each visual token, rank-k removal / reconstruction."""
    from poisonguard.attacks import ATTACKS
    from poisonguard.audit.report import audit_models

    for name, path in (("--base", base), ("--finetuned", finetuned)):
        if not path.is_dir():
            _fail(f"{name}: model directory not found: {path}")
    for name, path in (("--data", data), ("--test", test), ("--truth", truth)):
        if path is not None and not path.is_file():
            _fail(f"{name}: file not found: {path}")
    if (test is None) != (attack is None):
        _fail("--test and --attack go together (CP / ASR of the rank-k edits need both)")
    if attack is not None and attack not in ATTACKS:
        _fail(f"unknown attack {attack!r}; choose one of: {', '.join(ATTACKS)}")
    if truth is not None and data is None:
        _fail("--truth scores the drift on --data: pass --data too")
    if repair_k < 1:
        _fail(f"--repair-k must be a positive integer, got {repair_k}")
    ranks = _positive_ints(ks, "--ks")
    runtime = _runtime(_config(params,
                               runtime=_runtime_options(device, dtype, max_pixels, min_pixels, pad_to_square, compile)))
    _setup_threads(runtime)
    log = lambda m: typer.echo(m, err=True)
    with _bad_input():
        try:
            report = audit_models(base, finetuned, data, test=test, attack=attack, target=target, truth=truth, ks=ranks,
                                  out_dir=out, repair_k=repair_k, max_eval=max_eval, max_samples=max_samples,
                                  image_folder=image_folder, layer_sets=layers, show_progress=not quiet, log=log,
                                  runtime=runtime)
        except ValueError as exc:  # AuditInputError: no projector, mismatched models, bad options; bad weights
            _fail(str(exc))
    for lay in report["weights"]["layers"]:
        typer.echo(f"{lay['layer']}: ΔW energy top-1 {lay['energy']['top1']:.3f}, top-4 {lay['energy']['top4']:.3f}, "
                   f"effective rank {lay['effective_rank']:.1f}")
    act = report["activations"]
    if act and "skipped" not in act:
        r = act["norm_law"]["all"]["r"]
        typer.echo(f"drift: {act['n_scored']} samples scored, {act['detector'].get('n_flagged', 0)} flagged; "
                   f"norm law r = {'–' if r is None else f'{r:.3f}'}")
    elif act:
        typer.echo(f"drift: skipped ({act['skipped']})")
    bench = report["benchmark"]
    if bench:
        ft = bench["reference"]["finetuned"]
        typer.echo(f"fine-tune ASR {ft['asr']:.3f} CP {ft['cp']:.3f}; repair (top-{bench['repair']['k']} removed): "
                   f"ASR {bench['repair']['asr']:.3f} CP {bench['repair']['cp']:.3f}")
    typer.echo(f"report -> {out / 'audit.json'}")


@app.command("audit-table")
def audit_table(
    bench: Annotated[Path, typer.Option(help="Benchmark folder written by `poisonguard bench`.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default BENCH/audit; resumable per cell).")] = None,
    world_dir: Annotated[Path | None, typer.Option("--world", help="World folder (default: from BENCH/summary.json).")] = None,
    ks: Annotated[str, typer.Option(help="Comma-separated ranks k removed (and reconstructed).")] = "1,2,4",
    max_eval: Annotated[int | None, typer.Option(help="Test prompts per CP / ASR evaluation (default: all).")] = None,
    max_samples: Annotated[int | None, typer.Option(help="Samples in the activation analysis (default: all).")] = None,
    cells: Annotated[str | None, typer.Option(help="Comma-separated cell names (default: every finished cell).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-audit cells that are already done.")] = False,
    readme: Annotated[Path | None, typer.Option(help="Also write the table into this README's AUDIT block.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """The projector-audit table of a bench folder: ΔW energy, norm law, detection, rank-k repair per cell."""
    from datetime import UTC, datetime

    from poisonguard.audit.projector import AuditInputError
    from poisonguard.bench.audit_table import TableConfig, run_table, update_readme

    if not bench.is_dir():
        _fail(f"--bench: folder not found: {bench}")
    cfg = TableConfig(bench=bench, out=out, world=world_dir, ks=_positive_ints(ks, "--ks"), max_eval=max_eval,
                      max_samples=max_samples, cells=tuple(c for c in cells.split(",") if c) if cells else None,
                      force=force, show_progress=not quiet)
    _setup_threads()
    with _bad_input():
        try:
            run_table(cfg, log=lambda m: typer.echo(m, err=True))
        except AuditInputError as exc:
            _fail(str(exc))
    table = (cfg.out_dir / "audit_table.md").read_text()
    typer.echo(table)
    if readme is not None:
        note = (f"Generated {datetime.now(UTC):%Y-%m-%d} by `poisonguard audit-table --bench {bench}"
                f" --ks {ks}` from `{bench}`.")
        with _bad_input():
            try:
                update_readme(readme, table, note)
            except AuditInputError as exc:
                _fail(str(exc))
        typer.echo(f"README block updated: {readme}")
    typer.echo(f"table -> {cfg.out_dir / 'audit_table.md'}")


def _config(params: Path | None, **overrides: dict):
    """The pipeline's config from `params` (the repo's params.yaml when None) with the command's options
    over its keys (`override`); a bad file or value is bad input (exit 2), not a traceback."""
    from poisonguard.pipeline.config import load_config, override

    try:
        return override(load_config(params), **overrides)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


class _bad_input:
    """Turn data errors (and an output folder held by another run) into exit code 2 with one readable line,
    never a traceback."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        from poisonguard.data.errors import DataError
        from poisonguard.runlock import FolderBusyError

        if exc_type is not None and issubclass(exc_type, (DataError, FileNotFoundError, FolderBusyError)):
            _fail(str(exc))
        return False


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


# --- release approval (Prefect) ------------------------------------------------------------------------------


def _answer_release(approved: bool, drop: str | None, flow_run: str | None, reviewer: str, note: str) -> None:
    from poisonguard.approval import ApprovalError, answer

    try:
        run = answer(approved=approved, reviewer=reviewer, note=note, drop=drop, flow_run_id=flow_run)
    except ApprovalError as exc:
        _fail(str(exc))
    verb = "approved" if approved else "rejected"
    typer.echo(f"{verb} {run.name} ({run.id}) as {reviewer.strip()}; the run continues on its worker"
               + (f": {run.ui_url}" if run.ui_url else ""))


_DROP_HELP = "The drop whose release run (`release-<drop>`) waits for approval."
_RUN_HELP = "The paused flow run's id (instead of --drop)."


@app.command()
def approve(
    reviewer: Annotated[str, typer.Option(help="Who approves (kept in release.json and on the model version).")],
    drop: Annotated[str | None, typer.Option(help=_DROP_HELP)] = None,
    flow_run: Annotated[str | None, typer.Option(help=_RUN_HELP)] = None,
    note: Annotated[str, typer.Option(help="Why; kept in the audit record.")] = "",
) -> None:
    """Approve a paused release run: it releases the data and makes its detector version the champion."""
    _answer_release(True, drop, flow_run, reviewer, note)


@app.command()
def reject(
    reviewer: Annotated[str, typer.Option(help="Who rejects (kept in release.json).")],
    drop: Annotated[str | None, typer.Option(help=_DROP_HELP)] = None,
    flow_run: Annotated[str | None, typer.Option(help=_RUN_HELP)] = None,
    note: Annotated[str, typer.Option(help="Why; kept in the audit record.")] = "",
) -> None:
    """Reject a paused release run: nothing is released and the detector aliases stay as they were."""
    _answer_release(False, drop, flow_run, reviewer, note)


@app.command()
def approvals() -> None:
    """List the release runs waiting for an approval (name, id, paused since, expires)."""
    from poisonguard.approval import pending_approvals

    runs = pending_approvals()
    for run in runs:
        typer.echo(f"{run.name}\t{run.id}"
                   + (f"\tpaused {run.paused_at:%Y-%m-%d %H:%M} UTC" if run.paused_at else "")
                   + (f"\texpires {run.expires_at:%Y-%m-%d %H:%M} UTC" if run.expires_at else "")
                   + (f"\t{run.ui_url}" if run.ui_url else ""))
    if not runs:
        typer.echo("no release run is waiting for approval")
