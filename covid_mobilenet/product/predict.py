"""Apply a trained model to images: one row per image, the predicted class and every class's probability.

    python -m covid_mobilenet.predict IMAGES_OR_FOLDERS... [--run results/<experiment>/seed-<seed> | --model FILE]
                                      [--csv FILE] [--gradcam FOLDER] [--rendered FOLDER] [--raw]

A run's probabilities are calibrated by default: its temperature T, fitted on its validation images
(``metrics.json``'s ``calibration``), gives softmax(log p / T); ``--raw`` prints the model's own softmax.
Each row also says the run's answer: the predicted class, or ``uncertain`` when the calibrated confidence
is below the run's abstain threshold; and, for each class with an operating point at a target sensitivity
(COVID 0.95 by default), whether the image is above that point's threshold. A model without a run's
calibration (a bare ``--model`` file, a run of before calibration) gives its raw probabilities and says so.

Images are decoded exactly as the training pipeline decodes them (``data.pipeline.load_image``: PNG or
JPEG of any size, grayscale, RGB, RGBA or 16-bit, resized to the model's side), and the model
takes raw pixels (its scaling is inside it). DICOM films are rendered to 8-bit grayscale first (``data/dicom.py``:
modality LUT, the file's window or VOI LUT, MONOCHROME1 inverted); ``--rendered FOLDER`` writes every input as the
PNG the model is given, before resizing. Files are recognised by their content; a folder's other files, and any file
that cannot be read, are named with the reason and skipped: the exit status is 1 when any was, 2 when no model could
be found. Nothing from a DICOM header but its technical fields (the view, the modality) is printed or written.

A run's unfamiliar-image guard (``analysis/unfamiliar.py``, saved beside its model) scores how unlike the run's
training images each image is: above its threshold the row's ``unfamiliar`` is yes and its answer ``unfamiliar``,
never a class, whatever the confidence. Without ``--run`` or
``--model`` the best finished run of the sweep on the real data (highest validation accuracy, trained on full
images: ``analysis.results.best_run``; test images choose nothing) is used, and named.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ..analysis.results import RunNotFound, best_run  # noqa: E402
from ..common.paths import PROJECT_ROOT  # noqa: E402
from ..common.run_layout import GUARD_FILE, METRICS_FILE, MODEL_FILE  # noqa: E402
from ..data.dicom import Film  # noqa: E402
from ..data.layout import STUDY_CLASSES  # noqa: E402
from .inputs import NOT_AN_IMAGE, Decoded, decode, image_files, input_kind, output_names  # noqa: E402,F401 (predict's API)

DEFAULT_RESULTS = PROJECT_ROOT / "results"


class PredictError(RuntimeError):
    """No model to predict with, or unusable arguments; the message says what to do."""


@dataclass
class TrainedModel:
    model: object  # keras.Model
    class_names: list[str]
    image_size: int
    source: str  # which run or file, for the user
    calibration: dict | None = None  # metrics.json's "calibration": temperature, operating points, abstain threshold
    input_region: str = "full"  # what the model was trained on: full images, or a region (run_all.py --regions)
    guard: object | None = None  # analysis.unfamiliar.Guard, saved beside the model; None for a run made before it
    _outputs: object | None = field(default=None, repr=False)  # model.pooled.PooledOutputs, made on first use

    def region_warning(self) -> str | None:
        return region_warning(self.input_region)

    def outputs(self, pixels, batch_size: int = 32):
        """(class probabilities, unfamiliarity scores or None without a guard) of uint8 images, in one pass."""
        if self.guard is None:
            return class_probabilities(self, pixels, batch_size), None
        if self._outputs is None:
            from ..model.pooled import PooledOutputs

            self._outputs = PooledOutputs(self.model)
        probabilities, features = self._outputs(pixels, batch_size)
        return probabilities, self.guard.scores(features)


def region_warning(input_region: str) -> str | None:
    """Why a model's answers on whole films mean less than its test accuracy (a run trained on the lungs alone or
    with them blacked out, a shortcut check), or None for one trained on full images."""
    if input_region == "full":
        return None
    shown = "the lungs alone, the rest blacked out" if input_region == "lungs" else "the lungs blacked out"
    return (f"trained on {shown} (input_region={input_region}, a shortcut check): it never saw a whole film, "
            "and its answers on whole images are not what its test accuracy measured")


def load_trained(run: Path | None = None, model_file: Path | None = None) -> TrainedModel:
    """A run's model with its class names and image size (from its metrics.json), or a .keras file's."""
    import keras

    if run is not None:
        model_file = Path(run) / MODEL_FILE
        if not model_file.is_file():
            raise PredictError(f"{run} holds no {MODEL_FILE}: is it a finished run's folder (results/<experiment>/seed-<seed>)?")
    model_file = Path(model_file)
    if not model_file.is_file():
        raise PredictError(f"Model file {model_file} does not exist.")
    if model_file.suffix != ".keras":
        raise PredictError(f"Model file {model_file}: only .keras files are loaded (Keras' own format, read with safe_mode "
                           "on, so that a model file cannot run code); save the model with model.save('model.keras').")
    try:
        model = keras.saving.load_model(model_file, compile=False, safe_mode=True)  # no code from the file is run
    except Exception as exc:
        raise PredictError(f"{model_file} cannot be loaded as a Keras model: {str(exc).strip()[:300]}") from None
    metrics_file = model_file.parent / METRICS_FILE
    outputs = int(model.output_shape[-1])
    calibration, region = None, "full"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        class_names, calibration = metrics["dataset"]["class_names"], metrics.get("calibration")
        region = metrics.get("params", {}).get("input_region", "full")
    elif outputs == len(STUDY_CLASSES):
        class_names = list(STUDY_CLASSES)  # the data set's folders, in the order the loader sorts them
    else:
        class_names = [f"class_{i}" for i in range(outputs)]
    guard = saved_guard(model, model_file.parent / GUARD_FILE)
    return TrainedModel(model, class_names, int(model.input_shape[1]), str(run or model_file), calibration, region, guard)


def saved_guard(model, path: Path):
    """The unfamiliar-image guard saved beside a model (``analysis.unfamiliar.Guard``), or None when there is none;
    ``PredictError`` when it scores another number of features than the model's backbone gives (another model's)."""
    if not path.is_file():
        return None
    from ..analysis.unfamiliar import Guard
    from ..model.gradcam import GradCamError, find_backbone

    guard = Guard.load(path)
    try:
        features = int(find_backbone(model).output.shape[-1])
    except GradCamError:
        features = None
    if features != guard.dimensions:
        raise PredictError(f"{path} scores {guard.dimensions} features per image, and the model beside it gives "
                           f"{features}: the guard belongs to another model. Rerun the run, or delete {path.name} to "
                           "predict without it.")
    return guard


def class_probabilities(trained: TrainedModel, pixels, batch_size: int = 32):
    """Class probabilities (float64, rows summing to 1) for a batch of uint8 images."""
    import numpy as np

    if not len(pixels):
        return np.zeros((0, len(trained.class_names)))
    probabilities = np.asarray(trained.model.predict(pixels, batch_size=batch_size, verbose=0), dtype=np.float64)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


UNCERTAIN = "uncertain"
UNFAMILIAR = "unfamiliar"


def prediction_table(paths: list[Path], probabilities, class_names: list[str], calibration: dict | None = None,
                     *, raw: bool = False, unfamiliarity=None, guard_threshold: float | None = None,
                     films: list[Film | None] | None = None):
    """One row per image: the predicted class, the run's answer and decisions (with a calibration), whether it is
    unfamiliar (with a guard's ``unfamiliarity`` scores and threshold), and the probabilities: calibrated unless
    ``raw`` or there is no calibration (column ``probabilities`` says which). With DICOM inputs (``films``), the
    view of each (ViewPosition) and a warning for a lateral one."""
    import numpy as np
    import pandas as pd

    from ..analysis.calibration import temperature_scale

    table = pd.DataFrame({"path": [str(p) for p in paths],
                          "predicted": [class_names[i] for i in probabilities.argmax(axis=1)] if len(paths) else []})
    shown = probabilities
    if calibration is not None or unfamiliarity is not None:
        table["answer"] = table["predicted"]
    if calibration is not None:
        calibrated = temperature_scale(probabilities, calibration["temperature"]) if len(paths) else probabilities
        abstain = calibration["abstain"]
        sure = calibrated.max(axis=1) >= (abstain["threshold"] if abstain["reached"] else np.inf)  # not reached: none
        table["answer"] = table["answer"].where(sure, UNCERTAIN) if len(paths) else []
        for name, points in calibration["operating_points"].items():
            if "target_sensitivity" in points:
                point = points["target_sensitivity"]
                flagged = calibrated[:, class_names.index(name)] >= point["threshold"] if len(paths) else []
                table[f"{name} at sensitivity {point['target']:g}"] = ["yes" if f else "no" for f in flagged]
        shown = probabilities if raw else calibrated
    if unfamiliarity is not None:
        unfamiliar = np.asarray(unfamiliarity) > guard_threshold
        table["unfamiliar"] = ["yes" if u else "no" for u in unfamiliar]
        table["unfamiliarity"] = np.asarray(unfamiliarity, float)
        table["answer"] = table["answer"].where(~unfamiliar, UNFAMILIAR) if len(paths) else []
    if films is not None and any(films):
        table["view"] = [(film.view or "not given") if film else "" for film in films]
        table["warning"] = [(film.view_warning() or "") if film else "" for film in films]
    table["probabilities"] = ("raw" if raw or calibration is None else f"calibrated (T={calibration['temperature']:.2f})")
    for i, name in enumerate(class_names):
        table[f"p_{name}"] = shown[:, i] if len(paths) else []
    return table


def run_table(trained: TrainedModel, decoded: Decoded, *, raw: bool = False, batch_size: int = 32):
    """``prediction_table`` of decoded inputs with a trained model: its probabilities, calibration and guard."""
    probabilities, unfamiliarity = trained.outputs(decoded.pixels, batch_size)
    return prediction_table(decoded.paths, probabilities, trained.class_names, trained.calibration, raw=raw,
                            unfamiliarity=unfamiliarity, films=decoded.films,
                            guard_threshold=None if trained.guard is None else trained.guard.threshold)


def overlay_names(paths: list[Path]) -> list[str]:
    """One Grad-CAM file name per input, ``<stem>.gradcam.png`` (``output_names``)."""
    return output_names(paths, ".gradcam.png")


def gradcam_figures(trained: TrainedModel, pixels, paths: list[Path], table, lungs: list | None = None, gradcam=None):
    """One Grad-CAM overlay figure per image, in the table's order, for the predicted class; with the lung mask's
    outline where ``lungs`` has one (a bool array at the model's side, or None)."""
    from ..model.gradcam import GradCam, overlay_panel, upsample

    gradcam = gradcam or GradCam(trained.model)
    for start in range(0, len(pixels), 32):
        cams = upsample(gradcam.cams(pixels[start:start + 32])[0], trained.image_size)
        for offset, cam in enumerate(cams):
            index = start + offset
            row = table.iloc[index]
            title = f"{row['predicted']} ({row[f'p_{row.predicted}']:.2f}), Grad-CAM {gradcam.layer}"
            yield overlay_panel(pixels[index:index + 1], [cam], [title], [lungs[index] if lungs else None], 1,
                                paths[index].name)


def write_gradcam(trained: TrainedModel, pixels, paths: list[Path], table, folder: Path) -> list[Path]:
    """One heatmap overlay per image, ``<folder>/<name>.gradcam.png`` (``overlay_names``), in the table's order."""
    from ..common.files import save_figure

    folder.mkdir(parents=True, exist_ok=True)
    return [save_figure(figure, folder / name)
            for figure, name in zip(gradcam_figures(trained, pixels, paths, table), overlay_names(paths))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covid_mobilenet.predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files (PNG, JPEG, DICOM), or folders searched for them by content")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", type=Path, help="a finished run's folder, results/<experiment>/seed-<seed> (default: the best real run)")
    source.add_argument("--model", type=Path, help="a .keras model file (class names from the metrics.json beside it)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help="where to look for the best run (default: %(default)s)")
    parser.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    parser.add_argument("--gradcam", type=Path, metavar="FOLDER", help="write a Grad-CAM overlay per image into FOLDER")
    parser.add_argument("--rendered", type=Path, metavar="FOLDER", help="write each input as the 8-bit PNG the model is "
                                                                          "given, before resizing (<name>.png)")
    parser.add_argument("--raw", action="store_true", help="print the model's own softmax instead of the calibrated "
                                                           "probabilities (answers and decisions stay calibrated)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images given to the model at once; lower it when memory is short (default: %(default)s)")
    args = parser.parse_args(argv)

    try:
        run = args.run
        if run is None and args.model is None:
            run = best_run(args.results_dir)
            print(f"Using the best finished run on the real data, by validation accuracy: {run}", file=sys.stderr)
        trained = load_trained(run, args.model)
    except (PredictError, RunNotFound) as exc:
        print(f"predict: {exc}", file=sys.stderr)
        return 2
    if trained.region_warning():
        print(f"Warning: {trained.source} was {trained.region_warning()}.", file=sys.stderr)
    files, failed = image_files(args.inputs)
    decoded = decode(files, trained.image_size, args.rendered)
    failed += decoded.failed
    if trained.calibration is None:
        print(f"{trained.source} has no calibration (a model file alone, or a run made before runs were calibrated): "
              "these are the model's raw softmax probabilities, which are usually overconfident", file=sys.stderr)
    if trained.guard is None:
        print(f"{trained.source} has no unfamiliar-image guard (a model file alone, or a run made before runs had one): "
              "nothing tells an image unlike its training images apart", file=sys.stderr)
    table = run_table(trained, decoded, raw=args.raw, batch_size=args.batch_size)
    import pandas as pd

    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 80):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}") if len(table) else "no image could be read")
    for path, film in zip(decoded.paths, decoded.films):
        if film is not None and film.view_warning():
            print(f"Warning: {path} is {film.view_warning()}.", file=sys.stderr)
    if "unfamiliar" in table and (table["unfamiliar"] == "yes").any():
        print(f"{(table['unfamiliar'] == 'yes').sum()} image(s) unlike the run's training images (unfamiliar: yes): "
              "their answer is 'unfamiliar', whatever the probabilities say", file=sys.stderr)
    if args.rendered and decoded.rendered:
        print(f"wrote {len(decoded.rendered)} rendered input(s) to {args.rendered}", file=sys.stderr)
    if args.gradcam and len(table):
        written = write_gradcam(trained, decoded.pixels, decoded.paths, table, args.gradcam)
        table["gradcam"] = [str(path) for path in written]  # the overlay of each row
        print(f"wrote {len(written)} Grad-CAM overlays to {args.gradcam}", file=sys.stderr)
    if args.csv:
        from ..common.files import write_csv

        write_csv(args.csv, table)
        print(f"wrote {args.csv}", file=sys.stderr)
    for path, why in failed:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(f"{len(table)} image(s) predicted with {trained.source}; {len(failed)} skipped", file=sys.stderr)
    return 1 if failed else 0

