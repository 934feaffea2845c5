"""The solvers: small frozen classes of options that carry their own behaviour, driven by one
loop (``_loop.py``), and the table of their names.

Where a new method goes: a frozen dataclass subclass of :class:`Iterative` in a module of its
own here, with a ``name``, implementing ``step`` (and ``init`` / ``carries`` when its state is
more than the carries; see ``_base.py``), listed in ``_CLASSES`` below.
"""

from ._base import Method as Method
from ._base import Report as Report
from ._base import default_tolerances as default_tolerances
from ._damped import ELK as ELK
from ._damped import QuasiELK as QuasiELK
from ._iterative import Iterative as Iterative
from ._loop import solve as solve
from ._newton import FixedPoint as FixedPoint
from ._newton import Newton as Newton
from ._newton import QuasiNewton as QuasiNewton
from ._sequential import Sequential as Sequential
from ._sequential import SplitSequential as SplitSequential

_CLASSES = (Sequential, Newton, QuasiNewton, FixedPoint, ELK, QuasiELK)
_BY_NAME = {cls.name: cls for cls in _CLASSES}
METHOD_NAMES = tuple(_BY_NAME)


def method_class(name: str) -> type[Method]:
    """The solver class of a method name (``"newton"`` -> :class:`Newton`, ...)."""
    if isinstance(name, str) and name in _BY_NAME:
        return _BY_NAME[name]
    raise ValueError(
        f"method must be one of {sorted(_BY_NAME)} or an rnnscan method object "
        f"(rnnscan.Newton(...), ...); got {name!r}"
    )


def as_method(method) -> Method:
    if isinstance(method, Method):
        return method
    return method_class(method)()
