"""Django's own test suite, for the areas a backend can break (transactions,
select_for_update, queries, backends, basic), run twice against one live
PostgreSQL behind the real agent: on Django's PostgreSQL backend with HOST/PORT,
and on the dbha backend with no HOST. The dbha backend must fail no test that
Django's own passes.

The suite comes from Django's source distribution of the installed version
(downloaded once into target/django-src). DBHA_DJANGO_SUITE overrides the list of
test labels (e.g. the whole suite: DBHA_DJANGO_SUITE=all)."""

import os
import re
import subprocess
import sys
import tarfile
import textwrap

import django
import pytest

from conftest import ROOT, TARGET, Live

LABELS = os.environ.get("DBHA_DJANGO_SUITE", "transactions select_for_update queries backends basic")


def django_source():
    """tests/ of Django's sdist for the installed version."""
    dest = ROOT / "target" / "django-src"
    tests = dest / f"django-{django.__version__}" / "tests"
    if not (tests / "runtests.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        "--no-deps", "--no-binary", ":all:", "-d", str(dest), f"Django=={django.__version__}"],
                       check=True, timeout=600)
        with tarfile.open(dest / f"django-{django.__version__}.tar.gz") as t:
            t.extractall(dest, filter="data")
    return tests


SETTINGS = """
DATABASES = {{
    alias: {{
        "ENGINE": {engine!r},
        "NAME": "django_" + alias,
        "USER": "postgres",
        {address}
        "DBHA": {{"STATE_FILE": {state!r}}},
        "TEST": {{"NAME": "test_django_" + alias}},
    }}
    for alias in ("default", "other")
}}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
"""


def run_suite(tests, tmp_path, name, engine, address, state):
    """Runs the labels; returns (tests run, set of failing test ids, output)."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(SETTINGS.format(
        engine=engine, address=address, state=state)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "reader" / "python")]),
           "DBHA_LIBRARY": str(TARGET / "libdbha.so")}
    labels = [] if LABELS == "all" else LABELS.split()
    run = subprocess.run([sys.executable, "runtests.py", f"--settings={name}", "--parallel=1", "--noinput",
                          "-v", "2", *labels],
                         cwd=tests, env=env, capture_output=True, text=True, timeout=3600)
    out = run.stderr
    ran = re.search(r"^Ran (\d+) tests?", out, re.M)
    assert ran, out[-4000:]
    failing = set(re.findall(r"^(?:ERROR|FAIL): (\S+ \([^)]*\))", out, re.M))
    (TARGET / f"django-suite-{name}.log").write_text(out)
    return int(ran.group(1)), failing, out


def test_django_suite_passes_on_the_dbha_backend_as_on_djangos(tmp_path):
    tests = django_source()
    live = Live(["default"])
    try:
        db = live.info["databases"]["default"]
        stock = run_suite(tests, tmp_path, "stock", "django.db.backends.postgresql",
                          f'"HOST": {db["host"]!r}, "PORT": {db["port"]!r},', live.info["state"])
        ours = run_suite(tests, tmp_path, "with_dbha", "dbha.django.backends.postgresql", "",
                         live.info["state"])
    finally:
        live.close()
    print(f"Django {django.__version__} suite [{LABELS}]: Django's backend ran {stock[0]} "
          f"({len(stock[1])} failing), the dbha backend ran {ours[0]} ({len(ours[1])} failing)")
    assert ours[0] == stock[0], "both backends run the same tests"
    assert stock[0] > 100, stock[2][-4000:]
    only_ours = ours[1] - stock[1]
    assert not only_ours, f"fail only on the dbha backend: {sorted(only_ours)}\n{ours[2][-6000:]}"
