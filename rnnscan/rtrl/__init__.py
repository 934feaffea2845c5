r"""Real-time recurrent learning (RTRL): exact gradients online, for element-wise cells.

RTRL (Williams and Zipser, 1989) carries the influence S_t = dc_t/dθ of the parameters on the
carry forward in time, S_t = J_t S_{t-1} + ∂F/∂θ, so that the gradient of a loss at step t is
available at step t, with no stored past and no truncation. In general S_t has N × P entries
(O(n^3) for a GRU): the reason RTRL is rarely used. For cells whose carry Jacobian is diagonal
or block-diagonal (rnnscan's DiagGRU, DiagLSTM, MinGRU, MinLSTM, LRU, RG-LRU, BRC) a parameter
entry of unit j moves only unit j's carry, ever, so the influence is block-sparse and RTRL is
exact at O(N Q) memory, Q the parameters per unit (Irie, Gopalakrishnan and Schmidhuber,
"Exploring the Promise and Limits of Real-Time Recurrent Learning", ICLR 2024).

- :func:`init`, :func:`step`, :func:`gradient`, :func:`step_value_and_grad`: online learning,
  one step at a time;
- :func:`sequence_gradient`: Σ_t of the per-step gradients over a sequence, one step at a
  time or ``chunk`` steps at a time with the influence recursion solved in parallel as a
  linear recurrence.

Which parameter entries belong to which unit is read off the cell by probing (see
``rnnscan/rtrl/_influence.py``); a cell declaring ``Dense()`` is refused unless
``dense=True`` (classic RTRL, its cost said in :func:`init`).
"""

from ._influence import InfluencePlan as InfluencePlan
from ._online import RTRLState as RTRLState
from ._online import gradient as gradient
from ._online import init as init
from ._online import step as step
from ._online import step_value_and_grad as step_value_and_grad
from ._sequence import sequence_gradient as sequence_gradient
