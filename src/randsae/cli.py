"""`randsae` command line: run | compare | interpret | analyze | report | verify | toy.

Every command is a thin layer over the Python functions of its stage. A `UserError`, and any exception a
missing, unwritable or damaged file raised (`randsae.errors.user_error_for`), is printed as one line and
exits with code 2; an interrupted run exits with 130 and resumes when the command is rerun; anything else is
a bug: its traceback, a line asking to report it, exit code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from randsae.errors import UserError, user_error_for


def _fresh_run_dir() -> Path:
    return Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _layer_list(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise UserError(f"--layers {text} is not a comma-separated list of layers", "Pass e.g. --layers 3,10") from None


def command_run(args: argparse.Namespace) -> None:
    from randsae.experiment import job_config, resolve_device, run_pipeline
    from randsae.metrics.results import format_metrics_table
    from randsae.model_sweep import Sweep, load_experiment
    from randsae.run_dir import RunDir
    from randsae.sae import distributed
    from randsae.sae_sweep import ShapeSweep

    device_override = [f"device={args.device}"] if args.device else []  # every model's, in a sweep
    cfg = load_experiment(args.config, [*args.set, *device_override])
    if isinstance(cfg, (Sweep, ShapeSweep)):
        if args.format != "saelens":
            raise UserError(
                "--format sparsify is not taken by a sweep (a config with [[models]] or list-valued [sae] keys)",
                "Run without --format, or run each part's config with it",
            )
        _run_sweep(args, cfg)
        return
    if args.format == "sparsify" and cfg.sae.architecture != "topk":
        raise UserError(
            f"--format sparsify holds TopK SAEs only, and sae.architecture = {cfg.sae.architecture!r}",
            "Use --format saelens (the default) for this architecture",
        )
    distributed.init_from_env(resolve_device(cfg.device))  # under torchrun: rank 0 alone speaks and goes on
    run = RunDir(Path(args.out) if args.out else distributed.gather(_fresh_run_dir())[0])
    main = distributed.is_main()
    progress = not args.quiet and main
    variants = args.variants.split(",") if args.variants else None
    layers = _layer_list(args.layers) if args.layers else None
    job_config(cfg, variants, layers)  # an unknown variant or layer stops the job before the model loads
    if args.plan:
        from randsae.experiment import show_plan

        processes = distributed.world_size()
        distributed.shutdown()
        if not main:
            return
        show_plan(cfg, run, progress, variants=variants, layers=layers, processes=processes)
        return
    if not main:
        run_pipeline(cfg, run, progress=False, variants=variants, layers=layers)  # the SAEs' training shards
        return
    print(f"randsae run → {run.root}  (config: {args.config or 'embedded default'})")
    if variants or layers:
        # The later stages read every job's SAEs: one job runs them once the others are done.
        args.skip = ["interpret", "analyze", "report"]
        print(f"this job's part only; then run `randsae interpret|analyze|report {run.root}` once all are done")
    if "interpret" not in args.skip:
        from randsae.interp.stage import check_judge

        check_judge(cfg.interp)  # an LLM judge that cannot answer stops the run before the harvest
    rows = run_pipeline(cfg, run, progress=progress, variants=variants, layers=layers)
    print(format_metrics_table(rows))
    if args.format == "sparsify":
        from randsae.interop.sparsify import write_run_sparsify

        folders = write_run_sparsify(run, [row.key for row in rows])
        print(f"{len(folders)} SAEs also in sparsify's layout under {run.root / 'sparsify'}")
    _later_stages(run, cfg, args.skip, progress)


def _later_stages(run, cfg, skip: list[str], progress: bool) -> None:
    """Auto-interp, analysis and report of a run whose SAEs are trained and evaluated, less the `skip`ped."""
    from randsae.experiment import resolve_device
    from randsae.run_dir import Timings

    device = resolve_device(cfg.device)
    timings = Timings(run)
    if "interpret" not in skip:
        with timings.stage("interpret"):
            _interpret(run, cfg.interp, device, progress)
    if "analyze" not in skip:
        with timings.stage("analyze"):
            _analyze(run, cfg.analysis, device, progress)
    if "report" not in skip:
        with timings.stage("report"):
            _report(run, device, progress)
    total = sum(timings.seconds.values())
    stages = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.seconds.items())
    print(f"done in {total:.0f}s ({stages}); results in {run.root}")


def command_compare(args: argparse.Namespace) -> None:
    from randsae.experiment import resolve_device, run_pipeline
    from randsae.interop.compare import install_imported, plan_comparison
    from randsae.metrics.results import format_metrics_table
    from randsae.models.load import load_model
    from randsae.run_dir import RunDir

    overrides = [*args.set, *([f"device={args.device}"] if args.device else [])]
    comparison = plan_comparison(args.config, overrides, args.sae)  # every SAE read before the model loads
    cfg = comparison.cfg
    run = RunDir(Path(args.out))
    progress = not args.quiet
    print(f"randsae compare → {run.root}")
    for item in comparison.imported:
        print(f"  layer {item.origin.layer}: {item.origin.describe()}")
    if "interpret" not in args.skip:
        from randsae.interp.stage import check_judge

        check_judge(cfg.interp)
    lm = load_model(cfg.model, resolve_device(cfg.device), progress=progress)
    install_imported(comparison, run, lm)
    rows = run_pipeline(cfg, run, progress=progress, lm=lm)
    print(format_metrics_table(rows))
    _later_stages(run, cfg, args.skip, progress)


def _run_sweep(args: argparse.Namespace, sweep) -> None:
    """`randsae run` of a sweep (several models, or several SAE shapes): each part's run, then its interp and
    analysis, then the sweep's report; a model that failed is named at the end (exit 2), after the others
    have run."""
    from randsae.config import load_run_config
    from randsae.experiment import resolve_device
    from randsae.model_sweep import Sweep, failures, run_sweep, show_sweep_plan
    from randsae.run_dir import RunDir, Timings
    from randsae.sae import distributed
    from randsae.sae_sweep import run_shape_sweep, show_shape_sweep_plan

    models = isinstance(sweep, Sweep)
    kind = "[[models]]" if models else "list-valued [sae] keys"
    if args.variants or args.layers:
        raise UserError(
            f"--variants and --layers split the run of one model and SAE shape, not a config with {kind}",
            "Run the whole sweep, or give each part its own config",
        )
    if distributed.world_size() > 1:
        raise UserError(
            f"a config with {kind} runs one process", "Run it without torchrun, or run each part's config under it"
        )
    run = RunDir(Path(args.out) if args.out else _fresh_run_dir())
    progress = not args.quiet
    if args.plan:
        (show_sweep_plan if models else show_shape_sweep_plan)(sweep, run, progress)
        return
    parts = sweep.models if models else sweep.shapes
    print(f"randsae run → {run.root}  (config: {args.config}, {len(parts)} {'models' if models else 'SAE shapes'})")
    if "interpret" not in args.skip:
        from randsae.interp.stage import check_judge

        for part in parts:
            check_judge(part.config.interp)  # an LLM judge that cannot answer stops the run before the harvest
    start = time.perf_counter()
    if models:
        outcomes = run_sweep(sweep, run, progress)
        done = [(o.label, run.model_run(o.label)) for o in outcomes if o.status == "done"]
    else:
        outcomes = []
        done = [(label, run.shape_run(label)) for label in run_shape_sweep(sweep, run, progress=progress)]
    later: list[str] = []  # a stage that fails on one part leaves the others' to run
    for label, part in done:
        cfg = load_run_config(part)
        device, timings = resolve_device(cfg.device), Timings(part)
        if progress and {"interpret", "analyze"} - set(args.skip):
            print(f"{'model' if models else 'SAE shape'} {label}")
        try:
            if "interpret" not in args.skip:
                with timings.stage("interpret"):
                    _interpret(part, cfg.interp, device, progress)
            if "analyze" not in args.skip:
                with timings.stage("analyze"):
                    _analyze(part, cfg.analysis, device, progress)
        except UserError as error:
            print(f"{label}: {' '.join(str(error).split())}")  # named again in the error at the end
            later.append(f"{label}: {error.problem}")
    if "report" not in args.skip and done:
        _write_sweep_report(run, progress)
    failed = failures(outcomes, later)
    if failed:
        raise failed
    print(f"done in {time.perf_counter() - start:.0f}s; results in {run.root}")


def _write_sweep_report(run, progress: bool) -> None:
    from randsae.report.shape_sweep import write_shape_sweep_report
    from randsae.report.sweep import write_sweep_report
    from randsae.sae_sweep import shape_sweep_of_run

    (write_shape_sweep_report if shape_sweep_of_run(run) else write_sweep_report)(run, progress=progress)


def _each_part(args: argparse.Namespace, command) -> bool:
    """Run `command` on each finished part (model or SAE shape) of a sweep's run directory; False for a run of
    one model and shape."""
    parts = _sweep_parts(args.run_dir)
    for title, part in parts or []:
        print(title)
        command(argparse.Namespace(**{**vars(args), "run_dir": str(part.root)}))
    return parts is not None


def _sweep_parts(run_dir: str):
    """(title, part) of the finished models (`model pythia-70m`), or started SAE shapes (`SAE shape topk-k16`),
    of a sweep's run directory; None for a run of one model and shape."""
    from randsae.model_sweep import load_outcomes, sweep_of_run
    from randsae.run_dir import RunDir
    from randsae.sae_sweep import shape_runs, shape_sweep_of_run

    run = RunDir.existing(run_dir)
    shapes = shape_sweep_of_run(run)
    if shapes is not None:
        return [(f"SAE shape {label}", part) for label, part in shape_runs(run, shapes)]
    if sweep_of_run(run) is None:
        return None
    return [(f"model {o.label}", run.model_run(o.label)) for o in load_outcomes(run) if o.status == "done"]


def _say_missing(run) -> None:
    """The stages after training read whichever SAEs exist: say which of the config's are not there yet."""
    missing = run.missing_saes()
    if missing:
        print(f"{missing}; reading the others")


def _interpret(run, cfg, device, progress: bool, retry_failed: bool = False) -> None:
    from randsae.interp import format_interp_table, interpret_run
    from randsae.interp.ablation import ablation_rows, format_ablation_table
    from randsae.interp.calibration import load_calibration
    from randsae.interp.summary import load_interp_summary
    from randsae.run_dir import judge_label

    _say_missing(run)
    summary = interpret_run(run, cfg, device=device, progress=progress, retry_failed=retry_failed)
    files = run.interp(judge_label(cfg.judge, cfg.model))
    calibration = load_calibration(files)
    failed = calibration is not None and calibration.fails
    print(format_interp_table(summary, judge_failed=failed))
    if files.explainer_ablation.summary.is_file():
        print(format_ablation_table(ablation_rows(summary, load_interp_summary(files.explainer_ablation))))
    if calibration is not None and calibration.fails:
        print(calibration.describe())  # again below the tables it qualifies


def _analyze(run, cfg, device, progress: bool) -> None:
    from randsae.analysis import analyze_run, format_separation_table

    _say_missing(run)
    print(format_separation_table(analyze_run(run, cfg, device=device, progress=progress)))


def _report(run, device, progress: bool) -> None:
    from randsae.report import write_report

    _say_missing(run)
    write_report(run, progress=progress, device=device)  # it says where the report is


def _timed(run, stage: str):
    """The stage's wall time added to RUN/timings.json, as `randsae run` records it."""
    from randsae.run_dir import Timings

    return Timings(run).stage(stage)


def _existing_run(args: argparse.Namespace):
    """(RunDir, its config, the device) of a run directory named on the command line."""
    from randsae.config import load_run_config
    from randsae.experiment import resolve_device
    from randsae.run_dir import RunDir

    run = RunDir.existing(args.run_dir)
    cfg = load_run_config(run)
    return run, cfg, resolve_device(args.device or "auto")


def command_interpret(args: argparse.Namespace) -> None:
    from randsae.config import load_config

    if _each_part(args, command_interpret):
        return
    run, cfg, device = _existing_run(args)
    overrides = {
        key: value
        for key, value in (
            ("judge", args.judge),
            ("base_url", args.base_url),
            ("model", args.model),
            ("api", args.api),
            ("concurrency", args.concurrency),
        )
        if value is not None
    }
    interp = load_config(args.config).interp if args.config else cfg.interp
    with _timed(run, "interpret"):
        _interpret(run, dataclasses.replace(interp, **overrides), device, not args.quiet, args.retry_failed)


def command_analyze(args: argparse.Namespace) -> None:
    if _each_part(args, command_analyze):
        return
    run, cfg, device = _existing_run(args)
    with _timed(run, "analyze"):
        _analyze(run, cfg.analysis, device, not args.quiet)


def command_report(args: argparse.Namespace) -> None:
    if _sweep_parts(args.run_dir) is not None:
        from randsae.run_dir import RunDir

        _write_sweep_report(RunDir.existing(args.run_dir), not args.quiet)
        return
    run, _, device = _existing_run(args)
    with _timed(run, "report"):
        _report(run, device, not args.quiet)


def command_verify(args: argparse.Namespace) -> None:
    """Re-hash every activation-cache shard against the checksum recorded when it was written."""
    from tqdm.auto import tqdm

    from randsae.data.activations import ActivationCache
    from randsae.run_dir import RunDir

    run = RunDir.existing(args.run_dir)
    folders = run.activation_caches()
    shards = 0
    for folder in tqdm(folders, desc="verify", unit="cache", disable=args.quiet, leave=False):
        cache = ActivationCache.open(folder)
        cache.verify()
        shards += len(cache.manifest.shards)
    print(f"{len(folders)} activation caches, {shards} shards: every checksum matches")


def command_toy(args: argparse.Namespace) -> None:
    from randsae.toy import load_toy_config, run_toy

    cfg = load_toy_config(args.config)
    result = run_toy(cfg, Path(args.out), progress=not args.quiet)
    print(result.summary())


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors as a UserError, so they are one line like every other user error."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message, f"See `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="randsae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"randsae {metadata.version('randsae')}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="the whole pipeline: variants → activations → SAEs → metrics → auto-interp → analysis → report"
    )
    run.add_argument("--config", help="experiment TOML (default: the embedded SmolLM2-135M experiment)")
    run.add_argument("--out", help="run directory (default: runs/<timestamp>); rerun with it to resume")
    run.add_argument("--device", help="auto, cpu, cuda, cuda:N (overrides the config)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key, value in TOML (--set sae.k=16 --set layers=[1,2]); repeatable",
    )
    run.add_argument(
        "--skip", nargs="*", default=[], choices=["interpret", "analyze", "report"], help="stages to leave out"
    )
    run.add_argument(
        "--variants",
        metavar="A,B",
        help="this job's variants only (of the config's): jobs with disjoint parts may share one --out",
    )
    run.add_argument("--layers", metavar="L,M", help="this job's layers only (of the config's), like --variants")
    run.add_argument(
        "--format",
        choices=["saelens", "sparsify"],
        default="saelens",
        help="the SAEs' file layout: SAELens (always written, every stage reads it) or, in addition, sparsify's "
        "(RUN/sparsify/{variant}/{hookpoint}/, what sparsify and delphi load)",
    )
    run.add_argument(
        "--plan", action="store_true", help="print each stage's tokens, disk, memory and time estimate, then exit"
    )
    run.set_defaults(handler=command_run)

    compare = commands.add_parser(
        "compare",
        help="SAEs trained elsewhere (SAELens, sparsify, dictionary_learning) against SAEs of the same shape "
        "trained on random variants of their model",
    )
    compare.add_argument(
        "--sae",
        action="append",
        default=[],
        metavar="PATH",
        help="an SAE folder (format detected) or saelens:RELEASE:SAE_ID; repeatable, one per layer",
    )
    compare.add_argument(
        "--config", help="experiment TOML: variants, tokens, training budget (default: the embedded experiment)"
    )
    compare.add_argument("--out", required=True, help="run directory; rerun with it to resume")
    compare.add_argument("--device", help="auto, cpu, cuda, cuda:N (overrides the config)")
    compare.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config key, like run's"
    )
    compare.add_argument(
        "--skip", nargs="*", default=[], choices=["interpret", "analyze", "report"], help="stages to leave out"
    )
    compare.set_defaults(handler=command_compare)

    interpret = commands.add_parser("interpret", help="explain and score latents of a run's SAEs")
    interpret.add_argument("run_dir")
    interpret.add_argument(
        "--config",
        metavar="TOML",
        help="take the [interp] settings from this file (over the paper's defaults) instead of the run's config, "
        "e.g. configs/llm-judge-small.toml",
    )
    interpret.add_argument("--judge", choices=["token", "http", "hf"], help="override the config's judge")
    interpret.add_argument("--base-url", help="OpenAI-compatible endpoint for --judge http")
    interpret.add_argument("--model", help="model name (http) or local model path (hf)")
    interpret.add_argument("--api", choices=["chat", "completion"], help="OpenAI API flavour for --judge http")
    interpret.add_argument("--concurrency", type=int, help="HTTP requests in flight at once")
    interpret.add_argument(
        "--retry-failed",
        action="store_true",
        help="ask every failed explanation and example again, replies without the expected answers included "
        "(a plain rerun asks only request and malformed-reply failures again)",
    )
    interpret.set_defaults(handler=command_interpret)

    analyze = commands.add_parser("analyze", help="measurements that separate trained from random")
    analyze.add_argument("run_dir")
    analyze.set_defaults(handler=command_analyze)

    report = commands.add_parser("report", help="write report.html and per-latent dashboards")
    report.add_argument("run_dir")
    report.set_defaults(handler=command_report)

    verify = commands.add_parser("verify", help="re-hash a run's activation caches against their checksums")
    verify.add_argument("run_dir")
    verify.set_defaults(handler=command_verify)

    toy = commands.add_parser("toy", help="the paper's toy models: superposition through random networks")
    toy.add_argument("--out", required=True)
    toy.add_argument("--config", help="toy TOML (default: the small embedded sweep)")
    toy.set_defaults(handler=command_toy)

    for sub in (run, compare, interpret, analyze, report, verify, toy):
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
    for sub in (interpret, analyze, report):
        sub.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    return parser


def _quiet_libraries() -> None:
    """transformers' own loading bars and warnings would bury randsae's output and one-line errors."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _outputs(args: argparse.Namespace) -> dict[Path, str]:
    """The folders the command writes, each with how a file deleted there is rebuilt (`user_error_for`)."""
    from randsae.assets import cache_home

    same = "rerun the same command to rebuild it"
    outputs = {cache_home(): same}
    if getattr(args, "out", None):
        outputs[Path(args.out)] = same
    if getattr(args, "run_dir", None):
        run = Path(args.run_dir)
        rebuild = f"randsae run --config {run / 'config.toml'} --out {run}"
        outputs[run] = f"rebuild it with `{rebuild}`, then rerun this command"
    return outputs


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        _quiet_libraries()
        args.handler(args)
    except KeyboardInterrupt:
        print("randsae: interrupted; rerun the same command (same --out) to resume", file=sys.stderr)
        return 130
    except Exception as error:
        user_error = user_error_for(error, _outputs(args) if args is not None else {})
        if user_error is None:
            traceback.print_exc()
            print(
                f"randsae: this is a bug in randsae {metadata.version('randsae')}, not a mistake in your input: "
                "please report it with the traceback above",
                file=sys.stderr,
            )
            return 1
        print(f"randsae: error: {' '.join(str(user_error).split())}", file=sys.stderr)  # one line, always
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
