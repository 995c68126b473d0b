"""The package: ``fxdnat.repro`` offers the names its modules define, and importing it (or the
modules ``fxdnat repro --report`` needs) imports no torch."""

from __future__ import annotations

import importlib
import subprocess
import sys

import fxdnat.repro as repro


def test_every_name_the_package_offers_is_its_modules_own():
    for name in repro.__all__:
        module = importlib.import_module(repro._LAZY[name])
        assert getattr(repro, name) is getattr(module, name), name
    assert sorted(repro.__all__) == sorted(repro._LAZY)
    assert set(repro.__all__) <= set(dir(repro))


def test_the_package_and_the_report_import_no_torch():
    code = (
        "import sys\n"
        "from fxdnat.repro.report import aggregate\n"
        "print(sorted(m for m in sys.modules if m.startswith(('fxdnat.repro.run', 'fxdnat.engine'))))\n"
        "import fxdnat.repro as repro\n"
        "for name in repro.__all__:\n"
        "    getattr(repro, name)\n"
        "import fxdnat.repro.records\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    harness, heavy = out.stdout.strip().splitlines()[-2:]
    assert harness == "[]"  # --report aggregates without the harness
    assert heavy == "[]"
