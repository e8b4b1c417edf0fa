"""A scheduled cell body as a function: notebook values captured by value, rebinding included."""

from __future__ import annotations

from collections.abc import Iterator

import cloudpickle
import pytest
from IPython.core.interactiveshell import InteractiveShell

from naq_ipy.client.cells import make_cell_function
from naq_ipy.errors import ConfigurationError


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    yield ip
    InteractiveShell.clear_instance()


def test_a_cell_that_rebinds_a_notebook_name_reads_its_value_first(shell: InteractiveShell) -> None:
    shell.user_ns.update(df=[3, None, 1], count=5)
    func = make_cell_function(shell, "clean", "df = [x for x in df if x is not None]\ncount += 1\n(sorted(df), count)")
    shell.user_ns.update(df=[], count=0)  # later notebook changes do not reach the scheduled copy
    assert cloudpickle.loads(cloudpickle.dumps(func))() == ([1, 3], 6)


def test_a_name_bound_only_in_the_cell_needs_no_notebook_value(shell: InteractiveShell) -> None:
    func = make_cell_function(shell, "local", "total = 0\nfor i in range(4):\n    total += i\ntotal")
    assert func() == 6
    assert func.captured == {}


def test_an_undefined_name_is_refused_now(shell: InteractiveShell) -> None:
    with pytest.raises(ConfigurationError, match="'missing'"):
        make_cell_function(shell, "bad", "missing + 1")
