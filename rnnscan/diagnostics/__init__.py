"""Will parallel evaluation pay for this model? Lyapunov exponents of a recurrence along its
trajectory, and a calibrated prediction of the iterations a parallel solve will need.
Also the normalised SVD entropy of a matrix (:func:`svd_entropy`), which predicts how well
Dale's-law recurrent networks learn (Li et al., NeurIPS 2023). And the timescales of
recurrent units (Khajehabdollahi et al., arXiv:2309.12927): fitted from the autocorrelation of their
activity (:func:`network_timescales`), or from a leaky unit's time constant
(:func:`leak_timescale`).
"""

from ._lyapunov import finite_time_lyapunov_exponents as finite_time_lyapunov_exponents
from ._lyapunov import lyapunov_exponents as lyapunov_exponents
from ._predict import Parallelizability as Parallelizability
from ._predict import parallelizability as parallelizability
from ._spectrum import svd_entropy as svd_entropy
from ._timescales import NetworkTimescales as NetworkTimescales
from ._timescales import autocorrelation as autocorrelation
from ._timescales import leak_timescale as leak_timescale
from ._timescales import network_timescales as network_timescales
