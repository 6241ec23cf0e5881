"""Bad inputs found by probing train.py as a new user would: each one now ends in one line (exit 2) before
anything is written (no run folder, no tracking store), or is refused with its fix."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import torch

import train
from lab.download import DataError, extract
from lab.registry import AtLeast, ConfigError, Registry
from run_checks import assert_one_line_exit_2_and_nothing_written, outputs_in
from tasks.cifar import Cifar10, read_pickle
from tasks.off_format import write_off
from tasks.synthetic_cifar import write_synthetic_cifar
from tasks.synthetic_shapes import write_synthetic_modelnet

PROJECT = Path(__file__).resolve().parent.parent


# -- finding 4: numbers out of range --------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("trainer.batch_size=-4", "trainer.batch_size must be >= 1, got -4"),
    ("trainer.batch_size=0", "trainer.batch_size must be >= 1, got 0"),
    ("trainer.accumulate=0", "trainer.accumulate must be >= 1, got 0"),
    ("trainer.log_every=0", "trainer.log_every must be >= 1, got 0"),
    ("trainer.lr=0", "trainer.lr must be > 0"),
    ("trainer.lr=.nan", "trainer.lr must be > 0, got nan"),
    ("trainer.beta2=1", "trainer.beta2 must be >= 0 and < 1, got 1"),
    ("trainer.warmup_fraction=1.5", "trainer.warmup_fraction must be >= 0 and <= 1"),
    ("trainer.num_workers=-1", "trainer.num_workers must be >= 0"),
])
def test_trainer_numbers_out_of_range_exit_2_with_one_line(override, message, cifar_args, tmp_path, capsys):
    code = train.main([*cifar_args, override, *outputs_in(tmp_path)])
    assert_one_line_exit_2_and_nothing_written(code, capsys.readouterr().err, tmp_path, message)


def test_a_constructor_option_takes_its_range_from_the_same_annotation():
    registry = Registry("widget")

    @registry.register("w")
    class Widget:
        def __init__(self, *, slots: Annotated[int, AtLeast(1)] = 2, name: str = "a"):
            self.slots = slots

    assert registry.resolve_options("w", {"slots": 3}) == {"slots": 3, "name": "a"}
    with pytest.raises(ConfigError, match=r"^widget.slots must be >= 1, got 0$"):
        registry.resolve_options("w", {"slots": 0})
    with pytest.raises(ConfigError, match="widget.slots must be int, got 'many'"):
        registry.build("w", slots="many")


# -- finding 2: an unreachable tracking store -----------------------------------------------------------------
def test_an_unreachable_tracking_server_exits_2_within_15_s_naming_it(cifar_args, tmp_path):
    """MLflow's client would retry for minutes; the start-up check answers in seconds, before data or folders."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "OMP_NUM_THREADS": "1"}
    data_root = tmp_path / "not-yet-downloaded"
    args = [arg for arg in cifar_args if not arg.startswith("data.root=")]
    result = subprocess.run([sys.executable, str(PROJECT / "train.py"), *args, f"data.root={data_root}",
                             f"output_dir={tmp_path}/runs"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=15)
    assert_one_line_exit_2_and_nothing_written(result.returncode, result.stderr, tmp_path, "http://127.0.0.1:9",
                                               "does not answer", "make server")
    assert result.stdout == "" and not data_root.exists() and not any(tmp_path.iterdir())


@pytest.mark.parametrize("store, message", [
    ("postgresql://user@127.0.0.1:9/mlflow", "the tracking database postgresql://user@127.0.0.1:9/mlflow does not answer"),
    ("sqlite:///{tmp}/a-file/mlflow.db", "cannot be created: {tmp}/a-file is a file"),
    ("sqlite:///{tmp}/a-file", "is not an SQLite database"),
])
def test_other_unusable_tracking_stores_exit_2_with_one_line(store, message, cifar_args, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a database")
    code = train.main([*cifar_args, f"output_dir={tmp_path}/runs", f"tracking.uri={store.format(tmp=tmp_path)}"])
    assert_one_line_exit_2_and_nothing_written(code, capsys.readouterr().err, tmp_path, message.format(tmp=tmp_path))


# -- finding 6: folders that are files ------------------------------------------------------------------------
@pytest.mark.parametrize("task", [["task=cifar10"], ["task=modelnet40"], ["task=protein", "task.dataset=flip_scl"]])
@pytest.mark.parametrize("where", ["data.root", "output_dir"])
def test_a_folder_setting_that_names_a_file_exits_2_with_one_line(task, where, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    settings = [f"data.root={blocker}/inside", f"output_dir={tmp_path}/runs"] if where == "data.root" else \
        [f"output_dir={blocker}"]
    code = train.main([*task, *settings, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    assert_one_line_exit_2_and_nothing_written(code, capsys.readouterr().err, tmp_path, where, f"{blocker} is a file")


def test_prepare_with_a_root_that_is_a_file_exits_2(tmp_path, capsys):
    from tasks.prepare import main as prepare

    (tmp_path / "blocker").write_text("a file")
    assert prepare(["cifar10", "--root", str(tmp_path / "blocker")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --root {tmp_path / 'blocker'} is a file; point it at a folder " \
                                               "(created if missing)"


# -- finding 5: meshes without a surface to sample --------------------------------------------------------------
@pytest.mark.parametrize("vertices, problem", [
    ([[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]], "no surface area"),  # every face collinear
    ([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], "no surface area"),
    ([[0, 0, 0], [1, 0, 0], [0, 1, 0], [float("nan"), 0, 0]], "vertex 3 has a non-finite coordinate"),
    ([[0, 0, 0], [3e38, 0, 0], [0, 3e38, 0], [-3e38, -3e38, 0]], "overflow float32"),
])
def test_a_mesh_without_a_usable_surface_is_named(vertices, problem, tmp_path, capsys):
    raw = tmp_path / "data" / "ModelNet40" / "raw"
    write_synthetic_modelnet(raw, train_per_class=2, test_per_class=1)
    broken = sorted((raw / "box" / "train").glob("*.off"))[0]
    write_off(broken, torch.tensor(vertices, dtype=torch.float32), [[0, 1, 2], [0, 2, 3]])
    code = train.main(["task=modelnet40", "task.num_points=16", f"data.root={tmp_path / 'data'}",
                       *outputs_in(tmp_path)])
    assert_one_line_exit_2_and_nothing_written(code, capsys.readouterr().err, tmp_path, str(broken), problem,
                                               "repair or remove the file")


def test_a_corrupt_or_code_carrying_point_cache_is_reported_with_its_fix(tmp_path):
    from tasks.modelnet_pyg import load_split

    folder = tmp_path / "ModelNet40"
    write_synthetic_modelnet(folder / "raw", train_per_class=2, test_per_class=1)
    points, labels = load_split(folder, "40", True, 16, False)  # builds the cache
    cache = folder / "processed_16" / "training.pt"
    cache.write_bytes(cache.read_bytes()[:200])
    with pytest.raises(DataError, match=f"cache {cache} cannot be read \\(truncated or corrupt\\); delete "
                                         f"{cache.parent} and run again"):
        load_split(folder, "40", True, 16, False)
    torch.save(Shell("touch " + str(tmp_path / "ran")), cache)
    with pytest.raises(DataError, match="refused: it holds pickled code"):
        load_split(folder, "40", True, 16, False)
    assert not (tmp_path / "ran").exists()


class Shell:
    """A pickle that runs a shell command when loaded without restrictions."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


# -- finding 7: resume=PATH and checkpoint files --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(cifar_args, tmp_path_factory) -> Path:
    """last.pt of the tiny cifar model, as the trainer writes it (at step 0)."""
    trainer = train.Trainer(train.load_config([*cifar_args, "resume=null"]))
    trainer.run_dir = tmp_path_factory.mktemp("one_step")
    trainer._save("last")
    return trainer.run_dir / "last.pt"


def test_resume_path_of_another_model_exits_2_with_one_line(tiny_checkpoint, cifar_args, tmp_path, capsys):
    code = train.main([*cifar_args, "model.dim=32", f"resume={tiny_checkpoint}", *outputs_in(tmp_path)])
    assert_one_line_exit_2_and_nothing_written(
        code, capsys.readouterr().err, tmp_path, f"resume={tiny_checkpoint} does not fit this model",
        "differently shaped", "task=cifar10 model=vit attention=softmax", "or pass resume=null")


@pytest.mark.parametrize("content, message", [
    ("truncated", "is truncated or not a PyTorch checkpoint"),
    ("text", "is truncated or not a PyTorch checkpoint"),
    ("folder", "is a folder; name a file in it"),
    ("missing", "does not exist"),
    ("foreign", "is not a checkpoint written by train.py (no optimizer, step"),
    ("code", "holds a pickled object (posix.system) that could run code when loaded; refused"),
])
def test_unusable_checkpoint_files_exit_2_with_one_line(content, message, tiny_checkpoint, cifar_args, tmp_path,
                                                        capsys):
    path = tmp_path / "given" / "last.pt"
    path.parent.mkdir()
    if content == "truncated":
        path.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    elif content == "text":
        path.write_text("e")
    elif content == "folder":
        path.mkdir()
    elif content == "foreign":
        torch.save({"model": {}}, path)
    elif content == "code":
        torch.save({"model": Shell(f"touch {tmp_path / 'ran'}")}, path)
    code = train.main([*cifar_args, f"resume={path}", *outputs_in(tmp_path)])
    err = capsys.readouterr().err
    assert_one_line_exit_2_and_nothing_written(code, err, tmp_path, f"checkpoint {path} {message}")
    assert "weights_only" not in err and "[Errno" not in err and not (tmp_path / "ran").exists()


def test_an_unreadable_newer_last_pt_is_reported_not_skipped(tiny_checkpoint, cifar_args, tmp_path, capsys):
    """resume=auto used to skip it silently (and start from step 0): now the user decides."""
    runs = tmp_path / "runs" / "cifar10-softmax-s0"
    older = runs / "20000101-000000" / "last.pt"
    older.parent.mkdir(parents=True)
    older.write_bytes(tiny_checkpoint.read_bytes())
    newer = runs / "20000102-000000" / "last.pt"
    newer.parent.mkdir()
    newer.write_bytes(tiny_checkpoint.read_bytes()[:5000])  # e.g. a copy cut short
    os.utime(older, (1, 1))
    code = train.main([*cifar_args, "trainer.batch_size=8", *outputs_in(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (f"error: resume=auto: checkpoint {newer} is truncated or not a PyTorch checkpoint (5000 bytes); "
                        f"it cannot be loaded; move it out of {runs} to resume an older checkpoint, or pass "
                        "resume=null to start afresh")
    assert sorted(p.name for p in runs.iterdir()) == ["20000101-000000", "20000102-000000"]
    assert not (tmp_path / "mlflow.db").exists()


# -- finding 7: data files and archives ------------------------------------------------------------------------
def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path):
    folder = tmp_path / Cifar10.folder
    write_synthetic_cifar(folder, Cifar10, train_per_class=1, test_per_class=1)
    with open(folder / "data_batch_1", "wb") as handle:
        pickle.dump({b"data": Shell(f"touch {tmp_path / 'ran'}"), b"labels": [0]}, handle, protocol=2)
    with pytest.raises(DataError, match="holds a pickled posix.system, which CIFAR batches never contain "
                                        r"\(refused: loading it could run code\); delete the folder"):
        read_pickle(folder / "data_batch_1")
    assert not (tmp_path / "ran").exists()


def test_the_upstream_python_2_batch_layout_still_loads(tmp_path):
    """The real files were written by Python 2 numpy: `numpy.core.multiarray._reconstruct`, byte strings."""
    data = np.arange(6, dtype=np.uint8).reshape(2, 3)
    written = pickle.dumps({b"batch_label": b"training batch 1 of 5", b"labels": [3, 7], b"data": data,
                            b"filenames": [b"a.png", b"b.png"]}, protocol=2)
    upstream = written.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct" in upstream
    (tmp_path / "data_batch_1").write_bytes(upstream)
    entry = read_pickle(tmp_path / "data_batch_1")
    assert entry["labels"] == [3, 7] and np.array_equal(entry["data"], data)


def test_a_damaged_flip_archive_is_refused_with_its_fix(tmp_path):
    from tasks.protein_data import prepare_flip_scl

    archive = tmp_path / "flip_scl" / "splits.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("splits/balanced.csv", "sequence,target,set,validation\n" + "MKV,Nucleus,train,False\n" * 50)
    blob = bytearray(archive.read_bytes())
    blob[blob.index(b"MKV,Nucleus") + 400] ^= 0xFF  # one damaged byte inside the member
    archive.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=f"{archive} is corrupt \\(member 'splits/balanced.csv' fails its CRC check\\); "
                                        "delete it and download again"):
        prepare_flip_scl(tmp_path, download=False)
    assert not (tmp_path / "flip_scl" / "splits" / "balanced.csv").exists()


def test_a_truncated_cifar_archive_is_reported_with_its_fix(tmp_path):
    import tarfile

    source = tmp_path / "payload"
    source.write_bytes(os.urandom(50_000))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(source, "cifar-10-batches-py/data_batch_1")
    archive.write_bytes(archive.read_bytes()[:30_000])
    with pytest.raises(DataError, match=f"{archive} is corrupt \\(.*\\); delete it and download again"):
        extract(archive, tmp_path / "out")
