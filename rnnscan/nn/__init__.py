"""Flax NNX recurrent cells and layers evaluated in parallel over time with :func:`rnnscan.solve`.

Every cell has ``flax.nnx``'s RNN-cell interface (``__call__(carry, x) -> (carry, y)``,
``initialize_carry``, ``num_feature_axes``), so it also runs in ``flax.nnx.RNN``, and declares
the structure of its carry Jacobian (``jacobian_structure``) and whether it is affine in the
carry (``carry_linear``). :class:`RNN` uses them to pick the cheapest exact solver.

=================  ==========================================  =======================
cell               carry Jacobian                              solve
=================  ==========================================  =======================
GRUCell            dense                                       Newton
LSTMCell           dense                                       Newton
SecondOrderCell    dense                                       Newton
MIRNNCell          dense                                       Newton
CPRNNCell          dense                                       Newton
DiagGRUCell        diagonal                                    Newton, O(T n)
DiagLSTMCell       2x2 block per unit (c_j, h_j)               Newton, O(T n)
MinGRUCell         diagonal, affine                            one linear scan
MinLSTMCell        diagonal, affine                            one linear scan
RGLRUCell          diagonal, affine                            one linear scan
LRUCell            2x2 block per unit (Re h_j, Im h_j), affine one linear scan
BRCCell            diagonal                                    Newton, O(T n)
NBRCCell           dense                                       Newton
ColEICell          dense                                       Newton
DANNCell           dense                                       Newton
CfCCell            dense                                       Newton
TimeWarpLSTMCell   dense                                       Newton
TimeWarpGRUCell    dense                                       Newton
LeakyRNNCell       dense                                       Newton
=================  ==========================================  =======================
"""

from ._auto import Auto as Auto
from ._auto_layers import auto_layers as auto_layers
from ._auto_layers import get_methods as get_methods
from ._auto_layers import set_methods as set_methods
from ._base import Cell as Cell
from ._bistable import BRCCell as BRCCell
from ._bistable import NBRCCell as NBRCCell
from ._cfc import CfCCell as CfCCell
from ._cfc import SparsityMask as SparsityMask
from ._classifier import CELLS as CELLS
from ._classifier import MLP as MLP
from ._classifier import ResidualBlock as ResidualBlock
from ._classifier import SequenceClassifier as SequenceClassifier
from ._dale import ColEICell as ColEICell
from ._dale import DANNCell as DANNCell
from ._diagonal import DiagGRUCell as DiagGRUCell
from ._diagonal import DiagLSTMCell as DiagLSTMCell
from ._gru import GRUCell as GRUCell
from ._layers import RNN as RNN
from ._layers import Bidirectional as Bidirectional
from ._layers import SolverStats as SolverStats
from ._layers import resolve_method as resolve_method
from ._leaky import LeakyRNNCell as LeakyRNNCell
from ._linear_gated import LRUCell as LRUCell
from ._linear_gated import MinGRUCell as MinGRUCell
from ._linear_gated import MinLSTMCell as MinLSTMCell
from ._linear_gated import RGLRUCell as RGLRUCell
from ._lstm import LSTMCell as LSTMCell
from ._second_order import CPRNNCell as CPRNNCell
from ._second_order import MIRNNCell as MIRNNCell
from ._second_order import SecondOrderCell as SecondOrderCell
from ._warp import TimeWarpGRUCell as TimeWarpGRUCell
from ._warp import TimeWarpLSTMCell as TimeWarpLSTMCell
from ._warp import WarpParam as WarpParam
from ._warp import retime as retime
