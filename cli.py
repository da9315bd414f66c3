"""The ``medrae`` command line: a thin Typer app over the library.

Exit codes: 0 every file succeeded (or was already done), 1 some files failed (each listed with
its reason), 2 usage errors (bad options, missing key, output inside the input, ...).

Training and export need the ``train`` extra (PyTorch); they forward their options unchanged to
``models.train``, ``models.train_generator`` and ``export.onnx_export`` (``--help`` lists them).
"""
from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Reversible adversarial protection of medical images: fools AI models outside the lungs, restores bit for bit.")
PASS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
# protect --help: what a user needs first, the expert knobs grouped below it
PERTURB = "Advanced: perturbation"
LUNGS = "Advanced: lungs (ROI) and hiding"
RUNTIME = "Advanced: runtime"

KEY_HELP = "key file (medrae keygen); default: $MEDRAE_KEY_FILE"
ALLOW_KEYLESS_HELP = ("with a key: also restore files protected with --no-encrypt, which anyone with medrae could have made "
                      "(default: refused, since they authenticate nothing)")
RAY_HELP = ("run on a Ray cluster (pip install 'medrae\\[ray]'): local (start one on this machine for the command), auto (the "
            "cluster this machine belongs to) or HOST:PORT; --workers is then the number of actors (0: one per CPU). "
            "Input and output must be on a filesystem every node sees")


def _version(value: bool) -> None:
    if value:
        from medrae import __version__

        typer.echo(f"medrae {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit")) -> None:
    """Reversible adversarial protection of medical images: fools AI models outside the lungs, restores bit for bit."""


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _key(path: Optional[Path], required: bool) -> Optional[bytes]:
    from medrae.toolkit.keys import KeyFileError, load_key

    try:
        return load_key(path)
    except KeyFileError as exc:
        if required or path is not None:
            _fail(str(exc))
        return None


def _run_batch(run, total_label: str, report: Optional[Path], **kw):
    """Run a batch driver under a progress bar, print failures and the summary, write the report."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from medrae.toolkit.filework import UsageError

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if report is not None:
        _check_report_path(report)
    console = Console(stderr=True)
    with Progress(TextColumn(total_label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True) as bar, \
            _stop_on_signals() as stopped:
        task = bar.add_task(total_label, total=None)
        try:
            rep = run(on_start=lambda n: bar.update(task, total=n), on_result=lambda r: bar.advance(task), **kw)
        except (UsageError, FileNotFoundError, ValueError, RuntimeError) as exc:
            _fail(str(exc))
        except KeyboardInterrupt:  # a second SIGTERM / Ctrl-C: what was written is complete, the rest is not
            _fail("aborted; every output written is complete (rerun the command to finish)", 130)
    for r in rep.failed:  # plain lines: one per file, never wrapped
        typer.echo(f"failed {r.input}: {r.reason}", err=True)
    _summary(console, rep)
    if stopped:
        from medrae.toolkit.stopping import INTERRUPTED

        left = sum(r.reason == INTERRUPTED for r in rep.results)
        typer.echo(f"stopped by {stopped[0]}: the files in flight were finished; {left} file(s) not started "
                   f"(rerun the command to finish them)", err=True)
    if report is not None:
        from medrae.toolkit.imageio import ImageError, write_atomic

        try:  # a temporary, synced, then renamed: a full disk leaves no partial report
            write_atomic(report, json.dumps(rep.to_json(), indent=1).encode(), overwrite=True)
        except ImageError as exc:
            typer.echo(f"error: {report}: report not written: {exc.reason}", err=True)
            raise typer.Exit(1)
    if stopped:
        raise typer.Exit(128 + int(stopped[1]))  # the shell's convention for a command ended by a signal
    raise typer.Exit(1 if rep.failed else 0)


@contextmanager
def _stop_on_signals():
    """During a batch, SIGTERM and Ctrl-C (SIGINT) ask it to stop after the files in flight
    (:data:`medrae.toolkit.stopping.STOP`); a second one aborts at once. Yields a list that holds
    the signal's name and number once one came."""
    import signal

    from medrae.toolkit.stopping import STOP

    stopped: list = []
    STOP.clear()

    def handle(signum, frame):  # noqa: ARG001
        if STOP.is_set():
            raise KeyboardInterrupt
        STOP.set()
        stopped[:] = [signal.Signals(signum).name, signum]
        typer.echo(f"{signal.Signals(signum).name}: stopping after the files in flight (again to abort)", err=True)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopped
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        STOP.clear()


def _check_report_path(report: Path) -> None:
    """Refuse a --report path that cannot take the report, before any work is done."""
    import os

    if report.is_dir():
        _fail(f"{report}: is a directory; --report takes a file path (e.g. {report / 'report.json'})")
    parent = report.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"{report}: cannot create the report's directory: {exc.strerror or exc}")
    if not os.access(parent, os.W_OK | os.X_OK):
        _fail(f"{report}: the directory {parent} is not writable")


def _summary(console, rep) -> None:
    from rich.table import Table

    t = rep.totals()
    table = Table(title=f"medrae {rep.command}", show_header=True)
    cols = ["files", "protected", "restored", "identical", "differs", "skipped", "failed"]
    cols = [c for c in cols if c == "files" or c == "failed" or t[c]]
    for c in cols + ["mean PSNR", "mean payload bits", "images/s"]:
        table.add_column(c, justify="right")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    table.add_row(*[str(t[c]) for c in cols], fmt(t["mean_psnr"], ".2f"), fmt(t["mean_payload_bits"], ".0f"), f"{t['images_per_second']:.1f}")
    console.print(table)
    if rep.cluster:
        nodes = ", ".join(f"{n} {d['files']} files ({d['images_per_second']:.1f}/s)" for n, d in t.get("per_node", {}).items())
        console.print(f"ray {rep.cluster['address']}: {rep.cluster['actors']} actors on {len(rep.cluster['nodes'])} node(s)"
                      + (f": {nodes}" if nodes else ""), highlight=False)
    if rep.mode:
        fooled = t.get("white_box_fooled")
        extra = f"; white-box classifier fooled on {fooled:.1%} of the protected images" if fooled is not None else ""
        console.print(f"perturbation: {rep.mode}{extra}", highlight=False)
        if t.get("without_pattern"):
            console.print(f"refined again without the transfer pattern on {t['without_pattern']} file(s), whose payload fit only "
                          f"coarser with it (--report: transfer_pattern false)", highlight=False)
    if rep.roi:
        spilled = t.get("rdh_in_roi") or 0
        most = t.get("roi_max_change")
        hidden = (f"; the hidden payload also used it on {spilled} file(s), where it only fit that way "
                  f"(largest change there: {most} level(s))") if spilled else ""
        console.print(f"untouched region (ROI): {rep.roi}{hidden}", highlight=False)
        if t.get("no_hiding_band"):
            console.print(f"the hidden payload fit only without the one-level band around the ROI on {t['no_hiding_band']} file(s) "
                          f"(--report: hiding_band 0; there it may move pixels next to the ROI by more than one level)", highlight=False)
        if t.get("roi_uncertain"):
            console.print(f"segmentation quality control flagged {t['roi_uncertain']} file(s) (--report: roi_flags)", highlight=False)


@app.command()
def keygen(keyfile: Path = typer.Argument(..., help="where to write the new key (mode 0600)")) -> None:
    """Create a new random 256-bit key file; refuses to overwrite."""
    from medrae.toolkit.keys import KeyFileError, keygen as make

    try:
        make(keyfile)
    except KeyFileError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {keyfile} (keep it secret: it restores every image protected with it)")


@app.command()
def protect(
    input: Path = typer.Argument(..., help="image file or directory (recursive): PNG, TIFF, JPEG, DICOM"),
    output: Path = typer.Argument(..., help="output file or directory (mirrors the input tree)"),
    key: Optional[Path] = typer.Option(None, "--key", help=KEY_HELP),
    strength: str = typer.Option("standard", "--strength", help="standard (PSNR ~35 dB, the image as read) or strong (the reference paper's image quality, ~30 dB: more unseen models fooled, about 2x slower); the lungs are kept the same at both"),
    eps: Optional[int] = typer.Option(None, "--eps", min=1, max=16, help="perturbation bound outside the lungs in 1/255 of the display window (default: the strength's, 16)", rich_help_panel=PERTURB),
    workers: int = typer.Option(0, "--workers", min=0, help="processes (0: one per core, max 4)"),
    report: Optional[Path] = typer.Option(None, "--report", help="write a JSON report here (per file: status, PSNR/SSIM, payload, white-box margin, ...)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing outputs (default: skip them, so a rerun resumes)"),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help=RAY_HELP),
    no_encrypt: bool = typer.Option(False, "--no-encrypt", help="keyless mode (the paper's): anyone with medrae can restore", rich_help_panel=PERTURB),
    refine_steps: Optional[int] = typer.Option(None, "--refine-steps", min=0, help="at most N sparse gradient steps on the white-box classifier (default 40); 0: the generator alone (~3x faster, far weaker)", rich_help_panel=PERTURB),
    white_box: str = typer.Option("resnet18", "--white-box", help="classifier(s) the refinement fools, comma-separated (each needs models/gradient_<name>.onnx)", rich_help_panel=PERTURB),
    margin: Optional[float] = typer.Option(None, "--margin", min=0, help="logit margin by which the white box must be wrong (default 1)", rich_help_panel=PERTURB),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="transfer pattern laid outside the ROI first (default: the shipped one; none: off)", rich_help_panel=PERTURB),
    pattern_eps: Optional[int] = typer.Option(None, "--pattern-eps", min=1, max=16, help="the transfer pattern's amplitude (default: the strength's, at most --eps)", rich_help_panel=PERTURB),
    public_placement: bool = typer.Option(False, "--public-placement", help="lay the pattern where it was trained, not where the key puts it (anyone with medrae can then subtract it)", rich_help_panel=PERTURB),
    transfer_steps: Optional[int] = typer.Option(None, "--transfer-steps", min=0, help="first N dense steps against the zoo surrogates, for models never seen (standard: off; strong: 10, 0 turns its stage off)", rich_help_panel=PERTURB),
    transfer_eps: Optional[int] = typer.Option(None, "--transfer-eps", min=1, max=16, help="with the transfer stage: its bound outside the ROI (default: strong's 14; 4, less in flat areas, at standard)", rich_help_panel=PERTURB),
    robust: bool = typer.Option(False, "--robust", help="also fool the classifier after a half-size-and-back resize (~4x slower)", rich_help_panel=PERTURB),
    roi_threshold: Optional[float] = typer.Option(None, "--roi-threshold", min=0.001, max=0.999, help="lung probability from which a pixel is ROI (default 0.01; 0.5: the segmenter's own mask)", rich_help_panel=LUNGS),
    roi_margin: Optional[int] = typer.Option(None, "--roi-margin", min=0, max=64, help="pixels (224x224 view) the ROI is widened by (default 4)", rich_help_panel=LUNGS),
    roi_convex: bool = typer.Option(False, "--roi-convex", help="widen each lung of the ROI to its convex hull first", rich_help_panel=LUNGS),
    on_uncertain_roi: str = typer.Option("widen", "--on-uncertain-roi", help="a lung mask quality control flags: widen (a conservative ROI), skip (write nothing), proceed (as it is)", rich_help_panel=LUNGS),
    lungs_exact: bool = typer.Option(False, "--lungs-exact", help="never let the hidden payload into the ROI: coarsen or refuse instead", rich_help_panel=LUNGS),
    rdh_in_roi: bool = typer.Option(False, "--rdh-in-roi", help="let every pass of the hidden payload use the lungs too (several levels there)", rich_help_panel=LUNGS),
    max_rdh_change: int = typer.Option(0, "--max-rdh-change", min=0, help="coarsen until hiding moves no pixel by more than N levels; 0: no limit", rich_help_panel=LUNGS),
    method: Optional[str] = typer.Option(None, "--rdh", help="reversible data hiding: pee (default) or hs", rich_help_panel=LUNGS),
    codec: Optional[str] = typer.Option(None, "--codec", help="perturbation codec (default: auto)", rich_help_panel=LUNGS),
    models: Optional[Path] = typer.Option(None, "--models", help="model directory (default: the shipped models)", rich_help_panel=RUNTIME),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda", rich_help_panel=RUNTIME),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="images per network batch and per worker chunk", rich_help_panel=RUNTIME),
    gpus_per_actor: float = typer.Option(0.0, "--gpus-per-actor", min=0.0, help="with --ray: GPUs reserved per actor (0.25: four share one)", rich_help_panel=RUNTIME),
) -> None:
    """Protect images: adversarial outside the lungs, restorable with the key."""
    from medrae.toolkit.batch import protect_paths
    from medrae.toolkit.protect import MODELS_DIR
    from medrae.toolkit.settings import ProtectSettings

    if device not in ("auto", "cpu", "cuda"):
        _fail(f"--device must be auto, cpu or cuda, got {device!r}")
    if no_encrypt:
        if key is not None:
            _fail("--no-encrypt and --key exclude each other")
        typer.echo("warning: --no-encrypt: the payload is not encrypted; anyone with medrae can restore these images", err=True)
        k = None
    else:
        k = _key(key, required=True)
    if rdh_in_roi and lungs_exact:
        _fail("--rdh-in-roi and --lungs-exact exclude each other")
    if gpus_per_actor and ray is None:
        _fail("--gpus-per-actor needs --ray ADDRESS")
    from medrae.kernels.patterns import pattern_id

    try:
        pattern_number = None if pattern is None else pattern_id(pattern)
    except ValueError as exc:
        _fail(f"--pattern: {exc}")
    if on_uncertain_roi not in ("widen", "skip", "proceed"):
        _fail(f"--on-uncertain-roi must be widen, skip or proceed, got {on_uncertain_roi!r}")
    from medrae.toolkit.settings import STRENGTHS

    if strength not in STRENGTHS:
        _fail(f"--strength must be one of {', '.join(STRENGTHS)}, got {strength!r}")
    settings = ProtectSettings(strength=strength, pattern_eps=pattern_eps, keyed_pattern=not public_placement, eps=eps, models=models or MODELS_DIR, device=device, batch_size=batch_size, method=method, codec=codec,
                               with_ssim=report is not None, max_rdh_change=max_rdh_change,
                               max_roi_change=None if rdh_in_roi else 0 if lungs_exact else 1, refine_steps=refine_steps, robust=robust,
                               gradients=tuple(f"gradient_{n.strip()}.onnx" for n in white_box.split(",") if n.strip()), margin=margin,
                               roi_margin=roi_margin, roi_threshold=roi_threshold, roi_convex=roi_convex, transfer_steps=transfer_steps,
                               transfer_eps=transfer_eps, on_uncertain_roi=on_uncertain_roi, pattern=pattern_number)
    _run_batch(protect_paths, "protect", report, src=input, dst=output, key=k, settings=settings, workers=workers, overwrite=overwrite, ray=ray,
               gpus_per_actor=gpus_per_actor)


@app.command()
def restore(
    input: Path = typer.Argument(..., help="protected file or directory"),
    output: Path = typer.Argument(..., help="output file or directory"),
    key: Optional[Path] = typer.Option(None, "--key", help=KEY_HELP + " (not needed for --no-encrypt files)"),
    workers: int = typer.Option(0, "--workers", min=0, help="processes (0: one per core, max 4)"),
    report: Optional[Path] = typer.Option(None, "--report"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help=RAY_HELP),
    allow_keyless: bool = typer.Option(False, "--allow-keyless", help=ALLOW_KEYLESS_HELP),
) -> None:
    """Restore the originals' pixels, bit for bit, checked against the SHA-256 inside (no neural network runs)."""
    from medrae.toolkit.batch import restore_paths

    _run_batch(restore_paths, "restore", report, src=input, dst=output, key=_key(key, required=False), workers=workers, overwrite=overwrite, ray=ray,
               allow_keyless=allow_keyless)


@app.command()
def verify(
    original: Path = typer.Argument(..., help="original file or directory"),
    protected: Path = typer.Argument(..., help="protected file or directory"),
    key: Optional[Path] = typer.Option(None, "--key", help=KEY_HELP),
    workers: int = typer.Option(0, "--workers", min=0, help="processes (0: one per core, max 4)"),
    report: Optional[Path] = typer.Option(None, "--report"),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help=RAY_HELP),
    allow_keyless: bool = typer.Option(False, "--allow-keyless", help=ALLOW_KEYLESS_HELP),
) -> None:
    """Restore each protected file in memory and compare its pixels with the original's, bit for bit
    (exit 0 only if all are identical). Pixels, shape and sample type are compared, not file bytes:
    a restored PNG or TIFF has the original's pixels but is written by medrae's encoder, so its
    bytes (compression, metadata chunks) may differ (README "What is identical after restore")."""
    from medrae.toolkit.batch import verify_paths

    _run_batch(verify_paths, "verify", report, original=original, protected=protected, key=_key(key, required=False), workers=workers, ray=ray,
               allow_keyless=allow_keyless)


@app.command()
def info(file: Path = typer.Argument(..., help="an image file, or a directory (one line per image)")) -> None:
    """Is FILE protected? Format version, RDH method, codec, payload bits, encryption, and the share
    of the image the hiding left bit-exact (protect keeps it out of the lungs) (no key needed).
    On a directory: one line per image; exit 0 only if every image is protected."""
    from medrae.toolkit.filework import info_entry

    if file.is_dir():
        _info_tree(file)
        return
    d = info_entry(file)
    status = d.pop("status")
    if status == "failed":
        _fail(f"{file}: {d['reason']}", 1)
    if status == "not protected":
        typer.echo(f"{file}: not protected by medrae")
        raise typer.Exit(1)
    width = max(map(len, d))
    for k, v in d.items():
        typer.echo(f"{k:<{width}} {v}")


def _info_tree(root: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from medrae.toolkit.filework import info_tree

    entries = info_tree(root)
    if not entries:
        _fail(f"{root}: no images below it (PNG, TIFF, JPEG or DICOM)", 1)
    table = Table("file", "status", "strength", "method", "codec", "payload bits", "encrypted", "ROI share", "max change in ROI")
    for e in entries:
        rel = str(Path(e["file"]).relative_to(root))
        if e["status"] == "protected":
            table.add_row(rel, e["status"], e["strength"], e["rdh_method"], e["codec"], str(e["payload_bits"]), "yes" if e["encrypted"] else "no: keyless, anyone could have made it",
                          f"{e['rdh_frozen_fraction']:.3f}", "any" if e["rdh_roi_max_change"] is None else str(e["rdh_roi_max_change"]))
        else:
            table.add_row(rel, e["status"] + (f": {e['reason']}" if "reason" in e else ""), *[""] * 7)
    Console(width=160).print(table)
    counts = {s: sum(e["status"] == s for e in entries) for s in ("protected", "not protected", "failed")}
    typer.echo(f"{len(entries)} image{'s' * (len(entries) != 1)}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if counts["protected"] != len(entries):
        raise typer.Exit(1)


def _forward(main, args: List[str]) -> None:
    try:
        rc = main(args)
    except ModuleNotFoundError as exc:
        typer.echo(f"error: {exc.name} is not installed; install the training extra: pip install 'medrae[train]'", err=True)
        raise typer.Exit(2)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(rc or 0)


@app.command(context_settings=PASS)
def train(ctx: typer.Context, task: str = typer.Argument(..., help="segmenter | classifier | generator | zoo")) -> None:
    """Train a model (options: medrae train TASK --help)."""
    if task in ("segmenter", "classifier"):
        from medrae.models.train import main

        _forward(main, [task, *ctx.args])
    elif task == "generator":
        from medrae.models.train_generator import main

        _forward(main, list(ctx.args))
    elif task == "zoo":  # the transfer lab's independently trained classifiers (models/zoo.py)
        from medrae.models.zoo import main

        _forward(main, ["train", *ctx.args])
    else:
        typer.echo(f"error: unknown task {task!r}; choose segmenter, classifier, generator or zoo", err=True)
        raise typer.Exit(2)


@app.command(context_settings=PASS)
def export(ctx: typer.Context) -> None:
    """Export a checkpoint to ONNX with parity checks and a model card (options: --help)."""
    from medrae.export.onnx_export import main

    _forward(main, list(ctx.args))


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@app.command()
def evaluate(
    data: Path = typer.Argument(..., help="dataset directory (<class>/images, optional <class>/masks)"),
    report: Path = typer.Option(..., "--report", help="output directory: results.json, report.md, report.html"),
    methods: str = typer.Option("default", "--methods", help="comma-separated methods, 'default' or 'all'"),
    eps: str = typer.Option("1,2,4,8", "--eps", help="comma-separated budgets in 1/255 units"),
    models: Optional[Path] = typer.Option(None, "--models", help="model directory (default: the shipped models)"),
    limit: int = typer.Option(0, "--limit", min=0, help="evaluate only this many images (class-balanced); 0: all"),
    conditions: str = typer.Option("", "--conditions", help="the white-box classifier after the attacker's preprocessing, comma-separated, or 'all' (Table 6)"),
    transfer: bool = typer.Option(False, "--transfer", help="the transfer matrix on the zoo's held-out targets, with the noise floor (Table 8)"),
    zoo: Path = typer.Option(Path("runs/zoo"), "--zoo", help="where python -m medrae.models.zoo train put the zoo"),
    transfer_conditions: str = typer.Option("file,jpeg90,jpeg75", "--transfer-conditions", help="the held-out targets read the file as is, re-encoded as JPEG (jpeg90, jpeg75) and/or resized to their input size by another method first (nearest, bilinear_noaa, area, bicubic)"),
    quick: bool = typer.Option(False, "--quick", help="CI subset: 30 images (unless --limit), eps 8, C&W 5 steps"),
    frontier: bool = typer.Option(False, "--frontier", help="the strength frontier: every --strength level and eps, PSNR against white-box and held-out ASR, the same-PSNR noise floor, adaptive attacks (--methods none: only it)"),
) -> None:
    """Every method (ours, FGSM, BIM, PGD, C&W, Liu-RAE, ...) on a dataset directory: the paper's
    tables, transfer to the held-out zoo (--transfer), reports. Needs the train extra (PyTorch)."""
    try:
        from medrae.evaluation.evaluate import ALL_METHODS, CONDITIONS, DEFAULT_METHODS, EvaluateSettings, run
        from medrae.toolkit.protect import MODELS_DIR

        chosen = {"all": ALL_METHODS, "default": DEFAULT_METHODS, "none": ()}.get(methods, None)
        chosen = _csv(methods) if chosen is None else chosen
        settings = EvaluateSettings(
            methods=chosen, eps=(8,) if quick else tuple(int(e) for e in _csv(eps)), models=models or MODELS_DIR,
            limit=limit or (30 if quick else 0), cw_steps=5 if quick else 20,
            conditions=tuple(CONDITIONS) if conditions == "all" else _csv(conditions),
            transfer=transfer, zoo=zoo, transfer_conditions=_csv(transfer_conditions), frontier=frontier)
        run(data, report, settings)
    except ModuleNotFoundError as exc:
        _fail(f"{exc.name} is not installed; install the training extra: pip install 'medrae[train]'")
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


@app.command("evaluate-models", context_settings=PASS)
def evaluate_models(ctx: typer.Context) -> None:
    """Measure the shipped ONNX models on a dataset directory (options: --help)."""
    from medrae.evaluation.evaluate_models import main

    _forward(main, list(ctx.args))


@app.command()
def demo(outdir: Optional[str] = typer.Argument(None, help="where to write the phantom images (default: a temporary directory)")) -> None:
    """Protect → restore → verify on generated phantoms with the shipped models."""
    from medrae.toolkit.demo import main

    try:
        rc = main([outdir] if outdir else [])
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # ModelsError is a FileNotFoundError: one line, no traceback
        _fail(str(exc))
    raise typer.Exit(rc)


if __name__ == "__main__":
    app()
