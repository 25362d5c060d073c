from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAST
from textfit import TextClassifier
from textfit.core import ownership
from textfit.data.channels import read_channel
from textfit.errors import ArtifactError
from textfit.jobs.train import save_artifact
from textfit.model import artifact


def test_exact_file_set(tiny_bert: Path, channel: Path, tmp_path: Path) -> None:
    clf = TextClassifier(str(tiny_bert), FAST).fit(read_channel(channel))
    # the estimator saves the model alone: no reports, no tarball (those are the training job's)
    assert {p.name for p in clf.save(tmp_path / "plain").iterdir()} == {
        "config.json", "model.safetensors", "labels_info.json", "textfit.json", "tokenizer.json",
        "tokenizer_config.json", ".textfit"}
    save_artifact(clf, tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert names == {"config.json", "model.safetensors", "labels_info.json", "textfit.json", "tokenizer.json",
                     "tokenizer_config.json", "README.md", "validation_report.json", "training_curves.png",
                     "confusion_matrix.png", "onnx", ".textfit"}
    assert ownership.foreign_entries(tmp_path / "m") == []  # the marker names every entry textfit wrote
    assert sorted(p.name for p in (tmp_path / "m" / "onnx").iterdir()) == ["model.onnx"]  # serve starts from it
    manifest = json.loads((tmp_path / "m" / "textfit.json").read_text())
    assert set(manifest["files"]) == {"config.json", "model.safetensors", "labels_info.json", "tokenizer.json",
                                      "tokenizer_config.json", "onnx/model.onnx"}
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)  # safetensors only
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left over


def test_missing_files_are_all_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ArtifactError) as info:
        artifact.check_complete(tmp_path)
    for name in ("model.safetensors", "labels_info.json", "textfit.json", "tokenizer_config.json"):
        assert name in str(info.value)


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def half_write(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        artifact.write_atomically(tmp_path / "out", half_write)
    assert list(tmp_path.iterdir()) == []


def test_an_incomplete_write_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="missing"):
        artifact.write_atomically(tmp_path / "out", lambda folder: (folder / "config.json").write_text("{}"))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwrite_and_textfits(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for overwrite in (False, True):  # a folder of the user's: --overwrite does not make it textfit's
        with pytest.raises(ArtifactError, match=r"holds files textfit did not write \(keep.txt\)"):
            artifact.check_output(out, overwrite=overwrite)
    (out / "keep.txt").unlink()
    (out / "config.json").write_text("{}")
    ownership.mark(out, ownership.ARTIFACT)
    with pytest.raises(ArtifactError, match="exists and is not empty; choose another --output or pass --overwrite"):
        artifact.check_output(out, overwrite=False)
    artifact.check_output(out, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="not a folder"):
        artifact.check_output(tmp_path / "file", overwrite=True)


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("../outside.txt"), "points outside the target folder"),
        (tarfile.TarInfo("/etc/evil"), "points outside the target folder"),
    ],
)
def test_tarball_paths_outside_the_target_are_refused(tmp_path: Path, member: tarfile.TarInfo, message: str) -> None:
    member.size = 1
    tarball = _tar_with(tmp_path, member, b"x")
    with pytest.raises(ArtifactError, match=message):
        artifact.safe_extract(tarball, tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()


def test_tarball_links_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("config.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(ArtifactError, match="links are not allowed"):
        artifact.safe_extract(_tar_with(tmp_path, link), tmp_path / "dest")


def _bomb(path: Path, size: int) -> Path:
    """A tarball whose one entry declares `size` bytes of zeros and holds none of them: a few hundred bytes on
    disk, like a gzip bomb's, which extraction would have to inflate to find the next header."""
    member = tarfile.TarInfo("model.safetensors")
    member.size = size
    with gzip.open(path, "wb") as f:
        f.write(member.tobuf(format=tarfile.PAX_FORMAT))
    return path


def test_a_tarball_past_the_size_bound_is_refused_at_its_first_header(tmp_path: Path) -> None:
    tarball = _bomb(tmp_path / "bomb.tar.gz", 1 << 50)  # a petabyte, which no disk here has
    assert tarball.stat().st_size < 1024
    with pytest.raises(ArtifactError, match="refusing to extract: its files come to more than"):
        artifact.safe_extract(tarball, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


def test_a_tarball_larger_than_the_free_disk_is_refused_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tarball = tmp_path / "m.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name in ("config.json", "model.safetensors"):
            member = tarfile.TarInfo(name)
            member.size = 3000
            tar.addfile(member, io.BytesIO(b"\0" * 3000))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(artifact.shutil, "disk_usage",
                        lambda path: usage._replace(free=artifact.KEEP_FREE_BYTES + 5000))
    with pytest.raises(ArtifactError, match=r"free in .*free some space or extract it yourself"):
        artifact.safe_extract(tarball, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())
    monkeypatch.setattr(artifact.shutil, "disk_usage",
                        lambda path: usage._replace(free=artifact.KEEP_FREE_BYTES + 6000))
    artifact.safe_extract(tarball, tmp_path / "dest")  # exactly the room there is
    assert (tmp_path / "dest" / "model.safetensors").stat().st_size == 3000


def test_a_tarball_of_too_many_entries_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifact, "MAX_MEMBERS", 3)
    tarball = tmp_path / "m.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for i in range(4):
            tar.addfile(tarfile.TarInfo(f"f{i}"))
    with pytest.raises(ArtifactError, match="more than 3 entries"):
        artifact.safe_extract(tarball, tmp_path / "dest")
    monkeypatch.setattr(artifact, "MAX_MEMBERS", 4)
    artifact.safe_extract(tarball, tmp_path / "dest")
    assert len(list((tmp_path / "dest").iterdir())) == 4


def test_a_damaged_tarball_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(ArtifactError, match="cannot read the tarball"), artifact.opened(bad):
        pass


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.tmp-{dead.stdout.strip()}-abc"
    stale.mkdir()
    ownership.mark(stale, ownership.ARTIFACT)  # staged folders are marked as textfit's from the start
    (stale / "config.json").write_text("{}")
    live = tmp_path / f".out.tmp-{os.getpid()}-xyz"  # this process's own: kept
    live.mkdir()
    with artifact.staged(tmp_path / "out") as tmp:
        tmp.write_text("done")
    assert (tmp_path / "out").read_text() == "done"
    assert not stale.exists() and live.exists()


def test_outputs_have_ordinary_modes(tiny_artifact: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    for item in tiny_artifact.rglob("*"):
        assert item.stat().st_mode & 0o777 == ((0o777 if item.is_dir() else 0o666) & ~mask), item.name
    assert tiny_artifact.stat().st_mode & 0o777 == 0o777 & ~mask


def test_the_onnx_backend_starts_from_the_saved_graph_without_torch_weights(tiny_artifact: Path, tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np

    onnx = TextClassifier.load(tiny_artifact, backend="onnx")
    assert onnx.model_ is None and "exporting it" not in caplog.text
    texts = ["good great film", "bad awful plot", "the film"]
    np.testing.assert_allclose(onnx.predict_proba(texts), TextClassifier.load(tiny_artifact).predict_proba(texts),
                               atol=1e-4)
    with pytest.raises(ArtifactError, match="loaded for ONNX inference only"):
        onnx.save(tmp_path / "again")


def test_an_export_into_a_saved_folder_keeps_it_intact(tiny_artifact: Path, tmp_path: Path) -> None:
    import shutil

    folder = Path(shutil.copytree(tiny_artifact, tmp_path / "m"))
    TextClassifier.load(folder).export_onnx(folder, quantize=True)
    manifest = json.loads((folder / "textfit.json").read_text())
    assert {"onnx/model.onnx", "onnx/model.int8.onnx"} <= set(manifest["files"])
    TextClassifier.load(folder, backend="onnx", quantized=True).predict(["good film"])  # digests verified


def test_extraction_is_safe_without_tarfiles_filters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     tiny_artifact: Path) -> None:
    """Python before 3.11.4 (Debian bookworm's 3.11.2) has no extraction filters: textfit's vetting stands alone."""
    monkeypatch.delattr(tarfile, "data_filter")
    real_extractall = tarfile.TarFile.extractall

    def extractall_without_filter(self: tarfile.TarFile, path: str = ".", members: object = None, *,
                                  numeric_owner: bool = False, **kwargs: object) -> None:
        assert "filter" not in kwargs  # as on an old Python, where the keyword does not exist
        real_extractall(self, path, members, numeric_owner=numeric_owner, filter="fully_trusted")  # type: ignore[arg-type]

    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall_without_filter)
    member = tarfile.TarInfo("../outside.txt")
    member.size = 1
    with pytest.raises(ArtifactError, match="points outside the target folder"):
        artifact.safe_extract(_tar_with(tmp_path, member, b"x"), tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()
    good = tmp_path / "model.tar.gz"
    artifact.write_tarball(tiny_artifact, good)
    artifact.safe_extract(good, tmp_path / "ok")
    assert (tmp_path / "ok" / "model.safetensors").read_bytes() == (tiny_artifact / "model.safetensors").read_bytes()


FIXTURE = Path(__file__).parents[1] / "fixtures" / "artifact-0.1"


def test_an_artifact_of_the_first_format_still_loads_and_predicts_as_it_did(tmp_path: Path) -> None:
    """tests/fixtures/artifact-0.1 was saved by textfit 0.1 (hyperparameters as strings, no ownership marker):
    it loads, its values come back typed, and it predicts what it predicted when it was saved."""
    manifest = json.loads((FIXTURE / "textfit.json").read_text())
    assert manifest["hyperparameters"]["epochs"] == "6" and not (FIXTURE / ".textfit").exists()
    clf = TextClassifier.load(FIXTURE)
    assert clf.hyperparameters_.epochs == 6 and clf.hyperparameters_.learning_rate == 0.002
    assert clf.hyperparameters_.calibrate is False and clf.long_texts_ == "truncate"
    proba = clf.predict_proba(["good great film", "bad awful plot", "the movie was very lovely"])
    np.testing.assert_allclose(proba, [[0.48896053, 0.51103944], [0.49814436, 0.50185561],
                                       [0.49112731, 0.50887263]], atol=1e-6)
    saved = clf.save(tmp_path / "again")  # saved again, in today's form: typed values
    assert json.loads((saved / "textfit.json").read_text())["hyperparameters"]["epochs"] == 6
    np.testing.assert_allclose(TextClassifier.load(saved).predict_proba(["good great film"]), proba[:1], atol=1e-6)
