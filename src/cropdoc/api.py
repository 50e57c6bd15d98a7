"""The Python API: train, load, predict, evaluate and export in a few lines.

>>> import cropdoc  # doctest: +SKIP
>>> run = cropdoc.train("PlantVillage/", arch="efficientnet_b0", out="runs/effb0")  # doctest: +SKIP
>>> model = cropdoc.load(run.bundle_dir)  # doctest: +SKIP
>>> model.predict(["leaf.jpg"])[0].best.name  # doctest: +SKIP
'Tomato___Late_blight'

Everything the ``cropdoc`` command does goes through these functions; the CLI only parses
options and prints. Options are the names of :data:`cropdoc.config.TRAIN_OPTIONS`, the
same as the CLI's (``image_size=`` for ``--image-size``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .bundle import BundleMeta, OodInfo, read_meta, resolve_bundle_dir
from .config import TrainConfig, load_config, merge_overrides, options_to_overrides
from .diseases import disease_table
from .errors import ConfigError
from .evaluation import EvaluationResult, evaluate_bundle, fit_run_ood
from .export import (
    ExportReport,
    WebExport,
    collect_images,
    ensure_export,
    export_int8,
    export_onnx,
    export_tflite,
    export_web,
)
from .inference import Prediction, Predictor, load_predictor
from .training import TrainResult
from .workflows import Comparison, run_demo
from .workflows import compare as compare_archs
from .workflows import train as train_workflow

__all__ = ["Model", "Run", "compare", "demo", "load", "train"]

Progress = Callable[[int, int], None]
#: What :meth:`Model.export` writes.
EXPORT_FORMATS = ("onnx", "tflite", "web")
#: What :meth:`Model.predict` takes: paths (files or folders of images), PIL images, or
#: ``uint8`` arrays ``(H, W, 3)`` in RGB.
ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray


@dataclass(frozen=True)
class Run:
    """A finished training run: where it is and how it scored.

    Attributes:
        run_dir: the run directory (``history.csv``, ``curves.png``, ``report.md``, ...).
        bundle_dir: the trained model bundle (``run_dir / "model"``).
        result: the run's summary (``summary.json``): best epoch, test metrics, time.
    """

    run_dir: Path
    bundle_dir: Path
    result: TrainResult

    @property
    def test(self) -> dict[str, float]:
        """Test-split accuracy, macro-F1, loss and image count of the best weights."""
        return self.result.test

    def load(self, **kwargs: Any) -> Model:
        """The trained model (see :func:`load`)."""
        return load(self.bundle_dir, **kwargs)


class Model:
    """A trained bundle, ready to predict, evaluate and export.

    Use :func:`load` to make one. The backend (``torch``, ``onnx``, ``onnx-int8``) only
    changes who computes the logits; preprocessing and calibration come from the bundle.
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        *,
        backend: str = "auto",
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        self.path = resolve_bundle_dir(bundle)
        self.backend = backend
        self.device = device
        self.threads = threads
        self._predictor: Predictor | None = None

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, arch={self.meta.arch!r}, backend={self.backend!r})"

    @property
    def meta(self) -> BundleMeta:
        """The bundle's ``model.json`` (architecture, classes, preprocessing, metrics)."""
        return read_meta(self.path)

    @property
    def classes(self) -> list[str]:
        """Class names in the order of the model's outputs."""
        return self.meta.classes

    @property
    def predictor(self) -> Predictor:
        """The loaded predictor; an ONNX backend exports the bundle first when needed."""
        if self._predictor is None:
            ensure_export(self.path, self.backend)
            self._predictor = load_predictor(
                self.path, backend=self.backend, device=self.device, threads=self.threads
            )
        return self._predictor

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        top_k: int = 3,
        batch_size: int | None = None,
        progress: Progress | None = None,
    ) -> list[Prediction]:
        """Calibrated top-k predictions, one per image, best class first.

        A folder stands for the images in it. A bad image gives a :class:`Prediction`
        whose ``error`` says why; the other images are still predicted.
        """
        given = {"batch_size": batch_size} if batch_size is not None else {}
        return self.predictor.predict(
            list(_sources(images)), top_k=top_k, progress=progress, **given
        )

    def fit_ood(
        self,
        *,
        kind: str | None = None,
        target: float | None = None,
        data: str | os.PathLike[str] | None = None,
        workers: int = 0,
        device: str | None = None,
    ) -> OodInfo:
        """Refit the score the model abstains with, on its run's val split (``model.json``).

        Training does this already (with the default score); call it to change the score
        or the false-abstain target of an existing bundle, or to give one trained by an
        older cropdoc a score. ``kind``: ``energy`` (default), ``msp`` or ``mahalanobis``;
        ``target``: the share of val images it may turn away (default 0.05); ``data``:
        where the dataset is now, when it moved since training.
        """
        given = {k: v for k, v in {"kind": kind, "target": target}.items() if v is not None}
        info = fit_run_ood(self.path, data=data, workers=workers, device=device, **given)
        self._predictor = None  # the loaded one holds the old threshold
        return info

    def evaluate(
        self,
        data: str | os.PathLike[str],
        *,
        out: str | os.PathLike[str] | None = None,
        split: str | None = None,
        split_file: str | os.PathLike[str] | None = None,
        ignore_unknown: bool = False,
        ood: str | os.PathLike[str] | None = None,
        robustness: bool = False,
        variant: str | None = None,
        batch_size: int = 64,
        workers: int | None = None,
        device: str | None = None,
        scan_progress: Progress | None = None,
        progress: Progress | None = None,
    ) -> EvaluationResult:
        """Metrics, plots and ``report.md`` for ``data`` (default out: ``<run>/eval``).

        ``split``: ``test``/``val``/``train`` of the run's split, or ``all``; by default
        the run's test split when ``data`` is the folder it was trained on (exactly: a
        missing file is an error), a pre-split copy's test folder, else the images of
        ``data`` the run did not train on. ``ignore_unknown``: skip class folders the model
        does not know instead of failing. ``variant``: the variant folder of ``data``.
        ``ood``: a folder of images of none of the model's classes; adds AUROC, FPR at
        95 % TPR and abstain rates on both sets (``metrics["ood"]["ood_set"]``) and
        ``ood_histogram.png``. ``robustness``: macro-F1 and abstain rate under phone-photo
        corruptions at three severities (``robustness.json``, ``robustness.png``).
        """
        out_dir = Path(out) if out is not None else self.path.parent / "eval"
        return evaluate_bundle(
            self.path,
            data,
            out_dir=out_dir,
            split=split,
            split_file=split_file,
            ignore_unknown=ignore_unknown,
            ood_dir=ood,
            robustness=robustness,
            variant=variant,
            batch_size=batch_size,
            workers=workers,
            device=device,
            scan_progress=scan_progress,
            progress=progress,
        )

    def export(
        self,
        format: str = "onnx",
        *,
        int8: bool = False,
        images: Sequence[str | os.PathLike[str]] | None = None,
        out: str | os.PathLike[str] | None = None,
        force: bool = False,
        min_agreement: float | None = None,
        ort_web: str | os.PathLike[str] | None = None,
        diseases: str | os.PathLike[str] | None = None,
    ) -> ExportReport | WebExport:
        """Export and verify against PyTorch (recorded in ``model.json``).

        Args:
            format: ``onnx``, ``tflite`` (LiteRT, for phone apps; needs
                ``pip install 'cropdoc[tflite]'``) or ``web`` (a static folder that
                diagnoses in the browser, offline after the first visit; returns a
                :class:`~cropdoc.export.WebExport`).
            int8: quantize to INT8 (the fp32 export is made first when missing); refused
                below ``min_agreement`` top-1 agreement with PyTorch unless ``force``.
                ``web``: make the INT8 ONNX first; the page runs it only if it passed.
            images: files or folders to verify on (and calibrate INT8 with); default: the
                run's own split.
            out: the file to write (default: next to the bundle); ``web``: the folder
                (default: ``web/`` next to the bundle).
            force: write an export that failed its check.
            ort_web: ``web``: a local onnxruntime-web tarball or unpacked folder
                (default: fetched once with npm, hash-checked, cached).
            diseases: ``web``: a disease table file to ship instead of the packaged one
                (the format of ``--diseases``).
        """
        if format not in EXPORT_FORMATS:
            raise ConfigError(
                f"unknown export format {format!r}; choose {', '.join(EXPORT_FORMATS)}"
            )
        self._predictor = None  # a new export may change what "auto" loads
        given = {"min_agreement": min_agreement} if min_agreement is not None else {}
        if format == "web":
            info = disease_table(diseases).info if diseases is not None else None
            return export_web(
                self.path, out=out, ort_web=ort_web, int8=int8, calibration=images, diseases=info
            )
        if format == "tflite":
            return export_tflite(self.path, int8=int8, out=out, data=images, force=force, **given)
        if not int8:
            return export_onnx(self.path, out=out, data=images, force=force)
        return export_int8(self.path, calibration=images, out=out, force=force, **given)


def _sources(images: ImageInput | Sequence[ImageInput]) -> Iterable[Any]:
    if isinstance(images, str | os.PathLike | Image.Image | np.ndarray):
        images = [images]
    paths: list[Any] = []
    for item in images:
        if isinstance(item, np.ndarray):
            paths.append(_array_image(item))
        elif isinstance(item, str | os.PathLike) and Path(item).is_dir():
            paths.extend(collect_images([item]))
        else:
            paths.append(item)
    return paths


def _array_image(array: np.ndarray) -> Image.Image:
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ConfigError(
            f"an image array must be uint8 of shape (H, W, 3) in RGB, got {array.dtype} "
            f"{tuple(array.shape)}"
        )
    return Image.fromarray(array, mode="RGB")


def train(
    data: str | os.PathLike[str] | None,
    *,
    out: str | os.PathLike[str] = "runs/train",
    config: str | os.PathLike[str] | TrainConfig | None = None,
    resume: bool = False,
    show_progress: bool = False,
    scan_progress: Progress | None = None,
    **options: Any,
) -> Run:
    """Train a classifier on a folder of leaf photos (one sub-folder per class).

    Runs the three-stage recipe, keeps the best model on validation macro-F1, fits the
    temperature, evaluates the test split and writes ``report.md``.

    Args:
        data: the dataset folder; None with ``resume`` (the run knows it).
        out: the run directory.
        config: a YAML file or a :class:`~cropdoc.config.TrainConfig`; options win.
        resume: continue the interrupted run in ``out``.
        show_progress: progress bars while training.
        scan_progress: ``(done, total)`` callback while scanning images.
        **options: training options (:data:`cropdoc.config.TRAIN_OPTIONS`), e.g.
            ``arch="mobilenet_v3_small"``, ``weights="none"``, ``stage_epochs=[5, 10, 10]``,
            ``image_size=224``, ``batch_size=32``.

    Returns:
        The finished :class:`Run`.

    Raises:
        CropdocError: bad data, options, weights or checkpoint (the message says what to do).
    """
    run_dir = Path(out)
    cfg = _config(config, options, run_dir if resume else None)
    result = train_workflow(
        data,
        run_dir,
        cfg,
        resume=resume,
        show_progress=show_progress,
        scan_progress=scan_progress,
    )
    return Run(run_dir=result.run_dir, bundle_dir=result.bundle_dir, result=result)


def _config(
    config: str | os.PathLike[str] | TrainConfig | None,
    options: dict[str, Any],
    resume_dir: Path | None,
) -> TrainConfig:
    overrides = options_to_overrides(**options)
    if isinstance(config, TrainConfig):
        return merge_overrides(config, overrides)
    if config is None and resume_dir is not None and (resume_dir / "config.yaml").is_file():
        # Resume with the run's own settings, only the options given now override them:
        # from the defaults, the runtime would silently switch e.g. fp32 to bf16.
        config = resume_dir / "config.yaml"
    return load_config(config, overrides)


def load(
    bundle: str | os.PathLike[str],
    *,
    backend: str = "auto",
    device: str = "auto",
    threads: int | None = None,
) -> Model:
    """Load a trained bundle (a run's ``model/`` folder, or the run directory).

    Args:
        bundle: the bundle folder or its run directory.
        backend: ``auto`` (an up-to-date ONNX export on a CPU, else torch), ``torch``,
            ``onnx`` (exported first when missing) or ``onnx-int8`` (``export(int8=True)``).
        device: ``auto``, ``cpu``, ``cuda`` (torch backend).
        threads: compute threads for predictions (default: the runtime's choice).

    Raises:
        BundleError: no bundle there, or a corrupt one.
    """
    model = Model(bundle, backend=backend, device=device, threads=threads)
    model.meta  # noqa: B018 -- validate model.json now, not at the first prediction
    return model


def compare(
    data: str | os.PathLike[str],
    *,
    archs: Sequence[str] = (),
    out: str | os.PathLike[str] = "runs/compare",
    runs: Sequence[str | os.PathLike[str]] = (),
    config: str | os.PathLike[str] | TrainConfig | None = None,
    latency_budget_ms: float | None = None,
    device: str | None = None,
    workers: int | None = None,
    show_progress: bool = False,
    scan_progress: Progress | None = None,
    **options: Any,
) -> Comparison:
    """Train each architecture on one split, score all on its test set, recommend one.

    Args:
        data: the dataset folder.
        archs: architectures to train into ``out/<arch>`` (finished runs there are reused,
            interrupted ones resumed).
        out: where the runs, ``comparison.md/.csv/.json`` and the plots go.
        runs: finished run directories to include without training.
        config: shared training settings (a YAML file or a config); ``options`` win.
        latency_budget_ms: recommend only models at most this slow (batch-1 mean).
        device: evaluation and profiling device.
        workers: evaluation loader workers.
        show_progress: training progress bars.
        scan_progress: ``(done, total)`` while scanning images.
        **options: training options, as for :func:`train`.
    """
    return compare_archs(
        data,
        out,
        archs=list(archs),
        runs=list(runs),
        config=_config(config, {"workers": workers, **options}, None),
        latency_budget_ms=latency_budget_ms,
        device=device,
        workers=workers,
        show_progress=show_progress,
        scan_progress=scan_progress,
    )


def demo(
    out: str | os.PathLike[str] = "demo-run",
    *,
    images_per_class: int = 200,
    seed: int = 42,
    weights: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    show_progress: bool = False,
    scan_progress: Progress | None = None,
) -> Run:
    """Generate leaf images, train through the three stages, evaluate (CPU minutes).

    From random weights by default (offline); with a local pretrained ``weights`` file and
    its ``arch``, transfer learning from it.
    """
    result = run_demo(
        out,
        images_per_class=images_per_class,
        seed=seed,
        weights=weights,
        arch=arch,
        show_progress=show_progress,
        scan_progress=scan_progress,
    )
    return Run(run_dir=result.run_dir, bundle_dir=result.bundle_dir, result=result)
