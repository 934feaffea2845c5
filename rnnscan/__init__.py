"""rnnscan: evaluate nonlinear recurrent networks in parallel over the sequence length."""

from . import diagnostics as diagnostics
from . import nn as nn
from . import ode as ode
from . import rtrl as rtrl
from ._methods import ELK as ELK
from ._methods import METHOD_NAMES as METHOD_NAMES
from ._methods import FixedPoint as FixedPoint
from ._methods import Method as Method
from ._methods import Newton as Newton
from ._methods import QuasiELK as QuasiELK
from ._methods import QuasiNewton as QuasiNewton
from ._methods import Sequential as Sequential
from ._methods import default_tolerances as default_tolerances
from ._methods import method_class as method_class
from ._scan import scan as scan
from ._scan import solve as solve
from ._sharded_scan import sharded_scan as sharded_scan
from ._sharded_scan import sharded_solve as sharded_solve
from ._solution import RESULTS as RESULTS
from ._solution import Solution as Solution
from ._structure import BlockDiagonal as BlockDiagonal
from ._structure import Dense as Dense
from ._structure import Diagonal as Diagonal
from ._structure import Structure as Structure

__version__ = "0.1.0"
