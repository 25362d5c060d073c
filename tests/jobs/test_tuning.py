from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tests import forkserver
from tests.conftest import kill, make_rows, run_until, write_csv
from textfit import TextClassifier
from textfit.errors import HyperparameterError
from textfit.jobs.tuning import CONDITIONS, DEFAULT_RANGES, parse_ranges, tune

FIXED = {"epochs": "3", "batch_size": "8", "precision": "fp32", "training_recipe": "finetune"}


def lr_ranges(*values: str) -> dict[str, object]:
    return {"CategoricalParameterRanges": [{"Name": "learning_rate", "Values": list(values)}]}


def test_the_default_ranges_are_the_spec_recommendations() -> None:
    names = {r.name: r for r in parse_ranges(None)}
    assert set(names) == {"batch_size", "beta_1", "beta_2", "epsilon", "learning_rate", "momentum",
                          "regularizers_l2", "optimizer", "train_only_on_top_layer"}
    assert names["learning_rate"].log and (names["learning_rate"].low, names["learning_rate"].high) == (1e-6, 0.5)
    assert (names["batch_size"].low, names["batch_size"].high) == (4, 128)
    assert len(names["optimizer"].values) == 7
    assert DEFAULT_RANGES["ContinuousParameterRanges"][2]["Name"] == "eps"  # the tuning page's spelling


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ({"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0.1", "MaxValue": "0.01"}]},
         "MinValue 0.1 must be below MaxValue 0.01"),
        ({"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0", "MaxValue": "2"}]},
         "leaves the valid range [0.0, 1.0]"),
        ({"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0", "MaxValue": "0.1",
                                         "ScalingType": "Logarithmic"}]}, "logarithmic scaling needs MinValue above 0"),
        ({"ContinuousParameterRanges": [{"Name": "learning_rte", "MinValue": "0", "MaxValue": "0.1"}]},
         "'learning_rte' is not a hyperparameter"),
        ({"IntegerParameterRanges": [{"Name": "learning_rate", "MinValue": "1", "MaxValue": "3"}]},
         "not an integer hyperparameter"),
        ({"CategoricalParameterRanges": [{"Name": "optimizer", "Values": ["adam", "lion"]}]},
         "optimizer='lion' is not valid"),
        ({"CategoricalParameterRanges": [{"Name": "optimizer", "Values": []}]}, "needs a non-empty Values list"),
        ({"DiscreteRanges": []}, "'DiscreteRanges' is not a kind of parameter range"),
    ],
)
def test_bad_ranges_are_refused_before_any_trial(ranges: dict[str, object], message: str) -> None:
    with pytest.raises(HyperparameterError) as info:
        parse_ranges(ranges)
    assert message in str(info.value)


def test_a_range_and_a_fixed_value_for_the_same_name() -> None:
    with pytest.raises(HyperparameterError, match="both fixed"):
        parse_ranges(lr_ranges("0.01"), {"learning_rate": "0.1"})


def test_bad_ranges_fail_fast_through_tune(channel: Path, tmp_path: Path) -> None:
    with pytest.raises(HyperparameterError, match="must be below"):
        tune(channel, output=tmp_path / "t", ranges={"ContinuousParameterRanges": [
            {"Name": "learning_rate", "MinValue": "1", "MaxValue": "0.5"}]})
    assert not (tmp_path / "t").exists()


def test_a_study_runs_writes_its_outputs_and_best_predicts(tiny_bert: Path, tmp_path: Path) -> None:
    write_csv(tmp_path / "train" / "data.csv", make_rows(64))
    result = tune(tmp_path / "train", model_id=str(tiny_bert), output=tmp_path / "t", max_jobs=3,
                  ranges=lr_ranges("0.02", "0.005", "1e-7"), hyperparameters=FIXED, strategy="grid",
                  early_stopping="off")
    out = tmp_path / "t"
    with (out / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {r["state"] for r in rows} == {"complete"}
    assert {r["learning_rate"] for r in rows} == {"0.02", "0.005", "1e-7"}
    assert result.best_val_accuracy == max(float(r["val_accuracy"]) for r in rows)
    for png in ("val_accuracy_by_trial.png", "optimization_history.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = TextClassifier.load(out / "best")
    assert best.hyperparameters_.learning_rate == float(result.best_hyperparameters["learning_rate"])
    best_row = next(r for r in rows if int(r["trial"]) == result.best_trial)
    assert best.history_[best.best_epoch_ - 1]["val_accuracy"] == pytest.approx(float(best_row["val_accuracy"]))
    assert [p.name for p in (out / "trials").iterdir()] == [f"trial-{result.best_trial}"]


def test_a_hopeless_trial_is_pruned(tiny_bert: Path, tmp_path: Path) -> None:
    write_csv(tmp_path / "train" / "data.csv", make_rows(96))
    # two rates that learn run first; then a rate that cannot learn falls below their median and is stopped
    result = tune(tmp_path / "train", model_id=str(tiny_bert), output=tmp_path / "t", max_jobs=3,
                  ranges=lr_ranges("0.01", "0.008", "1e-9"), hyperparameters={**FIXED, "epochs": "10"},
                  initial=[{"learning_rate": "0.01"}, {"learning_rate": "0.008"}, {"learning_rate": "1e-9"}])
    states = {r["learning_rate"]: r["state"] for r in result.trials}
    assert states == {"0.01": "complete", "0.008": "complete", "1e-9": "pruned"}, result.trials
    assert int(result.trials[2]["epochs_run"]) < 10


def test_initial_configurations_must_fit_the_ranges(channel: Path, tmp_path: Path) -> None:
    with pytest.raises(HyperparameterError, match="learning_rate=0.5 is not among"):
        tune(channel, output=tmp_path / "t", ranges=lr_ranges("0.01"), initial=[{"learning_rate": "0.5"}])


def test_conditional_parameters(tiny_bert: Path, tmp_path: Path) -> None:
    write_csv(tmp_path / "train" / "data.csv", make_rows(32))
    ranges = {"CategoricalParameterRanges": [{"Name": "optimizer", "Values": ["sgd", "adam", "rmsprop"]}],
              "ContinuousParameterRanges": [
                  {"Name": "beta_1", "MinValue": "0.8", "MaxValue": "0.95"},
                  {"Name": "momentum", "MinValue": "0.5", "MaxValue": "0.9"},
                  {"Name": "rho", "MinValue": "0.8", "MaxValue": "0.95"}]}
    result = tune(tmp_path / "train", model_id=str(tiny_bert), output=tmp_path / "t", max_jobs=6, ranges=ranges,
                  hyperparameters={**FIXED, "epochs": "1", "learning_rate": "0.01"}, strategy="random",
                  early_stopping="off")
    seen = set()
    for row in result.trials:
        optimizer = row["optimizer"]
        seen.add(optimizer)
        for name in ("beta_1", "momentum", "rho"):
            assert (name in row) == (optimizer in CONDITIONS[name]), row
    assert len(seen) >= 2


def test_a_killed_study_resumes(tiny_bert: Path, tmp_path: Path) -> None:
    """Killed inside trial 2: the rerun runs exactly that configuration again, under a new number, and repeats
    none that finished (learning rates are continuous draws: a repeat could only be a replayed generator)."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    write_csv(tmp_path / "train" / "data.csv", make_rows(300))
    (tmp_path / "ranges.json").write_text(json.dumps({"ContinuousParameterRanges": [
        {"Name": "learning_rate", "MinValue": "1e-4", "MaxValue": "1e-1", "ScalingType": "Logarithmic"}]}))
    cmd = [sys.executable, "-m", "textfit", "tune", "--train", str(tmp_path / "train"), "--model-id", str(tiny_bert),
           "--output", str(tmp_path / "t"), "--max-jobs", "4", "--strategy", "random", "--early-stopping", "off",
           "--ranges", str(tmp_path / "ranges.json"), "--hp", "batch_size=8", "--hp", "precision=fp32",
           "--hp", "epochs=3", "--seed", "1", "--heartbeat-grace", "2"]  # the rerun waits out 2 s, not 6
    first = run_until(cmd, "Trial 1: val_accuracy")
    assert first.stderr is not None
    for line in first.stderr:  # trial 2 has started: kill it inside its first epochs
        if line.startswith("Epoch 1/3"):
            break
    kill(first)
    done = forkserver.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Resuming: 1 trial(s) interrupted" in done.stderr
    study = optuna.load_study(study_name="textfit", storage=f"sqlite:///{tmp_path / 't' / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.number for t in failed] == [2] and len(complete) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = [t for t in complete if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 2]
    assert len(retry) == 1 and retry[0].params == failed[0].params  # the interrupted configuration, again
    rates = [t.params["learning_rate"] for t in complete]
    assert len(set(rates)) == 4, rates  # nothing finished was repeated
    with (tmp_path / "t" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sum(r["state"] == "complete" for r in rows) == 4
    assert (tmp_path / "t" / "best" / "textfit.json").is_file()


def test_default_ranges_leave_out_what_is_fixed() -> None:
    ranges = parse_ranges(None, {"train_only_on_top_layer": "True", "learning_rate": "1e-4"})
    names = {r.name for r in ranges}
    assert "train_only_on_top_layer" not in names and "learning_rate" not in names and "batch_size" in names
    with pytest.raises(HyperparameterError, match="learning_rate is both fixed"):
        parse_ranges({"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "1e-5",
                                                     "MaxValue": "1e-3"}]}, {"learning_rate": "1e-4"})


def test_threads_follow_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from textfit.core.environment import thread_budget

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_budget() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert thread_budget() == os.cpu_count()


# ------------------------------------------------------------------- a study shared through PostgreSQL


def _postgres_bin(name: str) -> str | None:
    import shutil

    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).is_file():
            return str(folder / name)
    return shutil.which(name)


PG_PASSWORD = "textfit-pg-secret"


@pytest.fixture(scope="module")
def postgres() -> object:
    """A throwaway PostgreSQL server on 127.0.0.1 (as the postgres user when the tests run as root), shared by
    this module's tests: each names its own study. Connections over TCP need the password (in the URL), so a
    wrong one can be tested."""
    import socket

    initdb, server = _postgres_bin("initdb"), _postgres_bin("postgres")
    if not initdb or not server:
        if os.environ.get("CI"):  # .ci/run installs PostgreSQL: in CI this test may not quietly skip
            pytest.fail("no PostgreSQL server binaries (initdb, postgres) although .ci/run should have installed them")
        pytest.skip("no PostgreSQL server on this machine (initdb/postgres not found)")
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="textfit-pg-"))  # pytest's own tmp is private to root
    root.chmod(0o755)
    data = root / "pg"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    (root / "password").write_text(PG_PASSWORD + "\n")
    (root / "password").chmod(0o644)
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256", f"--pwfile={root / 'password'}"], check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*as_user, server, "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"postgresql+psycopg://postgres:{PG_PASSWORD}@127.0.0.1:{port}/postgres"
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=postgres password={PG_PASSWORD} dbname=postgres").close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_study_through_postgresql(postgres: str, tiny_bert: Path, tmp_path: Path) -> None:
    write_csv(tmp_path / "train" / "data.csv", make_rows(48))
    (tmp_path / "ranges.json").write_text(
        '{"CategoricalParameterRanges": [{"Name": "learning_rate", "Values": ["0.01", "0.02", "0.005"]}]}')
    cmd = [sys.executable, "-m", "textfit", "-q", "tune", "--train", str(tmp_path / "train"), "--model-id",
           str(tiny_bert), "--max-jobs", "4", "--strategy", "random", "--ranges", str(tmp_path / "ranges.json"),
           "--storage", postgres, "--study", "shared", "--hp", "epochs=2", "--hp", "batch_size=8",
           "--hp", "precision=fp32", "--early-stopping", "off"]
    # two "machines": separate processes and output folders, one study
    workers = [forkserver.Popen([*cmd, "--output", str(tmp_path / f"worker{i}"), "--seed", str(i)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err.decode()[-2000:]
    import optuna

    storage = optuna.storages.RDBStorage(postgres)
    states = [t.state.name for t in optuna.load_study(study_name="shared", storage=storage).trials]
    storage.engine.dispose()  # close the connections now, not at some later garbage collection
    assert 4 <= len(states) <= 5 and states.count("COMPLETE") >= 4  # the budget is shared, not doubled


def test_start_from_defaults_runs_the_model_defaults_first(tiny_bert: Path, tmp_path: Path) -> None:
    write_csv(tmp_path / "train" / "data.csv", make_rows(32))
    ranges = {"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "1e-5", "MaxValue": "1e-3"}],
              "CategoricalParameterRanges": [{"Name": "epochs", "Values": ["1", "3"]}]}
    result = tune(tmp_path / "train", model_id=str(tiny_bert), output=tmp_path / "t", max_jobs=2, ranges=ranges,
                  hyperparameters={"batch_size": "8", "precision": "fp32"}, start_from_defaults=True)
    first = result.trials[0]
    assert float(first["learning_rate"]) == 5e-5 and first["epochs"] == "3"  # the BERT recipe of a non-zoo model


def test_a_dead_workers_trial_is_reclaimed_by_another(postgres: str, tiny_bert: Path, tmp_path: Path) -> None:
    """Worker A dies inside a trial of a shared study; worker B, once A's heartbeat has lapsed, runs that
    trial's configuration again under a new number and fills the budget."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    write_csv(tmp_path / "train" / "data.csv", make_rows(600))
    (tmp_path / "ranges.json").write_text(json.dumps({"ContinuousParameterRanges": [
        {"Name": "learning_rate", "MinValue": "1e-3", "MaxValue": "1e-1", "ScalingType": "Logarithmic"}]}))
    cmd = [sys.executable, "-m", "textfit", "tune", "--train", str(tmp_path / "train"), "--model-id", str(tiny_bert),
           "--max-jobs", "3", "--strategy", "random", "--ranges", str(tmp_path / "ranges.json"), "--storage", postgres,
           "--study", "reclaim", "--hp", "epochs=3", "--hp", "batch_size=8", "--hp", "precision=fp32",
           "--hp", "max_seq_length=16", "--early-stopping", "off", "--heartbeat-grace", "4"]
    first = run_until([*cmd, "--output", str(tmp_path / "a"), "--seed", "0"], "Trial 0: val_accuracy")
    assert first.stderr is not None
    for line in first.stderr:  # trial 1 has started on worker A
        if line.startswith("Epoch 1/3"):
            break
    kill(first)
    second = forkserver.run([*cmd, "--output", str(tmp_path / "b"), "--seed", "1"], capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    storage = optuna.storages.RDBStorage(postgres)
    trials = optuna.load_study(study_name="reclaim", storage=storage).get_trials()
    storage.engine.dispose()
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.number for t in failed] == [1] and len(complete) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = [t for t in complete if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 1]
    assert len(retry) == 1 and retry[0].params == failed[0].params


# ------------------------------------------------------------------- a storage that cannot be used: one line


def _free_port() -> int:
    """A port on 127.0.0.1 with nothing listening: bound, then closed."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tune_cli(channel: Path, tmp_path: Path, storage: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from textfit.cli import main

    capsys.readouterr()
    code = main(["tune", "--train", str(channel), "--output", str(tmp_path / "t"), "--storage", storage,
                 "--max-jobs", "1"])
    return code, capsys.readouterr().err


def _one_error_line(code: int, err: str, *expected: str) -> str:
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("postgresql://u:secret-pw@127.0.0.1:{refused}/db",
         ["--storage postgresql://u:***@127.0.0.1:{refused}/db: cannot connect (connection refused); check the host "
          "and port, and that the server is running"]),
        ("not a url", ["--storage not a url: not a database URL; expected e.g. postgresql://"]),
        ("postgresql://u:secret-pw@127.0.0.1:port/db", ["not a database URL (its port is not a number)"]),
        ("foo://u:secret-pw@127.0.0.1/db", ["--storage foo://u:***@127.0.0.1/db: unknown database scheme 'foo'"]),
        ("postgres://u:secret-pw@127.0.0.1/db", ["unknown database scheme 'postgres'; write postgresql://"]),
        ("postgresql+nodriver://u:secret-pw@127.0.0.1/db", ["postgresql has no driver 'nodriver'"]),
        ("sqlite:////no/such/folder/study.db", ["cannot open the SQLite file (unable to open database file)"]),
    ],
)
def test_an_unusable_storage_is_one_line_before_any_trial(storage: str, expected: list[str], channel: Path,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    port = _free_port()
    code, err = _tune_cli(channel, tmp_path, storage.format(refused=port), capsys)
    _one_error_line(code, err, *(e.format(refused=port) for e in expected))
    assert "secret-pw" not in err
    assert not (tmp_path / "t").exists()  # nothing was written


def test_a_storage_driver_not_installed(channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("mysqlclient is installed here")
    code, err = _tune_cli(channel, tmp_path, "mysql+mysqldb://u:secret-pw@127.0.0.1/db", capsys)
    _one_error_line(code, err, "its driver 'mysqldb' is not installed (No module named 'MySQLdb')")
    assert "secret-pw" not in err


def test_wrong_credentials_and_a_missing_database(postgres: str, channel: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres)
    for changed, expected in [
        (url.set(password="wrong-pw-123"), 'cannot connect (password authentication failed for user "postgres"); '
                                           "check the user name and password"),
        (url.set(username="nobody", password="wrong-pw-123"), 'password authentication failed for user "nobody"'),
        (url.set(database="no_such_db"), 'the database does not exist (database "no_such_db" does not exist)'),
    ]:
        code, err = _tune_cli(channel, tmp_path, changed.render_as_string(hide_password=False), capsys)
        line = _one_error_line(code, err, expected, f"@127.0.0.1:{url.port}/")
        assert "wrong-pw-123" not in line and PG_PASSWORD not in line and ":***@" in line
    assert not (tmp_path / "t").exists()


def test_a_server_that_accepts_and_never_answers_times_out(channel: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """TCP accepts (the listening socket's backlog), nothing ever answers: the configured timeout, one line."""
    import socket

    from textfit.cli import main

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        start = time.monotonic()
        code = main(["tune", "--train", str(channel), "--output", str(tmp_path / "t"), "--storage-timeout", "2",
                     "--storage", f"postgresql://u:secret-pw@127.0.0.1:{port}/db"])
        elapsed = time.monotonic() - start
    assert code == 2
    assert 1.5 < elapsed < 5, elapsed
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "secret-pw" not in err[0], err
    message = err[0].removeprefix("error: ")
    assert message.startswith(f"--storage postgresql://u:***@127.0.0.1:{port}/db: cannot connect (no answer within "
                              "2 s)"), message
    assert not (tmp_path / "t").exists()


def test_a_query_that_waits_on_a_lock_times_out(postgres: str, channel: Path, tmp_path: Path) -> None:
    """Connected, but the server does not answer a statement (another session holds a lock on Optuna's table):
    the statement timeout stops it, in one line."""
    import optuna
    import psycopg
    from sqlalchemy.engine import make_url

    from textfit.jobs.tuning import StorageError

    optuna.storages.RDBStorage(postgres).engine.dispose()  # the schema exists
    url = make_url(postgres)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                         dbname=url.database) as holder:
        holder.execute("LOCK TABLE version_info IN ACCESS EXCLUSIVE MODE")  # held until the block's rollback
        start = time.monotonic()
        with pytest.raises(StorageError) as info:
            tune(channel, output=tmp_path / "t", storage=postgres, storage_timeout=2)
        elapsed = time.monotonic() - start
        holder.rollback()
    assert elapsed < 6, elapsed
    message = str(info.value)
    assert "\n" not in message and PG_PASSWORD not in message
    assert "no answer within 2 s (canceling statement due to statement timeout)" in message, message


def test_the_storage_timeout_reaches_the_driver_and_the_urls_own_settings_win() -> None:
    from sqlalchemy.engine import make_url

    from textfit.jobs.tuning import _engine_kwargs, _masked

    args = _engine_kwargs(make_url("postgresql+psycopg://u:p@h/db"), 2.5)["connect_args"]
    assert args["connect_timeout"] == 3 and args["options"] == "-c statement_timeout=2500"
    args = _engine_kwargs(make_url("postgresql://u:p@h/db?connect_timeout=30&options=-c%20search_path%3Dx"), 2)
    assert "connect_timeout" not in args["connect_args"]
    assert args["connect_args"]["options"] == "-c statement_timeout=2000 -c search_path=x"
    assert _engine_kwargs(make_url("sqlite:///study.db"), 4) == {"connect_args": {"timeout": 4.0}}
    assert _masked("postgresql://u:p@ss/word@h:5/db?password=x&a=1") == "postgresql://u:***@h:5/db?password=***&a=1"
    assert _masked("postgresql://h:5432/db") == "postgresql://h:5432/db"


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
def test_the_storage_timeout_must_be_positive(timeout: float, channel: Path, tmp_path: Path) -> None:
    with pytest.raises(HyperparameterError, match="storage timeout"):
        tune(channel, output=tmp_path / "t", storage_timeout=timeout)


def test_sigterm_while_connecting_exits_cleanly(channel: Path, tmp_path: Path) -> None:
    """SIGTERM while `textfit tune` waits for a storage that never answers: the CLI's one line and 128 + 15."""
    import signal
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(120)
        port = silent.getsockname()[1]
        proc = forkserver.Popen([sys.executable, "-m", "textfit", "tune", "--train", str(channel), "--output",
                                 str(tmp_path / "t"), "--storage", f"postgresql://u:p@127.0.0.1:{port}/db"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        connection, _ = silent.accept()  # the client is connecting: it waits for an answer that never comes
        with connection:
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.splitlines() == ["stopped by SIGTERM: nothing was written"], err
    assert out == "" and not (tmp_path / "t").exists()
