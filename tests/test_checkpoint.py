"""Checkpoints: resume is bit-exact, writes are atomic, damage and mismatches are caught, outputs protected."""

import dataclasses
import json
import os
import signal
import zipfile

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dip_jax as dj
from dip_jax import nets
from dip_jax.runtime import checkpoint
from dip_jax.fit import problem as problem_lib

# The same tiny problem in every reliability test file (and test_engine's
# map-mode batching test): one compiled chunk for all of them.
TINY = nets.narrow(nets.preset("default", num_input_channels=4), width=8, scales=3)
CFG = dj.FitConfig(num_steps=7, learning_rate=0.01, reg_noise_std=1 / 30, chunk_size=2, ema_decay=0.9,
                   backtrack=True, batch_mode="map")
YS = np.random.default_rng(0).uniform(0, 1, (3, 16, 16, 3)).astype(np.float32)
KEYS = jax.random.split(jax.random.key(3), 3)


def _fit(**kwargs):
    return dj.fit(KEYS, TINY, kwargs.pop("cfg", CFG), kwargs.pop("ys", YS), ground_truth=YS, **kwargs)


def _interrupt_at(step):
    """A callback that sends this process SIGINT once `step` steps are done."""
    seen = [0]

    def callback(state, records):
        seen[0] += len(records["loss"])
        if seen[0] == step:
            os.kill(os.getpid(), signal.SIGINT)

    return callback


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 7-step fit, and one interrupted at step 3 then resumed (checkpoints every 3)."""
    directory = tmp_path_factory.mktemp("run")
    reference = _fit()
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(dj.Interrupted) as stopped:
        _fit(checkpoint_dir=directory, checkpoint_every=3, callback=_interrupt_at(3))
    handler_after = signal.getsignal(signal.SIGINT)
    interrupted_copy = directory / "interrupted.npz"
    interrupted_copy.write_bytes((directory / checkpoint.CHECKPOINT_NAME).read_bytes())
    # Other tests in this worker may compile the same problem for other shapes.
    chunk = problem_lib.chunk_fn(reference.problem)
    compiled_before_resume = chunk._cache_size()
    resumed = _fit(checkpoint_dir=directory, checkpoint_every=3, resume=True)
    return dict(reference=reference, stopped=stopped.value, resumed=resumed, directory=directory,
                interrupted=interrupted_copy, handlers=(handler_before, handler_after),
                compiled=(compiled_before_resume, chunk._cache_size()))


def test_resume_is_bit_identical_to_an_uninterrupted_run(runs):
    ref, res = runs["reference"], runs["resumed"]
    assert res.steps == ref.steps == 7
    np.testing.assert_array_equal(res.output, ref.output)
    np.testing.assert_array_equal(res.output_avg, ref.output_avg)
    np.testing.assert_array_equal(res.best_output, ref.best_output)
    for a, b in zip(jax.tree_util.tree_leaves(res.state.params), jax.tree_util.tree_leaves(ref.state.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree_util.tree_leaves(res.state.opt_state), jax.tree_util.tree_leaves(ref.state.opt_state)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(jax.random.key_data(res.state.key), jax.random.key_data(ref.state.key))
    assert set(res.history) == set(ref.history)
    for name in ref.history:
        np.testing.assert_array_equal(res.history[name], ref.history[name])


def test_interrupt_finishes_the_chunk_checkpoints_and_restores_handlers(runs):
    stopped = runs["stopped"]
    assert isinstance(stopped, KeyboardInterrupt)
    assert stopped.step == 3 and stopped.signum == signal.SIGINT
    assert stopped.checkpoint_path == runs["directory"] / checkpoint.CHECKPOINT_NAME
    assert "SIGINT" in str(stopped) and "step 3" in str(stopped)
    assert stopped.result.steps == 3
    assert stopped.result.output.shape == (3, 1, 16, 16, 3)
    assert np.all(np.isfinite(stopped.result.output))
    saved = checkpoint.load_checkpoint(runs["interrupted"])
    assert saved.step == 3
    assert saved.history["loss"].shape == (3, 3)
    assert saved.images["output"].shape == (3, 16, 16, 3)
    assert saved.images["best"].shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(saved.images["output"], stopped.result.output[:, 0])
    before, after = runs["handlers"]
    assert before is after


def test_sigterm_also_checkpoints_and_a_second_signal_stops_at_once(tmp_path):
    cfg = dataclasses.replace(CFG, num_steps=4)

    def terminate(state, records):
        os.kill(os.getpid(), signal.SIGTERM)

    term_before, int_before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(dj.Interrupted) as stopped:
        _fit(cfg=cfg, checkpoint_dir=tmp_path / "term", callback=terminate)
    assert stopped.value.signum == signal.SIGTERM and stopped.value.step == 2
    assert checkpoint.load_checkpoint(tmp_path / "term" / checkpoint.CHECKPOINT_NAME).step == 2
    assert signal.getsignal(signal.SIGTERM) is term_before

    def twice(state, records):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="second SIGINT") as hard:
        _fit(cfg=cfg, checkpoint_dir=tmp_path / "hard", callback=twice)
    assert not isinstance(hard.value, dj.Interrupted)
    assert not (tmp_path / "hard" / checkpoint.CHECKPOINT_NAME).exists()
    assert signal.getsignal(signal.SIGINT) is int_before


def test_checkpoints_land_on_multiples_of_every_and_keep_the_previous(runs):
    directory = runs["directory"]
    latest = checkpoint.load_checkpoint(directory / checkpoint.CHECKPOINT_NAME)
    previous = checkpoint.load_checkpoint(directory / checkpoint.PREVIOUS_NAME)
    assert latest.step == 7 and previous.step == 6  # every 3 steps, and the end of the run
    assert not list(directory.glob("*.tmp"))


def test_resuming_does_not_recompile(runs):
    before, after = runs["compiled"]
    assert before >= 1 and after == before
    assert problem_lib.chunk_fn(runs["resumed"].problem) is problem_lib.chunk_fn(runs["reference"].problem)


def test_resume_without_a_checkpoint_starts_fresh_and_an_existing_one_needs_resume(tmp_path, runs):
    with pytest.warns(checkpoint.StartingFreshWarning, match="no checkpoint ckpt.npz in .*starting fresh"):
        fresh = _fit(checkpoint_dir=tmp_path, resume=True, cfg=dataclasses.replace(CFG, num_steps=2))
    assert fresh.steps == 2 and fresh.resumed_from is None and (tmp_path / checkpoint.CHECKPOINT_NAME).exists()
    assert runs["resumed"].resumed_from == 3 and runs["reference"].resumed_from is None
    with pytest.raises(checkpoint.OutputExistsError, match="resume=True"):
        _fit(checkpoint_dir=tmp_path, cfg=dataclasses.replace(CFG, num_steps=2))


def test_a_resume_may_extend_the_run_but_not_go_back(runs, tmp_path):
    """4 steps, then resumed to 7: bit for bit the uninterrupted 7-step run; fewer than 4 is refused."""
    short = _fit(checkpoint_dir=tmp_path, checkpoint_every=3, cfg=dataclasses.replace(CFG, num_steps=4))
    assert short.steps == 4 and checkpoint.resume_step(tmp_path / checkpoint.CHECKPOINT_NAME, 7) == 4
    with pytest.raises(checkpoint.CheckpointAheadError, match=r"at step 4, past this run's 3 steps.*num_steps of at least 4"):
        _fit(checkpoint_dir=tmp_path, resume=True, cfg=dataclasses.replace(CFG, num_steps=3))
    same = _fit(checkpoint_dir=tmp_path, resume=True, cfg=dataclasses.replace(CFG, num_steps=4))
    assert same.steps == 4 and same.resumed_from == 4
    np.testing.assert_array_equal(same.output, short.output)
    longer = _fit(checkpoint_dir=tmp_path, checkpoint_every=3, resume=True)
    ref = runs["reference"]
    assert longer.steps == ref.steps == 7 and longer.resumed_from == 4
    np.testing.assert_array_equal(longer.output, ref.output)
    np.testing.assert_array_equal(longer.output_avg, ref.output_avg)
    np.testing.assert_array_equal(longer.best_output, ref.best_output)
    for a, b in zip(jax.tree_util.tree_leaves(longer.state), jax.tree_util.tree_leaves(ref.state)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)
    assert set(longer.history) == set(ref.history)
    for name in ref.history:
        np.testing.assert_array_equal(longer.history[name], ref.history[name])
    assert checkpoint.load_checkpoint(tmp_path / checkpoint.CHECKPOINT_NAME).step == 7


def test_fit_samples_checks_every_groups_checkpoint_before_fitting(tmp_path, monkeypatch):
    from dip_jax.app import fitting, observations, tasks

    def no_fit(*args, **kwargs):
        raise AssertionError("the refusal must come before any group is fitted")

    monkeypatch.setattr(dj, "fit", no_fit)
    task = tasks.task("denoising").quick_variant().with_steps(5)
    photo = np.full((16, 16, 3), 0.5, np.float32)
    samples = [observations.Sample(name="a", observation=photo),
               observations.Sample(name="b", observation=np.full((32, 16, 3), 0.5, np.float32))]
    options = fitting.CheckpointOptions(tmp_path, resume=True)
    # The second group's checkpoint is past the task's 5 steps; the first group has none.
    checkpoint.save_checkpoint(tmp_path / "ckpt-1.npz", state={"w": np.zeros(2, np.float32)}, step=9)
    with pytest.raises(checkpoint.CheckpointAheadError, match="ckpt-1.npz' is at step 9"):
        fitting.fit_samples(jax.random.key(0), task, samples, checkpoint=options)
    (tmp_path / "ckpt-1.npz").write_bytes(b"half a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="damaged"):
        fitting.fit_samples(jax.random.key(0), task, samples, checkpoint=options)


def _damaged_copies(source, tmp_path):
    data = source.read_bytes()
    truncated = tmp_path / "truncated" / checkpoint.CHECKPOINT_NAME
    flipped = tmp_path / "flipped" / checkpoint.CHECKPOINT_NAME
    empty = tmp_path / "empty" / checkpoint.CHECKPOINT_NAME
    for p in (truncated, flipped, empty):
        p.parent.mkdir()
    truncated.write_bytes(data[: len(data) // 2])
    middle = bytearray(data)
    middle[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(middle))
    empty.write_bytes(b"")
    return truncated, flipped, empty


def test_damaged_checkpoints_are_reported_clearly(runs, tmp_path):
    for damaged in _damaged_copies(runs["interrupted"], tmp_path):
        with pytest.raises(checkpoint.CheckpointError, match="damaged") as err:
            checkpoint.load_checkpoint(damaged)
        assert isinstance(err.value, ValueError)
        assert str(damaged) in str(err.value)
    truncated = tmp_path / "truncated"
    with pytest.raises(checkpoint.CheckpointError, match="damaged"):
        _fit(checkpoint_dir=truncated, resume=True)


def test_rewritten_contents_fail_the_checksum(tmp_path):
    """A well-formed zip whose arrays or metadata were changed (zip CRCs recomputed) is caught by SHA-256."""
    path = tmp_path / checkpoint.CHECKPOINT_NAME
    checkpoint.save_checkpoint(path, state={"w": np.arange(6, dtype=np.float32)}, step=4)
    with np.load(path) as z:
        entries = {name: z[name] for name in z.files}
    meta = json.loads(entries["meta"].tobytes().decode())
    for changed in (
        dict(entries, **{"state/0": entries["state/0"] + 1}),
        dict(entries, meta=np.frombuffer(json.dumps(dict(meta, step=5)).encode(), np.uint8)),
    ):
        np.savez(path, **changed)
        with pytest.raises(checkpoint.CheckpointError, match="checksum mismatch"):
            checkpoint.load_checkpoint(path)


def test_damaged_checkpoint_points_to_an_intact_previous_one(runs, tmp_path):
    truncated, _, _ = _damaged_copies(runs["interrupted"], tmp_path)
    (truncated.parent / checkpoint.PREVIOUS_NAME).write_bytes(runs["interrupted"].read_bytes())
    with pytest.raises(checkpoint.CheckpointError, match=r"ckpt.prev.npz.*\(step 3\) is intact"):
        checkpoint.load_checkpoint(truncated)


def test_a_failed_write_keeps_the_last_good_checkpoint(runs, tmp_path, monkeypatch):
    target = tmp_path / checkpoint.CHECKPOINT_NAME
    target.write_bytes(runs["interrupted"].read_bytes())
    good = target.read_bytes()
    saved = checkpoint.load_checkpoint(target)

    def dies_half_way(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", dies_half_way)
    state = checkpoint.restore_state(saved, dj.prepare(KEYS, TINY, CFG, YS, ground_truth=YS)[1])
    with pytest.raises(OSError, match="No space"):
        checkpoint.save_checkpoint(target, state=state, step=5)
    assert target.read_bytes() == good
    assert not list(tmp_path.glob("*.tmp"))
    assert not (tmp_path / checkpoint.PREVIOUS_NAME).exists()


def test_periodic_write_failure_warns_and_the_fit_goes_on(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_checkpoint", no_space)
    with pytest.warns(RuntimeWarning, match="could not write checkpoint"):
        result = _fit(checkpoint_dir=tmp_path, checkpoint_every=2, cfg=dataclasses.replace(CFG, num_steps=2))
    assert result.steps == 2


def test_resuming_with_other_data_is_refused(runs, tmp_path):
    directory = tmp_path / "other"
    directory.mkdir()
    (directory / checkpoint.CHECKPOINT_NAME).write_bytes(runs["interrupted"].read_bytes())
    with pytest.raises(checkpoint.CheckpointMismatchError, match="data"):
        _fit(checkpoint_dir=directory, resume=True, ys=YS[::-1].copy())
    with pytest.raises(checkpoint.CheckpointMismatchError, match="initial_keys"):
        dj.fit(jax.random.split(jax.random.key(4), 3), TINY, CFG, YS, ground_truth=YS,
               checkpoint_dir=directory, resume=True)


def test_fingerprint_differences_are_named(runs):
    saved = checkpoint.load_checkpoint(runs["interrupted"]).fingerprint
    changed = dict(saved, fit_config=dict(saved["fit_config"], learning_rate=0.02))
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"fit_config.learning_rate: 0.01 .* 0.02"):
        checkpoint.check_fingerprint(saved, changed, path="x/ckpt.npz")
    checkpoint.check_fingerprint(saved, dict(saved))
    # Steps, chunking and batch mode do not change the numbers: not part of the fingerprint.
    for field in checkpoint.RUN_ONLY_FIELDS:
        assert field not in saved["fit_config"]


def test_restore_into_a_differently_shaped_state_is_refused(runs):
    saved = checkpoint.load_checkpoint(runs["interrupted"])
    template = dj.prepare(KEYS, TINY, CFG, YS, ground_truth=YS)[1]
    smaller = jax.tree_util.tree_map(lambda a: a[:2], template)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="this run needs"):
        checkpoint.restore_state(saved, smaller)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="differently structured"):
        checkpoint.restore_state(saved, template._replace(best_out=None, best_psnr=None))


def test_foreign_files_are_not_checkpoints(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(checkpoint.CheckpointError, match="not a dip_jax checkpoint"):
        checkpoint.load_checkpoint(plain)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "missing.npz")


def test_checkpointer_arguments():
    with pytest.raises(ValueError, match="positive"):
        checkpoint.Checkpointer("x", every=0)
    assert checkpoint.Checkpointer("x", every=5).steps_to_next(12) == 3
    assert checkpoint.Checkpointer("x").steps_to_next(12) is None
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        dj.fit(KEYS, TINY, CFG, YS, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint_dir"):
        dj.fit(KEYS, TINY, CFG, YS, checkpoint_every=3)


# --------------------------------------------------------------------------- round trips


_DTYPES = st.sampled_from([np.float32, np.int32, np.uint32, np.bool_])


@st.composite
def _trees(draw):
    n = draw(st.integers(1, 4))
    tree = {}
    for i in range(n):
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        dtype = draw(_DTYPES)
        seed = draw(st.integers(0, 2**31 - 1))
        values = np.random.default_rng(seed).normal(size=shape) * 100
        tree[f"leaf{i}"] = values.astype(dtype)
    return tree


@settings(max_examples=25, deadline=None)
@given(tree=_trees(), raw_key=st.integers(0, 2**31 - 1), impl=st.sampled_from(["threefry2x32", "rbg"]))
def test_property_state_round_trips_exactly(tmp_path_factory, tree, raw_key, impl):
    key = jax.random.split(jax.random.key(raw_key, impl=impl), 2)
    state = {"arrays": tree, "key": key}
    path = tmp_path_factory.mktemp("rt") / checkpoint.CHECKPOINT_NAME
    checkpoint.save_checkpoint(path, state=state, step=raw_key, history={"loss": np.arange(4.0)})
    loaded = checkpoint.load_checkpoint(path)
    assert loaded.step == raw_key
    restored = checkpoint.restore_state(loaded, state)
    for name, a in tree.items():
        b = restored["arrays"][name]
        assert np.asarray(b).dtype == a.dtype and np.asarray(b).shape == a.shape
        np.testing.assert_array_equal(np.asarray(b), a)
    assert str(jax.random.key_impl(restored["key"])) == str(jax.random.key_impl(key))
    np.testing.assert_array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(key))


@settings(max_examples=40, deadline=None)
@given(position=st.floats(0, 1, exclude_max=True), flip=st.integers(1, 255))
def test_property_any_flipped_byte_is_caught_or_harmless(tmp_path_factory, position, flip):
    path = tmp_path_factory.mktemp("flip") / checkpoint.CHECKPOINT_NAME
    state = {"w": np.arange(64, dtype=np.float32).reshape(8, 8), "n": np.arange(5, dtype=np.int32)}
    checkpoint.save_checkpoint(path, state=state, step=9, history={"loss": np.linspace(0, 1, 9)})
    data = bytearray(path.read_bytes())
    data[int(position * len(data))] ^= flip
    path.write_bytes(bytes(data))
    try:
        loaded = checkpoint.load_checkpoint(path)
    except checkpoint.CheckpointError:
        return
    # Bytes outside the payload (zip timestamps, padding) may change harmlessly.
    assert loaded.step == 9
    np.testing.assert_array_equal(loaded.state_leaves[0], state["n"])
    np.testing.assert_array_equal(loaded.state_leaves[1], state["w"])


# --------------------------------------------------------------------------- output directories


def test_prepare_output_dir_protects_finished_runs(tmp_path):
    out = tmp_path / "run"
    assert checkpoint.prepare_output_dir(out) == out and out.is_dir()
    (out / "metrics.json").write_text("{}")
    (out / "restored.png").write_bytes(b"png")
    with pytest.raises(checkpoint.OutputExistsError, match="finished run.*--overwrite"):
        checkpoint.prepare_output_dir(out)
    with pytest.raises(checkpoint.OutputExistsError, match="finished run"):
        checkpoint.prepare_output_dir(out, resume=True)
    checkpoint.prepare_output_dir(out, overwrite=True)
    assert not (out / "metrics.json").exists()
    assert (out / "restored.png").exists()  # only the marker and checkpoints are removed


def test_prepare_output_dir_unfinished_runs_need_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    checkpoint.save_checkpoint(out / checkpoint.CHECKPOINT_NAME, state={"a": np.zeros(2)}, step=40)
    with pytest.raises(checkpoint.OutputExistsError, match="checkpoint at step 40.*--resume"):
        checkpoint.prepare_output_dir(out)
    assert checkpoint.prepare_output_dir(out, resume=True) == out
    assert (out / checkpoint.CHECKPOINT_NAME).exists()
    checkpoint.prepare_output_dir(out, overwrite=True)
    assert not (out / checkpoint.CHECKPOINT_NAME).exists()
    group = checkpoint.Checkpointer(out, filename="ckpt-1.npz")
    assert group.previous_path == out / "ckpt-1.prev.npz"
    group.save(state={"a": np.zeros(2)}, step=7)
    group.save(state={"a": np.ones(2)}, step=8)
    assert group.previous_path.exists()
    with pytest.raises(checkpoint.OutputExistsError, match="ckpt-1.npz"):
        checkpoint.prepare_output_dir(out)
    checkpoint.prepare_output_dir(out, overwrite=True)
    assert not list(out.iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(checkpoint.OutputExistsError, match="is a file"):
        checkpoint.prepare_output_dir(tmp_path / "file")


def test_checkpoint_zip_members_are_plain_arrays(runs):
    with zipfile.ZipFile(runs["interrupted"]) as z:
        names = z.namelist()
    assert "meta.npy" in names
    assert all(n.endswith(".npy") for n in names)
    np.load(runs["interrupted"], allow_pickle=False).close()
