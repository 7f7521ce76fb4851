"""The benchmark's figures as printed at its end: name, value, and what was measured against what."""
from __future__ import annotations


def table(bench: dict) -> str:
    """The figures as printed: name, value, and what was measured against what."""
    pipeline, training, sweep = bench["pipeline"], bench["training"], bench["fast_sweep"]
    rows = [
        ("pipeline_speedup", bench["pipeline_speedup"],
         f"project {pipeline['project']['later_epochs']:.0f} vs image_dataset_from_directory "
         f"{pipeline['baseline']['later_epochs']:.0f} images/s from epoch 2 (epoch 1: "
         f"{pipeline['project']['first_epoch']:.0f} vs {pipeline['baseline']['first_epoch']:.0f})"),
        ("training_vs_ceiling", bench["training_vs_ceiling"],
         f"{training['pipeline']:.1f} vs {training['ceiling']:.1f} images/s (in-memory tensors)"),
        ("fast_sweep_speedup", bench["fast_sweep_speedup"],
         f"{sweep['end_to_end_seconds']:.0f} s end to end vs {sweep['cached_seconds']:.0f} s cached, "
         f"{sweep['configurations']} configurations x {sweep['epochs']} epochs"),
    ]
    rows += [(f"precision {name}", None, f"{figures['images_per_second']:.1f} training images/s")
             for name, figures in bench["precision"].items()]
    quantization = bench["quantization"]
    if "int8_vs_float32" in quantization:
        rows.append(("int8_latency_ratio", bench["int8_latency_ratio"],
                     f"LiteRT int8 vs float32, median single-image latency, {quantization['threads']} thread, "
                     f"{quantization['test_images']} test images of {quantization['run']}{' (demo)' if quantization['demo'] else ''}"))
        rows.append(("int8_accuracy_difference", bench["int8_accuracy_difference"],
                     "test accuracy of int8 minus float32, in points; int8 file "
                     f"{100 * quantization['int8_vs_float32']['size_ratio']:.0f}% of float32"))
    else:
        rows.append(("int8_latency_ratio", None, quantization["skipped"]))
    if "full_size" in bench and "cold" in bench["full_size"]:
        full = bench["full_size"]
        for name in ("cold", "warm"):
            sweep = full[name]
            rows.append((f"full_size.{name}_minutes", sweep["wall_seconds"] / 60,
                         f"{sweep['runs']} --fast configurations, {full['images']} images at {full['image_size']} px, "
                         f"{name} feature cache: backbone {sweep['backbone_seconds']:.0f} s, heads "
                         f"{sweep['head_training_seconds']:.0f} s"))
        rows.append(("full_size.peak_rss_gib", full["peak_rss_gib"], "the largest notebook kernel of those sweeps"))
    rows.append(("peak_rss_gib", bench["peak_rss_gib"], "this benchmark process"))
    lines = [f"{'figure':<24} {'value':>8}  measured"]
    lines += [f"{name:<24} {'' if value is None else f'{value:.2f}':>8}  {detail}" for name, value, detail in rows]
    lines.append(f"machine: {bench['machine']['device']}; TensorFlow {bench['machine']['tensorflow']}")
    return "\n".join(lines)
