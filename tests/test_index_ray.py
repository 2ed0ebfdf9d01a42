"""`kyara index --ray` on a local Ray cluster: the same index as one machine makes, a worker killed
mid-run costs nothing, and the shards of a run that died are merged, not computed again."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from PIL import ImageOps
from typer.testing import CliRunner

from kyara.cli import app
from kyara.detection import CnnDetector
from kyara.imageio import load_image
from kyara.index import SHARDS, CollectionIndex
from kyara.index import update as index_update
from kyara.index.work import InThreads
from kyara.pipeline import Recognizer
from tests.conftest import data_path, same_values
from tests.test_index import consistent, contents, make_pictures

ray = pytest.importorskip("ray")
from kyara.index.distributed import OnRay, read_shard  # noqa: E402  (needs Ray)

PICTURES = 7


@pytest.fixture(scope="module")
def cluster():
    data_path("newgame-illustrations")  # skips without the data, before starting Ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    """Six illustrations, and a gray copy of one (its faces are marked gray on the workers)."""
    root = make_pictures(tmp_path_factory.mktemp("ray") / "pictures")
    ImageOps.grayscale(load_image(root / "kou/1.jpg")).save(root / "kou/gray.png")
    return root


@pytest.fixture(scope="module")
def one_machine(pictures) -> list[tuple]:
    db = pictures.parent / "one machine.kyaradb"
    with CollectionIndex(db, Recognizer(), create=True) as collection:
        collection.update(pictures, progress=False, engine=InThreads(1))
    rows = contents(db)
    assert {row[12] for row in rows} == {0, 1}  # gray faces and colour ones
    return rows


class Recording(OnRay):
    """OnRay, remembering the jobs it was given."""

    jobs: list | None = None

    def run(self, recognizer, moved, jobs, batch, shards):
        self.jobs = list(jobs)
        yield from super().run(recognizer, moved, jobs, batch, shards)


def test_ray_makes_the_index_one_machine_makes(cluster, pictures, one_machine, tmp_path):
    db = tmp_path / "ray.kyaradb"
    with CollectionIndex(db, Recognizer(), create=True) as collection:
        summary = collection.update(pictures, progress=False, engine=OnRay(chunk=4))
        assert (summary.added, summary.faces, consistent(collection)["faces"]) == (
            PICTURES,
            len(one_machine),
            summary.faces,
        )
        engine = Recording()
        assert collection.update(pictures, progress=False, engine=engine).unchanged == PICTURES
    assert engine.jobs == []  # unchanged files never reach the cluster
    assert same_values(contents(db), one_machine)
    assert not (db / SHARDS).exists() or not any((db / SHARDS).iterdir())  # merged, then deleted


class DiesOnce:
    """The CNN detector in a process that kills itself at its first picture while `marker`
    exists (taking the marker with it): a Ray worker lost mid-batch, once."""

    name = "cnn"

    def __init__(self, marker: Path, inner: CnnDetector | None = None) -> None:
        self.marker, self.inner = marker, inner or CnnDetector()

    def with_threads(self, threads: int) -> DiesOnce:
        return DiesOnce(self.marker, self.inner.with_threads(threads))

    def detect(self, image):
        with contextlib.suppress(FileNotFoundError):
            self.marker.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.detect(image)


def test_a_worker_killed_mid_run_is_replaced_and_nothing_is_lost_or_doubled(
    cluster, pictures, one_machine, tmp_path, monkeypatch
):
    monkeypatch.setattr(index_update, "FILES_PER_COMMIT", 2)
    marker = tmp_path / "kill a worker"
    marker.touch()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests
    db = tmp_path / "killed worker.kyaradb"
    with CollectionIndex(db, Recognizer(detector=DiesOnce(marker)), create=True) as collection:
        summary = collection.update(pictures, progress=False, engine=OnRay())
        assert (summary.added, summary.faces, consistent(collection)["faces"]) == (
            PICTURES,
            len(one_machine),
            summary.faces,
        )
    assert not marker.exists(), "no worker was killed: the test did not test anything"
    assert same_values(contents(db), one_machine)


def test_the_shards_of_a_run_that_died_are_merged_not_computed_again(
    cluster, pictures, one_machine, tmp_path, monkeypatch
):
    monkeypatch.setattr(index_update, "FILES_PER_COMMIT", 2)
    db = tmp_path / "died.kyaradb"
    written = index_update.IndexUpdates._write
    calls = []

    def dies_on_the_second_commit(self, batch, summary):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the writer's machine went down
        written(self, batch, summary)

    with CollectionIndex(db, Recognizer(), create=True) as collection:
        with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
            patch.setattr(index_update.IndexUpdates, "_write", dies_on_the_second_commit)
            collection.update(pictures, progress=False, engine=OnRay())
        committed = calls[0]  # pictures of the one batch committed (shards arrive as they are done)
        assert 1 <= committed <= 2 and consistent(collection)["files"] == committed  # the other shards wait
        stored = {row[0] for row in collection._connection.execute("SELECT path FROM files")}
        waiting = {outcome.relative for shard in (db / SHARDS).glob("*.parquet") for outcome, _ in read_shard(shard)}
        assert waiting - stored  # the batch the writer died on, at least
        engine = Recording()
        summary = collection.update(pictures, progress=False, engine=engine)
        assert (summary.added, summary.unchanged) == (PICTURES - committed, committed)
    # Pictures with a shard come from it; only those the cluster had not finished when the
    # writer died (under load, some) are computed again.
    computed = {job.relative for job in engine.jobs}
    assert not computed & waiting and len(computed) == PICTURES - len(stored | waiting)
    assert same_values(contents(db), one_machine)


def test_cli_index_on_ray(cluster, pictures, one_machine, tmp_path):
    db = tmp_path / "cli.kyaradb"
    result = CliRunner().invoke(app, ["index", str(pictures), "--db", str(db), "--ray", "auto", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["added"], document["faces"]) == (PICTURES, len(one_machine))
    assert same_values(contents(db), one_machine)


def test_a_bad_or_silent_cluster_address_is_a_clear_error_at_once(pictures, tmp_path, monkeypatch):
    """`--ray bogus` ended in a traceback and `--ray 127.0.0.1:1` (nothing listening) waited on
    Ray's own retries for minutes without a word."""
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # whatever cluster an earlier test started
    db = tmp_path / "x.kyaradb"
    for address, said in (("bogus", "HOST:PORT"), ("host:99999", "HOST:PORT"), ("127.0.0.1:1", "nothing answers")):
        result = CliRunner().invoke(app, ["index", str(pictures), "--db", str(db), "--ray", address])
        assert result.exit_code == 2 and said in result.stderr, (address, result.output)
        assert "Traceback" not in result.output
