"""`dip-jax batch`: restore every image of a folder, images of one size per compiled, batched call."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

import dip_jax as dj
from dip_jax import io
from dip_jax.app import ensemble, fitting, measurements, multiprocess, observations, tasks
from dip_jax.app.checks import FilePlan, UsageError, check_factor, partial_path, refuse_existing, std_outputs
from dip_jax.app.commands import (
    PROG,
    announce_fresh_start,
    checkpoint_options,
    configure,
    interrupted,
    load,
    psnr,
    rollback_note,
    save,
    steps_note,
    stop_note,
    write_partial,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm")
BATCH_MARKER = "batch.json"  # written last by a finished `batch`


def _batch_task(args, channels: int) -> tasks.TaskConfig:
    if args.task == "denoise":
        return configure(tasks.task("denoising"), args, channels=channels, operator=measurements.Direct())
    if args.task == "super-resolve":
        base = tasks.task("sr_x8" if args.factor >= 8 else "sr_x4")
        return configure(base, args, channels=channels,
                         operator=dataclasses.replace(base.operator, factor=args.factor))
    return configure(tasks.task("restoration_50"), args, channels=channels, operator=measurements.MaskFile())


def _batch_outputs(files: Sequence[Path], out_dir: Path) -> list[Path]:
    """One output per input, STEM.png; inputs sharing a stem (a.png, a.jpg) become STEM_EXT.png (said once)."""
    stems: dict[str, list[Path]] = {}
    for path in files:
        stems.setdefault(path.stem.lower(), []).append(path)
    names, taken = [], set()
    for path in files:
        name = f"{path.stem}.png"
        if len(stems[path.stem.lower()]) > 1:
            name = f"{path.stem}_{path.suffix[1:].lower()}.png"
        base, k = name[:-4], 1
        while name.lower() in taken:  # a.png and a.PNG: same stem and extension but for case
            name, k = f"{base}_{k}.png", k + 1
        taken.add(name.lower())
        names.append(name)
    for group in stems.values():
        if len(group) > 1:
            renamed = ", ".join(f"{p.name} -> {names[files.index(p)]}" for p in group)
            print(f"{PROG} batch: these images share a name, so their results are named apart: {renamed}")
    return [out_dir / name for name in names]


def _size_groups(samples, indices: Sequence[int]) -> dict[tuple, list[int]]:
    """The sample indices by image shape (in order of first appearance)."""
    groups: dict[tuple, list[int]] = {}
    for i in indices:
        groups.setdefault(samples[i].observation.shape, []).append(i)
    return groups


def _chunks(indices: list[int], batch_size: int) -> list[tuple[int, list[int], list[int]]]:
    """(chunk index, chunk, padded chunk) of one size group, `batch_size` images per compiled call."""
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    # A short last chunk is topped up with copies so every chunk reuses one compiled program.
    return [(n, chunk, chunk + [chunk[-1]] * (batch_size - len(chunk)) if len(chunks) > 1 else chunk)
            for n, chunk in enumerate(chunks)]


def cmd_batch(args) -> int:


    if getattr(args, "processes", None) is not None:
        multiprocess.check(args)
        return multiprocess.launch(args)
    settings = multiprocess.check(args) if hasattr(args, "process_id") else None
    folder = Path(args.folder)
    if not folder.is_dir():
        raise UsageError(f"{args.folder!r} is not a folder; give a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {args.folder!r}")
    if args.task == "inpaint" and args.keep_fraction is None:
        raise UsageError("--task inpaint needs --keep-fraction F (the fraction of pixels kept at random)")
    # Several processes: each fits its share; they first check they run the same command on the same files.
    group = multiprocess.join(args, settings, files)
    try:
        return _fit_batch(args, group, files)
    finally:
        if group is not None:
            group.leave()


def _fit_batch(args, group, files: list[Path]) -> int:
    """Load, check and fit the images (this process's share of them), then write batch.json."""
    import jax

    from dip_jax import operators
    from dip_jax.runtime import checkpoint

    all_files, files, loaded, skipped = files, [], [], []
    for path in all_files:
        try:
            loaded.append(load(str(path)))
        except io.ImageIOError as err:
            message = " ".join(str(getattr(err, "cli_message", None) or err).split())
            if not args.skip_bad:
                raise UsageError(f"{message} (pass --skip-bad to leave unreadable images out and restore the rest)") \
                    from None
            skipped.append({"image": path.name, "error": message})
            print(f"{PROG} batch: skipping {path.name}: {message}", file=sys.stderr)
            continue
        files.append(path)
    if not files:
        raise UsageError(f"none of the {len(all_files)} images in {args.folder!r} could be read (see above)")
    k_data, k_fit = jax.random.split(jax.random.key(args.seed))
    samples = []
    for i, (path, item) in enumerate(zip(files, loaded)):
        k = jax.random.fold_in(k_data, i)
        image = item.image
        sample = observations.Sample(name=path.stem, observation=image, source=str(path))
        if args.task == "denoise" and args.add_noise:
            sample.ground_truth, sample.observation = image, observations.add_noise(k, image, args.add_noise)
        elif args.task == "inpaint":
            mask = np.asarray(operators.bernoulli_mask(k, (1,) + image.shape[:2] + (1,), args.keep_fraction)[0])
            if mask.max() == 0:
                raise UsageError(f"--keep-fraction {args.keep_fraction:g} kept no pixel of {path.name}; keep a larger "
                             "fraction")
            sample.mask, sample.observation, sample.ground_truth = mask, image * mask, image
        samples.append(sample)

    groups = _size_groups(samples, multiprocess.own_items(group, len(samples)))
    out_dir = Path(args.out)
    outputs = _batch_outputs(files, out_dir)
    # Everything is checked before the first fit: paths, formats, and the memory of every call.
    plan = FilePlan()
    for path in all_files:
        plan.input(path, "an input image")
    plan.folder(out_dir, "--out")
    for path, item in zip(outputs, loaded):
        plan.image(path, "--out", item)
        plan.output(partial_path(path), "--out")
        if args.restarts > 1:  # STEM.std.png / STEM.std.npy: the per-pixel std over the restarts
            for std_path in std_outputs(path):
                plan.output(std_path, "--out (a std map over --restarts)")
    plan.output(out_dir / BATCH_MARKER, "--out")
    plan.check()
    calls = []  # (group index, chunk index, task, chunk, padded chunk)
    for g, (shape, indices) in enumerate(groups.items()):
        if args.task == "super-resolve":
            check_factor(args.factor, "lanczos2", shape, simulate=False)
        task = _batch_task(args, shape[-1])
        calls += [(g, n, task, chunk, padded) for n, chunk, padded in _chunks(indices, args.batch_size)]
        try:
            fitting.check_memory(task, [samples[i] for i in calls[-1][4]], restarts=args.restarts)
        except ValueError as err:
            names = ", ".join(files[i].name for i in indices[:3]) + (" ..." if len(indices) > 3 else "")
            raise UsageError(f"{names} ({shape[0]}x{shape[1]}): {getattr(err, 'cli_message', None) or err}") from None
    if not args.resume:
        refuse_existing(outputs + ([p for o in outputs for p in std_outputs(o)] if args.restarts > 1 else []), args)
    # batch.json is written last: it marks the folder as a finished batch (replaced only with --overwrite).
    checkpoint.prepare_output_dir(out_dir, overwrite=args.overwrite, resume=args.resume, marker=BATCH_MARKER)
    if group is not None:  # no process writes a checkpoint before all have cleared the old ones (--overwrite)
        group.agree("prepared", "yes")
    fitting.enable_compile_cache()
    t_all = time.perf_counter()
    entries: dict[int, dict] = {}
    # The compiled call's index K: its checkpoint is ckpt-K.npz, found again by --resume. Calls are numbered
    # over all processes (process 0's first), so every process's checkpoints have their own names.
    first_call = sum(len(_chunks(indices, args.batch_size))
                     for share in multiprocess.earlier_shares(group, len(samples))
                     for indices in _size_groups(samples, share).values())
    if args.resume:  # every call's checkpoint is read (damaged, ahead of --steps) before the first fit
        for call, (_, _, task, _, _) in enumerate(calls, start=first_call):
            checkpoint.resume_step(out_dir / f"ckpt-{call}.npz", task.fit.num_steps)
    # Image i's key depends only on i (its place in the sorted folder), not on the call or process it lands in.
    image_keys = jax.vmap(lambda i: jax.random.fold_in(k_fit, i))(np.arange(len(samples)))
    for call, (g, n, task, chunk, padded) in enumerate(calls, start=first_call):
        shape = samples[chunk[0]].observation.shape
        c = shape[-1]
        name = f"ckpt-{call}"
        if args.resume and all(outputs[i].exists() for i in chunk) and checkpoint.resume_step(
                out_dir / f"{name}.npz", task.fit.num_steps) in (None, task.fit.num_steps):
            # Finished before the interruption: its images were written after its last step (a
            # checkpoint of fewer steps than --steps asks for now is continued instead).
            for i in chunk:
                entries[i] = {"image": files[i].name, "output": str(outputs[i]), "kept_from_earlier_run": True}
                print(f"{PROG} batch: {files[i].name} -> {outputs[i]} (finished earlier, kept)")
            continue
        t0 = time.perf_counter()
        try:
            with announce_fresh_start("batch"):
                results = fitting.fit_samples(image_keys[np.asarray(padded)], task,
                                                 [samples[i] for i in padded], restarts=args.restarts,
                                                 progress=args.progress,
                                                 checkpoint=checkpoint_options(args, out_dir, name=name),
                                                 handle_signals=True)
        except dj.Interrupted as stop:
            written = [write_partial(partial_path(outputs[i]), r, loaded[i])
                       for i, r in zip(chunk, stop.results)]
            return interrupted("batch", stop, task, written)
        seconds = time.perf_counter() - t0
        for i, result in zip(chunk, results):
            out = outputs[i]
            save(out, result.restored, loaded[i])
            if args.restarts > 1:
                ensemble.save_std(*std_outputs(out), result.std)
            partial_path(out).unlink(missing_ok=True)
            count = f"{len(padded)} image{'s' if len(padded) > 1 else ''}"
            line = (f"{PROG} batch: {files[i].name} -> {out} ({shape[0]}x{shape[1]}x{c}, "
                    f"{count} in one call, {steps_note(task, result.resumed_from)}, {seconds:.1f} s)")
            entry = {"image": files[i].name, "output": str(out), "steps": int(task.fit.num_steps),
                     "seconds": round(seconds, 3)}
            if samples[i].ground_truth is not None and samples[i].ground_truth.shape == result.restored.shape:
                entry["psnr"] = psnr(result.restored, samples[i].ground_truth)
                entry["psnr_input"] = psnr(samples[i].observation, samples[i].ground_truth)
                line += f"; PSNR {entry['psnr']:.2f} dB (input {entry['psnr_input']:.2f} dB)"
            if result.stop_step is not None:  # --auto-stop: per restart, -1 = ran all the steps
                entry["stop_step"] = [int(s) for s in result.stop_step]
                line += stop_note(result.stop_step)
            if result.num_rollbacks is not None:
                entry["num_rollbacks"] = [int(r) for r in result.num_rollbacks]
                line += rollback_note(result.num_rollbacks)
            if args.restarts > 1:
                entry["std"] = [str(p) for p in std_outputs(out)]
                gt = samples[i].ground_truth
                entry.update(ensemble.ensemble_metrics(result.per_restart,
                                                       gt if gt is not None and gt.shape == result.restored.shape
                                                       else None))
            if result.resumed_from is not None:
                entry["resumed_from"] = int(result.resumed_from)
            if group is not None:
                entry["process"] = group.process_id
            entries[i] = entry
            print(line)
    if group is not None:
        # Process 0 waits for every process's entries (noticing a process that died) and writes batch.json.
        merged = multiprocess.gather_entries(group, entries)
        if merged is None:
            print(f"{PROG} batch: process {group.process_id}: {len(entries)} of {len(files)} images, "
                  f"{time.perf_counter() - t_all:.1f} s -> {out_dir} (process 0 writes {BATCH_MARKER})")
            return 0
        entries = merged
    summary = {"task": args.task, "quick": args.quick, "seed": args.seed, "restarts": args.restarts,
               "images": [entries[i] for i in sorted(entries)]}
    if group is not None:
        summary["processes"] = group.num_processes
    if skipped:
        summary["skipped"] = skipped
    (out_dir / BATCH_MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    left_out = f" ({len(skipped)} unreadable, skipped)" if skipped else ""
    sizes = len(_size_groups(samples, range(len(samples))))
    print(f"{PROG} batch: {len(files)} images{left_out} in {sizes} size group(s), "
          f"{time.perf_counter() - t_all:.1f} s -> {out_dir}")
    return 0
