"""Section 4: lungkit vs MONAI (PyTorch) on the same architectures: parameters and training-step throughput.

Pairs, configured to match (same input size, channels, widths and depth; differences in the table notes):

- ``unet`` (scale small: widths 16-32-64-128, bottleneck 256, BatchNorm) vs MONAI ``BasicUNet`` with
  ``features=(16, 32, 64, 128, 256, 16)``, BatchNorm, ReLU, transposed-conv upsampling;
- ``attention_unet`` (scale small) vs MONAI ``AttentionUnet`` with ``channels=(16, 32, 64, 128, 256)``,
  strides 2 (MONAI downsamples with strided convolutions and gates at the fine resolution; lungkit max-pools and
  gates at the coarse one, as the reference implementation does);
- ``unetr`` (scale small widths: hidden 192, MLP 768, 3 heads, feature size 16; with MONAI's fixed 12 blocks and
  skips from blocks 4/7/10) vs MONAI ``UNETR(spatial_dims=2)`` with the same settings.

Both frameworks train with Adam (lr 1e-4) and binary cross-entropy on random 128 x 128 x 1 images with sparse masks,
batch 8, no metrics, and get the same threads, at two settings: 1 thread (robust to other jobs on the machine) and
``--threads`` (all cores). TensorFlow gets them as intra-op and inter-op threads (``tf.config.threading``), PyTorch
through ``set_num_threads`` (intra-op; its inter-op pool is set to the same number), both with the same
``OMP_NUM_THREADS``. PyTorch's OpenMP threads busy-wait by default; on a machine shared with other jobs that makes
a multi-threaded PyTorch step up to ten times slower (a descheduled thread stalls every parallel region), so the
multi-thread MONAI figures use ``OMP_WAIT_POLICY=PASSIVE``; one extra child measures the default policy to show the
effect. Each framework runs in its own child process; the pairs are measured back to back in the same run. On a
GPU, lungkit uses ``configure_precision`` (mixed_float16 + XLA) and the MONAI side ``torch.autocast`` float16 with
a ``GradScaler``.

Where lungkit is slower (or less than 10 % faster, within the noise), both sides are profiled at 1 thread (TensorFlow's profiler trace, ``torch.profiler``) and
the step time is split by kind of operation; lungkit is also re-timed with ``jit_compile=True`` (XLA on the CPU).
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections import defaultdict
from pathlib import Path

from benchmarks import child_main, configure_tensorflow_threads, run_child, summarise, time_repeats

SIZE = 128
BATCH = 8
#: Pairs whose 1-thread ratio lungkit / MONAI is below this are profiled (slower, or within the run-to-run noise).
PROFILE_BELOW_RATIO = 1.1
INSTALL_HINT = "pip install -e '.[bench]'   (or: pip install torch==2.13.0 monai==1.6.1)"

PAIRS = {
    "unet": {
        "monai": "BasicUNet",
        "lungkit_overrides": {},
        "monai_kwargs": {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 1,
            "features": (16, 32, 64, 128, 256, 16),
            "act": "relu",
            "norm": "batch",
            "upsample": "deconv",
        },
        "notes": "MONAI's convolutions keep a bias before BatchNorm (lungkit drops it) and its up-convolution has "
        "no ReLU after it (paper 004's has).",
    },
    "attention_unet": {
        "monai": "AttentionUnet",
        "lungkit_overrides": {},
        "monai_kwargs": {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 1,
            "channels": (16, 32, 64, 128, 256),
            "strides": (2, 2, 2, 2),
        },
        "notes": "MONAI: strided-conv downsampling, 3x3 up-convolutions with BN + ReLU, gates (with BN) at the "
        "skip's resolution; lungkit: max-pooling, 2x2 up-convolutions, gates at the coarse resolution.",
    },
    "unetr": {
        "monai": "UNETR",
        "lungkit_overrides": {"num_layers": 12, "skip_layers": (4, 7, 10)},
        "monai_kwargs": {
            "in_channels": 1,
            "out_channels": 1,
            "img_size": (SIZE, SIZE),
            "feature_size": 16,
            "hidden_size": 192,
            "mlp_dim": 768,
            "num_heads": 3,
            "proj_type": "conv",
            "norm_name": "instance",
            "spatial_dims": 2,
            "qkv_bias": False,
        },
        "notes": "lungkit's small UNETR widths with MONAI's fixed 12 blocks and its skip blocks 4/7/10.",
    },
}

# Kinds of operation, for splitting a profiled step. Matched in order against the lower-cased op type / aten name;
# TensorFlow's oneDNN kernels are named _MklNativeConv2D, _MklMatMul, ... and a transposed convolution runs as
# Conv2DBackpropInput, so convolutions are one kind (forward, backward and transposed together).
_OP_KINDS = (
    ("convolution (fwd + bwd)", ("conv",)),
    ("matmul / attention", ("matmul", "einsum", "addmm", "bmm", "aten::mm", "linear", "softmax")),
    ("normalization", ("batchnorm", "batch_norm", "instance_norm", "group_norm", "layernorm", "layer_norm",
                       "moments", "mean", "variance", "rsqrt", "squareddifference")),
    ("slicing / copy / layout", ("slice", "concat", "cat", "copy", "transpose", "reshape", "pad", "contiguous",
                                 "clone", "permute", "identity", "tile", "fill", "zeros", "pack", "unpack", "split",
                                 "stack", "select_backward", "as_strided")),
    ("pooling / resize", ("maxpool", "max_pool", "resize", "upsample", "avgpool")),
    ("optimizer", ("adam", "_foreach", "assign", "readvariable", "lerp", "addcdiv", "addcmul", "optimizer")),
    ("elementwise / activation", ("relu", "sigmoid", "mul", "add", "sub", "div", "tanh", "gelu", "erf", "exp", "log",
                                  "select", "where", "maximum", "minimum", "neg", "square", "pow", "cast", "sqrt",
                                  "threshold", "greater", "less", "equal", "abs", "sum", "clamp", "bias", "reciprocal")),
)


def peer_available() -> bool:
    """True when both torch and monai can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "monai"))


def op_kind(name: str) -> str:
    """Kind of operation of a profiled op name (TensorFlow op type or ``aten::`` name)."""
    lowered = name.lower()
    for kind, needles in _OP_KINDS:
        if any(needle in lowered for needle in needles):
            return kind
    return "other"


# ------------------------------------------------------------------------------------------------------------
# lungkit child


def _tensorflow_op_times(logdir: Path) -> dict[str, float]:
    """Time per TensorFlow op type from a profiler trace (``*.xplane.pb``), in seconds.

    The executor's compute threads record one event per op, named ``<node name>:<op type>`` (oneDNN kernels as
    ``_MklNativeConv2D`` and the like); scopes such as ``ExecutorState::Process`` wrap them and are skipped, so
    each op's time is counted once.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals: dict[str, float] = defaultdict(float)
    for path in Path(logdir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            names = {key: meta.name for key, meta in plane.event_metadata.items()}
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for event in line.events:
                    name = names.get(event.metadata_id, "")
                    if "::" in name or ":" not in name:
                        continue
                    op_type = name.rsplit(":", 1)[1]
                    if op_type and " " not in op_type:
                        totals[op_type] += event.duration_ps * 1e-12
    return dict(totals)


def _lungkit_child(spec: dict) -> dict:
    configure_tensorflow_threads(spec["threads"])
    import keras
    import numpy as np
    import tensorflow as tf

    from lungkit.models import build_model
    from lungkit.training import configure_precision, gpu_present

    precision = configure_precision()
    keras.utils.set_random_seed(0)
    pair = PAIRS[spec["pair"]]
    model = build_model(spec["pair"], scale="small", input_shape=(SIZE, SIZE, 1), **pair["lungkit_overrides"])
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(BATCH, SIZE, SIZE, 1)).astype(np.float32))
    targets = tf.constant((rng.uniform(size=(BATCH, SIZE, SIZE, 1)) > 0.97).astype(np.float32))

    def measure(jit_compile: bool) -> dict:
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4), loss=keras.losses.BinaryCrossentropy(), jit_compile=jit_compile
        )
        started = time.perf_counter()
        model.train_on_batch(images, targets)
        first = time.perf_counter() - started
        stretches = time_repeats(
            lambda: [model.train_on_batch(images, targets) for _ in range(spec["steps"])], spec["repeats"], warmup=1
        )
        steps = [s / spec["steps"] for s in stretches]
        return {"first_call_s": first, "step_s": summarise(steps), "images_per_s": summarise([BATCH / s for s in steps])}

    result = {
        "framework": f"TensorFlow {tf.__version__} / Keras {keras.__version__}",
        "gpu": gpu_present(),
        "precision": precision.as_dict(),
        "parameters": int(model.count_params()),
        "training": measure(precision.jit_compile),
    }
    # forward only, for the forward / backward split
    model.predict_on_batch(images)
    forward = time_repeats(lambda: model.predict_on_batch(images), spec["repeats"], warmup=1)
    result["forward_s"] = summarise(forward)
    if spec.get("profile"):
        logdir = Path(spec["scratch"]) / f"tf-profile-{spec['pair']}"
        tf.profiler.experimental.start(str(logdir))
        for _ in range(spec["steps"]):
            model.train_on_batch(images, targets)
        tf.profiler.experimental.stop()
        per_op = _tensorflow_op_times(logdir)
        result["profile"] = {"steps": spec["steps"], "op_seconds": per_op}
    if spec.get("try_xla") and not precision.jit_compile:
        try:
            result["training_xla"] = measure(True)
        except Exception as error:  # noqa: BLE001 - XLA on the CPU may not support an op; that is a finding
            result["training_xla"] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
    return result


# ------------------------------------------------------------------------------------------------------------
# MONAI child


def _monai_child(spec: dict) -> dict:
    import monai
    import torch
    from monai.networks import nets

    settings = [int(t) for t in spec["thread_settings"]]
    try:
        torch.set_num_interop_threads(max(settings))
    except RuntimeError:  # only settable before any inter-op work
        pass
    torch.manual_seed(0)
    pair = PAIRS[spec["pair"]]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = getattr(nets, pair["monai"])(**pair["monai_kwargs"]).to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 1, SIZE, SIZE, generator=generator).to(device)
    targets = (torch.rand(BATCH, 1, SIZE, SIZE, generator=generator) > 0.97).float().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_function = torch.nn.BCEWithLogitsLoss()
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def synchronise():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            loss = loss_function(model(images), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        synchronise()

    def forward():
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            model(images)
        synchronise()

    result = {
        "framework": f"PyTorch {torch.__version__} / MONAI {monai.__version__}",
        "device": device.type,
        "amp": use_amp,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "by_threads": {},
    }
    for threads in settings:
        torch.set_num_threads(threads)
        model.train()
        started = time.perf_counter()
        train_step()
        first = time.perf_counter() - started
        stretches = time_repeats(lambda: [train_step() for _ in range(spec["steps"])], spec["repeats"], warmup=1)
        steps = [s / spec["steps"] for s in stretches]
        model.eval()
        result["by_threads"][str(threads)] = {
            "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
            "training": {
                "first_call_s": first,
                "step_s": summarise(steps),
                "images_per_s": summarise([BATCH / s for s in steps]),
            },
            "forward_s": summarise(time_repeats(forward, spec["repeats"], warmup=1)),
        }
    model.train()
    if spec.get("profile"):
        from torch.profiler import ProfilerActivity, profile

        torch.set_num_threads(settings[0])
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(spec["steps"]):
                train_step()
        # self time per op: a parent op and its children are not counted twice
        per_op = defaultdict(float)
        for event in profiler.key_averages():
            per_op[event.key] += event.self_cpu_time_total * 1e-6
        result["profile"] = {"steps": spec["steps"], "threads": settings[0], "op_seconds": dict(per_op)}
    return result


def _child(spec: dict) -> dict:
    return _lungkit_child(spec) if spec["side"] == "lungkit" else _monai_child(spec)


# ------------------------------------------------------------------------------------------------------------
# parent


def _by_kind(profile: dict | None) -> dict[str, float] | None:
    """Seconds per step per kind of operation."""
    if not profile or not profile.get("op_seconds"):
        return None
    kinds: dict[str, float] = defaultdict(float)
    for name, seconds in profile["op_seconds"].items():
        kinds[op_kind(name)] += seconds / profile["steps"]
    return dict(kinds)


def run(quick: bool, threads: int, scratch_dir: Path) -> dict:
    """Measure each lungkit / MONAI pair back to back at 1 thread and at ``threads``; profile where lungkit is slower.

    Args:
        quick: fewer steps and repeats, no profiling, no default-wait-policy check.
        threads: the multi-thread setting (intra-op and inter-op threads on both sides).
        scratch_dir: this run's scratch folder.

    Returns:
        ``{"available": bool, "install": str, "thread_settings": [...], "pairs": [...]}``; when torch or monai is
        missing, ``available`` is False and nothing else is measured.
    """
    if not peer_available():
        return {"available": False, "install": INSTALL_HINT, "pairs": []}
    steps, repeats = (2, 2) if quick else (2, 3)
    settings = [1] + ([int(threads)] if int(threads) > 1 else [])
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}
    pairs = []
    for name, pair in PAIRS.items():
        base = {"pair": name, "steps": steps, "repeats": repeats, "scratch": str(scratch_dir)}
        lungkit = {
            str(t): run_child("benchmarks.peer_monai", {**base, "side": "lungkit", "threads": t}, 600, t, scratch_dir)
            for t in settings
        }
        peer = run_child(
            "benchmarks.peer_monai",
            {**base, "side": "monai", "threads": max(settings), "thread_settings": settings},
            900,
            max(settings),
            scratch_dir,
            extra_env=passive,
        )
        entry = {
            "lungkit_model": name,
            "monai_model": pair["monai"],
            "monai_kwargs": pair["monai_kwargs"],
            "lungkit_overrides": pair["lungkit_overrides"],
            "notes": pair["notes"],
            "lungkit": lungkit,
            "monai": peer,
            "ratio_lungkit_over_monai": {},
        }
        for t in settings:
            ours = lungkit[str(t)]
            theirs = peer.get("by_threads", {}).get(str(t))
            if "training" in ours and theirs:
                entry["ratio_lungkit_over_monai"][str(t)] = (
                    ours["training"]["images_per_s"]["median"] / theirs["training"]["images_per_s"]["median"]
                )
        single = entry["ratio_lungkit_over_monai"].get("1")
        if single is not None and single < PROFILE_BELOW_RATIO and not quick:
            # slower, or not clearly faster: profile both sides at one thread and try XLA on the CPU
            entry["lungkit_profiled"] = run_child(
                "benchmarks.peer_monai",
                {**base, "side": "lungkit", "threads": 1, "profile": True, "try_xla": True},
                900, 1, scratch_dir,
            )
            entry["monai_profiled"] = run_child(
                "benchmarks.peer_monai",
                {**base, "side": "monai", "threads": 1, "thread_settings": [1], "profile": True},
                600, 1, scratch_dir,
            )
            entry["lungkit_seconds_by_kind"] = _by_kind(entry["lungkit_profiled"].get("profile"))
            entry["monai_seconds_by_kind"] = _by_kind(entry["monai_profiled"].get("profile"))
        pairs.append(entry)
    result = {"available": True, "size": SIZE, "batch": BATCH, "thread_settings": settings, "steps": steps,
              "repeats": repeats, "pairs": pairs}
    if not quick and len(settings) > 1:
        # what PyTorch does on this shared machine with its default (busy-waiting) OpenMP threads
        result["default_wait_policy"] = run_child(
            "benchmarks.peer_monai",
            {"pair": "unet", "steps": 1, "repeats": 3, "scratch": str(scratch_dir), "side": "monai",
             "threads": max(settings), "thread_settings": [max(settings)]},
            900, max(settings), scratch_dir,
        )
    return result


def _rate(block: dict | None) -> str:
    if not block or "training" not in block:
        return "failed"
    r = block["training"]["images_per_s"]
    return f"{r['median']:.2f} [{r['min']:.2f} - {r['max']:.2f}]"


def gap_sentence(entry: dict) -> str | None:
    """Where lungkit's extra time goes for one slower pair, from the two profiles (None without profiles)."""
    ours, theirs = entry.get("lungkit_seconds_by_kind"), entry.get("monai_seconds_by_kind")
    if not ours or not theirs:
        return None
    differences = {kind: ours.get(kind, 0.0) - theirs.get(kind, 0.0) for kind in set(ours) | set(theirs)}
    worst = [item for item in sorted(differences.items(), key=lambda item: -item[1]) if item[1] > 0][:3]
    if not worst:
        return None
    parts = [
        f"{kind} {ours.get(kind, 0.0) * 1e3:.0f} ms vs {theirs.get(kind, 0.0) * 1e3:.0f} ms" for kind, _ in worst
    ]
    return "op self time per step at 1 thread, lungkit vs MONAI, largest differences first: " + "; ".join(parts)


#: What would close a gap of each kind, in lungkit's code or its settings.
_ADVICE = {
    "slicing / copy / layout": (
        "in lungkit/models/vit_blocks.py the fused qkv projection is split with `qkv[0], qkv[1], qkv[2]`, whose "
        "gradients are three zero-filled full-size StridedSliceGrad ops summed by AddN; `q, k, v = "
        "ops.unstack(qkv, 3, axis=0)` (gradient: one Pack) removes them"
    ),
    "normalization": (
        "instance norm is GroupNormalization(groups=-1), which TensorFlow runs as unfused moments + broadcast "
        "(Tile) ops; PyTorch has a fused kernel. A fused layer (tf.nn.batch_normalization on per-sample moments, "
        "or BatchNorm where the paper allows) would close it"
    ),
    "convolution (fwd + bwd)": (
        "both sides call oneDNN convolutions (TensorFlow NHWC, PyTorch NCHW); nothing in lungkit's code to change "
        "there beyond the layer widths"
    ),
    "matmul / attention": (
        "the attention matmuls are the same size on both sides; a fused attention (keras.ops.dot_product_attention) "
        "could save the separate softmax pass"
    ),
    "elementwise / activation": (
        "TensorFlow does not fuse element-wise ops without XLA (see the jit_compile figure); PyTorch runs them in "
        "place"
    ),
}


def _tensorflow_op_share(entry: dict, op_type: str) -> tuple[float, float] | None:
    """(seconds per step, share of the profiled step) of one TensorFlow op type in lungkit's profile."""
    profile = (entry.get("lungkit_profiled") or {}).get("profile")
    if not profile:
        return None
    per_step = profile["op_seconds"].get(op_type, 0.0) / profile["steps"]
    total = sum(profile["op_seconds"].values()) / profile["steps"]
    return per_step, per_step / total if total else 0.0


def gap_advice(entry: dict) -> str | None:
    """What would close the gap: advice for the kinds where lungkit spends more than MONAI (None without profiles)."""
    ours, theirs = entry.get("lungkit_seconds_by_kind"), entry.get("monai_seconds_by_kind")
    if not ours or not theirs:
        return None
    worse = [k for k in sorted(ours, key=lambda k: theirs.get(k, 0.0) - ours[k]) if ours[k] > theirs.get(k, 0.0) * 1.1]
    parts = [f"{kind}: {_ADVICE[kind]}" for kind in worse[:3] if kind in _ADVICE]
    strided = _tensorflow_op_share(entry, "StridedSliceGrad")
    if strided and strided[1] > 0.02:
        parts.append(
            f"StridedSliceGrad alone is {strided[0] * 1e3:.0f} ms per step ({strided[1]:.0%} of lungkit's op time)"
        )
    return "; ".join(parts) if parts else None


def _kind_table(entry: dict) -> list[str]:
    ours, theirs = entry.get("lungkit_seconds_by_kind") or {}, entry.get("monai_seconds_by_kind") or {}
    if not ours or not theirs:
        return []
    kinds = sorted(set(ours) | set(theirs), key=lambda k: -(ours.get(k, 0.0) + theirs.get(k, 0.0)))
    lines = [
        "",
        f"{entry['lungkit_model']} vs {entry['monai_model']}, profiled training step at 1 thread (ms of op self time "
        "per step):",
        "",
        "| kind of op | lungkit | MONAI |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {k} | {ours.get(k, 0.0) * 1e3:.0f} | {theirs.get(k, 0.0) * 1e3:.0f} |" for k in kinds]
    lines.append(f"| total | {sum(ours.values()) * 1e3:.0f} | {sum(theirs.values()) * 1e3:.0f} |")
    return lines


def markdown(result: dict) -> str:
    """The peer section of ``reports/benchmarks.md``."""
    lines = ["## 4. Peer comparison: lungkit (Keras/TensorFlow) vs MONAI (PyTorch)", ""]
    if not result.get("available"):
        return "\n".join(
            lines
            + [
                "Skipped: PyTorch and/or MONAI are not installed (they are an optional extra, never a dependency of "
                f"the kit). Install them with `{result.get('install', INSTALL_HINT)}` and rerun `make bench`.",
                "",
            ]
        )
    settings = result["thread_settings"]
    lines += [
        f"Training step (forward, BCE, backward, Adam) on {result['size']} x {result['size']} x 1 inputs, batch "
        f"{result['batch']}, random data, no metrics. Threads: {' and '.join(map(str, settings))} - the same number "
        "of intra-op and inter-op threads on both sides (TensorFlow `tf.config.threading`, PyTorch "
        "`set_num_threads` / `set_num_interop_threads`) and the same `OMP_NUM_THREADS`; multi-threaded PyTorch "
        "with `OMP_WAIT_POLICY=PASSIVE` (see below). Each framework in its own process, the two measured back to "
        f"back. Median of {result['repeats']} stretches of {result['steps']} steps after a warm-up, [min - max]. "
        "Ratio > 1: lungkit is faster. The 1-thread figures are the robust ones on this shared machine.",
        "",
        "| lungkit | MONAI | params lungkit | params MONAI | threads | lungkit img/s | MONAI img/s | "
        "ratio lungkit / MONAI | forward only, ms (lungkit / MONAI) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    findings, tables = [], []
    for e in result["pairs"]:
        peer = e["monai"]
        for t in settings:
            ours = e["lungkit"].get(str(t), {})
            theirs = peer.get("by_threads", {}).get(str(t))
            ratio = e["ratio_lungkit_over_monai"].get(str(t))
            forward = (
                f"{ours['forward_s']['median'] * 1e3:.0f} / {theirs['forward_s']['median'] * 1e3:.0f}"
                if "forward_s" in ours and theirs
                else "n/a"
            )
            lines.append(
                f"| {e['lungkit_model']} | {e['monai_model']} | {ours.get('parameters', 0):,} | "
                f"{peer.get('parameters', 0):,} | {t} | {_rate(ours)} | {_rate(theirs)} | "
                f"{f'{ratio:.2f}' if ratio else 'n/a'} | {forward} |"
            )
            if "error" in ours:
                findings.append(f"- {e['lungkit_model']} (lungkit, {t} threads) failed: `{str(ours['error']).strip()[-300:]}`")
        if "error" in peer:
            findings.append(f"- {e['monai_model']} (MONAI) failed: `{str(peer['error']).strip()[-300:]}`")
        sentence = gap_sentence(e)
        xla = (e.get("lungkit_profiled") or {}).get("training_xla")
        if sentence or xla:
            text = f"- **{e['lungkit_model']} vs {e['monai_model']}**: "
            if sentence:
                text += sentence + ". "
            advice = gap_advice(e)
            if advice:
                text += "What would close it: " + advice + ". "
            if xla and "images_per_s" in xla:
                text += (
                    f"With `jit_compile=True` (XLA on the CPU) lungkit trains at {xla['images_per_s']['median']:.2f} "
                    f"img/s at 1 thread (vs {e['lungkit_profiled']['training']['images_per_s']['median']:.2f} "
                    "without, same child). "
                )
            elif xla:
                text += f"XLA on the CPU failed: `{xla.get('error', '')[:200]}`. "
            findings.append(text)
        tables += _kind_table(e)
    default = result.get("default_wait_policy")
    if default and "by_threads" in default:
        block = next(iter(default["by_threads"].values()))
        passive = next((e["monai"].get("by_threads", {}).get(str(max(settings))) for e in result["pairs"]
                        if e["lungkit_model"] == "unet"), None)
        lines += [
            "",
            f"**PyTorch's default OpenMP wait policy on a shared machine**: BasicUNet at {max(settings)} threads with "
            f"the default (busy-waiting) policy trains at {_rate(block)} img/s, vs {_rate(passive)} with "
            "`OMP_WAIT_POLICY=PASSIVE` above. When other jobs take the cores, a spinning OpenMP team waits at every "
            "parallel region for a thread the OS has descheduled; TensorFlow's thread pool does not stall like that.",
        ]
    lines += ["", "Configuration differences that remain:", ""]
    lines += [f"- {e['lungkit_model']} vs {e['monai_model']}: {e['notes']}" for e in result["pairs"]]
    ratios = {e["lungkit_model"]: e["ratio_lungkit_over_monai"].get("1") for e in result["pairs"]}
    slower = [name for name, ratio in ratios.items() if ratio is not None and ratio < 1.0]
    lines += [
        "",
        (
            f"**Verdict**: at 1 thread lungkit is slower than MONAI on {', '.join(slower)}; the profiles below say "
            "where the time goes."
            if slower
            else "**Verdict**: at 1 thread lungkit is not slower than MONAI on any pair (ratios "
            + ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items() if ratio is not None)
            + "). Pairs within 10 % are still profiled below, to show where lungkit's time goes."
        ),
    ]
    if findings:
        lines += ["", "Profiled pairs (lungkit slower or less than 10 % faster) and failures:", ""] + findings
    lines += tables
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    child_main(_child)
