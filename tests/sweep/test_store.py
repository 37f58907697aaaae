"""The best-settings store: one conformance suite on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from concurrent.futures import ProcessPoolExecutor

import pytest
from sqlalchemy import create_engine, inspect, text

from sweep.store import BestRecord, SchemaError, Store, StoreError

BASE = dict(
    model="tiny-llava",
    task="mmvp",
    convention="paper",
    tau=20.0,
    rho=0.9,
    p=0.4,
    summ=0.2,
    first_layer=2,
    metric="pair_accuracy",
    direction="maximize",
    tuning_value=0.5,
    heldout_value=0.4,
    baseline_heldout=0.3,
    n_tuning=7,
    n_heldout=3,
    sweep_id="s1",
    study="tiny-llava:mmvp:paper",
    mlflow_run_id="r1",
    git_commit="abc",
    data_fingerprint="f" * 16,
)


def record(**changes) -> BestRecord:
    return BestRecord(**(BASE | changes))


def test_schema_from_migrations_with_own_version_table(database_url):
    Store(database_url).close()
    engine = create_engine(database_url)
    tables = set(inspect(engine).get_table_names())
    assert {"best_settings", "sweeps", "varsweep_alembic_version"} <= tables
    assert "alembic_version" not in tables  # Optuna's and MLflow's name stays free
    engine.dispose()


def test_upsert_keeps_the_better_row_in_the_metric_direction(database_url):
    store = Store(database_url)
    assert store.upsert_best(record(heldout_value=0.4))
    assert not store.upsert_best(record(heldout_value=0.3, sweep_id="worse"))
    assert not store.upsert_best(record(heldout_value=0.4, sweep_id="equal"))
    assert store.upsert_best(record(heldout_value=0.6, sweep_id="better", tau=12.0))
    (row,) = store.best(task="mmvp")
    assert (row.heldout_value, row.sweep_id, row.tau) == (0.6, "better", 12.0)
    chair = dict(task="chair", metric="chair_s", direction="minimize")
    assert store.upsert_best(record(**chair, heldout_value=0.5))
    assert store.upsert_best(record(**chair, heldout_value=0.4))
    assert not store.upsert_best(record(**chair, heldout_value=0.45))
    assert store.best(task="chair")[0].heldout_value == 0.4
    assert not store.upsert_best(
        record(metric="accuracy", heldout_value=0.99)
    )  # another metric never replaces
    assert [r.task for r in store.best()] == ["chair", "mmvp"]
    store.close()


def test_sweep_records(database_url):
    store = Store(database_url)
    sweep_id = store.start_sweep(key="k", model="m", task="mmvp", convention="paper")
    assert store.sweeps("k")[0].status == "running"
    store.finish_sweep(sweep_id, status="completed", trials=7)
    (sweep,) = store.sweeps("k")
    assert (sweep.status, sweep.trials) == ("completed", 7) and sweep.finished_at is not None
    store.close()


def _race(url: str, seed: int) -> float:
    store = Store(url)
    rng = random.Random(seed)
    best = 0.0
    for i in range(25):
        value = rng.random()
        best = max(best, value)
        store.upsert_best(record(heldout_value=value, sweep_id=f"racer{seed}-{i}"))
    store.close()
    return best


def test_racing_sweeps_leave_the_better_row(database_url):
    Store(database_url).close()  # schema first, so the racers only upsert
    with ProcessPoolExecutor(max_workers=2) as pool:
        bests = list(pool.map(_race, [database_url] * 2, [1, 2]))
    (row,) = Store(database_url).best()
    assert row.heldout_value == pytest.approx(max(bests))


def test_schema_mismatch_refused_with_the_upgrade_command(database_url):
    Store(database_url).close()
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE varsweep_alembic_version SET version_num = '0000'"))
    engine.dispose()
    with pytest.raises(SchemaError, match=r"python -m sweep.store upgrade"):
        Store(database_url)


def test_unreachable_database_is_one_clear_error():
    with pytest.raises(
        StoreError, match=r"postgresql\+psycopg://u:\*\*\*@127.0.0.1:1/x is unreachable"
    ) as err:
        Store("postgresql://u:hunter2@127.0.0.1:1/x", retry_seconds=1)
    assert "hunter2" not in str(err.value)


def test_a_store_of_the_previous_release_upgrades_in_place_and_keeps_its_rows(database_url):
    """A database at revision 0001 (no comparison columns) with a row, upgraded by `python -m sweep.store upgrade`."""
    import subprocess
    import sys

    from alembic import command

    from sweep.store._store import _alembic_config, _engine

    engine = _engine(database_url)
    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), "0001")
        columns = [c for c in BASE if c not in ("model", "task", "convention")]
        connection.execute(
            text(
                f"INSERT INTO best_settings (model, task, convention, {', '.join(columns)}, updated_at) VALUES "
                f"(:model, :task, :convention, {', '.join(':' + c for c in columns)}, CURRENT_TIMESTAMP)"
            ),
            BASE,
        )
    engine.dispose()
    with pytest.raises(SchemaError, match="0001"):
        Store(database_url)
    out = subprocess.run(
        [sys.executable, "-m", "sweep.store", "upgrade", "--url", database_url],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "at revision 0003" in out.stdout  # the paired comparison (0002) and the sweep lease (0003)
    (row,) = Store(database_url).best()
    assert (row.model, row.tau, row.heldout_value, row.sweep_id) == ("tiny-llava", 20.0, 0.4, "s1")
    assert row.delta == pytest.approx(0.1) and row.p_value is None and row.ci_low is None
    stored = Store(database_url)
    assert stored.upsert_best(
        record(heldout_value=0.5, ci_low=0.01, ci_high=0.2, p_value=0.03, n_resamples=2000)
    )
    (row,) = stored.best()
    assert (row.ci_low, row.ci_high, row.p_value, row.n_resamples) == (0.01, 0.2, 0.03, 2000)
    assert row.to_dict()["delta"] == pytest.approx(0.2)
